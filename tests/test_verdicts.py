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
