"""Note [Overflow is the right answer]: a float32/half inf where the exact value is beyond the
dtype's range is right; an intermediate overflow is not."""

import pytest
import torch

import symgrad as sg
from symgrad.testing_ops import with_backward


@pytest.mark.parametrize("dtype,big", [(torch.float32, 100.0), (torch.float16, 12.0), (torch.bfloat16, 100.0)])
def test_exp_overflowing_the_dtype_passes_and_the_other_entries_keep_their_allowance(dtype, big):
    x = torch.tensor([big, 1.0], dtype=dtype)
    report = sg.check(lambda x: torch.exp(x).sum(), {"x": x})
    assert report.passed, str(report)
    assert "overflow" in str(report)
    wrong = with_backward(torch.exp, lambda x, g: g * torch.exp(x) * 1.05)
    assert not sg.check(lambda x: wrong(x).sum(), {"x": x}).passed


def test_an_intermediate_overflow_still_fails():
    x = torch.tensor([100.0, 1.0])
    assert not sg.check(lambda x: (torch.exp(x) / torch.exp(x) * x).sum(), {"x": x}).passed


def test_an_inf_of_the_wrong_sign_fails():
    wrong = with_backward(torch.exp, lambda x, g: -g * torch.exp(x))
    assert not sg.check(lambda x: wrong(x).sum(), {"x": torch.tensor([100.0, 1.0])}).passed


def _rsqrt_with(backward):
    return with_backward(torch.rsqrt, backward)


def test_a_derivative_beyond_float64_is_checked_over_mpmath():
    """rsqrt' at 1e-300 is -5e449: -inf in float64 on both sides, and the exact value (over mpmath)
    is beyond float64's range as well, so torch's -inf is the correctly rounded result.  A +inf
    there, and an -inf where the exact value fits (an intermediate overflow), still fail."""
    x = torch.tensor([1e-300, 4.0], dtype=torch.float64)
    v = torch.ones(2, dtype=torch.float64)
    report = sg.check(torch.rsqrt, {"x": x}, v=v)
    assert report.passed and "overflow float64" in str(report), str(report)
    flipped = _rsqrt_with(lambda x, g: 0.5 * g * x ** -1.5)
    assert not sg.check(flipped, {"x": x}, symbolic=torch.rsqrt, v=v).passed
    fits = torch.tensor([1e-110, 4.0], dtype=torch.float64)  # -0.5 x**-1.5 = -5e164 fits; x**-3 does not
    overflowing = _rsqrt_with(lambda x, g: -0.5 * g * (x ** -3) ** 0.5)
    report = sg.check(overflowing, {"x": fits}, symbolic=torch.rsqrt, v=v)
    assert not report.passed, str(report)


def test_an_intermediate_overflow_in_the_closed_form_is_re_evaluated():
    """asinh' = 1/sqrt(x**2 + 1) at x = 1e155: x**2 overflows and the float64 form gives 0, where the
    derivative is 1e-155 (Note [Certified pointwise values], ``_extreme``).  A backward through
    hypot, which does not overflow, passes; torch's own, (x**2 + 1).rsqrt(), gives 0 and fails."""
    x = torch.tensor([1e155, 2.0], dtype=torch.float64)
    v = torch.ones(2, dtype=torch.float64)
    right = with_backward(torch.asinh, lambda x, g: g / torch.hypot(x, torch.ones_like(x)))
    report = sg.check(right, {"x": x}, symbolic=torch.asinh, v=v)
    assert report.passed, str(report)
    assert not sg.check(torch.asinh, {"x": x}, v=v).passed


@pytest.mark.parametrize("size", [1e-200, 1e-300])
def test_an_intermediate_underflow_to_an_infinite_form_is_re_evaluated(size):
    """hypot's derivative x / sqrt(x**2 + y**2) at x, y ~ 1e-200: the squares underflow to 0 and the
    float64 form is inf, where the derivative is 1/sqrt(5); such entries were kept as inf (only finite
    ones were re-evaluated) and torch's own hypot failed.  A backward 1e-6 off still fails."""
    x = torch.tensor([1.0, 2.0], dtype=torch.float64) * size
    y = torch.tensor([2.0, 1.0], dtype=torch.float64) * size
    fn = lambda x: torch.hypot(x, y)  # noqa: E731
    assert sg.check(fn, {"x": x}, quiet=True).passed
    bugged = with_backward(fn, lambda x, g: g * x / torch.hypot(x, y) * (1 + 1e-6))
    assert not sg.check(bugged, {"x": x}, symbolic=fn, quiet=True).passed


def test_a_rule_overflowing_float64_is_cross_checked_as_overflowing():
    """Note [Node cross-check]: exp's rule at 711 gives inf in float64; with a cotangent below 1 in
    size the exact side's w exp(711) fitted, and the node failed its cross-check (torch's own exp
    was unverified).  The cross-check's cotangents are at least 1 in size.  A bug at the finite
    entry still fails."""
    x = torch.tensor([711.0, 1.0], dtype=torch.float64)
    fn = lambda x: torch.exp(x).sum()  # noqa: E731
    assert sg.check(fn, {"x": x}, quiet=True).passed
    bugged = with_backward(fn, lambda x, g: g * torch.exp(x) * (1 + 1e-6))
    assert not sg.check(bugged, {"x": x}, symbolic=fn, quiet=True).passed
