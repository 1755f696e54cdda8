"""Reverse- and forward-mode differentiation of matrix expressions.

The rules, one small function per node type, are in ``symgrad.matrix.rules`` (``VJP_RULES`` /
``JVP_RULES``; each rule's docstring states its identity).  The engine here walks the expression
as a DAG (equal subtrees are one node), so shared subexpressions are differentiated once.  Nothing
here calls SymPy's matrix ``.diff``: it returns 0 for ``log det X`` and raises on elementwise
functions of products (see /work/shared/research/sympy-matrix-calculus.md).  Scalar glue
(``log``, ``+``, ``*``, ``**`` of traces, determinants and 1x1 entries) is differentiated by
``sympy.diff`` on dummies, which is exact.
"""

from __future__ import annotations

import sympy as sp
from sympy import (
    HadamardPower,
    Identity,
    Inverse,
    MatMul,
    MatPow,
    MatrixExpr,
    MatrixSymbol,
    OneMatrix,
    ZeroMatrix,
)

from sympy.matrices.expressions.matexpr import MatrixElement

from symgrad.matrix.errors import UnsupportedOp
from symgrad.matrix.nodes import Elementwise
from symgrad.matrix.rules import JVP_RULES, VJP_RULES, _jvp_scalar, _vjp_scalar, is_matrix

__all__ = ["grad", "vjp", "jvp", "hvp", "children", "normalize"]

_CONSTANT = (Identity, ZeroMatrix, OneMatrix)


def children(node) -> tuple:
    """The differentiable children of ``node`` (structural args such as names are left out)."""
    if isinstance(node, (MatrixSymbol, sp.Symbol, sp.Number, *_CONSTANT)) or not node.args:
        return ()
    if isinstance(node, Elementwise):
        return (node.arg,)
    if isinstance(node, HadamardPower):
        return (node.args[0],)
    if isinstance(node, MatrixElement):
        return (node.parent,)
    return node.args


def _child_index(node, k):
    """Position in ``node.args`` of the k-th entry of ``children(node)``."""
    if isinstance(node, Elementwise):
        return 1
    return 0 if isinstance(node, (HadamardPower, MatrixElement)) else k


def normalize(expr):
    """Rewrite nodes the rules do not cover into ones they do: ``A**n -> A·A·…`` and
    ``A**-n -> A⁻¹·A⁻¹·…`` (SymPy folds ``X⁻¹X⁻¹`` into ``X**-2``)."""
    if not isinstance(expr, sp.Basic) or not expr.args or isinstance(expr, (MatrixSymbol, *_CONSTANT)):
        return expr
    if isinstance(expr, MatPow):
        base, n = normalize(expr.args[0]), expr.args[1]
        if not (n.is_Integer and n != 0):
            raise UnsupportedOp(f"matrix power {expr} with a non-integer exponent is not supported")
        factor = base if n > 0 else Inverse(base)
        return MatMul(*([factor] * abs(int(n))))
    if isinstance(expr, Elementwise):
        return Elementwise(expr.args[0], normalize(expr.arg), expr.args[2], expr.order)
    new = [normalize(a) for a in expr.args]
    if all(a is b for a, b in zip(new, expr.args)):
        return expr
    return expr.func(*new)


def _topo(root, depends):
    """Post-order of the nodes below ``root`` that depend on the variables."""
    order, seen, stack = [], set(), [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        if node in seen or not depends(node):
            continue
        seen.add(node)
        stack.append((node, True))
        stack.extend((c, False) for c in children(node))
    return order


def _depends_fn(variables):
    variables = set(variables)
    memo: dict = {}

    def depends(node):
        hit = memo.get(node)
        if hit is None:
            hit = node in variables or any(depends(c) for c in children(node))
            memo[node] = hit
        return hit

    return depends


def _rule_for(table, node):
    for cls in type(node).__mro__:
        if cls in table:
            return table[cls]
    if isinstance(node, MatrixExpr):
        raise UnsupportedOp(
            f"the matrix engine has no derivative rule for {type(node).__name__} (in {node}); "
            "express it with MatMul/MatAdd/Transpose/HadamardProduct/Elementwise or use engine='elementwise'"
        )
    return _vjp_scalar if table is VJP_RULES else _jvp_scalar


def vjp(expr, cotangent, variables) -> dict:
    """Reverse mode: ``{v: v̄}`` for each variable ``v`` (MatrixSymbol or scalar Symbol) given the
    cotangent of ``expr``.  Variables ``expr`` does not depend on get a zero of their shape."""
    expr = normalize(expr)
    depends = _depends_fn(variables)
    acc = {expr: cotangent}
    for node in reversed(_topo(expr, depends)):
        g = acc.pop(node, None)
        if g is None or node in variables:
            if g is not None:
                acc[node] = g
            continue
        rule = _rule_for(VJP_RULES, node)
        for k, child in enumerate(children(node)):
            if not depends(child):
                continue
            gc = rule(node, g, _child_index(node, k))
            if gc is not None:
                acc[child] = acc[child] + gc if child in acc else gc
    return {v: acc.get(v, _zero_like(v)) for v in variables}


def _zero_like(v):
    return ZeroMatrix(*v.shape) if is_matrix(v) else sp.Integer(0)


def _seed(f):
    if is_matrix(f):
        if f.shape != (1, 1):
            raise ValueError(f"grad needs a scalar or 1x1 expression; got shape {f.shape}. Use vjp or jvp.")
        return Identity(1)
    return sp.Integer(1)


def grad(f, X):
    """∇_X f as a matrix expression G with ``G[i, j] = ∂f/∂X[i, j]`` (f scalar or 1x1)."""
    return vjp(f, _seed(f), [X])[X]


def jvp(F, tangents: dict):
    """Forward mode: the directional derivative of ``F`` along ``tangents`` (``{X: V}``)."""
    F = normalize(F)
    depends = _depends_fn(tangents)
    tan = dict(tangents)
    for node in _topo(F, depends):
        if node in tan:
            continue
        rule = _rule_for(JVP_RULES, node)
        kids = children(node)
        ts = [None] * len(node.args)
        for k, child in enumerate(kids):
            ts[_child_index(node, k)] = tan.get(child)
        tan[node] = rule(node, ts)
    return tan.get(F, _zero_like(F))


def hvp(f, X, V):
    """Hessian-vector product: d/dt ∇_X f(X + tV) at t = 0 (forward over reverse)."""
    return jvp(grad(f, X), {X: V})
