"""Stage 3, lower: closed forms to numpy functions, with kinks made explicit.

``lower(exprs, args)`` lambdifies a list of SymPy expressions once (with common-subexpression
elimination) and returns a :class:`Lowered` that evaluates them at given input values.

# Note [Kinks at evaluation time]
Every relational in the expressions (the conditions of the op table's ``Piecewise`` forms:
``x > 0`` for relu, ``x <= min_val`` for hardtanh, ...) is replaced by a boolean argument.  At
evaluation the conditions are computed from the inputs as usual, and each relational's *gap*
(lhs - rhs) is compared with the rounding scale of the gap: a condition whose gap is zero, or
within ``KINK_ULPS`` units of rounding of zero in the checked dtype, is *on a kink*: in float32
torch may see the other side of it.  For those, the expressions are evaluated twice more with the
condition forced false and forced true, giving the one-sided derivative band ``[lower, upper]``.
Entries whose band has width are the kink-affected ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy as sp

__all__ = ["Lowered", "lower", "magnitude", "KINK_ULPS", "high_precision"]

KINK_ULPS = 64


def high_precision():
    """The most precise float numpy has here (80-bit extended on x86-64, else float64)."""
    return np.longdouble if np.finfo(np.longdouble).eps < np.finfo(np.float64).eps else np.float64


def magnitude(expr: sp.Expr) -> sp.Expr:
    """An expression for the scale of rounding errors in evaluating ``expr``.

    Sums add the magnitudes of their terms (cancellation is what makes a small result uncertain),
    products multiply them, a function f(a) contributes |f(a)| + |f'(a)| * magnitude(a).
    """
    if expr.is_Number:
        return abs(expr)
    if expr.is_Symbol:
        return sp.Abs(expr)
    if expr.is_Add:
        return sp.Add(*(magnitude(a) for a in expr.args))
    if expr.is_Mul:
        return sp.Mul(*(magnitude(a) for a in expr.args))
    if expr.is_Pow and expr.exp.is_Number and expr.exp > 0:
        return magnitude(expr.base) ** expr.exp
    if isinstance(expr, sp.Piecewise):
        return sp.Piecewise(*((magnitude(e), c) for e, c in expr.args))
    if isinstance(expr, sp.Function) and len(expr.args) == 1:
        (a,) = expr.args
        d = sp.Dummy("d")
        fprime = sp.diff(expr.func(d), d).subs(d, a)
        return sp.Abs(expr) + sp.Abs(fprime) * magnitude(a)
    return sp.Abs(expr)


def _lambdify(args, exprs):
    # cse(order='none') is much faster than the default ordering on large expressions.
    return sp.lambdify(args, exprs, modules="numpy", cse=lambda e: sp.cse(e, order="none"), docstring_limit=0)


@dataclass
class Evaluation:
    values: list  # one numpy array (or scalar) per expression
    lower: list | None = None  # one-sided band where a condition sits on a kink, else None
    upper: list | None = None
    kink_conditions: list | None = None  # the relationals found on a kink, as text


class Lowered:
    """Numpy evaluation of a fixed list of expressions (see Note [Kinks at evaluation time])."""

    def __init__(self, exprs: list[sp.Expr], args: list[sp.Symbol]):
        self.args = list(args)
        # Element symbols are named "W[0, 1]": not identifiers.  lambdify renames such arguments in
        # the body but not in its cse prelude (SymPy 1.14), so rename them all here first.
        safe = {a: sp.Symbol(f"_a{i}", real=True) for i, a in enumerate(self.args)}
        exprs = [e.xreplace(safe) for e in exprs]
        args = list(safe.values())
        relationals = sorted(
            set().union(*(e.atoms(sp.core.relational.Relational) for e in exprs)) if exprs else set(), key=sp.default_sort_key
        )
        self.relationals = relationals
        self.conds = [sp.Dummy(f"c{k}") for k in range(len(relationals))]
        mapping = dict(zip(relationals, self.conds))
        body = [e.xreplace(mapping) for e in exprs]
        self._fn = _lambdify(args + self.conds, body)
        if relationals:
            gaps = [r.lhs - r.rhs for r in relationals]
            self._gaps = _lambdify(args, gaps)
            self._scales = _lambdify(args, [magnitude(g) for g in gaps])
            self._truth = _lambdify(args, relationals)

    def __call__(self, values: list, *, dtype=np.float64, kink_eps: float | None = None) -> Evaluation:
        """Evaluate at ``values`` (one array per arg, cast to ``dtype``).

        ``kink_eps`` is the unit roundoff of the dtype torch ran in; None skips the kink search.
        """
        vals = [np.asarray(v, dtype=dtype) for v in values]
        with np.errstate(all="ignore"):
            if not self.relationals:
                return Evaluation(list(self._fn(*vals)))
            truth = [np.asarray(t, dtype=bool) for t in self._truth(*vals)]
            out = Evaluation(list(self._fn(*vals, *truth)))
            if kink_eps is None:
                return out
            gaps = self._gaps(*vals)
            scales = self._scales(*vals)
            near = [np.abs(np.asarray(g, dtype=np.float64)) <= KINK_ULPS * kink_eps * np.abs(np.asarray(s, dtype=np.float64))
                    for g, s in zip(gaps, scales)]
            if not any(np.any(n) for n in near):
                return out
            forced_false = [np.where(n, False, t) for n, t in zip(near, truth)]
            forced_true = [np.where(n, True, t) for n, t in zip(near, truth)]
            out.lower = list(self._fn(*vals, *forced_false))
            out.upper = list(self._fn(*vals, *forced_true))
            out.kink_conditions = [str(r) for r, n in zip(self.relationals, near) if np.any(n)]
            return out


def lower(exprs: list[sp.Expr], args: list[sp.Symbol]) -> Lowered:
    return Lowered(exprs, args)
