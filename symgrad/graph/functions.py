"""SymPy functions that torch has as kernels of their own, with numpy forms.

``sympy.exp(x) - 1`` loses every digit near 0 where ``torch.expm1`` does not; ``sigmoid``'s
backward in torch is ``s (1 - s)`` from the output, not SymPy's ``exp(-x)/(1 + exp(-x))**2``.  Each
function here is a SymPy ``Function`` whose ``fdiff`` is the textbook derivative, written in the
form torch evaluates it (``tests/graph`` checks each against ``sympy.diff`` of its elementary
definition), and whose numpy form is registered with the scalar evaluator.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from ..compare.half import rounding_ulps, subnormal_rounding
from ..lower.special import BESSEL_ULPS, MPMATH
from .approx import Approx, charged, mul, size, smallest_normal
from .scalar_kernels import FUNCTIONS, KERNEL_ULPS, NARY, STEPS, _scipy

__all__ = ["expm1", "expm1_exp", "expm1_either", "elu_slope", "narrowed", "log1p", "sigmoid", "logsigmoid", "log_sigmoid", "log_sigmoid_slope", "saved_product",
           "bessel_i0", "bessel_i1", "bessel_i0e", "bessel_i1e", "DEFINITIONS", "MpmathValued"]


class expm1(sp.Function):  # noqa: N801 - named as torch names it
    """exp(x) - 1, computed without cancellation; its derivative in the form torch's backward uses,
    ``result + 1`` (the rounded result's error grows by |y / (y + 1)| there, below x = -1 a lot)."""

    def fdiff(self, argindex=1):
        return expm1(self.args[0]) + 1


class expm1_exp(expm1):  # noqa: N801
    """expm1 whose derivative torch's kernel takes from the input, ``exp(x)``: elu, selu and celu's
    backward (not in place; Note [elu's slope from its input] in graph/trace_grad.py)."""

    def fdiff(self, argindex=1):
        return sp.exp(self.args[0])


class expm1_either(expm1):  # noqa: N801
    """expm1 of an elu decomposition whose backward may take its slope from the input or from the
    saved result: inside a custom Function's forward, or a ``symbolic=`` reference forward (Note
    [elu's slope from its input] in graph/trace_grad.py)."""

    def fdiff(self, argindex=1):
        return elu_slope(self.args[0])


class elu_slope(sp.Function):  # noqa: N801
    """exp(x), allowed the rounding of ``expm1(x) + 1`` too, up to its own size (``_elu_slope``)."""

    _imp_ = staticmethod(lambda x: __import__("mpmath").exp(x))  # lambdify over mpmath (the certified values): exp

    def fdiff(self, argindex=1):
        return elu_slope(self.args[0])


def _elu_slope(args: list, ctx) -> Approx:
    """exp(x) through the library; where ``expm1(x) + 1`` rounds worse (x below 0: the +1 cancels),
    the difference joins the bound, capped where the allowance it gives reaches the slope itself: a
    saved-result backward may lose the slope (``result + 1`` rounds to 0 below x = -9 in bfloat16),
    never flip it."""
    from .scalar import _apply, library_ulps

    (a,) = args
    ulps = library_ulps(ctx)
    out = _apply(np.exp, np.exp, a, ulps=ulps)
    with np.errstate(over="ignore", invalid="ignore"):
        from_result = ulps * np.abs(np.expm1(a.v)) + np.abs(out.v)  # expm1's rounding, then the add's
        cap = np.abs(out.v) / (ctx.eps * rounding_ulps(ctx.dtype))
        extra = np.minimum(np.maximum(from_result - ulps * np.abs(out.v), 0.0), cap)
    extra = np.where(np.isfinite(extra), extra, 0.0)
    return charged(out, extra)


NARY[elu_slope] = _elu_slope


class narrowed(sp.Function):  # noqa: N801
    """x cast to a narrower floating dtype: the same value, one rounding of that dtype (Note [Nodes
    computed in a wider dtype] in graph/approx.py)."""

    _imp_ = staticmethod(lambda x: x)  # lambdify over mpmath (the certified values): the value itself

    def fdiff(self, argindex=1):
        return sp.Integer(1)


def _narrowed(args: list, ctx) -> Approx:
    (a,) = args
    own = size(a.v)
    return charged(a, own)


NARY[narrowed] = _narrowed


class log1p(sp.Function):  # noqa: N801
    """log(1 + x), computed without cancellation."""

    def fdiff(self, argindex=1):
        return 1 / (1 + self.args[0])


class sigmoid(sp.Function):  # noqa: N801
    """1 / (1 + exp(-x)); its derivative in the form torch's backward uses: s (1 - s)."""

    def fdiff(self, argindex=1):
        s = sigmoid(self.args[0])
        return s * (1 - s)


# Note [A sigmoid below the normal range]
# torch's sigmoid kernel is 1 / (1 + exp(-x)): below x = -88.7 in float32 (-709.8 in float64)
# exp(-x) overflows and the result is 0, where the exact value is a subnormal number.  Charged one
# rounding of a subnormal result (Note [Rounding below the normal range] in approx.py), that loss
# was allowed a few of the dtype's smallest spacings, and torch's own ``silu(a) * b`` with a = -90,
# b = 3e4 in float32 (exact -2.2e-33, torch -0) failed.  Such a result may be lost whole: its bound
# includes its own size.
def _sigmoid(args: list, ctx) -> Approx:
    from .scalar import _apply, library_ulps

    (a,) = args
    out = _apply(_np_sigmoid, lambda x: _np_sigmoid(x) * _np_sigmoid(-x), a, ulps=library_ulps(ctx))
    tiny = smallest_normal()
    if tiny is None:
        return out
    lost = np.abs(out.v) < tiny
    if not lost.any():
        return out
    extra = np.where(lost, np.abs(out.v) / (ctx.eps * rounding_ulps(ctx.dtype)), 0.0)  # allowed: |v| itself
    return charged(out, extra)


NARY[sigmoid] = _sigmoid


class logsigmoid(sp.Function):  # noqa: N801
    """log(sigmoid(x)) = -log(1 + exp(-x)), computed without overflow; its derivative ``1 - s``, so
    that BCE-with-logits' derivative, ``(1 - t) - (1 - s)``, is ``s - t``: torch's backward, with
    its cancellation where s is close to t (Note [BCE-with-logits as torch's kernel] in aten_ext.py)."""

    def fdiff(self, argindex=1):
        return 1 - sigmoid(self.args[0])


class log_sigmoid(sp.Function):  # noqa: N801
    """logsigmoid as torch's own op computes it (Note [logsigmoid as torch's kernel] in aten_ext.py):
    the same function, its derivative in the form torch's backward uses, ``sigmoid(-x)``."""

    def fdiff(self, argindex=1):
        return log_sigmoid_slope(self.args[0])


class log_sigmoid_slope(sp.Function):  # noqa: N801
    """sigmoid(-x), logsigmoid's derivative; its own derivative in the form torch's double backward
    uses, ``s (s - 1)`` with s = sigmoid(x), which cancels where s is close to 1."""

    def fdiff(self, argindex=1):
        s = sigmoid(self.args[0])
        return s * (s - 1)


def _np_logsigmoid(x):
    return -np.logaddexp(0.0, -x)


def _np_sigmoid(x):
    with np.errstate(over="ignore"):
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


# the elementary definition of each, for the tests and for printing
DEFINITIONS = {
    expm1: lambda x: sp.exp(x) - 1,
    expm1_exp: lambda x: sp.exp(x) - 1,
    expm1_either: lambda x: sp.exp(x) - 1,
    elu_slope: sp.exp,
    narrowed: lambda x: x,
    log1p: lambda x: sp.log(1 + x),
    sigmoid: lambda x: 1 / (1 + sp.exp(-x)),
    logsigmoid: lambda x: -sp.log(1 + sp.exp(-x)),
    log_sigmoid: lambda x: -sp.log(1 + sp.exp(-x)),
    log_sigmoid_slope: lambda x: 1 / (1 + sp.exp(x)),
}

FUNCTIONS.update({
    expm1: (np.expm1, np.exp),  # (the slope of the function itself, for its arguments' errors)
    expm1_exp: (np.expm1, np.exp),
    expm1_either: (np.expm1, np.exp),
    log1p: (np.log1p, lambda x: 1 / (1 + x)),
    sigmoid: (_np_sigmoid, lambda x: _np_sigmoid(x) * _np_sigmoid(-x)),
    logsigmoid: (_np_logsigmoid, lambda x: _np_sigmoid(-x)),
    log_sigmoid: (_np_logsigmoid, lambda x: _np_sigmoid(-x)),
    log_sigmoid_slope: (lambda x: _np_sigmoid(-x), lambda x: -_np_sigmoid(x) * _np_sigmoid(-x)),
})


# Note [Modified Bessel functions as torch's kernels]
# torch.i0 and torch.special.i0e, i1, i1e are kernels of their own (Chebyshev series) whose
# backwards are written from their results: i0' = i1; i0e' = i1e - sgn(x) i0e, with torch's sgn
# (0 at 0, where e^-|x| I0(x) has a kink: one-sided slopes -1 and 1); i1' = i0 - i1 / x and
# i1e' = i0e - i1e (sgn(x) + 1/x), both 1/2 at 0, where torch takes that limit (for |x| <= eps:
# within a rounding of the form's value there).  Their kernels are not correctly rounded: over
# 5,200 points of (-700, 700), (-30, 30), (-3, 3) and (7.5, 8.5) against mpmath at 30 digits the
# largest relative errors, in units of the dtype's eps, are (torch float64, scipy float64, torch
# float32) i0 2.2, 2.3, 2.7; i0e 1.8, 2.5, 2.2; i1 6.6, 8.6, 8.6; i1e 6.0, 8.4, 8.7.  In float16
# and bfloat16 (every finite value of each dtype) torch's results are correctly rounded, but i0e's:
# its kernel for tensors too short to vectorise computes in half precision and errs by up to 5.9 ulp
# (float16) and 4.5 (bfloat16).  So a call is charged ``BESSEL_ULPS`` units of its value (float32
# and float64; float16 and bfloat16: lower/special.py, one table for both back ends), torch's and
# the reference's errors added and rounded up, where a library call is charged two and one.  Their
# exact values come from mpmath (``_eval_evalf``), beyond float64's range too: i0(720) = 7.3e310.


def _sgn(x):
    return sp.Piecewise((1, x > 0), (0, sp.Eq(x, 0)), (-1, True))


class MpmathValued(sp.Function):
    """A function whose exact value comes from its mpmath kernel (``lower.special.MPMATH``, by name)."""

    def _eval_evalf(self, prec):
        """The value over mpmath at ``prec`` bits (the exact reference: beyond float64's range too)."""
        import mpmath as mp

        x = self.args[0].evalf(mp.libmp.prec_to_dps(prec))
        if not x.is_Number:
            return None
        with mp.workprec(prec):
            value = MPMATH[type(self).__name__][0](mp.mpf(x._to_mpmath(prec)))
        return sp.Float._new(value._mpf_, prec)


class _Bessel(MpmathValued):
    at_zero = 0  # the value at 0, exact

    @classmethod
    def eval(cls, x):
        return sp.Integer(cls.at_zero) if x.is_zero else None


class bessel_i0(_Bessel):  # noqa: N801
    """torch.i0, I0(x); its derivative torch's i1 (Note [Modified Bessel functions as torch's kernels])."""

    at_zero = 1

    def fdiff(self, argindex=1):
        return bessel_i1(self.args[0])


class bessel_i1(_Bessel):  # noqa: N801
    """torch.special.i1, I1(x); its derivative i0 - i1 / x, 1/2 at 0."""

    at_zero = 0

    def fdiff(self, argindex=1):
        x = self.args[0]
        return sp.Piecewise((bessel_i0(x) - bessel_i1(x) / x, sp.Ne(x, 0)), (sp.Rational(1, 2), True))


class bessel_i0e(_Bessel):  # noqa: N801
    """torch.special.i0e, exp(-|x|) I0(x); its derivative i1e - sgn(x) i0e (0 at the kink x = 0)."""

    at_zero = 1

    def fdiff(self, argindex=1):
        x = self.args[0]
        return bessel_i1e(x) - _sgn(x) * bessel_i0e(x)


class bessel_i1e(_Bessel):  # noqa: N801
    """torch.special.i1e, exp(-|x|) I1(x); its derivative i0e - i1e (sgn(x) + 1/x), 1/2 at 0."""

    at_zero = 0

    def fdiff(self, argindex=1):
        x = self.args[0]
        return sp.Piecewise((bessel_i0e(x) - bessel_i1e(x) * (_sgn(x) + 1 / x), sp.Ne(x, 0)),
                            (sp.Rational(1, 2), True))


def _scaled(nu):
    return lambda x: sp.exp(-sp.Piecewise((x, x > 0), (-x, True))) * sp.besseli(nu, x)


DEFINITIONS.update({
    bessel_i0: lambda x: sp.besseli(0, x),
    bessel_i1: lambda x: sp.besseli(1, x),
    bessel_i0e: _scaled(0),
    bessel_i1e: _scaled(1),
})


def _np_d_i1(x):
    with np.errstate(all="ignore"):
        safe = np.where(x == 0, 1.0, x)
        return np.where(x == 0, 0.5, _scipy("i0")(x) - _scipy("i1")(x) / safe)


def _np_d_i1e(x):
    with np.errstate(all="ignore"):
        safe = np.where(x == 0, 1.0, x)
        return np.where(x == 0, 0.5, _scipy("i0e")(x) - _scipy("i1e")(x) * (np.sign(x) + 1 / safe))


FUNCTIONS.update({
    bessel_i0: (_scipy("i0"), _scipy("i1")),
    bessel_i1: (_scipy("i1"), _np_d_i1),
    bessel_i0e: (_scipy("i0e"), lambda x: _scipy("i1e")(x) - np.sign(x) * _scipy("i0e")(x)),
    bessel_i1e: (_scipy("i1e"), _np_d_i1e),
})
KERNEL_ULPS.update({f: BESSEL_ULPS[f.__name__] for f in (bessel_i0, bessel_i0e, bessel_i1, bessel_i1e)})


class _Step(sp.Function):
    """A piecewise-constant rounding function: derivative 0 wherever it has one (torch's backward
    is 0 everywhere; the jumps at integers sit between samples drawn from a continuous law)."""

    def fdiff(self, argindex=1):
        return sp.Integer(0)


class floor(_Step):  # noqa: N801
    pass


class ceil(_Step):  # noqa: N801
    pass


class trunc(_Step):  # noqa: N801
    pass


class round_even(_Step):  # noqa: N801
    """Rounding to the nearest integer, ties to even (``torch.round``)."""


FUNCTIONS.update({
    floor: (np.floor, np.zeros_like),
    ceil: (np.ceil, np.zeros_like),
    trunc: (np.trunc, np.zeros_like),
    round_even: (np.round, np.zeros_like),
})
STEPS.update({floor, ceil, trunc, round_even})


# Note [Products reuse their result]
# torch's prod backward is ``grad * (result / input)`` from the *rounded* result wherever the input
# holds no zero (FunctionsManual.cpp prod_backward; with a zero, products of the others through
# exclusive cumprods).  So the result's rounding reaches every entry of the gradient divided by that
# entry's input, and in float16 a result below 6.1e-5 is a subnormal, rounded on an absolute spacing
# of 6e-8: the op table's product of 20 entries (9e-8) is stored as 6e-8, and its gradient at an input
# of 0.006 errs by 5e-6, a third of its size, while the product of the other 19 (what reverse mode
# over a chain of multiplications computes) has no such error.  ``saved_product`` is the product in
# one pointwise node: multiplied left to right, its result charged the subnormal rounding as well
# (``compare.half.subnormal_rounding``), and its derivative in torch's form, result / x_i (the
# product of the others where x_i = 0).


class saved_product(sp.Function):  # noqa: N801
    """x_1 x_2 ... x_n left to right; its derivative in torch's form (Note [Products reuse their result])."""

    def fdiff(self, argindex=1):
        i = argindex - 1
        x = self.args[i]
        others = sp.Mul(*(a for k, a in enumerate(self.args) if k != i))
        return sp.Piecewise((others, sp.Eq(x, 0)), (self / x, True))


def _saved_product(args: list, ctx) -> Approx:
    out = args[0]
    for a in args[1:]:
        out = mul(out, a)
    tiny, half_spacing = subnormal_rounding(ctx.dtype)
    if not tiny:
        return out
    own = np.where(np.abs(out.v) < tiny, half_spacing / (rounding_ulps(ctx.dtype) * ctx.eps), 0.0)
    return charged(out, own)


NARY[saved_product] = _saved_product
DEFINITIONS[saved_product] = lambda *xs: sp.Mul(*xs)
