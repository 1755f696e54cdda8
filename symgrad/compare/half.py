"""The allowance of float16 and bfloat16 checks (issue 11 item 5): see the Note below."""

from __future__ import annotations

import numpy as np

__all__ = ["ROUNDING_ULPS", "rounding_ulps", "value_roundings", "subnormal_floor", "HALF_DTYPES", "HALF_ROUNDING_ULPS",
           "HALF_VALUE_ROUNDINGS", "HALF_SUBNORMAL_ROUNDINGS", "subnormal_rounding"]

ROUNDING_ULPS = 4.0  # float32 and float64: units of eps per counted rounding (Note [Tolerances] in compare.py)

# Note [Half-precision allowance]
# torch computes float16 and bfloat16 in float32 inside each kernel and rounds once, to nearest,
# when it stores the result (CPU kernels convert to their opmath type, float; CUDA's likewise):
# a correct half computation errs by at most one unit roundoff u = eps/2 per kernel it runs, plus
# float32 noise 2**16 (bfloat16) or 2**13 (float16) times smaller.  The rounding bound counts one
# rounding per operation of the closed form (Note [Rounding bound] in symgrad/lower/codegen.py,
# Note [Approx arithmetic] in symgrad/graph/approx.py), and a fused kernel (tanh_backward, gelu_backward,
# softmax) is several operations there: counting is an upper bound on torch's roundings.  So in half
# precision each counted rounding is allowed HALF_ROUNDING_ULPS = 5/8 of an eps (1.25 u: u itself
# and a quarter for second-order terms, (1 + u)**k - 1 - k u <= k (k - 1) u**2 / 2, a quarter of k u
# up to k = 33 roundings in bfloat16) instead of ROUNDING_ULPS = 4, which in half precision would
# allow 8 roundings per counted one (3 % in bfloat16) and hide a 1 % bug.  Sums and matrix products
# accumulate in float32 (Note [Half-precision accumulation] in symgrad/graph/approx.py).  An entry
# is allowed at least HALF_VALUE_ROUNDINGS roundings of its own value (torch rounds even a
# derivative the algebra simplified to a constant through its kernels), no more: at 1.5 (1.9 u, 0.73 %
# in bfloat16) a gradient off by 1 % still fails wherever torch's own error is below 0.27 %.
# float16's subnormals (|v| < 6.1e-5) round on an absolute spacing, 2**-24: every entry is allowed
# HALF_SUBNORMAL_ROUNDINGS of those besides.  In float32 and float64 the factor stays
# ROUNDING_ULPS = 4: there it costs nothing measurable.
HALF_ROUNDING_ULPS = 0.625
HALF_VALUE_ROUNDINGS = 1.5
HALF_DTYPES = ("float16", "bfloat16")
HALF_SUBNORMAL_ROUNDINGS = 4.0
# float32 and bfloat16 kernels compute in float32, whose subnormal intermediates a kernel may flush to
# 0 (torch's bfloat16 silu at x = -88 returns -0 where the exact value is -1.98e-37): such an entry
# is off by up to a few hundred of float32's smallest normal numbers, and is allowed 2**-118 (3e-36)
FLUSHED = {"float32": 2.0**-118, "bfloat16": 2.0**-118}
WIDE_SUBNORMAL_ROUNDINGS = 64.0  # float32, float64: nothing a gradient of a representable size hides in
SUBNORMAL_SPACING = {"float16": 2.0**-24, "bfloat16": 2.0**-133, "float32": 2.0**-149, "float64": 2.0**-1074}

# Note [Underflow floor]
# The relative rounding bound charges each operation eps times its size, which says nothing where a
# value underflows: a float32 softmax gradient whose exact value is 1.7e-283 (exp(-650) in a row with a
# logit of 750) is 0 in float32, and the float64 reruns of the statistical allowance (Note [Statistical
# allowance]) tightened that entry's allowance to 8e-290, so torch's own softmax failed.  Every dtype
# rounds below its smallest normal number on an absolute spacing (2**-149 in float32, 2**-1074 in
# float64), so every entry is allowed HALF_SUBNORMAL_ROUNDINGS of that spacing, as float16's always
# was: 5.6e-45 in float32, 2e-323 in float64, nothing a gradient of a representable size could hide in.
# A chain of operations on subnormal values errs by a spacing per operation, on both sides (the
# float64 reference rounds there too, and no relative bound sees it): a float64 logcumsumexp
# gradient of 1.7e-321 differed from torch's by 10 spacings.  float32 and float64 entries are
# allowed WIDE_SUBNORMAL_ROUNDINGS spacings (9e-44 and 3.2e-322); float16's spacing, 6e-8, is a
# size half-precision gradients have, and keeps 4.


def rounding_ulps(dtype: str) -> float:
    """Units of eps allowed per counted rounding of the bound (Note [Half-precision allowance])."""
    return HALF_ROUNDING_ULPS if dtype in HALF_DTYPES else ROUNDING_ULPS


def value_roundings(dtype: str) -> float:
    """How many roundings of its own size every entry's bound counts at least."""
    return HALF_VALUE_ROUNDINGS if dtype in HALF_DTYPES else 1.0


def subnormal_floor(dtype: str, e=None, a=None):
    """Subnormals round on an absolute spacing, not relative to their size (float16's below 6.1e-5,
    common in half-precision gradients, on 6e-8; bfloat16's and float32's below 1.2e-38): every
    entry is allowed HALF_SUBNORMAL_ROUNDINGS of that spacing (Note [Underflow floor]).  With the
    exact values ``e`` and autograd's ``a``, FLUSHED applies only where ``a`` lies between 0 and
    ``e``, or where ``a`` is below float32's normal range: a flush moves a value toward zero or leaves
    a subnormal remainder, it never makes a normal value of the other sign or a larger one (a float32
    backward returning -2x at x = 1e-37 passed under the floor)."""
    spacings = (HALF_SUBNORMAL_ROUNDINGS if dtype in HALF_DTYPES else WIDE_SUBNORMAL_ROUNDINGS) * SUBNORMAL_SPACING.get(dtype, 0.0)
    flushed = FLUSHED.get(dtype, 0.0)
    if flushed <= spacings or e is None or a is None:
        return max(spacings, flushed)
    with np.errstate(invalid="ignore"):
        # toward 0, or itself below float32's normal range: a kernel that flushed the dominant of two
        # tiny terms returns the other one, whatever its sign (torch's float32 mish' at x = -90 gives
        # +7e-40 where the exact value is -6.6e-38)
        toward_zero = ((a * e >= 0) & (np.abs(a) <= np.abs(e))) | (np.abs(a) < 2.0**-126)
    return np.where(toward_zero, flushed, spacings)


SMALLEST_NORMAL = {"float16": 2.0**-14, "bfloat16": 2.0**-126}


def subnormal_rounding(dtype: str) -> tuple:
    """(smallest normal number, the largest rounding error below it: half the subnormal spacing) of
    ``dtype``; (0, 0) where subnormals never matter (float32, float64)."""
    if dtype not in SMALLEST_NORMAL:
        return 0.0, 0.0
    return SMALLEST_NORMAL[dtype], SUBNORMAL_SPACING[dtype] / 2
