"""Note [Certified pointwise values]: a pointwise node's cancelling entries re-evaluated over mpmath.

The op graph evaluates a pointwise form (``sinc'(s0) = cos(s0)/s0 - sin(s0)/s0**2``) in float64,
with a running bound ``e`` in units of the checked dtype's epsilon (Note [Approx arithmetic]).  Where
that bound is many times the value (``e > CANCELLATION * |v|``: the terms cancel) *and* the float64
evaluation's own error, about ``2**-52 * e``, is not small against an ulp of the checked dtype
(``CERTIFY_FRACTION``), the float64 value shares the weakness of a naive backward.  Those entries
(every entry with ``reference="mpmath"``; none with ``"float"``) are evaluated again over mpmath at
``EXACT_DPS`` digits from the same SymPy form (only forms holding a function: sin, exp, ...), at the
node's float64 arguments: the value becomes
exact *given those arguments* (an argument computed upstream keeps its own float64 error).  The
rounding bound ``e`` is kept: it is what torch's computation in the checked dtype may lose there,
the "right?" allowance.  At most ``MAX_ENTRIES`` entries per evaluation; beyond, float64 stays.
During a random-rounding rerun (Note [Statistical allowance] in montecarlo.py) nothing is
re-evaluated (``montecarlo.spread`` sets the reference mode to "float"): the rerun's value is the
float64 one its moved roundings made.  Replacing it with the
exact value threw those moves away, so the reruns of tanh' = 1 - tanh(x)**2 at x = 8.5 (a cancelling
entry in float32) did not spread at all, the statistical allowance fell to 2e-10 where torch's
1 - y**2 from its rounded y errs by 6e-8, and torch's own float32 tanh failed on the op graph.
Nor is a form holding floor or ceiling: at a jump the float64 argument (1.5 * (1/1.5) = 1.0) and the
40-digit one (0.999...) fall on different steps, and remainder(1.5, 1.5) became 1.5, not torch's 0.
The steps' own bands (Note [Steps at their jumps] in graph/scalar.py) say what rounding can do there.
Entries whose arguments are extreme in size (``_extreme``) are re-evaluated as well, cancelling or
not: an intermediate square may overflow there while the value fits, or underflow to an infinite
form (hypot' = x / sqrt(x**2 + y**2) at x, y ~ 1e-200 was inf, and torch's own hypot failed); an
entry whose float64 form was not finite (and whose arguments carry no error) takes a rounding per
operation of the form, on its re-evaluated value, as its bound.
"""

from __future__ import annotations

from functools import lru_cache

import mpmath as mp
import numpy as np
import sympy as sp

from .approx import Approx

__all__ = ["certified", "CANCELLATION", "MAX_ENTRIES", "PER_CHECK", "counter"]

CANCELLATION = 16.0
MAX_ENTRIES = 1024
# Note [A budget of certified entries]: a 2-layer LSTM over 50 steps re-evaluated 228,672 saturated
# gate entries one by one (45 s of a check that timed out at 120 s), each evaluation under the cap.
# With reference="auto" a check certifies at most PER_CHECK entries; past that, float64 stays: the
# verdict's allowance (the rounding bound ``e``) is unchanged, and the float64 value errs by about
# 2**-52 e, inside it, so only the accuracy column (Note [Accurate, not only right]) is less sure
# there, and the report's count of re-evaluated entries says how many were done.
PER_CHECK = 16_384
EXTREME = 1e150  # arguments past this size (or below its reciprocal) are re-evaluated: ``_extreme``
EPS64 = 2.0**-52
# entries re-evaluated during the running check (read by check_graph for the records' reference text)
counter = {"certified": 0, "stop": None}  # "stop": the count at which this check's budget ends


@lru_cache(maxsize=1024)
def _mp_function(expr: sp.Expr, symbols: tuple):
    return sp.lambdify(symbols, expr, modules="mpmath")


def _extreme(symbols: tuple, env: dict, shape: tuple) -> np.ndarray:
    """Entries with an argument beyond 1e150 or below 1e-150 in size: a square or a product inside
    the form can overflow or underflow there while the result fits (asinh' = 1/sqrt(x**2 + 1) at
    x = 1e155 came out 0 in float64, not 1e-155), which no rounding bound sees."""
    out = np.zeros(shape, bool)
    with np.errstate(all="ignore"):
        for s in symbols:
            a = np.abs(np.broadcast_to(np.asarray(env[s].v, np.float64), shape))
            out |= np.isfinite(a) & ((a > EXTREME) | ((a > 0) & (a < 1.0 / EXTREME)))
    return out


def _exact_arguments(symbols: tuple, env: dict, shape: tuple) -> np.ndarray:
    """Entries whose arguments carry no rounding bound and no kink band."""
    out = np.ones(shape, bool)
    for s in symbols:
        out &= np.broadcast_to(np.asarray(env[s].e, np.float64) == 0, shape)
        out &= ~np.broadcast_to(env[s].band() > 0, shape)
    return out


def _ulp(v: np.ndarray, eps: float) -> np.ndarray:
    return np.ldexp(eps, np.frexp(np.maximum(np.abs(v), np.finfo(np.float64).tiny))[1] - 1)


def certified(expr: sp.Expr, env: dict, ctx, out: Approx) -> Approx:
    """``out`` (``expr`` evaluated over ``env`` in Approx arithmetic) with its cancelling entries
    re-evaluated over mpmath (Note [Certified pointwise values])."""
    from ..compare.accuracy import reference_mode
    from ..lower.exact import CERTIFY_FRACTION, EXACT_DPS
    from .scalar_kernels import STEPS

    mode = reference_mode.get()  # "float" during a random-rounding rerun (montecarlo.spread): see above
    if expr.has(*STEPS):  # a step at its jump: see above
        return out
    if mode == "float" or expr.is_Number:
        return out
    symbols = tuple(sorted(expr.free_symbols, key=lambda s: s.name))
    if any(s not in env for s in symbols):
        return out
    v, e = np.asarray(out.v, np.float64), np.broadcast_to(np.asarray(out.e, np.float64), out.shape)
    extreme = _extreme(symbols, env, out.shape) if mode == "auto" else np.zeros(out.shape, bool)
    overflowed = extreme & ~np.isfinite(v)
    if overflowed.any():  # kept only where the arguments carry no error (the bound it then takes)
        extreme &= ~overflowed | _exact_arguments(symbols, env, out.shape)
    if not expr.atoms(sp.Function) and not extreme.any():
        return out  # sums and products of float64 arguments: nothing a library function loses
    with np.errstate(all="ignore"):
        want = np.array(np.isfinite(v) & np.isfinite(e), dtype=bool)  # an array even at 0-d: written below
        if mode == "auto":
            want &= e > CANCELLATION * np.abs(v)
            at = np.flatnonzero(want)  # few entries cancel: the ulp test only there
            want.flat[at] = EPS64 * e.flat[at] > CERTIFY_FRACTION * _ulp(v.flat[at], ctx.eps)
    want |= extreme
    if not want.any() or int(want.sum()) > MAX_ENTRIES:
        return out
    stop = counter.get("stop")
    if mode == "auto" and stop is not None and counter["certified"] + int(want.sum()) > stop:
        return out  # Note [A budget of certified entries]
    try:
        fn = _mp_function(expr, symbols)
    except Exception:  # noqa: BLE001 - a form mpmath cannot take: float64 stays
        return out
    args = [np.broadcast_to(np.asarray(env[s].v, np.float64), out.shape) for s in symbols]
    new, bound = np.array(v, copy=True), np.array(e, copy=True)
    roundings = max(1, int(sp.count_ops(expr))) if overflowed.any() else 1
    done = 0
    with mp.workdps(EXACT_DPS):
        for j in np.flatnonzero(want):
            try:
                got = fn(*(mp.mpf(float(a.flat[j])) for a in args))
                value = float(got.real) if isinstance(got, mp.mpc) and got.imag == 0 else float(got)
            except (ArithmeticError, ValueError, TypeError):
                continue  # this entry only (a pole, a complex value): float64 stays
            except Exception:  # noqa: BLE001 - a function mpmath lacks (trunc): float64 stays everywhere
                return out
            if np.isfinite(value):
                if not (np.isfinite(v.flat[j]) and np.isfinite(e.flat[j])):  # an overflowed form: a rounding
                    bound.flat[j] = roundings * abs(value)  # per operation of it, on the value it failed to give
                new.flat[j] = value
                done += 1
    counter["certified"] += done
    return Approx(new, bound, out.lo, out.hi)
