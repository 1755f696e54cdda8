"""Derivatives put in the form torch's backward computes, so the bound charges what torch's does.

``rules.derivatives`` differentiates a pointwise form with SymPy; ``as_torch_computes`` then rewrites
the places where SymPy's form and torch's differ in value or in rounding.
"""

from __future__ import annotations

import sympy as sp

__all__ = ["as_torch_computes"]


def as_torch_computes(expr: sp.Expr, d: sp.Expr) -> sp.Expr:
    """``d``, a derivative of ``expr``, with acosh's roots joined and pow's log masked at a zero base."""
    if expr.has(sp.acosh):
        d = _joined_roots(d)
    if expr.has(sp.Pow) and d.has(sp.log):
        d = _zero_base(d)
    if expr.has(sp.Pow):
        d = _lowered_power(d)
    return d


# Note [acosh' as torch computes it]
# SymPy differentiates acosh(u) to 1/(sqrt(u - 1) sqrt(u + 1)); torch's backward computes
# (u**2 - 1).rsqrt(), whose u**2 rounds before 1 is subtracted: near u = 1 it is only as accurate
# as eps u**2 / (u**2 - 1) (2.5e-13 relative at u = 1 + 1e-12 in float64, measured), where the bound
# of SymPy's form, whose u - 1 is exact, allowed 6e-15 -- torch's own acosh failed.  The two forms
# are equal for u >= 1 (acosh's domain), so in the derivatives of a form holding acosh the product of
# the two roots is joined back into 1/sqrt(u**2 - 1) and the bound charges torch's cancellation.
def _joined_roots(d: sp.Expr) -> sp.Expr:
    def joined(m):
        factors = list(m.args)
        for i, f in enumerate(factors):
            if not (f.is_Pow and f.exp == sp.Rational(-1, 2)):
                continue
            for j, h in enumerate(factors):
                if j != i and h.is_Pow and h.exp == f.exp and sp.expand(h.base - f.base) == 2:
                    rest = [x for k, x in enumerate(factors) if k not in (i, j)]
                    u = f.base + 1
                    return sp.Mul(*rest, sp.Pow(u**2 - 1, f.exp))
        return m

    return d.replace(lambda e: e.is_Mul, joined)


# Note [pow' at a zero base]
# d(b**e)/de = b**e log(b), which numpy evaluates to 0 * -inf = NaN at b = 0.  For e > 0 the product
# tends to 0 as b -> 0 (and b**e is identically 0 along e there), so the derivative is 0: torch's
# pow backward says 0 too (it masks base == 0 and exponent >= 0), and a NaN reference failed torch's
# own pow(0, y) with respect to y.  Each product of b**e and log(b) is 0 where b == 0 and e > 0; at
# b = 0, e <= 0 the derivative does not exist and the NaN stands.  A constant base is read as a
# function of e alone already (Note [A constant zero base] in graph/aten.py); this covers a base that
# is computed or differentiated (pow(relu(x), y), pow(x, y) at x = 0), exactly 0 instead of a band.
def _zero_base(d: sp.Expr) -> sp.Expr:
    def masked(m):
        logs = {f.args[0] for f in m.args if isinstance(f, sp.log)}
        for f in m.args:
            if f.is_Pow and f.base in logs:
                return sp.Piecewise((0, sp.And(sp.Eq(f.base, 0), f.exp > 0)), (m, True))
        return m

    return d.replace(lambda e: e.is_Mul and any(isinstance(f, sp.log) for f in e.args), masked)


# Note [pow' in its base as torch computes it]
# SymPy differentiates b**e with a symbolic exponent to e b**e / b, which is 0/0 = NaN at b = 0,
# where the derivative is e b**(e - 1) (0 for e > 1, 1 at e = 1, +inf below): torch's backward computes
# that form.  At first order a cone-point band covered the NaN; the second derivative, whose forms
# are not banded so, failed torch's own pow(b, e) at b = 0 (order=2).  Each product of b**e and 1/b
# is joined back into b**(e - 1).
def _lowered_power(d: sp.Expr) -> sp.Expr:
    def joined(m):
        pows = [f for f in m.args if f.is_Pow]
        for f in pows:
            if f.exp.is_Number:
                continue
            for h in pows:
                if h is not f and h.base == f.base and h.exp == -1:
                    rest = [x for x in m.args if x is not f and x is not h]
                    return sp.Mul(*rest, sp.Pow(f.base, f.exp - 1))
        return m

    return d.replace(lambda e: e.is_Mul, joined)
