"""The rounding of constants in a closed form: a literal handed to the op, and a number subexpression
(``1/sqrt(pi)``, ``log(10)``) held as one constant in half precision (stage "evaluate").  ``ctx`` is
:class:`symgrad.graph.scalar.Ctx` (its ``dtype`` and ``eps``)."""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache

import numpy as np
import sympy as sp

from ..ops import is_float32_constant
from .approx import Approx, rounded_constant

__all__ = ["constant_error", "folded_number"]


def constant_error(c, ctx) -> float:
    """A constant's rounding in the checked dtype, in units of ``ctx.eps``: 0 for a number the dtype
    holds (every Python float in a float64 check), half an ulp or so for 1/3 or pi, and in float32 or
    half precision the rounding torch applies when it hands the constant to the op."""
    try:
        exact = Fraction(str(c)) if isinstance(c, sp.Rational) else Fraction(float(c))
    except (TypeError, ValueError, OverflowError):
        return 0.0
    if exact == 0:
        return 0.0
    f = float(exact)
    if not math.isfinite(f):
        return 0.0
    if ctx.dtype == "bfloat16":
        m, ex = math.frexp(f)
        low = math.ldexp(round(m * 256) / 256, ex)
    elif ctx.dtype in ("float16", "float32"):
        low = float(np.float16(f) if ctx.dtype == "float16" else np.float32(f))
    elif is_float32_constant(f):  # celu's 1/alpha: float32 even in a float64 kernel
        low = float(np.float32(f))
    else:
        low = f
    if not math.isfinite(low):  # 1e200 in a float32 kernel: the constant itself overflows to inf
        return math.inf
    return float(abs(exact - Fraction(low))) / ctx.eps


# Note [Folded number expressions]
# A closed form's number subexpressions (``1/sqrt(pi)`` in erf's derivative, ``log(10)`` in log10's,
# ``sqrt(2)/sqrt(pi)``) are not computations of the half dtype: torch's formulas and kernels hold
# them as C++ or Python doubles (``M_2_SQRTPI``, ``2.302585...``) and hand them to a half kernel as
# its float32 opmath scalar; a half tensor holding the constant is at worst the exact number rounded
# once to the checked dtype.  Evaluated as a chain of half roundings (pi rounded, its square root
# rounded, the reciprocal rounded), each a coherent site every entry shares (Note [Coherent
# roundings]), they took 2 roundings, 1 % of every entry, of the scale test's allowance in bfloat16,
# and erf's and log10's backward times 1.01 passed.  In float16 and bfloat16 such a subexpression
# (and the product of a product's number factors) is one constant: its exact value, rounded as
# ``constant_error`` rounds a literal to the checked dtype, and at least float32's rounding of it.
def folded_number(expr, ctx) -> Approx | None:
    """A number subexpression as one constant of the checked half dtype; None where it is not a
    finite nonzero real."""
    v = _number_value(expr)
    if v is None:
        return None
    e = max(constant_error(v, ctx), abs(v) * 2.0**-24 / ctx.eps) + abs(v) * 2.0**-53 / ctx.eps
    return Approx(rounded_constant(expr, np.float64(v), e), e)


@lru_cache(maxsize=4096)
def _number_value(expr) -> float | None:
    """A number subexpression's value to 40 digits, rounded once to float64; None where it is not a
    finite nonzero real."""
    try:
        value = complex(sp.N(expr, 40))
    except (TypeError, ValueError, OverflowError):
        return None
    if value.imag != 0 or not math.isfinite(value.real) or value.real == 0:
        return None
    return value.real


