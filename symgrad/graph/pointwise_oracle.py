"""Note [Pointwise gradients on the op graph]: a certified reference and conditioning where the
gradient is pointwise in x.

Where the output is a chain of pointwise nodes of one input x (``torch.sinc(x)``, a custom
Function's elementwise forward, ``tanh(sin(x))``; every node of x's shape), possibly summed to a
scalar, the gradient entry is ``g_i = c_i F'(x_i)`` with ``F`` the chain composed into one SymPy
form and ``c_i`` the cotangent entry.  Its reference is then known exactly: ``c F'(x)`` goes to
the exploded engine's raised-precision evaluator (Note [Certified reference] in
``symgrad/lower/exact.py``), and so does its conditioning, ``|x c F''(x)| + |c F'(x)|`` plus the
saved values (Note [Conditioning of an entry], Note [Saved values]): the op graph then answers
"is it accurate?" too.  Anything else (a reduction other than a full sum, a second input, a
contraction, layouts) has no such oracle: its records say the accuracy question is not answered.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from ..compare.accuracy import EntryOracle
from .functions import elu_slope, narrowed
from .rules import symbols_for

__all__ = ["attach_pointwise_oracles", "attach_tangent_oracle"]

MAX_CHAIN = 64  # pointwise nodes composed at most


def _compose(node, leaf, x, memo: dict, budget: list):
    if node is leaf:
        return x
    if node in memo:
        return memo[node]
    if node.kind == "leaf" and node.attrs.get("role") == "const" and node.shape == ():
        return sp.Rational(float(np.asarray(node.attrs["value"])))  # the float torch holds, exactly
    if node.kind != "pointwise" or node.shape not in (leaf.shape, ()) or budget[0] <= 0:
        return None
    budget[0] -= 1
    args = []
    for a in node.args:
        got = _compose(a, leaf, x, memo, budget)
        if got is None:
            return None
        args.append(got)
    expr = _exact_constants(node.attrs["expr"]).xreplace(dict(zip(symbols_for(len(args)), args)))
    memo[node] = expr
    return expr


def _exact_constants(expr):
    """``expr`` with its Floats as the exact Rationals they hold.  SymPy folds Floats at their own
    precision: differentiating torch.sinc's ``sin(P x) * Q / x`` (P = fl(pi), Q = fl(1/pi)) gave
    ``P Q cos(P x)/x - Q sin(P x)/x**2`` with ``P Q`` rounded to 53 bits, whose terms then no
    longer cancel as they must near 0: the "exact" reference was 7e-12 (5e4 ulps) off at x = 1e-3."""
    floats = expr.atoms(sp.Float)
    return expr.xreplace({f: sp.Rational(f) for f in floats}) if floats else expr


def chain_form(graph, leaf, out):
    """(F as a SymPy form of the symbol ``x``, summed to a scalar?) or None (Note [Pointwise
    gradients on the op graph])."""
    summed = False
    if out.kind == "reduce" and out.attrs.get("op") == "sum" and out.args and out.args[0].shape == leaf.shape:
        if out.size != 1:
            return None
        out, summed = out.args[0], True
    if out.shape != leaf.shape:
        return None
    x = sp.Symbol("x", real=True)
    form = _compose(out, leaf, x, {}, [MAX_CHAIN])
    if form is None or not form.has(x):
        return None
    return form, summed


def _oracle(form, xs: np.ndarray, weights: list, scale: float):
    """An ``EntryOracle`` of the entries ``w_k,i F'(x_i)`` (stacked over the weights ``k``), or None
    where symengine cannot take the form."""
    import symengine as se

    from ..lower.exact import ExactEvaluator
    from ..lower.symengine_forms import to_symengine

    x, c = sp.Symbol("x", real=True), sp.Symbol("c", real=True)
    try:  # to_symengine, not se.sympify: symengine wraps a function it lacks (erfinv, the Bessel
        # functions) as one whose derivative is 0, and the conditioning lost its x d g/dx term
        g = to_symengine((c * sp.diff(form, x)).replace(elu_slope, sp.exp).replace(narrowed, lambda u: u))  # values
    except Exception:  # noqa: BLE001 - a form symengine cannot take: no oracle
        return None
    xv, cv = np.tile(xs, len(weights)), np.concatenate(weights)
    evaluator = ExactEvaluator([g], [se.Symbol("x"), se.Symbol("c")], [xv, cv])
    return EntryOracle(evaluator, lambda j: [((0, j), float(scale))])


def attach_pointwise_oracles(graph, refs, wrt, out, seeds, how, scale, leaves) -> None:
    """Give each reference whose gradient is pointwise in its input an ``EntryOracle``."""
    if how not in ("backward", "autograd.grad", "functional.vjp", "func.vjp", "random-vjp"):
        return
    for ref, name in zip(refs, wrt):
        leaf = graph.inputs.get(name)
        if leaf is None or getattr(ref, "kink", None) is not None and np.any(ref.kink):
            continue
        found = chain_form(graph, leaf, out)
        if found is None:
            continue
        form, summed = found
        xs = leaves[name].detach().double().cpu().numpy().ravel()
        cots = [np.full(xs.size, float(np.asarray(s).ravel()[0])) if summed else np.asarray(s, np.float64).ravel()
                for s in seeds]
        oracle = _oracle(form, xs, cots, scale)
        if oracle is not None:
            ref.oracle = oracle


def attach_tangent_oracle(graph, ref, out, directions: list, leaves) -> None:
    """Forward mode's counterpart: the output's tangent ``t_i F'(x_i)`` where the output is a
    pointwise chain of the one input the tangents move (Note [Pointwise gradients on the op graph]);
    a chain summed to a scalar mixes the entries and gets none."""
    moved = {n for d in directions for n, t in d.items() if n in graph.inputs and bool((t != 0).any())}
    if len(moved) != 1 or getattr(ref, "kink", None) is not None and np.any(ref.kink):
        return
    (name,) = moved
    found = chain_form(graph, graph.inputs[name], out)
    if found is None or found[1]:
        return
    xs = leaves[name].detach().double().cpu().numpy().ravel()
    tangents = [d[name].detach().double().cpu().numpy().ravel() for d in directions]
    oracle = _oracle(found[0], xs, tangents, 1.0)
    if oracle is not None:
        ref.oracle = oracle
