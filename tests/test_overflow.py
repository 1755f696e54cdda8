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
