"""Evaluate an op graph forward and in reverse mode, in Approx arithmetic (stage "differentiate").

``forward(graph, ctx)`` gives every node's value with its rounding bound and kink band;
``backward(graph, values, seeds, wrt, ctx)`` gives, for each leaf in ``wrt``, the vector-Jacobian
product with the cotangents ``seeds`` (one per output), accumulated over every use of the leaf
-- a weight used twice (tied) gets both contributions, as torch's does.
"""

from __future__ import annotations

import numpy as np

from ..compare.half import rounding_ulps
from .approx import Approx, accumulating, add, charged, kernel, rounded, size, stored_as
from .ir import Graph
from .kinklog import KinkLog
from .rules import forward as forward_rule
from .rules import jvp as jvp_rule
from .rules import vjp as vjp_rule
from .scalar import KINK_ULPS, Ctx

__all__ = ["forward", "backward", "tangent", "tangent_sweep"]


def forward(graph: Graph, ctx: Ctx, caps: dict | None = None, fold_moves: bool = True, visit=None) -> dict:
    """``caps``: node -> a cap on its rounding bound (units of eps), applied as the sweep goes, so the
    nodes after it read the capped bound (Note [Statistical kinks] in montecarlo.py); by default the
    check's own (``graph.kink_caps``), so a statistical rerun folds the kinks the check folded (Note
    [Continuous kinks are roundings]).  ``fold_moves=False``: a statistical rerun does not move the
    folded kinks (the reruns that set the caps: before them every unit the worst case reaches is
    folded).  ``visit(node, value)``: called on every non-leaf node's value as the sweep goes, and
    then no value is kept past its last use (the result holds the graph's outputs only): a rerun
    that only reads each value once holds the live ones, not the whole forward (Note [Memory guard
    of the op graph] in budget.py)."""
    if caps is None:
        caps = getattr(graph, "kink_caps", None)
    with accumulating(ctx.dtype, ctx.eps):  # Note [Half-precision accumulation]
        return _forward(graph, ctx, caps, fold_moves, visit)


def _last_uses(graph: Graph) -> dict:
    """node -> the position of the last node that reads it (outputs: past the end)."""
    last = {}
    for i, node in enumerate(graph.nodes):
        for a in node.args:
            last[a] = i
    for out in graph.outputs:
        if out is not None:
            last[out] = len(graph.nodes)
    return last


def _forward(graph: Graph, ctx: Ctx, caps: dict | None = None, fold_moves: bool = True, visit=None) -> dict:
    values: dict = {}
    last = _last_uses(graph) if visit is not None else None
    for i, node in enumerate(graph.nodes):
        if node.kind == "leaf":
            v = node.attrs["value"]
            err = node.attrs.get("error", 0.0) * node.attrs.get("error_eps", ctx.eps) / ctx.eps
            own = _own_error(v, err) if err else None
            folded = node.attrs.get("error_abs")  # Note [Rounding of folded constants] (fold_error.py)
            if folded is not None:  # a bound in value, not in counted roundings (each allowed rounding_ulps eps)
                folded = folded / (ctx.eps * min(1.0, rounding_ulps(ctx.dtype)))
                own = folded if own is None else np.maximum(own, folded)
            values[node] = Approx(v if own is None else rounded(v, own), own)
        else:
            with kernel(node):
                val, folded = _continuous(forward_rule(node, [values[a] for a in node.args], ctx), ctx.eps, fold_moves)
            cap = caps.get(node) if caps else None
            values[node] = val if cap is None else _capped(val, cap, folded)
            if visit is not None:
                visit(node, values[node])
                for a in {*node.args, node}:
                    if last.get(a, -1) <= i:
                        values.pop(a, None)
    return values


# Note [Continuous kinks are roundings]
# A value computed on a kink of a continuous function (relu of a pre-activation within rounding of
# 0, a max over entries within rounding of each other) is the same on either side up to the
# distance to the kink, which is a rounding: its band (the other branch's value) is at most twice
# KINK_ULPS times the value's own bound.  Carried as a band, it reached every value after it, every
# smooth derivative evaluated at those values had a band of 1e-10 of its size, each a "kinked unit"
# of the joint kink check, and every gradient entry of a float32 DenseNet block counted as on a
# kink: off the statistical scale test, judged against bands, a backward off by 1e-3 passed.  Such
# a band is added to the value's bound instead (sound: the bound then covers either side); a band
# wider than that (a step function's jump, where's other branch) stays a band, and a derivative's
# jump (relu' is 0 or 1) is untouched: it is a derivative's band, not a value's.  The bound of a
# value folded so is a rounding of that size in the statistical reruns too (Note [Statistical
# allowance]: without it a gradient entry read off a relu output at 0 was allowed nothing, and
# torch's relu of its own rounded pre-activation, 3e-8, failed), and its bound is kept whole under
# Note [Statistical kinks]' caps.
def _continuous(val: Approx, eps: float, moves: bool = True) -> tuple:
    """``(val, folded)``: ``val`` with the bands of continuous kinks added to its bound (Note
    [Continuous kinks are roundings]); ``folded``: where, or None."""
    if not val.banded:
        return val, None
    width = np.maximum(val.lo, val.hi)
    with np.errstate(invalid="ignore", over="ignore"):
        folded = (width > 0) & (width <= 2 * KINK_ULPS * eps * val.e)
    if not folded.any():
        return val, None
    own = np.where(folded, width / eps, 0.0)
    # a statistical rerun moves it as far as its argument moves (a continuous kink is 1-Lipschitz in
    # it): the other side's value is at most the band, but torch reaches it only by as much
    move = np.minimum(own, np.where(folded, val.e, 0.0))
    v = rounded(val.v, move) if moves else val.v
    return Approx(v, val.e + own, np.where(folded, 0.0, val.lo), np.where(folded, 0.0, val.hi)), folded


def _capped(val: Approx, cap, folded=None) -> Approx:
    """``val`` with its rounding bound capped (Note [Statistical kinks] in montecarlo.py), except at
    entries a kinked unit reaches (banded) or folded into its bound (Note [Continuous kinks are
    roundings]): there the bound holds the other side's value too, which the reruns, moving every
    rounding by a small step on the graph's side, never see."""
    e = np.minimum(val.e, cap)
    if val.banded:
        e = np.where(val.lo + val.hi > 0, val.e, e)
    if folded is not None:
        e = np.where(folded, val.e, e)
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
    spread: dict = {}  # a merged node -> the sum of its cotangents' sizes (Note [One node per computation] in ir.py)
    repeated = getattr(graph, "repeated", ())
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
            if node in spread:  # each repeat's backward rounds on its own cotangent
                cotangents = _per_use(node, [values[a] for a in node.args], spread.pop(node), cotangents, ctx,
                                      needed, spread, repeated)
        if isinstance(kinks, KinkLog):
            kinks.owned_by(node)
        for a, ga in zip(node.args, cotangents):
            if ga is None or a not in live:
                continue
            if a not in grads:
                grads[a] = ga
                continue
            if a in repeated:
                spread[a] = (spread[a] if a in spread else np.abs(grads[a].v)) + np.abs(ga.v)
            with stored_as(a):  # Note [Nodes computed in a wider dtype] in approx.py
                grads[a] = add(grads[a], ga)
        if node not in seeds:
            del grads[node]  # free memory as the sweep goes
    return {leaf: grads.get(leaf) for leaf in wrt}


def _per_use(node, args: list, sizes, cotangents: list, ctx: Ctx, needed: list, spread: dict, repeated) -> list:
    """``cotangents`` of a merged node's arguments, charged the rounding its rule makes on the sum of
    its uses' cotangent sizes ``sizes`` (torch runs each repeat's backward on its own: Note [One node per
    computation] in ir.py); a repeated argument carries those sizes on (``spread``)."""
    own = size(sizes)
    apart = vjp_rule(node, args, Approx(np.asarray(sizes, np.float64), own), ctx, needed, None)
    out = []
    for a, ga, ha in zip(node.args, cotangents, apart):
        if ga is None or ha is None:
            out.append(ga)
            continue
        extra = np.broadcast_to(ha.e, np.shape(ga.v))
        out.append(charged(ga, extra))
        if a in repeated:
            spread[a] = spread.get(a, 0.0) + np.abs(ha.v)
    return out


def tangent(graph: Graph, values: dict, tangents: dict, out, ctx: Ctx, kinks=None) -> Approx | None:
    """Forward mode: ``tangents`` maps leaf nodes to their tangents; returns the output's tangent.
    ``kinks``: a ``ForwardKinkLog`` that records pointwise kinks as units instead of bands (Note
    [Forward kink units] in graph/forward_kinks.py)."""
    with accumulating(ctx.dtype, ctx.eps):  # Note [Half-precision accumulation]
        return tangent_sweep(graph, values, tangents, ctx, kinks=kinks).get(out)


def _tangent_of(node, values: dict, ts: list, ctx: Ctx, kinks):
    """A node's tangent from its arguments' ``ts``; in a rerun with per-use moves (``_RULE_ARGS``),
    each argument's part reads the forward values with that argument's own signs, and the parts are
    added (a jvp rule is linear in the tangents; Note [Each use its own moves] in montecarlo.py)."""
    if _RULE_ARGS is None:
        return jvp_rule(node, [values[a] for a in node.args], ts, ctx, kinks)
    out = None
    for i, t in enumerate(ts):
        if t is None:
            continue
        part = jvp_rule(node, _RULE_ARGS(node, i), [t if j == i else None for j in range(len(ts))], ctx, kinks)
        out = part if out is None else (out if part is None else add(out, part))
    return out


def tangent_sweep(graph: Graph, values: dict, tangents: dict, ctx: Ctx, skip: tuple = ("leaf",),
                  refuse=None, kinks=None) -> dict:
    """Every node's tangent along ``tangents`` (leaf node -> Approx); absent: zero.  ``skip``: node
    kinds that get none; ``refuse(node, err)``: the exception to raise where a node has no
    forward-mode rule (default: the rule's own NotImplementedError); ``kinks``: as for ``tangent``."""
    known = dict(tangents)
    for node in graph.nodes:
        if node.kind in skip or node in known:
            continue
        ts = [known.get(a) for a in node.args]
        if any(t is not None for t in ts):
            try:
                with kernel(node, tangent=True):
                    t = _tangent_of(node, values, ts, ctx, kinks)
            except NotImplementedError as err:
                if refuse is None:
                    raise
                raise refuse(node, err) from err
            if t is not None:
                known[node] = t
    return known
