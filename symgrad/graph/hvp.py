"""Second derivatives on the op graph: Hessian-vector products, forward over reverse.

# Note [Hessian-vector rules]
``order=2`` checks torch's double backward: ``g = grad(f(x), x, v, create_graph=True)`` and then
``grad(g, x, w)``, which is ``H w`` with ``H`` the Hessian of the scalar ``<v, f(x)>`` (torch runs
reverse over reverse and gets ``H^T w``; ``H`` is symmetric).  The tensor back end computes it
forward over reverse: a tangent sweep carries every node's tangent along ``w`` (``rules.jvp``); the
reverse sweep then carries, beside each cotangent ``g``, its tangent ``dg`` -- how the cotangent
moves when the inputs move along ``w``.  One rule per core node kind gives the arguments' ``dg``
from the node's ``dg``, its arguments' values and tangents, and its cotangent ``g``:

==============  ===================================================================================
kind            tangent of the argument cotangents
==============  ===================================================================================
``pointwise``   ``dg * f_i(a) + g * sum_j f_ij(a) t_j`` with ``f_i``, ``f_ij`` the first and second
                ``sympy.diff`` of the node's form (Dirac deltas of steps are 0: torch's convention)
``contract``    the bilinear product rule: ``vjp_i(dg)`` plus ``g`` contracted with ``t_j`` in place of
                argument ``j``, for every other argument ``j``
``reduce``      sum: linear, ``vjp(dg)``; max/min: ``vjp(dg)`` through the selected entries (the choice
                is constant between ties; ties within rounding are kinks, with bands as in first order)
``layout``,     linear: ``vjp(dg)``
``select``
``stop``        zero (a detached value is a constant to every derivative, as in torch)
``linalg``      refused (``UnsupportedOp`` naming the node)
==============  ===================================================================================

Every rule is written in Approx arithmetic (Note [Approx arithmetic]), so the product comes with its
rounding bound and kink band.  The rules are cross-checked in ``tests/graph/test_hvp.py`` against the
exploded back end's exact second derivatives and by the symmetry ``<w1, H w2> = <w2, H w1>``.
"""

from __future__ import annotations

from functools import lru_cache

import sympy as sp

from ..errors import UnsupportedOp
from .approx import Approx, add, checking, einsum, mul, unbroadcast
from .engine import _depends, tangent_sweep
from .ir import Graph, Node
from .derivforms import as_torch_computes
from .rules import derivatives, symbols_for
from .rules import vjp as vjp_rule
from .rules_tensor import _broadcast
from .scalar import Ctx, evaluate

__all__ = ["second_derivatives", "hvp_rule", "hvp", "refuse_unsupported"]


def _no_deltas(expr: sp.Expr) -> sp.Expr:
    """The derivative of a step (sign, Heaviside, a Piecewise's jump) is 0 away from the step, and
    torch's backward of a backward takes it so at the step too."""
    if expr.has(sp.DiracDelta):
        expr = expr.replace(lambda e: isinstance(e, sp.DiracDelta), lambda e: sp.S.Zero)
    return expr


@lru_cache(maxsize=4096)
def second_derivatives(expr: sp.Expr, k: int) -> tuple:
    """``f_ij = d^2 expr / ds_i ds_j`` for each pair of arguments (``sympy.diff`` twice, each in the
    form torch computes: graph/derivforms.py)."""
    syms = symbols_for(k)
    return tuple(tuple(as_torch_computes(expr, _no_deltas(sp.diff(d, s))) for s in syms) for d in derivatives(expr, k))


def _total(terms: list):
    out = None
    for t in terms:
        if t is not None:
            out = t if out is None else add(out, t)
    return out


def hvp_rule(node: Node, args: list, tangents: list, g: Approx, dg: Approx | None, ctx: Ctx,
             needed: list) -> list:
    """The tangent of each argument's cotangent (``None``: zero, or not ``needed``)."""
    kind = node.kind
    if kind == "stop":
        return [None]
    if kind == "pointwise":
        return _hvp_pointwise(node, args, tangents, g, dg, ctx, needed)
    if kind == "contract":
        return _hvp_contract(node.attrs["spec"], args, tangents, g, dg, needed)
    if kind in ("reduce", "layout", "select"):  # linear in the cotangent; max/min's choice is locally constant
        if dg is None:
            return [None] * len(args)
        return [None if not need else d for d, need in zip(vjp_rule(node, args, dg, ctx, needed), needed)]
    raise UnsupportedOp(_refusal(node))


def _refusal(node: Node) -> str:
    return (f"order=2 on the op graph has no Hessian-vector rule for the {node.kind} node "
            f"{node.attrs.get('op', '')!s} (from {node.origin or node.name or 'the forward'}); check the "
            "second derivative of this function with engine='elementwise' at a small size")


def _hvp_pointwise(node, args, tangents, g, dg, ctx, needed) -> list:
    k = len(args)
    env = dict(zip(symbols_for(k), args))
    firsts, seconds = derivatives(node.attrs["expr"], k), second_derivatives(node.attrs["expr"], k)
    out = []
    for i, a in enumerate(args):
        if not needed[i]:
            out.append(None)
            continue
        terms = []
        if dg is not None and firsts[i] != 0:
            terms.append(mul(dg, _broadcast(evaluate(firsts[i], env, ctx), node.shape)))
        for j, t in enumerate(tangents):
            if t is None or seconds[i][j] == 0:
                continue
            local = mul(_broadcast(evaluate(seconds[i][j], env, ctx), node.shape), _broadcast(t, node.shape))
            terms.append(mul(g, local))
        total = _total(terms)
        out.append(None if total is None else unbroadcast(total, a.shape))
    return out


def _hvp_contract(spec: str, args, tangents, g, dg, needed) -> list:
    ins, out_sub = spec.split("->")
    subs = ins.split(",")
    out = []
    for i, sub in enumerate(subs):
        if not needed[i]:
            out.append(None)
            continue
        others = [j for j in range(len(args)) if j != i]
        spec_i = ",".join([out_sub] + [subs[j] for j in others]) + "->" + sub
        terms = []
        if dg is not None:
            terms.append(einsum(spec_i, dg, *(args[j] for j in others)))
        for j in others:
            if tangents[j] is not None:
                terms.append(einsum(spec_i, g, *(tangents[m] if m == j else args[m] for m in others)))
        out.append(_total(terms))
    return out


def refuse_unsupported(graph: Graph, wrt: list) -> None:
    """An ``UnsupportedOp`` before any work where a node on a differentiated path has no rule."""
    live = _depends(graph, set(wrt))
    for node in graph.nodes:
        if node in live and node.kind == "linalg":
            raise UnsupportedOp(_refusal(node))


def _tangent_sweep(graph: Graph, values: dict, tangents: dict, ctx: Ctx) -> dict:
    """Every node's tangent along ``tangents`` (leaf node -> Approx); absent: zero.  A ``stop`` node's
    tangent is zero, the padding-row kind too: torch's double backward differentiates its backward."""
    return tangent_sweep(graph, values, tangents, ctx, skip=("leaf", "stop"),
                         refuse=lambda node, err: UnsupportedOp(f"{_refusal(node)} ({err})"))


def hvp(graph: Graph, values: dict, out: Node, seed: Approx, tangents: dict, wrt: list, ctx: Ctx) -> dict:
    """Leaf node -> ``H w``: the tangent along ``tangents`` (leaf -> w) of the cotangents that the
    output's cotangent ``seed`` sends back (Note [Hessian-vector rules]); ``None`` where zero."""
    refuse_unsupported(graph, wrt)
    with checking(ctx.dtype):  # Note [Rounding below the normal range] in approx.py
        return _hvp(graph, values, out, seed, tangents, wrt, ctx)


def _hvp(graph: Graph, values: dict, out: Node, seed: Approx, tangents: dict, wrt: list, ctx: Ctx) -> dict:
    ts = _tangent_sweep(graph, values, tangents, ctx)
    live = _depends(graph, set(wrt))
    grads: dict = {out: seed} if out in live else {}
    dgrads: dict = {}
    for node in reversed(graph.nodes):
        g = grads.get(node)
        if g is None or node.kind == "leaf":
            continue
        needed = [a in live for a in node.args]
        if not any(needed):
            continue
        args = [values[a] for a in node.args]
        dg = dgrads.get(node)
        firsts = vjp_rule(node, args, g, ctx, needed)
        seconds = hvp_rule(node, args, [ts.get(a) for a in node.args], g, dg, ctx, needed)
        for a, ga, dga in zip(node.args, firsts, seconds):
            if a not in live:
                continue
            if ga is not None:
                grads[a] = ga if a not in grads else add(grads[a], ga)
            if dga is not None:
                dgrads[a] = dga if a not in dgrads else add(dgrads[a], dga)
        if node is not out:
            grads.pop(node, None)
            dgrads.pop(node, None)
    return {leaf: dgrads.get(leaf) for leaf in wrt}
