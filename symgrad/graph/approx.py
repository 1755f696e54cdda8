"""Values with a first-order rounding bound and a kink band: the arithmetic of the tensor back end.

# Note [Approx arithmetic]
Every value the tensor back end computes is an :class:`Approx` ``(v, e, b)``:

* ``v``: the value, computed in float64 from exact inputs;
* ``e``: a running rounding-error bound in units of the checked dtype's machine epsilon: a correct
  evaluation of the same computation in that dtype errs by at most (to first order) ``eps * e``
  on each entry.  Inputs and parameters are exact (``e = 0``); every operation adds its own
  rounding, bounded by the size of what it computes (for a sum: the size of its *terms*, so a sum
  that cancels keeps its terms' error), to its arguments' errors carried through the absolute
  values of its partial derivatives (Wilkinson's running error analysis);
* ``b``: a kink band, absolute: where an argument sits on (or within rounding of) a point where a
  piecewise function jumps, ``b`` is how far the value may move when the other branch is taken.
  A derivative evaluated there carries the jump of its one-sided values; products and sums carry
  bands as they carry errors, so a gradient entry's band is the sum of the ranges of every kinked
  unit that feeds it (independent choices add up).

Every rule of the back end, forward and derivative alike, is written in this arithmetic, so the
derivative's own evaluation (the way torch's backward computes it) is bounded by the same rules as
the forward.  Nothing here looks at torch's numbers: the bound comes from the computation's
structure and the exact values alone (the guide's "no allowance from the code under test").
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np

from ..compare.compare import EPS
from .fastdot import FAST_MIN_WORK, dot, dots  # noqa: F401 - FAST_MIN_WORK re-exported

__all__ = ["Approx", "scale_free", "exact", "perturbing_now", "rounded_input", "wide_now", "stored_as", "smallest_normal", "add", "mul", "scale", "einsum", "dot", "dots", "reduce_sum", "sequential_sum", "unbroadcast", "summation_factor", "rerun_share", "in_sequence",
           "rounded", "rounded_constant", "accumulating", "accumulated", "kernel"]

# While a statistical rerun is under way (Note [Statistical allowance] in montecarlo.py): a function
# (value, own rounding bound in units of eps) -> the value moved by one random-signed rounding.
_PERTURB = None


def rounded(v, own):
    """``v``; during a statistical rerun, ``v`` moved by ``±eps * own`` (a random sign per entry):
    every site where an operation adds its *own* rounding calls this with that rounding's bound."""
    return v if _PERTURB is None else _PERTURB(v, own)


def rounded_input(v, own):
    """``rounded`` for a backward error moving a matrix (Note [Linalg in the reruns] in linalg.py):
    equal entries share a sign, and entries a power of two apart do not."""
    return v if _PERTURB is None else _PERTURB(v, own, whole=True)


def perturbing_now() -> bool:
    """Whether a statistical rerun is under way (``rounded`` moves values)."""
    return _PERTURB is not None


def rounded_constant(key, v, own):
    """A constant's representation error: one random sign per constant and rerun, shared by every
    use (the same rounded constant is used everywhere)."""
    return v if _PERTURB is None else _PERTURB(v, own, key)

# Note [Half-precision accumulation]
# torch adds up float16 and bfloat16 in float32: its CPU reductions (sum, the sum inside mean,
# cumsum) keep an accumulator of acc_type<Half/BFloat16> = float, its matrix products (cpublas's
# gemm with an opmath accumulator, mkldnn's bf16 gemm) accumulate in float32, and each rounds once
# to the half dtype when it stores the result.  So in a half check a sum of n terms (a ``reduce``
# node, a contraction, the sum over a broadcast axis in a backward) is charged one rounding of its
# result plus log2(n) roundings of float32 on its terms' sizes, in units of the checked eps
# (``eps32 / eps``, 2**-16 in bfloat16) -- not log2(n) half roundings on its terms, which would
# allow a sum that cancels (a softmax's gradient) tens of percent.  Sums torch does with rounded
# additions stay at one half rounding per add: elementwise adds (``add``), gradients accumulated
# over a tensor's uses, and index_add's scatter (``_vjp_select`` in rules_tensor.py, by summation_factor).
# The engine sets the ratio for the duration of an evaluation (``accumulating``, from Ctx.dtype).
_ACCUMULATION: contextvars.ContextVar = contextvars.ContextVar("symgrad_accumulation", default=None)
EPS32 = 2.0**-23


@contextlib.contextmanager
def accumulating(dtype: str, eps: float):
    """Within: sums and contractions accumulate as torch's kernels do in ``dtype`` (the Note)."""
    token = _ACCUMULATION.set(EPS32 / eps if dtype in ("float16", "bfloat16") else None)
    checked = _CHECKED.set(dtype)
    try:
        yield
    finally:
        _ACCUMULATION.reset(token)
        _CHECKED.reset(checked)


# CPU kernels that add up in the half dtype itself: col2im's overlapping patches (a transposed
# convolution's forward, a convolution's input gradient) and a convolution's weight gradient, and
# the 3-d adaptive average pool's running sum (measured: errors of 5-50 ulps where float32
# accumulation gives under one).  Within their nodes sums count as half roundings, log2(n) on the
# terms' sizes.  A convolution's own forward (im2col and a float32 gemm) rounds once: measured in
# bfloat16 and float16 over conv1d/2d/3d, strided, dilated and grouped, torch's output is the exact
# result rounded once at 99.8-100 % of entries.  So a convolution's sums are half in its backward
# sweep and, for a transposed one (its contraction marked ``_col2im``), in its forward too.
HALF_ACCUMULATING = ("aten._adaptive_avg_pool3d", "aten.adaptive_avg_pool3d", "aten._trilinear")
CONVOLUTION = "aten.convolution"


# Note [Sequential scans]
# torch's CPU running sums (cumsum, its backward -- a reversed cumsum -- and logcumsumexp) add one
# term at a time: the entry at position i carries up to i roundings on the sizes of its terms, not
# the log2 i of a blocked sum.  The accumulator is double for float32 and float64 (ATen's CPU
# acc_type), float for the half dtypes: measured, a float32 cumsum of 10**5 entries is within one
# float32 rounding of the exact sum, and so is its backward (a cumsum; ``_scan_double``).  A float32
# logcumsumexp's backward is a formula of float32 pieces (exp(logcumsumexp(log g - out) + x)): its
# sums keep the blocked bound of the whole axis, log2 n (a double accumulator charged too little:
# torch's own op failed 2 of 4 seeds at |x| ~ 30; the log2 k of each block, 3 of 3 at n = 2,000).
# The nodes of a running sum (graph/aten_scan.py) carry ``_scan`` = the axis' length, and within them
# a sum of any length is charged that many roundings (in the accumulator's precision: Note
# [Half-precision accumulation]).  Charged as the
# worst case, so an entry's allowance covers every order of the additions; in float64 at n = 10**5
# that is 1e-11 of the terms' sizes.
_SCAN: contextvars.ContextVar = contextvars.ContextVar("symgrad_scan", default=None)
_CHECKED: contextvars.ContextVar = contextvars.ContextVar("symgrad_checked", default=None)
EPS64 = 2.0**-52


# Note [Sequential reverse sums]
# Some of torch's CPU backward kernels add a gradient up one term at a time, where ``reduce_sum``
# charges a blocked sum's log2 n roundings.  Measured against the exact sum, in units of eps on the
# terms' sizes: a float32 convolution's bias gradient (oneDNN), 377 at 64 x 64 positions and 1,863
# at 128 x 128 (log2 n: 12 and 14); layer_norm's bias gradient over 16,384 rows, 594 in float32 and
# 254 in float64 (its weight's up to 3 times log2 n); an embedding's gradient, 75 at 16,384 lookups
# of 10 rows and 202 at 4,096 of one row.  After a global average pool, or a constant cotangent,
# the terms are equal numbers and their roundings add up coherently (n / 10).  torch's own CNN (conv,
# relu, mean over 4,096 positions), layer_norm over 16,384 rows and an embedding over a small
# vocabulary failed.  So the nodes whose reverse sums torch adds so carry ``_sequential`` (the
# dtypes it does so in: the convolution's bias add, float32; layer_norm's weight and bias, float32
# and float64, marked while tracing its decomposition, trace.sequential_sums; an embedding's lookup,
# float32 and float64), and in their reverse rules a sum of n terms is charged as a sequential scan,
# n - 1 roundings on its terms' sizes (a lookup's: each entry its own count).  Half precision mostly
# keeps its float32 accumulators (under one unit measured), but layer_norm's CPU backward adds its
# weight and bias gradients row by row in the half dtype itself (its bias gradient equals that sum at
# every entry, 1 thread; torch's own float16 layer_norm over 512 rows failed), so there its sums are
# charged n - 1 half roundings; a convolution's weight gradient (a contraction:
# 25 units at 4,096 positions, 46 at 16,384) keeps its own charge.
# That bound is one coherent error, not many independent ones.  Moved by all of it with a random sign
# per rerun, LAMBDA = 8 standard deviations of the reruns (Note [Statistical allowance]) would allow
# it eight times over (a bias backward off by 1e-3 passed at 4,096 positions), so in the reruns it
# moves by ``COHERENT_SHARE`` = 1/8 of it: eight standard deviations of it alone are its bound, and
# with the other roundings the allowance lies between the larger of the two parts and their sum.
COHERENT_SHARE = 1 / 8


def in_sequence() -> bool:
    """Whether the sums of the rule running now are torch's one-term-at-a-time sums (Note
    [Sequential reverse sums])."""
    return _SCAN.get() == (None, True)


def rerun_share() -> float:
    """How much of a sum's own rounding bound a statistical rerun moves it by (Note [Sequential reverse sums])."""
    return COHERENT_SHARE if in_sequence() else 1.0


# Note [Nodes computed in a wider dtype]
# A half-precision kernel often computes in float32 inside: ``z = x.float() + b.float()``, the
# activation in float32, ``.to(x.dtype)`` once at the end (Megatron's and apex's fused bias-GELU,
# Llama's RMSNorm in a bfloat16 model).  Charged one rounding unit per check, every float32 step was
# charged a bfloat16 rounding (65,536 of its own), the cancellation in ``1 + tanh(u)`` made the
# bound 1,238 times the gradient, and a bfloat16 GELU backward whose cubic term was a third of its
# size passed at 8 x 128 x 512.  So each node notes the dtype torch computed it in (``_dtype``, from
# its traced value; an input's or parameter's is its tensor's, interpret.to_graph), and its rules
# charge their own roundings in that dtype's eps, in the check's units (``size`` and
# ``accumulated`` scale by the ratio; the smallest normal is the node's): a forward rule in the
# node's dtype, a reverse rule in the narrowest of the node's and its arguments' (a cotangent is
# rounded to its argument's dtype; a constant counts as the check's), and the cotangents of a
# tensor's uses add up in the tensor's dtype (``stored_as``), as torch accumulates them.  A cast is
# a node of its own (aten.py): narrowing, its forward rounds once in the narrow dtype; widening, it
# is exact forward and its reverse rule, in the narrow dtype, rounds the cotangent down; a value
# stored into a narrower tensor (``copy_``, setitem) is such a cast.  Each entry's own-size rounding
# in the compare is the stored tensor's (compare.py ``_own_roundings``): a float32 model with a
# bfloat16 island, a check of bfloat16, hid a float32 backward 1e-3 off under 1.5 bfloat16
# roundings of each entry.  Constants keep the check's dtype's representation error (more than a
# float32 constant's: sound).  Only the user's own code's dtypes count: a decomposition the trace
# applies (glu, std, instance_norm, elu) may upcast a half input to float32 inside where torch's
# kernel and backward formula do not, and charged float32 there torch's own half glu, std,
# instance_norm, batch_norm and in-place elu failed on most seeds; its nodes (DECOMPOSED, trace.py)
# keep the check's dtype and its casts stay the identity.
_WIDE: contextvars.ContextVar = contextvars.ContextVar("symgrad_wide", default=None)  # (ratio, smallest normal)


def wide_now() -> bool:
    """Whether the rule running now computes in a dtype wider than the check's (Note [Nodes computed in a wider dtype])."""
    return _WIDE.get() is not None


def _node_dtype(node, backward: bool, tangent: bool = False):
    """The dtype ``node``'s forward (reverse, tangent) rule computes in; None: the check's."""
    own = node.attrs.get("_dtype")
    if tangent:
        own = node.attrs.get("_tangent_dtype", own)  # forward mode in aten ops (aten.computed_in_float32)
    if own is None or not backward:
        return own
    narrowest = own
    for a in node.args:
        d = a.attrs.get("_dtype")  # an input's or parameter's: its tensor's (interpret.to_graph)
        if d is None:
            return None  # an argument in the check's dtype (a constant)
        if EPS.get(d, 0.0) > EPS.get(narrowest, 0.0):
            narrowest = d
    return narrowest


def _wide_token(node, backward: bool, tangent: bool = False):
    checked = _CHECKED.get()
    dtype = _node_dtype(node, backward, tangent)
    if dtype is None or checked not in EPS or dtype not in EPS:
        return None
    ratio = EPS[dtype] / EPS[checked]
    if ratio >= 1.0:
        return None
    return _WIDE.set((ratio, SMALLEST_NORMAL[dtype]))


@contextlib.contextmanager
def stored_as(node):
    """Within: roundings charged in ``node``'s own dtype (a cotangent accumulated for it: torch adds
    the gradients of a tensor's uses in that tensor's dtype)."""
    token = _wide_token(node, False)
    try:
        yield
    finally:
        if token is not None:
            _WIDE.reset(token)


@contextlib.contextmanager
def kernel(node, backward: bool = False, tangent: bool = False):
    """Within: the sums of ``node`` (from torch op ``node.origin``) in its forward rule (its tangent
    rule with ``tangent``), or in its reverse rule with ``backward`` (Note [Half-precision
    accumulation], Note [Sequential scans])."""
    origin = node.origin or ""
    half = origin.startswith(HALF_ACCUMULATING) or (
        origin.startswith(CONVOLUTION) and (backward or bool(node.attrs.get("_col2im"))))
    scan = node.attrs.get("_scan")
    tokens = []
    wide = _wide_token(node, backward, tangent)  # Note [Nodes computed in a wider dtype]
    if wide is not None:
        tokens.append((_WIDE, wide))
    if _ACCUMULATION.get() is not None and half:
        tokens.append((_ACCUMULATION, _ACCUMULATION.set(None)))
    if backward and _CHECKED.get() in node.attrs.get("_sequential", ()):  # Note [Sequential reverse sums]
        tokens.append((_SCAN, _SCAN.set((None, True))))
        if _ACCUMULATION.get() is not None:  # a half dtype's sums in that dtype itself
            tokens.append((_ACCUMULATION, _ACCUMULATION.set(None)))
    if not backward and node.attrs.get("_sequential_forward"):  # Note [Many entries landing at one place]
        tokens.append((_SCAN, _SCAN.set((None, True))))  # in aten_ext.py; its rerun share (sequential_sum)
    if scan:
        float32, double = _CHECKED.get() == "float32", bool(node.attrs.get("_scan_double"))
        # in float32 a sum that torch does not add in double keeps the blocked bound of the whole axis
        tokens.append((_SCAN, _SCAN.set((int(scan), double or not float32))))
        if float32 and double:  # a double accumulator, rounded once to float32
            tokens.append((_ACCUMULATION, _ACCUMULATION.set(EPS64 / EPS32)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


# Note [Rounding below the normal range]
# A rounding errs by eps times the size of its result only down to the dtype's smallest normal
# number; below it the spacing is fixed (6e-8 in float16).  torch's float16 gelu double backward at
# x = 5.7 rounds exp(-x**2 / 2) to one spacing (exact 4.3e-8) and multiplies it by x**2 = 32: 9
# spacings off, where the bound (eps times 4.3e-8) had allowed a fraction of one; so had a float16
# silu backward's sigmoid at x = -15 times 15.  Each rounding's own bound is charged on
# ``size(v)``: |v|, but at least the checked dtype's smallest normal number where v is not 0 (an
# exact 0 stays exact), so an underflowed intermediate carries its absolute spacing through the
# products after it.
# The limits at a cone point (Note [Cone points] in cones.py) are taken at inputs moved by a tiny
# step, which a half check's dtype could not even hold; the limit is the same at any step, so roundings
# there are charged on |v| alone (``scale_free``).
SMALLEST_NORMAL = {"float16": 2.0**-14, "bfloat16": 2.0**-126, "float32": 2.0**-126, "float64": 2.0**-1022}
_SCALE_FREE: contextvars.ContextVar = contextvars.ContextVar("symgrad_scale_free", default=False)


@contextlib.contextmanager
def scale_free():
    """Within: no rounding is charged below the normal range (limits at moved points)."""
    token = _SCALE_FREE.set(True)
    try:
        yield
    finally:
        _SCALE_FREE.reset(token)


@contextlib.contextmanager
def checking(dtype: str):
    """Within: roundings are charged as in a ``dtype`` check (Note [Rounding below the normal range]),
    for sweeps that do not model the kernels' accumulation (the Hessian-vector sweep)."""
    token = _CHECKED.set(dtype)
    try:
        yield
    finally:
        _CHECKED.reset(token)


def smallest_normal() -> float | None:
    """The smallest normal number of the dtype the rule running now computes in (None: no check)."""
    wide = _WIDE.get()
    return wide[1] if wide is not None else SMALLEST_NORMAL.get(_CHECKED.get())


def size(v):
    """The size a rounding of ``v`` is charged on (Note [Rounding below the normal range]), in the
    check's units (Note [Nodes computed in a wider dtype])."""
    a = np.abs(v)
    wide = _WIDE.get()
    tiny = SMALLEST_NORMAL.get(_CHECKED.get()) if wide is None else wide[1]
    if tiny is not None and not _SCALE_FREE.get():
        with np.errstate(invalid="ignore"):
            a = np.where((a > 0) & (a < tiny), tiny, a)
    return a if wide is None else wide[0] * a


def accumulated(roundings: float, terms, result):
    """The rounding of a sum: ``roundings`` (log2 n, plus a product's own) on the terms' sizes
    ``terms``; in a half check those in float32 and one half rounding of ``result`` (the Note); in a
    node computed in a wider dtype, that dtype's (Note [Nodes computed in a wider dtype])."""
    wide = _WIDE.get()
    if wide is not None:
        return wide[0] * roundings * terms if roundings else roundings * terms
    ratio = _ACCUMULATION.get()
    if ratio is None or not roundings:
        return roundings * terms
    return ratio * roundings * terms + size(result)


def summation_factor(n: int) -> float:
    """Roundings charged for adding ``n`` terms: pairwise/blocked summation errs by about
    ``log2 n`` units on the sum of the terms' sizes (at least one rounding when n > 1); within a
    sequential scan of length L, L units (Note [Sequential scans])."""
    if n <= 1:
        return 0.0
    scan = _SCAN.get()
    if scan is not None:
        length, sequential = scan
        length = n if length is None else length  # None: the sum itself is the scan (Note [Sequential reverse sums])
        return float(max(length - 1, 1)) if sequential else max(1.0, math.ceil(math.log2(length)))
    return max(1.0, math.ceil(math.log2(n)))


class Approx:
    """A value, its rounding bound (units of eps) and its kink band (absolute, one-sided: the value
    may lie anywhere in ``[v - lo, v + hi]``); see the Note."""

    __slots__ = ("v", "e", "lo", "hi")

    def __init__(self, v, e=None, lo=None, hi=None):
        self.v = np.asarray(v, dtype=np.float64)
        self.e = np.zeros(self.v.shape) if e is None else np.broadcast_to(np.asarray(e, np.float64), self.v.shape)
        if (lo is None or not np.any(lo)) and (hi is None or not np.any(hi)):
            self.lo = self.hi = None
        else:
            zero = np.zeros(self.v.shape)
            self.lo = zero if lo is None else np.broadcast_to(np.asarray(lo, np.float64), self.v.shape)
            self.hi = zero if hi is None else np.broadcast_to(np.asarray(hi, np.float64), self.v.shape)

    @property
    def shape(self) -> tuple:
        return self.v.shape

    @property
    def banded(self) -> bool:
        return self.lo is not None

    def band(self) -> np.ndarray:
        """The band's whole width (either side)."""
        return np.zeros(self.v.shape) if self.lo is None else self.lo + self.hi

    def sides(self) -> tuple:
        zero = np.zeros(self.v.shape)
        return (zero, zero) if self.lo is None else (self.lo, self.hi)

    def map(self, fn) -> "Approx":
        """A layout change (reshape, permute, expand, index) applied to value, error and band."""
        if self.lo is None:
            return Approx(fn(self.v), fn(self.e))
        return Approx(fn(self.v), fn(self.e), fn(self.lo), fn(self.hi))

    def __repr__(self) -> str:
        return f"Approx(shape={self.shape}, max|v|={np.max(np.abs(self.v), initial=0):.3g})"


def exact(v) -> Approx:
    return Approx(v)


def charged(a: Approx, own) -> Approx:
    """``a`` charged one more rounding of bound ``own`` (units of eps): its bound grows by it, a rerun
    moves its value by it (``rounded``), its band stays."""
    return Approx(rounded(a.v, own), a.e + own, a.lo, a.hi)


def signed_band(slope, lo, hi) -> tuple:
    """The band of ``slope * a`` from ``a``'s band ``[a - lo, a + hi]`` (a negative slope swaps sides)."""
    pos, neg = np.maximum(slope, 0.0), np.maximum(-slope, 0.0)
    return pos * lo + neg * hi, pos * hi + neg * lo


# Note [An exact infinity]
# A masked score is an exact -inf (``masked_fill(mask, -inf)``, an attention mask).  ``x - lse`` at
# such an entry is exactly -inf, and exp of it exactly 0: nothing rounds.  Charged its own size as
# a rounding, the sum's bound was inf, and exp's bound ``exp'(-inf) * inf`` was NaN -- and the NaN
# spread through logsumexp's sum to every entry of the row, so the worst-case bound was lost and
# the statistical allowance alone judged torch's float16 logsumexp over masked scores (a false
# alarm at 3 ulps).  A sum that is infinite because an exact infinite operand is, is exact; a
# finite sum that overflows keeps its infinite bound (Note [Astronomical values] in rules.py).
def add(a: Approx, c: Approx, sign: float = 1.0) -> Approx:
    """``a + sign*c``: one rounding, on the size of the result (the terms' errors carry their size)."""
    v = a.v + sign * c.v
    own = size(v)
    if np.isinf(own).any():  # Note [An exact infinity]: a mask's -inf plus a finite number is exactly -inf
        exact_inf = (np.isinf(a.v) & (a.e == 0)) | (np.isinf(c.v) & (c.e == 0))
        own = np.where(np.isinf(v) & exact_inf, 0.0, own)
    v = rounded(v, own)
    if not (a.banded or c.banded):
        return Approx(v, a.e + c.e + own)
    (al, ah), (cl, ch) = a.sides(), c.sides()
    lo, hi = (al + cl, ah + ch) if sign > 0 else (al + ch, ah + cl)
    return Approx(v, a.e + c.e + own, lo, hi)


def mul(a: Approx, c: Approx) -> Approx:
    v = rounded(a.v * c.v, size(a.v * c.v))
    e = np.abs(a.v) * c.e + a.e * np.abs(c.v) + size(v)
    if not (a.banded or c.banded):
        return Approx(v, e)
    (al, ah), (cl, ch) = a.sides(), c.sides()
    lo1, hi1 = signed_band(c.v, al, ah)
    lo2, hi2 = signed_band(a.v, cl, ch)
    cross = (al + ah) * (cl + ch)  # both move: bounded on either side
    return Approx(v, e, lo1 + lo2 + cross, hi1 + hi2 + cross)


def scale(a: Approx, k: float, exact_scale: bool | None = None) -> Approx:
    """``k * a`` for a Python number ``k``; a power of two (or ±1) scales without rounding."""
    v = k * a.v
    if exact_scale is None:
        m, _ = math.frexp(abs(k)) if k else (0.5, 0)
        exact_scale = m == 0.5
    e = abs(k) * a.e + (0.0 if exact_scale else size(v))
    if not exact_scale:
        v = rounded(v, size(v))
    if not a.banded:
        return Approx(v, e)
    lo, hi = signed_band(np.float64(k), a.lo, a.hi)
    return Approx(v, e, lo, hi)


def abs_einsum(spec: str, *arrays):
    return dot(spec, *arrays)


_VALUES_ONLY: ContextVar[bool] = ContextVar("symgrad_values_only", default=False)


@contextmanager
def values_only():
    """Within the block contractions compute their value alone, with no rounding bound or band:
    the adjoint cross-check reads only values (Note [Adjoint cross-check])."""
    token = _VALUES_ONLY.set(True)
    try:
        yield
    finally:
        _VALUES_ONLY.reset(token)


def _bound_terms(spec: str, ops, absv: list, c: float, errs: list, bilinear: bool, whole: bool) -> dict:
    """The contractions of einsum's bound: ``"whole"`` |A_1|…|A_n| (where wanted), ``"bilinear"``
    (two operands) and, per other operand ``i`` with an error, |A_1|…e(A_i)…|A_n|.  With two
    operands they go through ``dots``, so an operand they share (|A| in a rerun's own rounding and
    in the bilinear bound) is rearranged for BLAS once; the products are the same."""
    n = len(ops)
    wanted: dict = {}
    if whole:
        wanted["whole"] = list(absv)
    rest = errs
    if bilinear:
        if errs[-1] == 1:
            wanted["bilinear"] = [absv[0], c * absv[1] + ops[1].e]
        else:
            wanted["bilinear"] = [c * absv[0] + ops[0].e, absv[1]]
        rest = errs[:-1]
    for i in rest:
        wanted[i] = [ops[i].e if j == i else absv[j] for j in range(n)]
    if n != 2:
        return {key: abs_einsum(spec, *arrays) for key, arrays in wanted.items()}
    return dict(zip(wanted, dots(spec, [tuple(arrays) for arrays in wanted.values()])))


def einsum(spec: str, *ops: Approx) -> Approx:
    """A contraction; each output entry is a sum of ``k`` products (``k`` = the summed extent):
    ``e = Σ_i |A_1|…e(A_i)…|A_n| + (n - 1 + log2 k) |A_1|…|A_n|``."""
    if _VALUES_ONLY.get():
        return Approx(dot(spec, *(o.v for o in ops)))
    ins, out = spec.split("->")
    subs = ins.split(",")
    sizes = {}
    for s, op in zip(subs, ops):
        for ch, n in zip(s, op.shape):
            sizes[ch] = n
    summed = set("".join(subs)) - set(out)
    k = int(np.prod([sizes[ch] for ch in summed])) if summed else 1
    v = dot(spec, *(o.v for o in ops))
    absv = [np.abs(o.v) for o in ops]
    c = len(ops) - 1 + summation_factor(k)
    errs = [i for i, o in enumerate(ops) if np.any(o.e)]
    # bilinear: c |A|.|B| + |A|.e_B = |A|.(c |B| + e_B) (or (c |A| + e_A).|B|), one contraction
    # fewer for the same bound
    bilinear = len(ops) == 2 and bool(errs) and _ACCUMULATION.get() is None
    terms = _bound_terms(spec, ops, absv, c, errs, bilinear, whole=_PERTURB is not None or not bilinear)
    if _PERTURB is not None:  # a statistical rerun: the contraction's own rounding, on its own
        v = rounded(v, accumulated(c, terms["whole"], v))
    if bilinear:
        e = terms["bilinear"]
        errs = errs[:-1]
    else:
        e = accumulated(c, terms["whole"], v)
    for i in errs:
        e = e + terms[i]
    if not any(o.banded for o in ops):
        return Approx(v, e)
    lo, hi = np.zeros(v.shape), np.zeros(v.shape)
    for i, o in enumerate(ops):
        if not o.banded:
            continue
        if len(ops) == 1:
            lo, hi = lo + np.einsum(spec, o.lo), hi + np.einsum(spec, o.hi)
            continue
        # the other operands' signs decide which side a band lands on; a second banded operand
        # moves with it, bounded on both sides by the absolute products
        others = [ops[j] for j in range(len(ops)) if j != i]
        if len(others) == 1 and not others[0].banded:
            pos, neg = np.maximum(others[0].v, 0.0), np.maximum(-others[0].v, 0.0)
            pair = (lambda x, y: (x, y)) if i == 0 else (lambda x, y: (y, x))
            lo_pos, hi_neg, hi_pos, lo_neg = dots(spec, [pair(o.lo, pos), pair(o.hi, neg), pair(o.hi, pos),
                                                         pair(o.lo, neg)])
            lo = lo + lo_pos + hi_neg
            hi = hi + hi_pos + lo_neg
        else:
            width = abs_einsum(spec, *((o.band() if j == i else absv[j] + ops[j].band()) for j in range(len(ops))))
            lo, hi = lo + width, hi + width
    return Approx(v, e, lo, hi)


def reduce_sum(a: Approx, axes: tuple, keepdims: bool = False) -> Approx:
    """Sum over ``axes``: ``e = Σ e_i + log2(n) Σ |a_i|``."""
    if not axes:
        return a
    n = int(np.prod([a.shape[ax] for ax in axes]))
    v = a.v.sum(axis=axes, keepdims=keepdims)
    e = a.e.sum(axis=axes, keepdims=keepdims)
    f = summation_factor(n)
    if f:
        own = accumulated(f, np.abs(a.v).sum(axis=axes, keepdims=keepdims), v)
        v, e = rounded(v, own * rerun_share()), e + own
    if not a.banded:
        return Approx(v, e)
    return Approx(v, e, a.lo.sum(axis=axes, keepdims=keepdims), a.hi.sum(axis=axes, keepdims=keepdims))


def sequential_sum(a: Approx, axis: int, opmath: bool) -> Approx:
    """The sum over ``axis`` added one term at a time in its order, each add rounding on the size of
    its partial sum; ``opmath``: in a half check the adds are float32's and the sum is rounded once
    (Note [Many entries landing at one place] in aten_ext.py).  Adding an exact 0 rounds nothing."""
    v, e = a.v.sum(axis=axis), a.e.sum(axis=axis)
    later = (np.arange(a.shape[axis]) > 0).reshape([-1 if i == axis else 1 for i in range(a.v.ndim)])
    adds = later & ((a.v != 0) | (a.e != 0))
    own = np.where(adds, size(np.cumsum(a.v, axis=axis)), 0.0).sum(axis=axis)
    ratio = _ACCUMULATION.get() if opmath else None
    if ratio is not None:
        own = ratio * own + size(v)
    v = rounded(v, own * rerun_share())
    if not a.banded:
        return Approx(v, e + own)
    return Approx(v, e + own, a.lo.sum(axis=axis), a.hi.sum(axis=axis))


def unbroadcast(a: Approx, shape: tuple) -> Approx:
    """The adjoint of broadcasting ``shape`` to ``a.shape``: sum over the broadcast axes."""
    shape = tuple(shape)
    if a.shape == shape:
        return a
    lead = len(a.shape) - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape) if n == 1 and a.shape[lead + i] != 1)
    out = reduce_sum(a, axes, keepdims=True)
    return out.map(lambda t: t.reshape(shape))
