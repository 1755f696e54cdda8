"""Verdicts to trust (issues 11 and 13): a failing report is falsy, no allowance from torch,
no fixed relative floor, stable closed forms.

Each expected verdict comes from the mathematics of the seeded bug, not from symgrad's output.
"""

import numpy as np
import pytest
import torch

import symgrad as sg
from helpers import custom


# -- issue 11, bullet 1: ``assert sg.check(...)`` must not pass on a failing check ----------------
def test_a_failing_report_is_falsy_and_a_passing_one_truthy():
    x = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    good = sg.check(lambda x: torch.sin(x).sum(), {"x": x}, symbolic=lambda x: sg.sin(x).sum())
    wrong = custom(lambda x: torch.sin(x).sum(), lambda g, x: g * torch.cos(x) * 1.01)
    bad = sg.check(wrong, {"x": x}, symbolic=lambda x: sg.sin(x).sum())
    assert good.passed and bool(good)
    assert not bad.passed and not bool(bad)
    with pytest.raises(AssertionError):
        assert sg.check(wrong, {"x": x}, symbolic=lambda x: sg.sin(x).sum())


# -- issue 13, item 1: no allowance from torch (the rerun is gone) ------------------------------
def _garbage_where_zero(fwd, true_grad, scale):
    """A custom Function: ``fwd``'s forward; a backward that is right where the true gradient is
    non-zero and returns fresh random garbage (as uninitialised memory would) where it is 0."""

    def bwd(g, x):
        d = true_grad(x)
        junk = scale * torch.randn(x.shape, dtype=x.dtype)
        return g * torch.where(d == 0, junk, d)

    return custom(fwd, bwd)


_ZERO_GRADIENT_CASES = {
    # d/dx sum(x - mean(x)) = 0 everywhere (the algebra cancels it; torch's own value is 0 or roundoff)
    "centred sum": (lambda x: (x - x.mean()).sum(), lambda x: sg.sum(x - sg.mean(x)), lambda x: torch.zeros_like(x)),
    # relu' = 0 at the negative entries
    "relu": (lambda x: torch.relu(x).sum(), lambda x: sg.relu(x).sum(), lambda x: (x > 0).to(x.dtype)),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("scale", [1.0, 1e-3])
@pytest.mark.parametrize("case", sorted(_ZERO_GRADIENT_CASES))
def test_garbage_at_zero_gradient_entries_fails(case, scale, dtype):
    fwd, sym, true_grad = _ZERO_GRADIENT_CASES[case]
    torch.manual_seed(0)
    x = 3 * torch.randn(4, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(dtype)
    rec = sg.check(_garbage_where_zero(fwd, true_grad, scale), {"x": x}, symbolic=sym)["x"]
    assert rec.verdict == "FAIL", rec.message()
    zero = (true_grad(x) == 0).numpy()
    assert rec.mismatched == int(zero.sum()), rec.message()  # every garbage entry, and only those


def test_the_torch_rerun_is_gone():
    import symgrad.autograd.run as run
    from symgrad.reference import Reference

    assert not hasattr(run, "torch_noise")
    assert "torch_noise" not in Reference.__dataclass_fields__
