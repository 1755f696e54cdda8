"""Note [Wide evaluation]: closed forms whose terms overflow, evaluated with an unbounded exponent.

A softmax at a logit of 12,000 is finite (torch shifts by the row's maximum before ``exp``), but
its closed form, ``exp(x0)/(exp(x0) + exp(x1))``, holds exp(12000): beyond float64 and even x86's
80-bit extended precision (exp(11357) overflows there).  Rewriting every closed form into
max-shifted terms is a pattern match per form; instead, where the high-precision evaluation gives
NaN or inf at finite inputs, ``Lowered`` runs the same generated code again over mpmath numbers
(``RUNTIME_WIDE``: the same function names, mpmath's implementations, object arrays), whose
exponent range is unbounded, at ``WIDE_DPS`` decimal digits.  The values, their rounding bounds
and the kink gaps then come out finite wherever the function itself is, and are rounded back to
float64.  A value that is truly infinite or undefined (exp(800) itself, log of a negative
number) stays inf or NaN: where mpmath raises (1/sqrt(0) divides by zero), numpy's evaluation is
kept as it was.  This costs what an object-array evaluation costs, and only runs where the fast
one gave NaN or inf.
"""

from __future__ import annotations

import mpmath as mp
import numpy as np

from .runtime import RUNTIME
from .special import MPMATH, jumps

__all__ = ["RUNTIME_WIDE", "WIDE_DPS", "WIDE_MAX_BATCH", "to_wide", "from_wide", "overflowed"]

WIDE_DPS = 40
WIDE_MAX_BATCH = 4096  # values per input (samples of a batched evaluation) the wide evaluation takes


def _elementwise(fn, nin: int = 1):
    ufunc = np.frompyfunc(fn, nin, 1)

    def apply(*x):
        return ufunc(*x)

    return apply


def _logistic(u):
    return 1 / (1 + mp.exp(u))


def _erf(x):
    return mp.erf(x)


_MP = {
    "sin": mp.sin, "cos": mp.cos, "tan": mp.tan, "asin": mp.asin, "acos": mp.acos, "atan": mp.atan,
    "sinh": mp.sinh, "cosh": mp.cosh, "tanh": mp.tanh, "asinh": mp.asinh, "acosh": mp.acosh,
    "atanh": mp.atanh, "log": mp.log, "exp": mp.exp, "sqrt": mp.sqrt, "erf": _erf, "erfc": mp.erfc, "sign": mp.sign,
    "floor": mp.floor, "ceiling": mp.ceil,
}
RUNTIME_WIDE = {**RUNTIME, **{name: _elementwise(fn) for name, fn in _MP.items()},
                **{name: _elementwise(fn, nin) for name, (fn, nin) in MPMATH.items()},
                "_logistic": _elementwise(_logistic), "_E": mp.e, "_PI": mp.pi, "_INF": mp.inf,
                "_Q": lambda p, q: mp.mpf(p) / q, "_F": mp.mpf}
RUNTIME_WIDE["_jump"] = jumps(RUNTIME_WIDE)


def to_wide(value):
    """A float value or array as mpmath numbers (an object array, or one number)."""
    arr = np.asarray(value, dtype=np.float64)
    out = np.frompyfunc(mp.mpf, 1, 1)(arr)
    return out if isinstance(out, np.ndarray) else mp.mpf(float(arr))


def _real(z) -> float:
    try:
        if isinstance(z, mp.mpc):
            return float(z.real) if z.imag == 0 else float("nan")
        return float(z)
    except (TypeError, ValueError, OverflowError):
        return float("nan")


def from_wide(value, dtype=np.float64):
    """mpmath numbers (object array, one number, or a plain float) back to ``dtype``; non-real -> NaN."""
    if isinstance(value, np.ndarray) and value.dtype == object:
        return np.asarray(np.frompyfunc(_real, 1, 1)(value)).astype(dtype)  # a 0-d array gives a bare float
    if isinstance(value, np.ndarray):
        return value.astype(dtype)
    return dtype(_real(value))


def overflowed(inputs: list, values: list) -> bool:
    """NaN or inf in ``values`` although every input is finite, on inputs small enough to evaluate
    over mpmath numbers (at most ``WIDE_MAX_BATCH`` values per input; beyond, NaN/inf stays)."""
    if any(np.size(v) > WIDE_MAX_BATCH for v in inputs):
        return False
    with np.errstate(invalid="ignore"):
        if not all(np.all(np.isfinite(np.asarray(v, np.float64))) for v in inputs):
            return False
        return any(not np.all(np.isfinite(np.asarray(v, np.float64))) for v in values)
