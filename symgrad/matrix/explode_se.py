"""The exploded derivatives of a scalar by symengine's ``diff``, evaluated in python floats: the
network cross-check's fast path (``exploded_grad_values``, Note [Exploded derivatives in
symengine]), beside ``symgrad.matrix.explode``'s ``sympy.diff`` of the same exploded scalar.
"""

from __future__ import annotations

import math

import numpy as np
import sympy as sp

from symgrad.matrix.explode import _opaque_value, _point, _scalar, entries, explode

__all__ = ["exploded_grad_values"]


# Note [Exploded derivatives in symengine]
# The network cross-check differentiates one exploded scalar (the loss at the tiny size) with
# respect to every entry of every parameter.  ``sympy.diff`` and ``lambdify`` of the result took
# most of a first check; symengine (SymPy's C++ core) differentiates the same exploded expression
# in milliseconds.  The opaque functions (Note [Opaque elementwise functions] in explode.py) become
# symengine's undefined functions, whose derivatives symengine writes as ``Derivative(f(x), x)`` or
# ``Subs(Derivative(f(ξ), ξ), ξ, u)``: the chain rule is symengine's.  The result is evaluated by a
# small memoised interpreter (``_SeValues``) in python floats, every ``f^(k)`` being the k-th
# ``sympy.diff`` of the op row's SymPy form, as before.  Anything it does not know raises
# ``_NotSymengine`` and the check goes the SymPy way instead.


class _NotSymengine(Exception):
    """The exploded expression holds something the symengine path does not handle."""


def _to_symengine(e, memo: dict, funcs: dict):
    """The exploded SymPy scalar ``e`` as a symengine expression; ``funcs`` collects the opaque
    functions met (symengine name -> ``_sg_key``)."""
    import symengine as se

    hit = memo.get(e)
    if hit is not None:
        return hit
    if isinstance(e, sp.Symbol):
        out = se.Symbol(e.name)
    elif e.is_Integer:
        out = se.Integer(int(e))
    elif e.is_Rational:
        out = se.Rational(int(e.p), int(e.q))
    elif e.is_Float:
        out = se.RealDouble(float(e))
    elif e is sp.E:
        out = se.E
    elif e is sp.pi:
        out = se.pi
    elif isinstance(e, (sp.Add, sp.Mul, sp.Pow)):
        args = [_to_symengine(a, memo, funcs) for a in e.args]
        out = se.Add(*args) if isinstance(e, sp.Add) else se.Mul(*args) if isinstance(e, sp.Mul) else se.Pow(*args)
    elif getattr(type(e), "_sg_key", None) is not None and len(e.args) == 1:
        name = type(e).__name__
        funcs[name] = type(e)._sg_key
        out = se.Function(name)(_to_symengine(e.args[0], memo, funcs))
    elif isinstance(e, (sp.exp, sp.log)) and len(e.args) == 1:
        arg = _to_symengine(e.args[0], memo, funcs)
        out = se.exp(arg) if isinstance(e, sp.exp) else se.log(arg)
    else:
        raise _NotSymengine(type(e).__name__)
    memo[e] = out
    return out


class _SeValues:
    """Float values of symengine expressions at ``point`` (symbol name -> float), memoised."""

    def __init__(self, point: dict, funcs: dict):
        self.point = point
        self.funcs = funcs
        self.memo: dict = {}

    def __call__(self, e) -> float:
        hit = self.memo.get(e)
        if hit is None:
            hit = self._eval(e)
            self.memo[e] = hit
        return hit

    def _opaque(self, name: str, extra: int):
        if name not in self.funcs:
            raise _NotSymengine(f"function {name}")
        fname, params, order = self.funcs[name]
        return _opaque_value(fname, params, order + extra)

    def _eval(self, e) -> float:
        import math

        kind = type(e).__name__
        args = e.args
        if kind == "Symbol":
            if e.name not in self.point:
                raise _NotSymengine(f"symbol {e.name}")
            return self.point[e.name]
        if e.is_Number:
            return float(e)
        if kind == "Exp1":
            return math.e
        if kind == "Pi":
            return math.pi
        if kind == "Add":
            return math.fsum(self(a) for a in args)
        if kind == "Mul":
            out = 1.0
            for a in args:
                out *= self(a)
            return out
        if kind == "Pow":
            base, ex = args
            if type(base).__name__ == "Exp1":
                return _safe(math.exp, self(ex))
            b, x = self(base), self(ex)
            try:
                out = b**x
            except ZeroDivisionError:
                return math.inf
            except OverflowError:
                return math.inf
            return out if isinstance(out, float) else (float(out) if not isinstance(out, complex) else math.nan)
        if kind == "log":
            return _safe(math.log, self(args[0]))
        if kind == "FunctionSymbol":
            if len(args) != 1:
                raise _NotSymengine(kind)
            return _safe(self._opaque(e.get_name(), 0), self(args[0]))
        if kind == "Derivative":  # Derivative(f(x), x, …, x): f^(k) at x
            f, variables = args[0], args[1:]
            if type(f).__name__ != "FunctionSymbol" or len(f.args) != 1 or any(v != f.args[0] for v in variables):
                raise _NotSymengine(kind)
            return _safe(self._opaque(f.get_name(), len(variables)), self(f.args[0]))
        if kind == "Subs":  # Subs(Derivative(f(ξ), ξ, …), ξ, u): f^(k) at u
            if len(args) != 3 or type(args[0]).__name__ != "Derivative":
                raise _NotSymengine(kind)
            d, xi, u = args
            f, variables = d.args[0], d.args[1:]
            if type(f).__name__ != "FunctionSymbol" or f.args != (xi,) or any(v != xi for v in variables):
                raise _NotSymengine(kind)
            return _safe(self._opaque(f.get_name(), len(variables)), self(u))
        raise _NotSymengine(kind)


def _safe(fn, x: float) -> float:
    try:
        return float(fn(x))
    except (ValueError, OverflowError, ZeroDivisionError):
        return math.nan


def exploded_grad_values(f, wrt: dict, values: dict) -> dict:
    """``{name: [∂f/∂X[i,j]] evaluated at values}`` for each ``name -> X`` (concrete
    MatrixSymbols), by symengine's ``diff`` of the exploded scalar ``f`` (Note [Exploded
    derivatives in symengine]); None if the expression leaves the symengine path."""
    import symengine as se

    F = _scalar(explode(f))
    funcs: dict = {}
    try:
        Fs = _to_symengine(F, {}, funcs)
    except _NotSymengine:
        return None
    names = sorted({s.name for s in F.free_symbols} | {s.name for X in wrt.values() for s in entries(X)})
    point = dict(zip(names, _point(values, [sp.Symbol(n) for n in names])))
    ev = _SeValues(point, funcs)
    out = {}
    try:
        for name, X in wrt.items():
            E = entries(X)
            out[name] = np.array([[ev(Fs.diff(se.Symbol(E[i, j].name))) for j in range(E.shape[1])] for i in range(E.shape[0])],
                                 dtype=np.float64)
    except _NotSymengine:
        return None
    return out
