"""Evaluate an op graph forward and in reverse mode, in Approx arithmetic (stage "differentiate").

``forward(graph, ctx)`` gives every node's value with its rounding bound and kink band;
``backward(graph, values, seeds, wrt, ctx)`` gives, for each leaf in ``wrt``, the vector-Jacobian
product with the cotangents ``seeds`` (one per output), accumulated over every use of the leaf
-- a weight used twice (tied) gets both contributions, as torch's does.
"""

from __future__ import annotations

import numpy as np

from .approx import Approx, accumulating, add, kernel, rounded
from .ir import Graph
from .rules import forward as forward_rule
from .rules import jvp as jvp_rule
from .rules import vjp as vjp_rule
from .scalar import Ctx

__all__ = ["forward", "backward", "tangent", "tangent_sweep"]


def forward(graph: Graph, ctx: Ctx, caps: dict | None = None) -> dict:
    """``caps``: node -> a cap on its rounding bound (units of eps), applied as the sweep goes, so the
    nodes after it read the capped bound (Note [Statistical kinks] in montecarlo.py)."""
    with accumulating(ctx.dtype, ctx.eps):  # Note [Half-precision accumulation]
        return _forward(graph, ctx, caps)


def _forward(graph: Graph, ctx: Ctx, caps: dict | None = None) -> dict:
    values: dict = {}
    for node in graph.nodes:
        if node.kind == "leaf":
            v = node.attrs["value"]
            err = node.attrs.get("error", 0.0)
            own = _own_error(v, err) if err else None
            values[node] = Approx(rounded(v, own) if err else v, own)
        else:
            with kernel(node):
                values[node] = forward_rule(node, [values[a] for a in node.args], ctx)
            cap = caps.get(node) if caps else None
            if cap is not None:
                values[node] = _capped(values[node], cap)
    return values


def _capped(val: Approx, cap) -> Approx:
    """``val`` with its rounding bound capped (Note [Statistical kinks] in montecarlo.py), except at
    entries a kinked unit reaches (banded): there the bound holds the other side's value too, which
    the reruns, moving every rounding by a small step on the graph's side, never see."""
    e = np.minimum(val.e, cap)
    if val.banded:
        e = np.where(val.lo + val.hi > 0, val.e, e)
    return Approx(val.v, e, val.lo, val.hi)


def _own_error(v, err: float):
    """A constant's error bound, ``err`` units of its own size (in eps units): at most the largest
    float, so a mask constant near the float64 limit (``torch.finfo(float64).min``, Hugging Face's
    attention masks) keeps a finite bound, and a 0 derivative through it (exp of the masked score)
    contributes 0, not inf * 0."""
    with np.errstate(over="ignore"):
        return np.minimum(err * np.abs(v), np.finfo(np.float64).max)


def _depends(graph: Graph, wrt: set) -> set:
    """Nodes whose value depends on a leaf in ``wrt`` (the only ones that need a cotangent)."""
    live = set()
    for node in graph.nodes:
        if node in wrt or (node.kind != "stop" and any(a in live for a in node.args)):
            live.add(node)
    return live


# During a statistical rerun (montecarlo.py): ``(node, i) -> the arguments`` the node's reverse rule
# reads for its argument ``i``'s cotangent (Note [Each use its own moves]); None: ``values``'.
_RULE_ARGS = None


def backward(graph: Graph, values: dict, seeds: dict, wrt: list, ctx: Ctx, kinks: list | None = None) -> dict:
    """``seeds``: node -> cotangent (Approx); returns leaf node -> accumulated cotangent.  ``kinks``:
    a list that collects the kinked units instead of widening bands (``rules.vjp``)."""
    with accumulating(ctx.dtype, ctx.eps):  # Note [Half-precision accumulation]
        return _backward(graph, values, seeds, wrt, ctx, kinks)


def _backward(graph: Graph, values: dict, seeds: dict, wrt: list, ctx: Ctx, kinks: list | None) -> dict:
    live = _depends(graph, set(wrt))
    grads: dict = {}
    for node, g in seeds.items():
        if node in live:
            grads[node] = g if node not in grads else add(grads[node], g)
    for node in reversed(graph.nodes):
        g = grads.get(node)
        if g is None or node.kind == "leaf":
            continue
        needed = [a in live for a in node.args]
        if not any(needed):
            continue
        with kernel(node, backward=True):
            if _RULE_ARGS is None:
                cotangents = vjp_rule(node, [values[a] for a in node.args], g, ctx, needed, kinks)
            else:  # Note [Each use its own moves] (montecarlo.py)
                cotangents = [vjp_rule(node, _RULE_ARGS(node, i), g, ctx, [j == i for j in range(len(needed))],
                                       kinks)[i] if need else None for i, need in enumerate(needed)]
        for a, ga in zip(node.args, cotangents):
            if ga is None or a not in live:
                continue
            grads[a] = ga if a not in grads else add(grads[a], ga)
        if node not in seeds:
            del grads[node]  # free memory as the sweep goes
    return {leaf: grads.get(leaf) for leaf in wrt}


def tangent(graph: Graph, values: dict, tangents: dict, out, ctx: Ctx) -> Approx | None:
    """Forward mode: ``tangents`` maps leaf nodes to their tangents; returns the output's tangent."""
    with accumulating(ctx.dtype, ctx.eps):  # Note [Half-precision accumulation]
        return _tangent(graph, values, tangents, out, ctx)


def _tangent(graph: Graph, values: dict, tangents: dict, out, ctx: Ctx) -> Approx | None:
    return tangent_sweep(graph, values, tangents, ctx).get(out)


def tangent_sweep(graph: Graph, values: dict, tangents: dict, ctx: Ctx, skip: tuple = ("leaf",),
                  refuse=None) -> dict:
    """Every node's tangent along ``tangents`` (leaf node -> Approx); absent: zero.  ``skip``: node
    kinds that get none; ``refuse(node, err)``: the exception to raise where a node has no
    forward-mode rule (default: the rule's own NotImplementedError)."""
    known = dict(tangents)
    for node in graph.nodes:
        if node.kind in skip or node in known:
            continue
        ts = [known.get(a) for a in node.args]
        if any(t is not None for t in ts):
            try:
                with kernel(node):
                    t = jvp_rule(node, [values[a] for a in node.args], ts, ctx)
            except NotImplementedError as err:
                if refuse is None:
                    raise
                raise refuse(node, err) from err
            if t is not None:
                known[node] = t
    return known
