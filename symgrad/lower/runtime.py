"""What the code ``symgrad.lower.codegen`` generates calls, and how it prints numbers.

``FUNCTIONS`` maps each symengine function name to its numpy implementation; ``RUNTIME`` is the
namespace the float64 and checked-dtype evaluations run in, ``RUNTIME_HIGH`` the extended-precision
reference's (``symgrad.lower.wide`` builds the mpmath one from ``RUNTIME``).  ``_literal`` and
``_constant`` print the atoms of a closed form that need no line of their own.

# Note [Constants in the reference]
A rational constant whose denominator is not a power of two (1/10, 1/3) is printed ``_Q(p, q)``,
pi and e as ``_PI`` and ``_E``, and a function of numbers (sqrt(2), log(2)) as ``_F`` of its
decimal value to 340 digits, more than any evaluation holds (its bound unchanged: one rounding where torch computes it); each runtime gives them in its own precision: Python floats in
the float64 and checked-dtype evaluations, long doubles divided or parsed from decimal in the
extended-precision reference (``RUNTIME_HIGH``), mpmath numbers in the wide and certified ones.
Printed as float64 quotients, they made the extended-precision reference err by up to half an ulp
of float64 per constant, which its bound (in units of the extended precision) did not count.
"""

from __future__ import annotations

import functools
import math
import operator

import numpy as np

from ..errors import UnsupportedOp
from .special import NUMPY as SPECIAL, jumps

__all__ = ["FUNCTIONS", "RUNTIME", "RUNTIME_HIGH", "CONSTANT_DIGITS"]


def _fold(binary):
    """A variadic function from a binary one: f(a, b, c) = binary(binary(a, b), c)."""

    def fold(*args):
        return functools.reduce(binary, args)

    return fold


def _erf(x):
    try:
        from scipy.special import erf  # noqa: PLC0415 - optional, vectorised

        return erf(np.asarray(x, dtype=np.float64))
    except ImportError:
        return np.vectorize(math.erf, otypes=[np.float64])(x)


# Note [erfc from the C library]
# Not 1 - erf: erfc(x) for large x is far below erf's rounding.  Not scipy's either: measured against
# mpmath at 40 digits (500 points per interval), scipy.special.erfc errs by up to 9 ulps on (0.5, 1),
# 32 on (4, 6), 61 on (6, 10) and 235 on (10, 20), where torch's kernel is correctly rounded, and the
# reference, charged two ulps for a library call, failed torch's forward (30 ulps where 8.5 were
# allowed).  Python's math.erfc (the C library's) stays within 2 ulps everywhere: one call per entry.
def _erfc(x):
    x = np.asarray(x, dtype=np.float64)
    return np.frompyfunc(math.erfc, 1, 1)(x).astype(np.float64) if x.ndim else np.float64(math.erfc(float(x)))


def _logistic(u):
    """1/(1 + exp(u)) without overflow on either side (Note [Logistic terms])."""
    u = np.asarray(u)
    with np.errstate(over="ignore"):
        e = np.exp(-np.abs(u))
    return np.where(u <= 0, 1 / (1 + e), e / (1 + e))


def _pw(*pairs):
    """Piecewise from (condition, value) pairs, the last one's condition True (numpy.where)."""
    out = pairs[-1][1]
    for cond, value in reversed(pairs[:-1]):
        out = np.where(cond, value, out)
    out = np.asarray(out)
    return out.astype(np.float64) if out.dtype.kind in "biu" else out  # 0/1 indicators divide later


def _sum(items):
    return functools.reduce(operator.add, items)


def _prod(items):
    return functools.reduce(operator.mul, items)


# symengine function name -> numpy implementation (the generated code calls these by name)
FUNCTIONS = {
    "sin": np.sin, "cos": np.cos, "tan": np.tan, "asin": np.arcsin, "acos": np.arccos, "atan": np.arctan,
    "sinh": np.sinh, "cosh": np.cosh, "tanh": np.tanh, "asinh": np.arcsinh, "acosh": np.arccosh,
    "atanh": np.arctanh, "log": np.log, "exp": np.exp, "sqrt": np.sqrt, "Abs": np.abs, "sign": np.sign,
    "erf": _erf, "erfc": _erfc, "Max": _fold(np.maximum), "Min": _fold(np.minimum), "floor": np.floor,
    "ceiling": np.ceil, **SPECIAL,  # lgamma, digamma, polygamma, erfinv, atan2, round (special.py)
}
RUNTIME = {**FUNCTIONS, "np": np, "_pw": _pw, "_logistic": _logistic, "_sum": _sum, "_prod": _prod, "_E": np.e, "_PI": np.pi,
           "_INF": np.inf, "_Q": operator.truediv, "_F": float}
RUNTIME["_jump"] = jumps(RUNTIME)
RUNTIME["_abs"] = np.abs  # the bound's |.| (Note [Rounding bound] in codegen.py): shorter lines than np.abs compile faster


def _long_ratio(p: int, q: int):
    return np.longdouble(str(p)) / np.longdouble(str(q))


# the extended-precision evaluation's constants (Note [Constants in the reference])
RUNTIME_HIGH = {**RUNTIME, "_Q": _long_ratio, "_F": np.longdouble, "_PI": np.longdouble("3.14159265358979323846264338327950288"),
                "_E": np.longdouble("2.71828182845904523536028747135266250")}


def _literal(e) -> str | None:
    """The code of an atom that needs no line of its own (a number, a constant), else None."""
    kind = type(e).__name__
    if kind in ("Infty", "Infinity", "NegativeInfinity", "ComplexInfinity"):
        if kind == "ComplexInfinity":
            raise UnsupportedOp(
                "the closed form holds complex infinity (zoo): a constant of the function made a term of it "
                "infinite before any input was given (a division by zero, or log(0) as in d(0**y)/dy = 0**y log(0)). "
                "Fix: check it with engine='graph', which evaluates such limits at the input values, or move the "
                "constant into the inputs")
        return "(-_INF)" if str(e).startswith("-") else "_INF"
    if e.is_Number:
        if e.is_Integer:
            return f"({int(e)})"
        if e.is_Rational:  # Note [Constants in the reference]
            p, q = (int(v) for v in e.get_num_den())
            exact = q & (q - 1) == 0 and abs(p) < 2**53
            return f"({p}/{q})" if exact else f"(_Q({p}, {q}))"
        if e.is_real is False:
            raise UnsupportedOp(f"the closed form has the complex number {e}; symgrad checks real derivatives")
        return f"({float(e)!r})"
    return {"Exp1": "_E", "Pi": "_PI", "BooleanTrue": "True", "BooleanFalse": "False"}.get(kind)



_FOLDED = ("Pow", "Mul", "Add", "FunctionSymbol", "sin", "cos", "tan", "exp", "log", "sinh", "cosh", "tanh", "atan", "erf")


CONSTANT_DIGITS = 340  # beyond the certified evaluation's most digits (exact.MAX_DPS)


def _constant(e) -> str | None:
    """A node of numbers (sqrt(2), log(2), pi/3) as its value to ``CONSTANT_DIGITS``, parsed by each
    runtime in its own precision (Note [Constants in the reference]); None for anything else."""
    if getattr(e, "free_symbols", True) or type(e).__name__ not in _FOLDED and not hasattr(e, "get_name"):
        return None
    if not all(a.is_Number or type(a).__name__ in ("Pi", "Exp1") for a in e.args):
        return None  # a node of folded nodes is computed from them: its bound needs theirs
    import sympy as sp

    try:
        v = sp.N(e._sympy_() if hasattr(e, "_sympy_") else e, CONSTANT_DIGITS)
    except Exception:  # noqa: BLE001 - a form SymPy cannot evaluate: computed as written
        return None
    if not (v.is_Number and v.is_real and v.is_finite) or v.is_Integer:
        return None
    return f"_F({str(v)!r})"
