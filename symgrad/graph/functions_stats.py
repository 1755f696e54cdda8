"""Functions of the normal distribution and of moments that torch computes as kernels of their own:
a term centred on a running mean (var, std, the norms' moments), erfcx and log_ndtr, each with its
numpy kernel, its rounding and its derivative in the form torch evaluates it (registered with the
scalar evaluator, as in ``functions.py``)."""

from __future__ import annotations

import numpy as np
import sympy as sp

from ..lower.special import erfcx_kernel, log_ndtr_kernel
from .approx import Approx, add, charged, size
from .functions import DEFINITIONS, MpmathValued
from .scalar_kernels import FUNCTIONS, KERNEL_ULPS, NARY, ROOTED

__all__ = ["centred", "erfcx", "log_ndtr"]


# Note [A running mean's roundings]
# torch's var and std (and the moments of its layer and group norms) run a Welford-style update:
# each term is centred on the running mean of the terms before it, each of those means rounded on
# its own.  Centred on one rounded mean m, the graph's sum of squares is first-order blind to m's
# rounding (its move shifts every term alike and Σ (x - m) = 0), so the random-rounding reruns
# allowed a float64 var of rows with mean 1e4 and spread 1 thirty ulps, where torch's is off by
# 3.4e3 (about eps |m| / std, relative), and torch's own var failed its forward row.  So the
# centring is ``centred(x, m)`` = x - m, charged one more rounding on |m| per term, of its own
# (moved by the reruns as the difference's rounding is, a sign per entry): the per-term mean's.  In
# float64 only: torch's float32 var of the same rows is within 0.3 ulp (its moments accumulate in
# float64), and the charge there let a var jvp 1 % off pass at mean 1e4.
class centred(sp.Function):  # noqa: N801
    """x - m, a term centred on a running mean (Note [A running mean's roundings])."""

    def fdiff(self, argindex=1):
        return sp.Integer(1 if argindex == 1 else -1)


def _centred(args: list, ctx) -> Approx:
    x, m = args
    out = add(x, m, -1.0)
    if ctx.dtype != "float64":  # float32 and half moments accumulate in float64: the running mean's
        return out              # rounding is far below the checked dtype's (the Note)
    own = size(np.broadcast_to(m.v, out.v.shape))
    return charged(out, own)


NARY[centred] = _centred
DEFINITIONS[centred] = lambda x, m=0: x - m


# Note [erfcx]
# torch.special.erfcx, exp(x**2) erfc(x) (what log_ndtr computes with below -1), is a kernel of its
# own (the Faddeeva package's, as scipy's): against mpmath at 40 digits it errs by up to 5 ulps on
# (-1, 1), 12 on (-5, -1) and 368 on (-26, -5) in float64, where it computes exp(x**2) from a
# rounded x**2 (a relative error of about 2 x**2 eps: |x f'(x)|, charged as for lgamma, Note
# [Kernels accurate relative to their result] in graph/scalar.py).  Its derivative is torch's,
# 2 x erfcx(x) - 2 / sqrt(pi); the reference takes mpmath's value below -1 (scipy's shares torch's
# code) and scipy's above.
class erfcx(MpmathValued):  # noqa: N801
    """exp(x**2) erfc(x) (Note [erfcx])."""

    @classmethod
    def eval(cls, x):
        return sp.Integer(1) if x.is_zero else None

    def fdiff(self, argindex=1):
        x = self.args[0]
        return 2 * x * erfcx(x) - 2 / sp.sqrt(sp.pi)


def _np_d_erfcx(x):
    with np.errstate(all="ignore"):
        return 2 * x * erfcx_kernel(x) - 2 / np.sqrt(np.pi)


FUNCTIONS[erfcx] = (erfcx_kernel, _np_d_erfcx)
KERNEL_ULPS[erfcx] = (6.0, 2.0)  # 5 ulps measured on (-1, 1) in float64, 6.3 in float32 (the Note)
ROOTED.add(erfcx)
DEFINITIONS[erfcx] = lambda x: sp.exp(x**2) * sp.erfc(x)


# Note [log_ndtr as torch's kernel]
# torch.special.log_ndtr, log Phi(x), is a kernel of its own, and its backward is written from its
# result y: exp(-(y + x**2 / 2)) / sqrt(2 pi), which cancels far below 0 (y + x**2/2 is -3 at
# x = -20, from terms of 200): torch's float64 derivative there is 266 ulps off.  Read through
# torch's decomposition (via erfcx), the bound did not see that cancellation and torch's own backward
# failed.  So it is read whole, its derivative in torch's form.  Its forward (torch's and scipy's
# alike) keeps 3 ulps from -38 to 1, 23 up to 5, and loses the small result above (log of 1 - tiny),
# an absolute error of about eps: charged |x f'(x)| as well (Note [Kernels accurate relative to their
# result] in graph/scalar.py), whose size there is about x phi(x) > eps.  The reference is mpmath's
# outside (-38, 1).
class log_ndtr(MpmathValued):  # noqa: N801
    """log Phi(x), Phi the standard normal CDF (Note [log_ndtr as torch's kernel])."""

    def fdiff(self, argindex=1):
        x = self.args[0]
        return sp.exp(-(log_ndtr(x) + x**2 / 2)) / sp.sqrt(2 * sp.pi)


def _np_d_log_ndtr(x):
    with np.errstate(all="ignore"):
        return np.exp(-(log_ndtr_kernel(x) + x * x / 2)) / np.sqrt(2 * np.pi)


FUNCTIONS[log_ndtr] = (log_ndtr_kernel, _np_d_log_ndtr)
KERNEL_ULPS[log_ndtr] = (3.0, 2.0)
ROOTED.add(log_ndtr)
DEFINITIONS[log_ndtr] = lambda x: sp.log(sp.erfc(-x / sp.sqrt(2)) / 2)
