"""Special functions of the exploded engine: lgamma, digamma, polygamma, erfinv, atan2, round and the
modified Bessel functions i0, i0e, i1, i1e.

# Note [Special functions on the exploded engine]
torch's ``lgamma``, ``digamma``, ``polygamma``, ``erfinv``, ``atan2`` and ``round`` reach the op
graph as SymPy forms (``loggamma``, ``polygamma(n, .)``, ``erfinv``, ``atan2``, symgrad's
``round_even``).  symengine has ``loggamma``, ``polygamma`` and ``atan2`` with their derivatives
(d loggamma = polygamma(0, .), d polygamma(n, .) = polygamma(n + 1, .)).  It has no ``erfinv`` and
no rounding to even: those two become undefined symengine functions of the same name
(``OPAQUE``, ``to_symengine``), whose derivatives symengine leaves as ``Derivative``/``Subs``
nodes; ``resolve`` replaces them by the closed forms (erfinv' = sqrt(pi)/2 exp(erfinv**2); the Bessel
functions' in torch's forms, Note [Modified Bessel functions as torch's kernels] in
symgrad/graph/functions.py, which charges their kernels ``BESSEL_ULPS``; round's
derivative is 0, as floor's is; its jumps at half-integers are kinks, Note [Jumps of the step
functions] in codegen.py) before anything is evaluated, at any order (the accuracy oracle
differentiates once more).

Each function has a numpy kernel (``NUMPY``; scipy.special, which computes in float64 only, also
for the extended-precision reference: ``FLOAT64_ONLY``, Note [Float64 kernels in the reference]
in numpy.py), an mpmath one (``MPMATH``, for the wide and the certified evaluations) and its own
rounding in the bound (``own_rounding``):

# Note [Rounding of the special functions]
Measured against mpmath at 40 digits (``python benchmarks/special_accuracy.py``: 3,000 points of
(0.05, 10) and (0.5, 3) plus 1, 2 and digamma's root 1.4616; erfinv on (-0.999, 0.999) and
(-1e-3, 1e-3); torch 2.13 CPU), the largest error in units of the dtype's eps times
``|f(x)| + |x f'(x)|``:

=============  ================  ===============  ==============
function       torch float64     torch float32    scipy float64
=============  ================  ===============  ==============
lgamma         0.33              0.35             4.0
digamma        3.2               3.0              0.78
polygamma(1)   9.1e5 (4.9e-10    1.0              1.4
               relative)
polygamma(2)   1.0               0.19             1.0
polygamma(3)   0.84              0.23             0.84
erfinv         0.48              0.24             0.67
=============  ================  ===============  ==============

Relative to ``|f(x)|`` alone the errors are unbounded at the roots (lgamma at 1 and 2, digamma at
1.4616: a kernel is accurate to its terms' size, not to a result that cancels to 0), so these
functions are charged ``SPECIAL_ULPS`` = 2 units on ``|f(x)| + |x f'(x)|``, as the op graph's
scalar evaluator charges them (``_ROOTED``, ``TRANSCENDENTAL_ULPS`` in symgrad/graph/scalar.py; one in
float16 and bfloat16, ``HALF_TRANSCENDENTAL_ULPS``);
torch's trigamma is far less accurate than its dtype in float64 and gets the relative error
``KERNEL_REL`` on top (Note [Kernels less accurate than their dtype] there), a unit count that
``_KF`` scales to the checked dtype (``_KF`` = 2**-24 / eps).  atan2 (torch within 1 ulp of
float64 and float32 over 3,000 random pairs of [-3, 3]^2) is an ordinary function: one rounding.
"""

from __future__ import annotations

import mpmath as mp
import numpy as np

__all__ = ["OPAQUE", "NUMPY", "MPMATH", "erfcx_kernel", "log_ndtr_kernel",
           "FLOAT64_ONLY", "SPECIAL_ULPS", "KERNEL_REL", "BESSEL_ULPS", "derivative", "resolve",
           "resolve_all", "own_rounding", "SIDES", "jumps"]

# undefined symengine functions standing for SymPy's erfinv, symgrad's round_even and modified Bessel functions
OPAQUE = ("erfinv", "round_even", "bessel_i0", "bessel_i1", "bessel_i0e", "bessel_i1e", "erfcx", "log_ndtr")
# units of its value charged for one call of a modified Bessel function (float32/float64, float16/bfloat16):
# Note [Modified Bessel functions as torch's kernels] in symgrad/graph/functions.py
BESSEL_ULPS = {"bessel_i0": (6.0, 1.0), "bessel_i0e": (6.0, 10.0), "bessel_i1": (20.0, 1.0), "bessel_i1e": (20.0, 1.0)}
SPECIAL_ULPS = 2.0
KERNEL_REL = {1: 1e-9}  # polygamma order -> torch's float64 relative error, measured 4.9e-10 (table above)
_ROOTED = ("loggamma", "polygamma", "erfcx", "log_ndtr")  # erfinv: Note [Kernels accurate relative to their result]
FLOAT64_ONLY = ("loggamma", "polygamma", "erfinv", "erfcx", "log_ndtr", *BESSEL_ULPS)


def _float64(fn):
    def apply(*args):
        return fn(*(np.asarray(a, dtype=np.float64) if np.asarray(a).dtype == np.longdouble else a for a in args))

    return apply


def _scipy(name: str):
    def apply(*args):
        import scipy.special as sc  # noqa: PLC0415 - a dependency (README), imported when used

        return _float64(getattr(sc, name))(*args)

    return apply


def _polygamma(n, x):
    import scipy.special as sc  # noqa: PLC0415

    x = np.asarray(x)
    x = x.astype(np.float64) if x.dtype == np.longdouble else x
    return sc.digamma(x) if int(n) == 0 else sc.polygamma(int(n), x)


def _mp_erfcx(x):
    return mp.exp(x * x) * mp.erfc(x)


def _mp_log_ndtr(x):
    return mp.log1p(-mp.ncdf(-x)) if x > 0 else mp.log(mp.ncdf(x))  # Phi(x) near 1 would round to 1


def _scipy_but_where(name: str, exact, outside):
    """scipy's ``name``, with mpmath's ``exact`` (at 30 digits) where ``outside(x)``: where scipy's
    kernel loses digits that the reference must have."""
    def apply(x):
        x = np.asarray(x, np.float64)
        out = np.array(_scipy(name)(x), np.float64, copy=True)
        far = outside(x)
        if np.any(far):
            with mp.workdps(30):
                out[far] = [float(exact(mp.mpf(float(v)))) for v in x[far]]
        return out

    return apply


# exp(x**2) erfc(x): scipy's (the Faddeeva package's) from -1 up; below, scipy's errs as torch's
# does (368 ulps at -26: the same code; Note [erfcx] in graph/functions_stats.py)
erfcx_kernel = _scipy_but_where("erfcx", _mp_erfcx, lambda x: x < -1)
# log Phi(x): scipy's from -38 to 1 (3 ulps); elsewhere scipy's and torch's lose the small result
# (Note [log_ndtr as torch's kernel] in graph/functions_stats.py)
log_ndtr_kernel = _scipy_but_where("log_ndtr", _mp_log_ndtr, lambda x: (x > 1) | (x < -38))


NUMPY = {"erfcx": erfcx_kernel, "log_ndtr": log_ndtr_kernel,
         "loggamma": _scipy("gammaln"), "polygamma": _polygamma, "erfinv": _scipy("erfinv"), "atan2": np.arctan2,
         "round_even": np.round,  # np.round rounds half to even, as torch.round
         "bessel_i0": _scipy("i0"), "bessel_i1": _scipy("i1"), "bessel_i0e": _scipy("i0e"), "bessel_i1e": _scipy("i1e")}


def _mp_loggamma(x):
    return mp.re(mp.loggamma(x))  # log|Gamma(x)|, torch's lgamma, also for x < 0


def _mp_polygamma(n, x):
    return mp.psi(int(n), x)


def _mp_round(x):
    return mp.nint(x)  # half to even


MPMATH = {"loggamma": (_mp_loggamma, 1), "polygamma": (_mp_polygamma, 2), "erfinv": (mp.erfinv, 1),
          "atan2": (mp.atan2, 2), "round_even": (_mp_round, 1),  # name -> (function, number of arguments)
          "bessel_i0": (lambda x: mp.besseli(0, x), 1), "bessel_i1": (lambda x: mp.besseli(1, x), 1),
          "bessel_i0e": (lambda x: mp.exp(-abs(x)) * mp.besseli(0, x), 1),
          "bessel_i1e": (lambda x: mp.exp(-abs(x)) * mp.besseli(1, x), 1), "erfcx": (_mp_erfcx, 1),
          "log_ndtr": (_mp_log_ndtr, 1)}


def derivative(name: str, args: tuple, i: int = 0):
    """The partial derivative of ``name(*args)`` by its argument ``i``, a symengine expression."""
    import symengine as se

    if name == "erfinv":
        return se.sqrt(se.pi) / 2 * se.exp(se.Function("erfinv")(args[0]) ** 2)
    if name == "round_even":
        return se.Integer(0)
    if name == "loggamma":
        return se.polygamma(0, args[0])
    if name == "polygamma":
        return se.polygamma(args[0] + 1, args[1]) if i == 1 else se.Integer(0)  # the order is an integer
    if name in BESSEL_ULPS:  # torch's forms (Note [Modified Bessel functions as torch's kernels])
        return _bessel_derivative(name, args[0])
    if name == "erfcx":  # torch's: 2 x erfcx(x) - 2 / sqrt(pi)
        return 2 * args[0] * se.Function("erfcx")(args[0]) - 2 / se.sqrt(se.pi)
    if name == "log_ndtr":  # torch's, from the result: exp(-(y + x**2 / 2)) / sqrt(2 pi)
        return se.exp(-(se.Function("log_ndtr")(args[0]) + args[0] ** 2 / 2)) / se.sqrt(2 * se.pi)
    raise KeyError(name)


def _bessel_derivative(name: str, x):
    import symengine as se

    f = {n: se.Function(n)(x) for n in BESSEL_ULPS}
    sgn = se.Piecewise((1, se.Gt(x, 0)), (0, se.Eq(x, 0)), (-1, True))
    half = se.Rational(1, 2)
    if name == "bessel_i0":
        return f["bessel_i1"]
    if name == "bessel_i1":
        return se.Piecewise((f["bessel_i0"] - f["bessel_i1"] / x, se.Ne(x, 0)), (half, True))
    if name == "bessel_i0e":
        return f["bessel_i1e"] - sgn * f["bessel_i0e"]
    return se.Piecewise((f["bessel_i0e"] - f["bessel_i1e"] * (sgn + 1 / x), se.Ne(x, 0)), (half, True))


def _function_name(e) -> str | None:
    return e.get_name() if type(e).__name__ == "FunctionSymbol" else None


def resolve(e, new: list):
    """The closed form of ``e`` when it is a ``Derivative``/``Subs`` of an ``OPAQUE`` function (Note
    [Special functions on the exploded engine]), else None.  ``new``: ``e``'s arguments, already
    resolved (``numpy._transform``)."""
    kind = type(e).__name__
    if kind == "Subs":
        k = (len(new) - 1) // 2
        if new[0] == e.args[0]:
            return None  # a derivative of something else: left for the caller to refuse
        return new[0].xreplace(dict(zip(new[1:1 + k], new[1 + k:])))
    if kind != "Derivative":
        return None
    f, variables = e.expr, list(e.variables)
    name = _function_name(f)
    if name not in OPAQUE or len(f.args) != 1 or any(v != f.args[0] for v in variables):
        return None
    out = derivative(name, f.args)
    for v in variables[1:]:
        out = resolve_all(out.diff(v))
    return out


def resolve_all(expr):
    """``expr`` with every derivative of an ``OPAQUE`` function in closed form (small expressions)."""
    import symengine as se

    swap = {}
    for d in expr.atoms(se.Subs, se.Derivative):
        new = [resolve_all(d.args[0]), *d.args[1:]] if type(d).__name__ == "Subs" else list(d.args)
        hit = resolve(d, new)
        if hit is not None:
            swap[d] = hit
    return expr.xreplace(swap) if swap else expr


def own_rounding(name: str, args: tuple, var: str, inline) -> str:
    """The code of the function's own rounding in the bound (Note [Rounding of the special functions]):
    ``inline(expr)`` prints an expression over the emitter's variables."""
    if name == "round_even":
        return "0"
    own = f"np.abs({var})"
    if name in BESSEL_ULPS:  # _M = 1 in float16/bfloat16
        full, half = BESSEL_ULPS[name]
        return f"({full!r} - {full - half!r}*_M)*{own}"
    if name not in _ROOTED:
        return own
    x = args[-1]
    slope = derivative(name, args, len(args) - 1)
    # in float16/bfloat16 (_M = 1) the kernel runs in float32 and its result is rounded once
    out = f"({SPECIAL_ULPS!r} - _M)*({own} + np.abs({inline(x)} * {inline(slope)}))"
    rel = KERNEL_REL.get(int(args[0])) if name == "polygamma" else None
    if rel:
        out += f" + _KF*{rel * 2.0**24!r}*{own}"  # _KF: units of the checked dtype per 2**-24, relative
    return out


# Note [Jumps of the step functions]
# floor, ceil and round are constant between their jumps (integers; half-integers for round), where
# the rounding of their argument in the checked dtype can put torch on the other side (Note [Steps
# at their jumps] in symgrad/graph/scalar.py): torch's bfloat16 floor(3 x) at x = -0.334 is -1
# where the exact one is -2.  So each call records the distance ``d`` of its argument to the nearest
# jump ``j`` as a condition ``d < 0`` (Note [Kinks at evaluation time] in numpy.py; its gap bound is
# the argument's, the jump being exact) and, forced to the other side near it, takes the value there
# (``SIDES``: offsets from j).  Beyond a quarter of the spacing the gap is recorded as 1: at the
# midpoint between two jumps the nearest one flips between precisions, which is no kink.
SIDES = {"floor": (-1.0, 0.0), "ceiling": (0.0, 1.0), "round_even": (-0.5, 0.5)}


def jumps(runtime: dict):
    """``_jump(k, name, a, rel)``: ``name(a)`` with its jump as condition ``k`` (Note [Jumps of the
    step functions]), over ``runtime``'s functions (numpy, or mpmath in the wide runtime)."""
    floor = runtime["floor"]

    def jump(k, name, a, rel):
        j = floor(a) + 0.5 if name == "round_even" else floor(a + 0.5)
        d = a - j
        gap = np.where(np.abs(d) <= 0.25, d, 1.0)
        below = rel(k, "<", gap, 0)
        unforced = gap < 0
        value = runtime[name](a)
        if np.all(below == unforced):
            return value
        left, right = SIDES[name]
        return np.where(below == unforced, value, np.where(below, j + left, j + right))

    return jump
