"""The independent check: explode a matrix expression into SymPy scalars at small concrete
shapes, differentiate entry by entry with ``sympy.diff`` and compare with the matrix form.

Nothing here uses the engine's rules: ``explode`` is a second, entrywise implementation of every
node's *value* (``Elementwise`` of order 0 is the op row's SymPy form, not its hand-written
derivative), and the derivative comes from ``sympy.diff`` alone -- or, for the network
cross-check (``exploded_grad_values`` in ``explode_se``), from symengine's ``diff`` of the same
exploded scalar (Note [Exploded derivatives in symengine]).  A matrix-form result that
disagrees is never returned as the truth: ``check_*`` return a ``CrossCheck`` record whose
``ok`` is False, and ``assert_ok`` raises ``CrossCheckError`` with an ``assert_close``-style message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import sympy as sp
from sympy import (
    Determinant,
    HadamardPower,
    HadamardProduct,
    Identity,
    Inverse,
    MatAdd,
    MatMul,
    MatPow,
    MatrixSymbol,
    OneMatrix,
    Trace,
    Transpose,
    ZeroMatrix,
)
from sympy.matrices.expressions.matexpr import MatrixElement

from symgrad.matrix.errors import CrossCheckError
from symgrad.matrix.evaluate import evaluate
from symgrad.matrix.nodes import Elementwise, LogSoftmaxRows, SoftmaxRows, scalar_function

__all__ = [
    "compare_values",
    "explode",
    "entries",
    "exploded_grad",
    "exploded_jvp",
    "CrossCheck",
    "compare",
    "check_grad",
    "check_jvp",
    "check_hvp",
    "random_values",
    "concrete",
]


def entries(X: MatrixSymbol) -> sp.ImmutableMatrix:
    """The matrix of scalar symbols ``X_i_j`` standing for the entries of ``X`` (concrete shape)."""
    m, n = (int(d) for d in X.shape)
    return sp.ImmutableMatrix(m, n, lambda i, j: sp.Symbol(f"{X.name}_{i}_{j}", real=True))


def concrete(expr, dims: dict | None):
    """``expr`` with dimension symbols replaced by integers."""
    return expr.xreplace({k: sp.Integer(v) for k, v in dims.items()}) if dims else expr


def explode(expr, memo: dict | None = None):
    """``expr`` as a ``sympy.ImmutableMatrix`` of scalar expressions (a scalar stays scalar)."""
    memo = {} if memo is None else memo
    hit = memo.get(expr)
    if hit is None:
        hit = _explode(expr, memo)
        memo[expr] = hit
    return hit


# Note [Opaque elementwise functions]
# Nesting the op rows' Piecewise forms (celu(W celu(W celu(Wx)))) makes SymPy evaluate conditions
# on Piecewise arguments, which takes minutes.  Exploded entries therefore apply an undefined
# function ``sg_<op>_<k>`` whose derivative is ``sg_<op>_<k+1>``; ``sympy.diff`` does the chain
# rule, and only at evaluation is ``sg_<op>_<k>`` given its value: the k-th ``sympy.diff`` of the
# row's SymPy form (never the row's hand-written derivative).


@lru_cache(maxsize=None)
def opaque(name: str, params, order: int):
    """The undefined SymPy function standing for d^order/dx^order of row ``name``."""

    def fdiff(self, argindex=1):
        return opaque(name, params, order + 1)(self.args[0])

    suffix = abs(hash((name, params))) % 10**8
    return type(f"sg_{name}_{order}_{suffix}", (sp.Function,), {"nargs": 1, "fdiff": fdiff, "_sg_key": (name, params, order)})


@lru_cache(maxsize=None)
def _opaque_value(name: str, params, order: int):
    t = sp.Symbol("t", real=True)
    form = sp.diff(scalar_function(name, params, 0)(t), t, order)
    return sp.lambdify(t, form, "math")


def _implementations(exprs) -> dict:
    impl = {}
    for e in exprs:
        for f in e.atoms(sp.Function):
            key = getattr(type(f), "_sg_key", None)
            if key is not None:
                impl[type(f).__name__] = _opaque_value(*key)
    return impl


def _mat(e):
    return isinstance(e, sp.MatrixBase)


def _explode(e, memo):
    x = lambda a: explode(a, memo)  # noqa: E731
    if isinstance(e, MatrixSymbol):
        return entries(e)
    if isinstance(e, MatMul):
        out = sp.Integer(1)
        for a in e.args:
            v = x(a)
            out = out * v if not (_mat(out) and _mat(v)) else out * v
        return out
    if isinstance(e, MatAdd):
        return sum((x(a) for a in e.args[1:]), x(e.args[0]))
    if isinstance(e, Transpose):
        return x(e.arg).T
    if isinstance(e, HadamardProduct):
        out = x(e.args[0])
        for a in e.args[1:]:
            out = out.multiply_elementwise(x(a))
        return out
    if isinstance(e, HadamardPower):
        p = x(e.args[1])
        return x(e.args[0]).applyfunc(lambda v: v**p)
    if isinstance(e, Elementwise):
        return x(e.arg).applyfunc(opaque(e.name, e.args[2], e.order))
    if isinstance(e, (SoftmaxRows, LogSoftmaxRows)):
        Z = x(e.arg)
        m, n = Z.shape
        out = []
        for i in range(m):
            total = sp.Add(*(sp.exp(Z[i, k]) for k in range(n)))
            if isinstance(e, SoftmaxRows):
                out.append([sp.exp(Z[i, j]) / total for j in range(n)])
            else:
                out.append([Z[i, j] - sp.log(total) for j in range(n)])
        return sp.ImmutableMatrix(out)
    if isinstance(e, Inverse):
        return x(e.arg).inv()
    if isinstance(e, MatPow):
        return x(e.args[0]) ** int(e.args[1])
    if isinstance(e, Trace):
        return x(e.arg).trace()
    if isinstance(e, Determinant):
        return x(e.arg).det(method="berkowitz")
    if isinstance(e, MatrixElement):
        return x(e.parent)[int(e.i), int(e.j)]
    if isinstance(e, Identity):
        return sp.ImmutableMatrix(sp.eye(int(e.shape[0])))
    if isinstance(e, ZeroMatrix):
        return sp.ImmutableMatrix(sp.zeros(int(e.shape[0]), int(e.shape[1])))
    if isinstance(e, OneMatrix):
        return sp.ImmutableMatrix(sp.ones(int(e.shape[0]), int(e.shape[1])))
    if getattr(e, "is_Matrix", False):
        raise TypeError(f"explode: no entrywise form for {type(e).__name__}")
    if not e.args:
        return e
    return e.func(*(x(a) for a in e.args))


def _scalar(v):
    return v[0, 0] if _mat(v) else v


def exploded_grad(f, X: MatrixSymbol) -> sp.ImmutableMatrix:
    """``[∂f/∂X[i,j]]`` by ``sympy.diff`` of the exploded scalar ``f`` (concrete shapes)."""
    F = _scalar(explode(f))
    return entries(X).applyfunc(lambda s: sp.diff(F, s))


def exploded_jvp(F, tangents: dict):
    """``Σ ∂F/∂X[i,j] V[i,j]`` entrywise, with V's entries as the symbols of the MatrixSymbol V."""
    Fx = explode(F)
    def d(v):
        total = sp.Integer(0)
        for X, V in tangents.items():
            for s, t in zip(entries(X), entries(V)):
                total += sp.diff(v, s) * t
        return total

    return Fx.applyfunc(d) if _mat(Fx) else d(Fx)


@dataclass
class CrossCheck:
    """The outcome of comparing a matrix-form result with the exploded elementwise derivative."""

    ok: bool
    max_abs: float
    max_rel: float
    worst_index: tuple = ()
    mismatched: int = 0
    total: int = 0
    label: str = ""
    details: list = field(default_factory=list)

    def message(self, rtol, atol) -> str:
        return (
            f"{self.label}: matrix form disagrees with the exact elementwise derivative!\n"
            f"Mismatched elements: {self.mismatched} / {self.total} ({100.0 * self.mismatched / max(self.total, 1):.1f}%)\n"
            f"Greatest absolute difference: {self.max_abs:.3g} at index {self.worst_index} (up to {atol} allowed)\n"
            f"Greatest relative difference: {self.max_rel:.3g} (up to {rtol} allowed)"
        )

    def assert_ok(self, rtol=1e-9, atol=1e-11):
        if not self.ok:
            raise CrossCheckError(self.message(rtol, atol))
        return self


def random_values(symbols, dims: dict | None = None, rng=None, sampler=None) -> dict:
    """Random float64 values for ``symbols`` (standard normal unless ``sampler(name, shape, rng)``
    returns an array)."""
    rng = np.random.default_rng(rng)
    out = {}
    for s in sorted(symbols, key=lambda s: s.name):
        shape = tuple(int(sp.sympify(d).xreplace({k: sp.Integer(v) for k, v in (dims or {}).items()})) for d in s.shape)
        v = sampler(s.name, shape, rng) if sampler else None
        out[s.name] = rng.standard_normal(shape) if v is None else np.asarray(v, dtype=np.float64)
    return out


def _point(values: dict, syms) -> list[float]:
    """The value of each entry symbol ``X_i_j`` (values are 2-D; a 1-D value is a column)."""
    out = []
    for s in syms:
        name, i, j = str(s).rsplit("_", 2)
        arr = np.asarray(values[name], dtype=np.float64)
        arr = arr.reshape(-1, 1) if arr.ndim == 1 else np.atleast_2d(arr)
        out.append(float(arr[int(i), int(j)]))
    return out


def compare(matrix_form, exploded, values: dict, *, label="", rtol=1e-9, atol=1e-11, defs=None) -> CrossCheck:
    """Evaluate the matrix form with numpy and the exploded form with ``lambdify`` at ``values``
    and compare them entry by entry."""
    got = np.atleast_2d(np.asarray(evaluate(matrix_form, values, defs), dtype=np.float64))
    ex = exploded if _mat(exploded) else sp.ImmutableMatrix([[exploded]])
    syms = sorted(set().union(*(c.free_symbols for c in ex)) if len(ex) else set(), key=str)
    # scalar evaluation with python's math: Piecewise prints as conditional expressions
    fn = sp.lambdify(syms, ex.tolist(), [_implementations(ex), "math"], cse=True)
    want = np.array(fn(*_point(values, syms)), dtype=np.float64).reshape(ex.shape)
    return compare_values(got, want, label=label, rtol=rtol, atol=atol)


def compare_values(got, want, *, label="", rtol=1e-9, atol=1e-11) -> CrossCheck:
    """Entry-by-entry comparison of the matrix form's values ``got`` with the exploded ``want``."""
    want = np.asarray(want, dtype=np.float64)
    got = np.atleast_2d(np.asarray(got, dtype=np.float64))
    try:
        got = np.broadcast_to(got, want.shape)
    except ValueError:  # a wrong form can have the wrong shape
        return CrossCheck(ok=False, max_abs=math.inf, max_rel=math.inf, mismatched=int(want.size), total=int(want.size),
                          label=f"{label} (the matrix form has shape {got.shape}, the derivative {want.shape})")
    diff = np.abs(got - want)
    bad = ~np.isclose(got, want, rtol=rtol, atol=atol) | (np.isnan(got) != np.isnan(want))
    idx = np.unravel_index(np.nanargmax(diff), diff.shape) if diff.size and not np.all(np.isnan(diff)) else ()
    rel = diff / np.maximum(np.abs(want), 1e-300)
    return CrossCheck(
        ok=not bad.any(),
        max_abs=float(np.nanmax(diff)) if diff.size else 0.0,
        max_rel=float(np.nanmax(rel)) if rel.size else 0.0,
        worst_index=tuple(int(i) for i in idx),
        mismatched=int(bad.sum()),
        total=int(bad.size),
        label=label,
    )


def check_grad(f, X, values: dict, *, dims=None, matrix_form=None, defs=None, rtol=1e-9, atol=1e-11) -> CrossCheck:
    """Cross-check ``∇_X f`` (``matrix_form``, default: the engine's ``grad``) against the exploded
    derivative at ``values``; ``dims`` makes symbolic dimensions concrete first."""
    from symgrad.matrix.diff import grad

    form = grad(f, X) if matrix_form is None else matrix_form
    fc, Xc = concrete(f, dims), concrete(X, dims)
    return compare(concrete(form, dims), exploded_grad(fc, Xc), values, label=f"grad wrt {X}", rtol=rtol, atol=atol, defs=defs)


def check_jvp(F, tangents: dict, values: dict, *, dims=None, rtol=1e-9, atol=1e-11) -> CrossCheck:
    """Cross-check the engine's forward mode along ``tangents`` (``{X: V}``, V MatrixSymbols)."""
    from symgrad.matrix.diff import jvp

    form = jvp(F, tangents)
    ex = exploded_jvp(concrete(F, dims), {concrete(k, dims): concrete(v, dims) for k, v in tangents.items()})
    return compare(concrete(form, dims), ex, values, label="jvp", rtol=rtol, atol=atol)


def check_hvp(f, X, V, values: dict, *, dims=None, rtol=1e-8, atol=1e-10) -> CrossCheck:
    """Cross-check the Hessian-vector product against ``Σ_kl ∂²f/∂x_ij∂x_kl V_kl`` entrywise."""
    from symgrad.matrix.diff import hvp

    form = hvp(f, X, V)
    fc, Xc, Vc = concrete(f, dims), concrete(X, dims), concrete(V, dims)
    g = exploded_grad(fc, Xc)
    ex = g.applyfunc(lambda gi: sum((sp.diff(gi, s) * t for s, t in zip(entries(Xc), entries(Vc))), sp.Integer(0)))
    return compare(concrete(form, dims), ex, values, label=f"hvp wrt {X}", rtol=rtol, atol=atol)
