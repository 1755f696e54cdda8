"""A SymPy matrix expression as a torch function, so that it enters the op graph like torch code.

# Note [Matrix expressions into the op graph]
A forward given as a SymPy matrix expression of ``MatrixSymbol``s named after the inputs
(``a.T * X * b``, ``(X * W).applyfunc(tanh)``, ``Trace(X.inv())``) is checked by the exploded
engine while its entries fit the memory budget: that is where its matrix-notation derivative is
shown, cross-checked entry by entry.  Beyond the budget it used to be refused.  It is now written
as the torch function computing the same thing -- one torch op per matrix node, by a walk over the
expression tree (never a printed string) -- and that function is the reference forward the op
graph traces (``torch.export``/``make_fx`` into core ATen ops), exactly as a reference forward
written in torch is: one op graph, whichever way the forward came in.  With no torch function
(``symgrad.check(None, inputs, symbolic=expr)``) the same function is also the forward autograd
runs (``standalone_reference``): at n = 60, ``(a.T * X * b)[0, 0]**2`` took 174 s exploded.  Scalar parts (coefficients,
the body of an elementwise function) go through ``symgrad.lower.torch``'s table; a node outside
these raises ``UnsupportedOp`` naming it.
"""

from __future__ import annotations

from typing import Callable, Mapping

import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.matexpr import MatrixElement

from ..errors import UnsupportedOp
from ..lower.batched import MANY_ENTRIES, batched, entry_count
from ..lower.torch import walker
from .nodes import Elementwise, LogSoftmaxRows, SoftmaxRows

__all__ = ["matrix_forward", "is_matrix_expression", "torch_reference", "standalone_reference"]


def is_matrix_expression(symbolic) -> bool:
    """A SymPy expression built from ``MatrixSymbol``s (not an explicit ``Matrix`` of entries)."""
    return isinstance(symbolic, sp.Basic) and not isinstance(symbolic, sp.MatrixBase) and bool(
        symbolic.atoms(sp.MatrixSymbol))


def torch_reference(fn, symbolic, named: dict, engine: str):
    """The torch function of a SymPy matrix expression given as ``symbolic=``, shaped as ``fn``'s
    output, for the op graph to trace; None where it does not apply (no torch function, the exploded
    engine asked for, not a matrix expression, or a forward that does not run)."""
    if fn is None or engine == "elementwise" or not is_matrix_expression(symbolic):
        return None
    import torch

    try:
        with torch.no_grad():
            out = fn(*(t.detach() for t in named.values()))
    except Exception:  # noqa: BLE001 - the check itself reports a forward that raises
        return None
    if not isinstance(out, torch.Tensor):
        return None
    return matrix_forward(symbolic, list(named), tuple(out.shape))


def standalone_reference(symbolic, named: dict, engine: str):
    """The torch function of a SymPy matrix expression given with no torch function (``fn=None``),
    shaped as SymPy's result; it is then both the forward autograd runs and the one the op graph
    traces.  None where it does not apply or does not run on the inputs (the exploded engine then
    takes the expression as before)."""
    if engine == "elementwise" or not is_matrix_expression(symbolic):
        return None
    import torch

    shape = tuple(int(d) for d in symbolic.shape) if isinstance(symbolic, sp.MatrixExpr) else ()
    try:
        forward = matrix_forward(symbolic, list(named), shape)
        with torch.no_grad():
            forward(*(t.detach() for t in named.values()))
    except Exception:  # noqa: BLE001 - the exploded engine reports what it cannot read
        return None
    return forward


def matrix_forward(expr: sp.Basic, names: list, out_shape: tuple) -> Callable:
    """The torch function of the inputs ``names`` (in order) computing ``expr``, its result shaped
    ``out_shape`` (the torch function's own output: SymPy's (n, 1) stands for torch's (n,))."""
    unknown = sorted(s.name for s in expr.atoms(sp.MatrixSymbol) if s.name not in names)
    if unknown:
        raise UnsupportedOp(f"the SymPy forward uses MatrixSymbol(s) {', '.join(unknown)}, which are not inputs "
                            f"({', '.join(names)}); name each MatrixSymbol after its input")

    def forward(*tensors):
        env = dict(zip(names, tensors))
        return _lower(expr, env, tensors[0].dtype).reshape(out_shape)

    return forward


def _lower(expr, env: Mapping[str, object], dtype):
    import torch

    memo: dict = {}

    walk = walker({}, dtype, fallback=lambda e: matrix(e))

    def scalar_part(e):  # Note [Entries written out]: a sum over many entries in a few batched ops
        return batched(e, matrix, walk) if entry_count(e) > MANY_ENTRIES else walk(e)

    def matrix(e):
        if e in memo:
            return memo[e]
        if isinstance(e, sp.MatrixSymbol):
            t = env[e.name]
            r = t.reshape(tuple(int(d) for d in e.shape)) if t.numel() == int(e.shape[0] * e.shape[1]) else t
        elif isinstance(e, sp.MatAdd):
            r = matrix(e.args[0])
            for a in e.args[1:]:
                r = r + matrix(a)
        elif isinstance(e, sp.MatMul):
            coeff, mats = e.as_coeff_matrices()
            r = matrix(mats[0])
            for m in mats[1:]:
                r = r @ matrix(m)
            if coeff != 1:
                r = scalar_part(coeff) * r
        elif isinstance(e, sp.Transpose):
            r = matrix(e.arg).mT
        elif isinstance(e, sp.Inverse):
            r = torch.linalg.inv(matrix(e.arg))
        elif isinstance(e, sp.MatPow) and e.exp.is_Integer:
            base, k = matrix(e.base), int(e.exp)
            r = torch.linalg.matrix_power(base if k >= 0 else torch.linalg.inv(base), abs(k))
        elif isinstance(e, sp.HadamardProduct):
            r = matrix(e.args[0])
            for a in e.args[1:]:
                r = r * matrix(a)
        elif isinstance(e, sp.HadamardPower):
            r = matrix(e.base) ** scalar_part(e.exp)
        elif isinstance(e, sp.Trace):
            r = torch.trace(matrix(e.arg))
        elif isinstance(e, sp.Determinant):
            r = torch.linalg.det(matrix(e.arg))
        elif isinstance(e, sp.Identity):
            r = torch.eye(int(e.shape[0]), dtype=dtype)
        elif isinstance(e, sp.ZeroMatrix):
            r = torch.zeros(tuple(int(d) for d in e.shape), dtype=dtype)
        elif isinstance(e, sp.OneMatrix):
            r = torch.ones(tuple(int(d) for d in e.shape), dtype=dtype)
        elif isinstance(e, Elementwise) and e.order == 0:
            r = e.row.torch_fn(**e.params)(matrix(e.arg))
        elif isinstance(e, SoftmaxRows):
            r = torch.softmax(matrix(e.arg), dim=1)
        elif isinstance(e, LogSoftmaxRows):
            r = torch.log_softmax(matrix(e.arg), dim=1)
        elif isinstance(e, ElementwiseApplyFunction):
            var, body = e.function.variables, e.function.expr
            if len(var) != 1:
                raise UnsupportedOp(f"applyfunc with {len(var)} variables; symgrad lowers one-variable functions")
            r = walker({var[0].name: matrix(e.expr)}, dtype, fallback=matrix)(body)
        elif isinstance(e, MatrixElement):
            r = matrix(e.parent)[int(e.i), int(e.j)]
        elif isinstance(e, sp.MatrixExpr):
            raise UnsupportedOp(f"the SymPy forward uses {type(e).__name__} ({sp.sstr(e)[:60]}), which symgrad "
                                "cannot write as torch ops; pass your own torch function as symbolic=")
        else:
            r = scalar_part(e)
        memo[e] = r
        return r

    return matrix(expr)
