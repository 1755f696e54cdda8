"""Scalar SymPy forms evaluated over whole arrays in :class:`Approx` arithmetic.

A pointwise node of the op graph is a SymPy function of scalar symbols (``tanh(s0)``,
``Piecewise((s0, s0 > 0), (0, True))``).  Its derivative is ``sympy.diff`` of that form -- never
written by hand -- and both are evaluated here, entry by entry over numpy arrays, carrying the
rounding bound and kink band of Note [Approx arithmetic].  The functions' numpy kernels (value and
derivative) are in ``symgrad.graph.scalar_kernels``.

# Note [Kinks in the scalar evaluator]
A condition ``lhs > rhs`` is *uncertain* at an entry where ``|lhs - rhs|`` is no larger than its
own rounding allowance (``KINK_ULPS * eps * e``) or its band: a correct evaluation in the checked
dtype could land on either side.  A ``Piecewise`` takes torch's branch (the one whose condition
holds on the float64 values; Note [Kink conventions] in ``symgrad/ops.py`` puts each kink point on
the branch torch's backward uses) and, at uncertain entries, a band as wide as the distance to
every other branch that could hold.  Evaluated on a derivative, that band is the jump between the
one-sided derivatives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import sympy as sp

from .approx import Approx, add, charged, mul, rounded, rounded_constant, signed_band, size, wide_now
from ..ops import is_float32_constant
from .scalar_constants import folded_number, constant_error
from .scalar_kernels import FUNCTIONS, KERNEL_ULPS, NARY, ROOTED, STEPS, _polygamma

__all__ = ["Ctx", "evaluate", "constant_error"]

KINK_ULPS = 4.0

# Note [Kernels less accurate than their dtype]
# A few of torch's special-function kernels are far from correctly rounded in float64: its digamma
# errs by up to 2.9e-12 and its trigamma (polygamma order 1, also digamma's derivative) by up to
# 4.9e-10 relative on (0.05, 10), measured against scipy.special.  A correct use of them cannot do
# better, so those evaluations are charged that relative error (1e-11, 1e-9) on top of their
# rounding; in float32 it is below an ulp.  A backward of digamma off by more still fails.
KERNEL_REL = {0: 1e-11, 1: 1e-9}
TRANSCENDENTAL_ULPS = 2.0  # one library function call: torch's vectorised kernels err by <= 1 ulp on CPU, CUDA's by <= 2
# in float16/bfloat16 the function runs in float32 and its result is rounded once: one rounding
# (Note [Half-precision allowance] in symgrad/compare/half.py)
HALF_TRANSCENDENTAL_ULPS = 1.0


def library_ulps(ctx: "Ctx", func=None) -> float:
    """Roundings charged for one library function call (of ``func``, if given) in ``ctx``'s dtype."""
    half = ctx.dtype in ("float16", "bfloat16") and not wide_now()  # Note [Nodes computed in a wider dtype]
    own = KERNEL_ULPS.get(func)
    if own is not None:
        return own[half]
    return HALF_TRANSCENDENTAL_ULPS if half else TRANSCENDENTAL_ULPS


@dataclass(frozen=True)
class Ctx:
    """The checked dtype's machine epsilon, and that of float32 (torch may hand constants to its
    kernels as float32 even in a float64 run).  ``backward_graph``: torch computes the checked
    forward-mode quantity through its backward graph (``functional.jvp``, a Jacobian by ``jacrev``),
    where stops that hold for reverse mode only hold too (Note [Grad mode inside forward] in trace_grad.py)."""

    eps: float = 2.0**-52
    dtype: str = "float64"
    backward_graph: bool = False
    values: bool = False  # forward values, not derivatives (Note [Exact orderings of values])
    moving: frozenset = frozenset()  # symbols whose values move with the inputs (Note [Equalities at a kink])


_HALF = ("float16", "bfloat16")


# Note [Kernels accurate relative to their result]
# The "rooted" charge, |x f'(x)| ulps, is for kernels that lose their relative accuracy where the
# result is small beside its terms: measured against mpmath at 50 digits (1,000 points per region),
# scipy's gammaln (the reference's kernel) errs by 5e5 ulps within 1e-3 of the root at 1 and 7e4 at
# 2, and torch's digamma by 3.5e4 (float64) and 7.6e5 (float32) ulps near its root at 1.46, and
# torch's trigamma by 3.7e5 ulps near the negative poles, about what the charge allows.  erfinv is
# not such a kernel: torch's is within 1 ulp and scipy's within 2 over (-1, 1), near 0 and near 1
# alike; charged |x f'(x)| (2e5 ulps at 1 - 1e-7), a float32 erfinv backward 0.1 % off passed there.


def evaluate(expr: sp.Expr, env: dict, ctx: Ctx) -> Approx:
    """``expr`` over the arrays in ``env`` (symbol -> Approx), in Approx arithmetic."""
    memo: dict = {}
    with np.errstate(all="ignore"):
        return _eval(expr, env, ctx, memo)


def _eval(expr, env, ctx, memo) -> Approx:
    got = memo.get(expr)
    if got is not None:
        return got
    out = _eval_node(expr, env, ctx, memo)
    memo[expr] = out
    return out


@lru_cache(maxsize=4096)
def _constant(c, ctx: Ctx, float32_in_float64: bool) -> tuple:
    return np.float64(float(c)), constant_error(c, ctx)


def _noted(c) -> bool:
    try:
        return is_float32_constant(float(c))
    except (TypeError, ValueError, OverflowError):
        return False


def _number(c, ctx: Ctx) -> Approx:
    # keyed on whether the running check noted c as a float32 constant of torch's (celu's 1/alpha;
    # Note [Float32 constants of a check] in symgrad/ops.py): one check's note never reaches another
    v, e = _constant(c, ctx, _noted(c))
    return Approx(rounded_constant(c, v, e), e)


def _eval_node(expr, env, ctx, memo) -> Approx:
    if expr.is_Symbol:
        return env[expr]
    if expr.is_Number:
        return _number(expr, ctx)
    if ctx.dtype in _HALF and not expr.free_symbols:  # Note [Folded number expressions]
        folded = folded_number(expr, ctx)
        if folded is not None:
            return folded
    if expr in (sp.pi, sp.E):  # irrational: half an ulp of float64 (its float value is rounded)
        return Approx(np.float64(float(expr)), max(constant_error(float(expr), ctx), 0.5 * float(expr)))
    if expr.is_Add:
        terms = [_eval(a, env, ctx, memo) for a in expr.args]
        out = terms[0]
        for t in terms[1:]:
            out = add(out, t)
        return _exact_integers(out, terms, ctx)
    if expr.is_Mul:
        coeff, rest = expr.as_coeff_Mul()
        if coeff != 1 and _power_of_two(coeff):  # -x, x/2, 4x: scaling by ±2**k does not round
            inner = _eval(rest, env, ctx, memo)
            c = float(coeff)
            return Approx(c * inner.v, abs(c) * inner.e, *(() if not inner.banded else
                                                         signed_band(np.float64(c), inner.lo, inner.hi)))
        args = expr.args
        if ctx.dtype in _HALF:  # Note [Folded number expressions]: the numbers of a product, one constant
            numbers = [a for a in args if not a.free_symbols]
            if len(numbers) > 1:
                args = (sp.Mul(*numbers),) + tuple(a for a in args if a.free_symbols)
        factors = [_eval(a, env, ctx, memo) for a in args]
        out = factors[0]
        for f in factors[1:]:
            out = mul(out, f)
        return out
    if expr.is_Pow:
        return _pow(expr, env, ctx, memo)
    if isinstance(expr, sp.Piecewise):
        return _piecewise(expr, env, ctx, memo)
    if isinstance(expr, sp.polygamma):
        n = int(expr.args[0])
        fn, dfn = _polygamma(n)
        out = _apply(fn, dfn, _eval(expr.args[1], env, ctx, memo), rooted=True, ulps=library_ulps(ctx))
        rel = KERNEL_REL.get(n, 0.0)  # Note [Kernels less accurate than their dtype]
        own = rel / ctx.eps * size(out.v)
        return charged(out, own) if rel else out
    if isinstance(expr, sp.atan2):
        y, x = (_eval(a, env, ctx, memo) for a in expr.args)
        v = np.arctan2(y.v, x.v)
        r2 = x.v**2 + y.v**2
        e = (np.abs(x.v) * y.e + np.abs(y.v) * x.e) / r2 + library_ulps(ctx) * size(v)
        v = rounded(v, library_ulps(ctx) * size(v))
        if not (x.banded or y.banded):
            return Approx(v, e)
        width = (np.abs(x.v) * y.band() + np.abs(y.v) * x.band()) / r2
        return Approx(v, e, width, width)
    if expr.func in NARY:
        return NARY[expr.func]([_eval(a, env, ctx, memo) for a in expr.args], ctx)
    fn = FUNCTIONS.get(expr.func)
    if fn is not None and len(expr.args) == 1 and expr.func in STEPS:
        return _step(fn[0], _eval(expr.args[0], env, ctx, memo), ctx)
    if fn is not None and len(expr.args) == 1:
        return _apply(fn[0], fn[1], _eval(expr.args[0], env, ctx, memo), rooted=expr.func in ROOTED,
                      ulps=library_ulps(ctx, expr.func))
    if isinstance(expr, (sp.Abs, sp.sign, sp.Max, sp.Min, sp.Heaviside)):
        return _eval(_as_piecewise(expr), env, ctx, memo)
    raise NotImplementedError(f"the scalar evaluator has no rule for {expr.func.__name__} (in {sp.sstr(expr)[:80]})")


def _power_of_two(c) -> bool:
    f = abs(float(c))
    return f != 0 and math.isfinite(f) and math.frexp(f)[0] == 0.5


def _through(slope, e):
    """An argument's error carried through ``slope``: ``|slope| * e``, and 0 where the argument is
    exact (``e = 0``) even if the slope is infinite -- sqrt of an exact 0 (``cdist(x, x)``'s
    diagonal) is exactly 0, where ``inf * 0`` would make the bound NaN and, downstream, no bound."""
    with np.errstate(invalid="ignore"):
        return np.where(np.asarray(e) == 0, 0.0, np.abs(slope) * e)


def _apply(fn, dfn, a: Approx, rooted: bool = False, ulps: float = TRANSCENDENTAL_ULPS) -> Approx:
    """``fn(a)``: its argument's error through the slope, plus the kernel's own rounding.  A special
    function whose kernel is not accurate relative to a small result (``rooted``: lgamma near 1 and
    2, digamma near 1.46) is charged on the size of its terms, ``|x f'(x)|``, as well."""
    v = np.asarray(fn(a.v), np.float64)
    slope = np.asarray(dfn(a.v), np.float64)
    own = size(v) + (np.abs(a.v * slope) if rooted else 0.0)
    e = _through(slope, a.e) + ulps * own
    return _with_band(rounded(v, ulps * own), e, slope, a)


# Note [Steps at their jumps]
# floor, ceil, trunc and round are constant between their jumps, so their slope says nothing of
# where the argument's rounding can take them: an argument within its rounding allowance
# (``KINK_ULPS * eps * e``, as a condition's, Note [Kinks in the scalar evaluator]) or its band of a
# jump may land on the other side in a correct evaluation, and the result then differs by the
# jump.  torch's ``fmod(x, 0.7)`` in bfloat16 divides by 0.7 rounded to bfloat16 (0.69921875), so
# at x = 0.69921875 it returns 0 where the exact x - trunc(x / 0.7) * 0.7 is x itself: the
# constant's rounding is in the argument's bound, and the band is the one jump.  Each step
# function is non-decreasing, so the band is ``f(v) - f(v - lo - s)`` below and
# ``f(v + hi + s) - f(v)`` above; an exact argument off its jumps gets none.


def _step(fn, a: Approx, ctx: Ctx) -> Approx:
    out = Approx(fn(a.v), 0.0)  # an integer the dtype holds: exact, moved only by a jump (the band)
    slack = KINK_ULPS * ctx.eps * np.asarray(a.e, np.float64)
    below, above = a.sides()
    with np.errstate(invalid="ignore"):
        lo = out.v - fn(a.v - below - slack)
        hi = fn(a.v + above + slack) - out.v
    lo, hi = (np.where(np.isfinite(t), t, 0.0) for t in (lo, hi))
    return Approx(out.v, out.e, lo, hi)


# Note [Exact integer sums]
# A sum of exact integers (``floor(ix) + 1``, a grid corner) is exact in floating point while its
# terms and result stay below 2**p (p the dtype's significand bits); charged a rounding as any sum,
# the corner 4 of ``floor(ix) + 1 < 4`` became uncertain, every bilinear sample on the image's
# edge a kinked unit (Note [Exact orderings of values]).  Such a sum keeps a zero bound.
_SIGNIFICAND = {"float64": 53, "float32": 24, "float16": 11, "bfloat16": 8}


def _exact_integers(out: Approx, terms: list, ctx: Ctx) -> Approx:
    if out.banded or any(t.banded or np.any(t.e) for t in terms):
        return out
    limit = 2.0 ** _SIGNIFICAND.get(ctx.dtype, 8)
    with np.errstate(invalid="ignore"):
        exact = all(np.all((np.floor(t.v) == t.v) & (np.abs(t.v) < limit)) for t in terms)
        exact = exact and np.all(sum(np.abs(t.v) for t in terms) < limit)
    if not exact:
        return out
    # the exact sum, not ``out.v``: during a statistical rerun ``add`` moved ``out.v`` by the rounding
    # this sum does not have (floor(ix) + 1 = 8 became 7.9999999925, the grid corner's ``< 8`` flipped,
    # a corner outside the image joined the sample, and the reruns' spread swamped every allowance)
    v = np.zeros(np.shape(out.v))
    for t in terms:
        v = v + t.v
    return Approx(v, 0.0)


def _with_band(v, e, slope, a: Approx) -> Approx:
    """A smooth function of ``a``: its band carried through the (signed) slope, to first order."""
    if not a.banded:
        return Approx(v, e)
    return Approx(v, e, *signed_band(np.where(np.isfinite(slope), slope, 0.0), a.lo, a.hi))


def _pow(expr, env, ctx, memo) -> Approx:
    base, exp = expr.args
    b = _eval(base, env, ctx, memo)
    if exp.is_Integer:
        k = int(exp)
        v = b.v**k if k >= 0 else 1.0 / b.v ** (-k)
        slope = k * b.v ** (k - 1) if k != 0 else np.zeros(b.shape)
        roundings = 0 if k in (0, 1) else max(1, math.ceil(math.log2(abs(k)))) + (1 if k < 0 else 0)
        if k == -1:
            roundings = 1
        if k < -1:
            roundings = max(roundings, _half_power_roundings(k, ctx))
        return _with_band(rounded(v, roundings * size(v)), _power_error(k, v, b) + roundings * size(v), slope, b)
    if exp.is_Number:
        k = float(exp)
        v = b.v**k
        slope = k * b.v ** (k - 1)
        ulps = 1.0 if k in (0.5, -0.5) else library_ulps(ctx)  # sqrt/rsqrt round once (correctly rounded)
        ulps = max(ulps, _half_power_roundings(k, ctx))
        own = (ulps + (1 if k == -0.5 else 0)) * size(v)
        return _with_band(rounded(v, own), _power_error(k, v, b) + own, slope, b)
    x = _eval(exp, env, ctx, memo)  # b ** x = exp(x log b)
    v = b.v**x.v
    d_b = np.abs(x.v * b.v ** (x.v - 1))
    d_x = np.abs(v * np.log(np.where(b.v > 0, b.v, 1.0)))
    e = _through(d_b, b.e) + _through(d_x, x.e) + library_ulps(ctx) * size(v)
    v = rounded(v, library_ulps(ctx) * size(v))
    if not (b.banded or x.banded):
        return Approx(v, e)
    width = d_b * b.band() + d_x * x.band()
    return Approx(v, e, width, width)


def _power_error(k: float, v, b: Approx):
    """The base's error through ``x**k``: ``|k b**(k-1)| e_b`` written as ``|k| |v| e_b / |b|``, which
    stays finite where ``v`` is: the reciprocal of 6.5e-244 (a running sum's first entry, shifted by
    its axis' maximum) has a finite slope 2.3e486 only on paper, and ``inf * e`` had made its bound,
    and every entry summed from it, NaN."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        direct = _through(k * b.v ** (k - 1), b.e)
        via = abs(k) * np.abs(v) * (np.asarray(b.e, np.float64) / np.abs(b.v))
        return np.where((b.v != 0) & (np.asarray(v) != 0) & np.isfinite(via), via, direct)  # v = 0: underflowed


def _half_power_roundings(k: float, ctx: Ctx) -> float:
    """Roundings of ``x**k`` in a half check where torch's backward raises a rounded result to a
    power: rsqrt's derivative ``-r**3 / 2`` and reciprocal's ``-r**2`` amplify the rounding of ``r``
    ``|k|``-fold in the half dtype, on top of the power's own (Note [Half-precision allowance])."""
    if ctx.dtype not in ("float16", "bfloat16") or k in (0.5, -0.5) or (k >= 0 and float(k).is_integer()):
        return 0.0
    return math.ceil(abs(k)) + 1.0


def _as_piecewise(expr):
    a = expr.args
    if isinstance(expr, sp.Abs):
        return sp.Piecewise((a[0], a[0] > 0), (0, sp.Eq(a[0], 0)), (-a[0], True))
    if isinstance(expr, sp.sign):
        return sp.Piecewise((1, a[0] > 0), (0, sp.Eq(a[0], 0)), (-1, True))
    if isinstance(expr, sp.Heaviside):
        return sp.Piecewise((1, a[0] > 0), (0, True))
    if isinstance(expr, (sp.Max, sp.Min)):
        out = a[0]
        for other in a[1:]:
            cond = out >= other if isinstance(expr, sp.Max) else out <= other
            out = sp.Piecewise((out, cond), (other, True))
        return out
    raise NotImplementedError(expr)


_REL = {sp.StrictGreaterThan: np.greater, sp.StrictLessThan: np.less, sp.GreaterThan: np.greater_equal,
        sp.LessThan: np.less_equal, sp.Equality: np.equal, sp.Unequality: np.not_equal}


# Note [Exact orderings of values]
# An ordering on its kink (``x > 0`` at x = 0) is uncertain in a derivative: the one-sided
# derivatives differ there and torch's backward picks one by convention (relu'(0) = 0), which a right
# custom backward may pick otherwise.  A forward *value* has no convention: ``floor(u) >= 0`` at
# floor(u) = 0, both exact, is true in every evaluation.  Read as uncertain, grid_sample's in-bounds
# masks (``floor(ix) >= 0``, exact integers at 0) got a band of a whole bilinear weight at a third
# of their entries, every such entry became a kinked unit, and past MAX_KINK_UNITS the check fell
# back to entrywise bands wide enough to pass a 1e-3 scaled backward (a missed bug).  So in forward
# values (``Ctx.values``, set by the forward rule) an ordering is uncertain only where its operands
# can move (rounding or a band), as an (in)equality test always was -- but only where every operand
# is piecewise constant in the inputs (``rules._step_valued``: constants, floors, masks and their
# sums).  ``torch.where(x > 0, x, 0)`` at x = 0 has an operand that moves with x: there the tie is a
# kink, and a right backward taking relu'(0) = 1 passes (it failed while every exact tie in a value
# was certain; tests/test_adversarial_functions.py).


# Note [Equalities at a kink]
# abs' is Piecewise((1, x > 0), (0, Eq(x, 0)), (-1, True)): torch's sign(0) = 0 sits on its own
# branch.  An equality of exact values is certain (a 0/1 mask against 0 flips only if it can move),
# so at x = 0 the middle branch settled the choice, the ordering before it was uncertain (a kink)
# and the branch after it was never possible: the band was [0, 1], and a right backward taking the
# left side, ``grad * where(x > 0, 1, -1)`` (an L1 loss's at a zero residual), failed on the op graph
# while the exploded engine allowed [-1, 1].  In a derivative, an equality that holds exactly where
# an earlier branch's ordering is on its kink, with operands that move with the inputs (``Ctx.moving``:
# arguments that are not piecewise constant, ``rules._step_valued``), is torch's convention at that
# kink, not a certainty: the branches after it are possible too.  An equality with no kink before
# it (xlog1py's guard at x = 0, where the value is continuous and the guard's 0 no side) and masks
# stay certain.
def _moving_equality(cond, ctx) -> bool:
    return (isinstance(cond, (sp.Equality, sp.Unequality)) and not ctx.values and bool(ctx.moving)
            and bool(cond.free_symbols & ctx.moving))


def _condition(cond, env, ctx, memo) -> tuple[np.ndarray, np.ndarray]:
    """(truth, uncertain) of a condition at every entry (Note [Kinks in the scalar evaluator])."""
    if cond is sp.true:
        return np.bool_(True), np.bool_(False)
    if cond is sp.false:
        return np.bool_(False), np.bool_(False)
    if type(cond) in _REL:
        lhs, rhs = (_eval(s, env, ctx, memo) for s in cond.args)
        diff = lhs.v - rhs.v
        truth = _REL[type(cond)](lhs.v, rhs.v)
        # comparing is exact: only the operands' own rounding (and bands) can move an entry across.
        # An ordering (x > 0) is on its kink when the operands are equal; an (in)equality test of
        # exact values (a 0/1 mask against 0) is not: it only flips if its operands can move.
        slack = KINK_ULPS * ctx.eps * (lhs.e + rhs.e) + lhs.band() + rhs.band()
        if isinstance(cond, (sp.Equality, sp.Unequality)) or ctx.values:  # Note [Exact orderings of values]
            return truth, (slack > 0) & (np.abs(diff) <= slack)
        return truth, np.abs(diff) <= slack
    if isinstance(cond, (sp.And, sp.Or)):
        parts = [_condition(c, env, ctx, memo) for c in cond.args]
        op = np.logical_and if isinstance(cond, sp.And) else np.logical_or
        truth, unc = parts[0]
        for t, u in parts[1:]:
            truth, unc = op(truth, t), np.logical_or(unc, u)
        return truth, unc
    if isinstance(cond, sp.Not):
        t, u = _condition(cond.args[0], env, ctx, memo)
        return np.logical_not(t), u
    raise NotImplementedError(f"condition {sp.sstr(cond)[:60]}")


def _piecewise(expr, env, ctx, memo) -> Approx:
    values, truths, uncs = [], [], []
    for branch, cond in expr.args:
        values.append(_eval(branch, env, ctx, memo))
        t, u = _condition(cond, env, ctx, memo)
        truths.append(t)
        uncs.append(u)
    shape = np.broadcast_shapes(*(v.shape for v in values), *(np.shape(t) for t in truths))
    taken = np.zeros(shape, bool)
    settled = np.zeros(shape, bool)  # an earlier branch holds for certain
    kinked = np.zeros(shape, bool)  # an earlier branch's condition is uncertain (a kink)
    v = np.zeros(shape)
    e = np.zeros(shape)
    picks = []
    for (_, cond), val, t, u in zip(expr.args, values, truths, uncs):
        t, u = np.broadcast_to(t, shape), np.broadcast_to(u, shape)
        if kinked.any() and _moving_equality(cond, ctx):  # Note [Equalities at a kink]
            u = u | (kinked & t)
        now = t & ~taken
        v = np.where(now, val.v, v)
        e = np.where(now, val.e, e)
        possible = (t | u) & ~settled
        picks.append(possible)
        taken |= now
        settled |= t & ~u
        kinked |= u & ~settled
    lo, hi = np.zeros(shape), np.zeros(shape)
    for val, possible in zip(values, picks):
        val_lo, val_hi = val.sides()
        with np.errstate(invalid="ignore"):
            below = np.where(possible, v - (val.v - val_lo), 0.0)  # how far under the taken value it may go
            above = np.where(possible, (val.v + val_hi) - v, 0.0)
        lo = np.maximum(lo, np.where(np.isfinite(below), below, 0.0))
        hi = np.maximum(hi, np.where(np.isfinite(above), above, 0.0))
        e = np.where(possible, np.maximum(e, np.where(np.isfinite(val.e), val.e, 0.0)), e)
    return Approx(v, e, lo, hi)
