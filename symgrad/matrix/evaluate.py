"""Numpy evaluation of matrix expressions, with shared subtrees computed once.

The cost is that of the matrix operations themselves: a node is evaluated once however many
times it occurs (memo keyed by the SymPy node, whose hash is cached), so evaluation never
expands the tree into entries.  Dimension symbols (``N``, ``d1`` …) are bound from the shapes of
the arrays given for the matrix symbols.

Evaluation is in float64 by default; ``Evaluator(..., dtype=np.float32)`` evaluates the same
expression with float32 arrays throughout (the closed form "in the checked dtype", whose
difference from the float64 value is what correct float32 arithmetic gets wrong).
"""

from __future__ import annotations

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

from symgrad.matrix.nodes import Elementwise, LogSoftmaxRows, SoftmaxRows, scalar_function

__all__ = ["evaluate", "Evaluator", "bind_dims", "as_matrix_value", "matrix_symbols", "numpy_modules"]


def as_matrix_value(symbol: MatrixSymbol, value, dtype=np.float64) -> np.ndarray:
    """``value`` as a float64 (or ``dtype``) array of the symbol's (row, col) layout; a 1-D array
    is a column when the symbol is a column, a row when it is a row."""
    a = np.asarray(value, dtype=dtype)
    if a.ndim == 2:
        return a
    if a.ndim == 0:
        return a.reshape(1, 1)
    if a.ndim == 1:
        return a.reshape(1, -1) if symbol.shape[0] == 1 and symbol.shape[1] != 1 else a.reshape(-1, 1)
    raise ValueError(f"matrix symbol {symbol} got an array of shape {a.shape}; matrices are 2-D")


def bind_dims(symbols, values: dict) -> dict:
    """``{dim symbol: int}`` from the shapes of the arrays given for ``symbols``; raises on a clash."""
    dims: dict = {}
    for s in symbols:
        if s.name not in values:
            continue
        arr = as_matrix_value(s, values[s.name])
        for sym_dim, n in zip(s.shape, arr.shape):
            if isinstance(sym_dim, sp.Symbol):
                if dims.setdefault(sym_dim, n) != n:
                    raise ValueError(f"dimension {sym_dim} is {dims[sym_dim]} elsewhere but {n} for {s.name}")
            elif int(sym_dim) != n:
                raise ValueError(f"{s.name} has shape {s.shape} but its value has shape {arr.shape}")
    return dims


def _erf_module() -> dict:
    """numpy has no erf: scipy's if installed, else math.erf vectorised."""
    try:
        from scipy.special import erf
    except ImportError:  # pragma: no cover - depends on the environment
        import math

        erf = np.vectorize(math.erf, otypes=[np.float64])
    return {"erf": erf}


def numpy_modules(*exprs) -> list:
    """lambdify's modules for ``exprs``: numpy, and an erf only where one is used.  A first call
    pays for every import here: scipy.special (for erf) is imported only when an erf is met, and
    numpy is given as the module object, whose namespace is its ``__dict__`` (the string "numpy"
    makes lambdify run ``from numpy import *``, which loads numpy's lazy submodules, f2py and all)."""
    if any(isinstance(e, sp.Basic) and e.has(sp.erf, sp.erfc) for e in exprs):
        return [_erf_module(), np]
    return [np]


@lru_cache(maxsize=None)
def _numpy_fn(name, params, order):
    x = sp.Dummy("x", real=True)
    form = scalar_function(name, params, order)(x)
    return sp.lambdify(x, form, numpy_modules(form))


@lru_cache(maxsize=None)
def _scalar_fn(func, nargs):
    dummies = sp.symbols(f"a0:{nargs}", cls=sp.Dummy)
    form = func(*dummies)
    return sp.lambdify(dummies, form, numpy_modules(form))


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _log_softmax(z):
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


class Evaluator:
    """Evaluates expressions against one set of values; the memo is shared between calls, so the
    forward pass is computed once for all gradients.  ``overrides`` replaces a node's value."""

    def __init__(self, values: dict, defs: dict | None = None, overrides: dict | None = None, symbols=(),
                 dtype=np.float64):
        self.dtype = np.dtype(dtype).type
        self.values = dict(values)
        self.memo: dict = dict(overrides or {})
        self.dims: dict = {}
        self.bind(symbols)
        for sym, expr in (defs or {}).items():
            if sym not in self.memo:
                self.memo[sym] = self(expr)

    def bind(self, symbols):
        self.dims.update(bind_dims(symbols, self.values))

    def _dim(self, d):
        d = sp.sympify(d)
        return int(d.xreplace(self.dims)) if d.free_symbols else int(d)

    def __call__(self, expr):
        hit = self.memo.get(expr)
        if hit is None:
            hit = self._eval(expr)
            self.memo[expr] = hit
        return hit

    def _eval(self, e):
        if isinstance(e, MatrixSymbol):
            if e.name not in self.values:
                raise KeyError(f"no value for matrix symbol {e.name!r} (shape {e.shape})")
            a = as_matrix_value(e, self.values[e.name], self.dtype)
            self.bind([e])
            return a
        if isinstance(e, MatMul):
            coeff = 1.0
            mats = []
            for a in e.args:
                if getattr(a, "is_Matrix", False):
                    if not isinstance(a, Identity):
                        mats.append(self(a))
                else:
                    coeff = coeff * self(a)
            if not mats:
                return coeff * np.eye(self._dim(e.shape[0]), dtype=self.dtype)
            out = mats[0] if len(mats) == 1 else (mats[0] @ mats[1] if len(mats) == 2 else np.linalg.multi_dot(mats))
            return coeff * out
        if isinstance(e, MatAdd):
            out = self(e.args[0])
            for a in e.args[1:]:
                out = out + self(a)
            return out
        if isinstance(e, Transpose):
            return self(e.arg).T
        if isinstance(e, HadamardProduct):
            out = self(e.args[0])
            for a in e.args[1:]:
                out = out * self(a)
            return out
        if isinstance(e, HadamardPower):
            return self(e.args[0]) ** float(self(e.args[1]))
        if isinstance(e, Elementwise):
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                out = _numpy_fn(e.args[0], e.args[2], e.order)(self(e.arg))
            return np.broadcast_to(np.asarray(out, dtype=self.dtype), self(e.arg).shape)
        if isinstance(e, SoftmaxRows):
            return _softmax(self(e.arg))
        if isinstance(e, LogSoftmaxRows):
            return _log_softmax(self(e.arg))
        if isinstance(e, Inverse):
            return np.linalg.inv(self(e.arg))
        if isinstance(e, MatPow):
            return np.linalg.matrix_power(self(e.args[0]), int(e.args[1]))
        if isinstance(e, Trace):
            return float(np.trace(self(e.arg)))
        if isinstance(e, Determinant):
            return float(np.linalg.det(self(e.arg)))
        if isinstance(e, MatrixElement):
            return float(self(e.parent)[int(e.i), int(e.j)])
        if isinstance(e, Identity):
            return np.eye(self._dim(e.shape[0]), dtype=self.dtype)
        if isinstance(e, ZeroMatrix):
            return np.zeros((self._dim(e.shape[0]), self._dim(e.shape[1])), dtype=self.dtype)
        if isinstance(e, OneMatrix):
            return np.ones((self._dim(e.shape[0]), self._dim(e.shape[1])), dtype=self.dtype)
        if isinstance(e, sp.Number):
            return float(e)
        if isinstance(e, sp.Symbol):
            if e in self.dims:
                return float(self.dims[e])
            if e.name in self.values:
                return float(self.values[e.name])
            raise KeyError(f"no value for symbol {e.name!r}")
        if isinstance(e, sp.Add):
            return sum(self(a) for a in e.args)
        if isinstance(e, sp.Mul):
            out = 1.0
            for a in e.args:
                out = out * self(a)
            return out
        if isinstance(e, sp.Pow):
            return self(e.base) ** self(e.exp)
        if isinstance(e, sp.Expr) and e.args:
            return float(_scalar_fn(e.func, len(e.args))(*(self(a) for a in e.args)))
        if e.is_number:
            return float(e)
        raise TypeError(f"cannot evaluate {type(e).__name__}: {e}")


def matrix_symbols(*exprs) -> set:
    """Every MatrixSymbol in ``exprs``."""
    out: set = set()
    for e in exprs:
        if isinstance(e, sp.Basic):
            out |= e.atoms(MatrixSymbol)
    return out


def evaluate(expr, values: dict, defs: dict | None = None) -> np.ndarray | float:
    """The value of ``expr`` (float64 array, or float for a scalar) at ``values``
    (``{symbol name: array}``).  ``defs`` (``{MatrixSymbol: expr}``, in order) are evaluated first."""
    symbols = matrix_symbols(expr, *(defs or {}).values())
    return Evaluator(values, defs, symbols=symbols)(expr)
