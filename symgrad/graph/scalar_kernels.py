"""The numpy kernels of the scalar evaluator (``symgrad.graph.scalar``): each SymPy function of
one argument as its value and its derivative over a numpy array, the steps among them, and the
evaluations of functions of several arguments (``NARY``; ``symgrad.graph.functions`` adds
symgrad's own functions to these tables).
"""

from __future__ import annotations

import math

import numpy as np
import sympy as sp

from ..lower.runtime import _erfc

__all__ = ["FUNCTIONS", "STEPS", "NARY", "KERNEL_ULPS", "ROOTED"]


def _d_erfinv(x):
    from scipy.special import erfinv

    return math.sqrt(math.pi) / 2 * np.exp(erfinv(x) ** 2)


def _scipy(name):
    def fn(x):
        import scipy.special as sc

        return getattr(sc, name)(x)

    return fn


def _sinc(x):
    with np.errstate(all="ignore"):
        return np.where(x == 0, 1.0, np.sin(x) / np.where(x == 0, 1.0, x))


def _dsinc(x):
    with np.errstate(all="ignore"):
        safe = np.where(x == 0, 1.0, x)
        return np.where(x == 0, 0.0, (np.cos(x) * safe - np.sin(x)) / safe**2)


# SymPy function -> (value, derivative) as numpy functions of one array.
FUNCTIONS = {
    sp.exp: (np.exp, np.exp),
    sp.log: (np.log, lambda x: 1 / x),
    sp.sin: (np.sin, np.cos),
    sp.cos: (np.cos, lambda x: -np.sin(x)),
    sp.tan: (np.tan, lambda x: 1 / np.cos(x) ** 2),
    sp.tanh: (np.tanh, lambda x: 1 - np.tanh(x) ** 2),
    sp.sinh: (np.sinh, np.cosh),
    sp.cosh: (np.cosh, np.sinh),
    sp.asin: (np.arcsin, lambda x: 1 / np.sqrt(1 - x * x)),
    sp.acos: (np.arccos, lambda x: -1 / np.sqrt(1 - x * x)),
    sp.atan: (np.arctan, lambda x: 1 / (1 + x * x)),
    sp.asinh: (np.arcsinh, lambda x: 1 / np.sqrt(1 + x * x)),
    sp.acosh: (np.arccosh, lambda x: 1 / np.sqrt(x * x - 1)),
    sp.atanh: (np.arctanh, lambda x: 1 / (1 - x * x)),
    sp.erf: (_scipy("erf"), lambda x: 2 / math.sqrt(math.pi) * np.exp(-x * x)),
    sp.erfc: (_erfc, lambda x: -2 / math.sqrt(math.pi) * np.exp(-x * x)),  # Note [erfc from the C library]
    sp.erfinv: (_scipy("erfinv"), _d_erfinv),
    sp.loggamma: (_scipy("gammaln"), _scipy("digamma")),
    sp.sinc: (_sinc, _dsinc),
    sp.floor: (np.floor, lambda x: np.zeros_like(x)),
    sp.ceiling: (np.ceil, lambda x: np.zeros_like(x)),
}
# the piecewise-constant, non-decreasing functions of FUNCTIONS (floor, ceil, trunc, round): they
# jump at integers or half-integers (Note [Steps at their jumps] in scalar.py)
STEPS = {sp.floor, sp.ceiling}
# SymPy functions of several arguments -> their evaluation (a list of Approx arguments, Ctx) -> Approx
NARY: dict = {}
# SymPy function -> the units of its value charged for one call (float32/float64, float16/bfloat16)
# where torch's kernel is less accurate than a library function's (Note [Modified Bessel functions
# as torch's kernels] in functions.py)
KERNEL_ULPS: dict = {}
# functions whose kernels are charged |x f'(x)| as well (Note [Kernels accurate relative to their result]
# in scalar.py; functions.py adds its own)
ROOTED: set = {sp.loggamma}


def _polygamma(n: int):
    from scipy.special import polygamma

    return (lambda x: polygamma(n, x)), (lambda x: polygamma(n + 1, x))
