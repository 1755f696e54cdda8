"""Adversarial inputs on the op graph: points on kinks, huge, tiny and subnormal magnitudes, inf and
NaN, empty and strided tensors, partly differentiated inputs, unused parameters, outputs with no
derivative.  Each gets a right verdict or a clear refusal, never a crash."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import symgrad as sg
from symgrad.errors import AutogradFailed, InputError, UnsupportedOp
from symgrad.testing_ops import scaled

DTYPES = [torch.float64, torch.float32]
DELTA = {torch.float64: 1e-6, torch.float32: 1e-3}
T = torch.tensor

ON_KINKS = {
    "relu at 0": (lambda x: F.relu(x).pow(2).sum() + F.relu(x).sum(), T([0.0, 1.0, -1.0, 0.0])),
    "abs at 0": (lambda x: (x.abs() * torch.linspace(1, 2, 3, dtype=x.dtype)).sum(), T([0.0, 1.0, -1.0])),
    "max ties": (lambda x: x.max(), T([2.0, 2.0, 1.0])),
    "max over a dim, ties": (lambda x: x.max(1)[0], T([[2.0, 2.0, 1.0], [0.0, 1.0, 1.0]])),
    "clamp at its bounds": (lambda x: x.clamp(-1, 1), T([-1.0, 1.0, 0.5, 2.0])),
    "maximum of equal entries": (lambda x: torch.maximum(x, x.flip(0)), T([1.0, 3.0, 1.0])),
    "max_pool ties": (lambda x: F.max_pool1d(x, 2), T([[[1.0, 1.0, 0.0, 0.0]]])),
}
MAGNITUDES = {
    "tanh at 1e300": (torch.tanh, T([1e300, -1e300, 1e-300])),
    "subnormal float64": (lambda x: (x * 3.0).sin(), T([5e-324, 1e-310, -2e-315])),
    "subnormal float32": (lambda x: (x * 3.0).sin(), T([1e-40, 1e-44, -3e-39], dtype=torch.float32)),
    "inf into tanh": (lambda x: torch.tanh(x).sum(), T([1.0, float("inf"), -2.0])),
}


def _check(fn, x, dtype, **kw):
    return sg.check(fn, {"x": x.to(dtype) if x.dtype == torch.float64 else x}, engine="graph", **kw)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(ON_KINKS) + list(MAGNITUDES))
def test_kinks_and_extreme_magnitudes_pass(name, dtype):
    fn, x = {**ON_KINKS, **MAGNITUDES}[name]
    report = _check(fn, x, dtype)
    assert report.passed, report.to_text()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name, fn, x", [
    ("relu with entries at 0", torch.relu, T([0.0, 1.0, -1.0, 2.0])),
    ("clamp at its bounds", lambda x: x.clamp(-1, 1) * 2.0, T([-1.0, 0.5, 1.0, -0.25])),
    ("subnormal inputs", lambda x: x * 3.0, T([5e-324, 1e-310, 1.0])),
    ("huge inputs", lambda x: x * 2.0, T([1e300, -1e300, 2.0])),
])
def test_seeded_bug_at_adversarial_points_is_caught(name, fn, x, dtype):
    if dtype == torch.float32 and name in ("subnormal inputs", "huge inputs"):
        x = T([1e-44, 1e-39, 1.0]) if name == "subnormal inputs" else T([1e38, -1e38, 2.0])
    report = _check(scaled(fn, 1 + DELTA[dtype]), x, dtype)
    assert not report.passed and not report["x"].passed, report.to_text()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_strided_inputs(dtype):
    base = torch.randn(6, 8, dtype=dtype, generator=torch.Generator().manual_seed(0))
    for x in (base.t(), base[::2, 1::3], base[:1].expand(4, 8)):
        assert not x.is_contiguous()
        good = sg.check(lambda x: torch.tanh(x).sum(-1), {"x": x}, engine="graph")
        assert good.passed, good.to_text()
        bad = sg.check(scaled(lambda x: torch.tanh(x).sum(-1), 1 + DELTA[dtype]), {"x": x}, engine="graph")
        assert not bad.passed


def test_partly_differentiated_inputs_and_unused_parameters():
    a = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64)
    report = sg.check(lambda a, b: (a * b.exp()).sum(), {"a": a, "b": b}, engine="graph")
    assert report.passed and [r.name for r in report.records] == ["output", "a"]

    class Partly(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused, self.frozen = nn.Linear(3, 2), nn.Linear(3, 2), nn.Linear(2, 2)
            self.frozen.requires_grad_(False)

        def forward(self, x):
            return self.frozen(self.used(x).tanh())

    report = sg.check(Partly().double(), {"x": torch.randn(2, 3, dtype=torch.float64)}, engine="graph")
    names = {r.name for r in report.records}
    assert report.passed and {"used.weight", "unused.weight"} <= names and "frozen.weight" not in names
    assert not report["unused.weight"].actual.any()  # torch's None is a zero gradient, as the closed form says


def test_outputs_with_no_derivative_are_refused_clearly():
    x = torch.randn(3, dtype=torch.float64)
    with pytest.raises(AutogradFailed, match="not connected to the differentiated inputs"):
        sg.check(lambda x: x.detach().sin(), {"x": x}, engine="graph")
    with pytest.raises(AutogradFailed, match="not connected to the differentiated inputs"):
        sg.check(lambda x: (x > 0).double(), {"x": x}, engine="graph")
    with pytest.raises(UnsupportedOp, match="does not depend on any of its inputs"):
        sg.check(lambda x: torch.ones(3, dtype=x.dtype) * 2, {"x": x}, engine="graph")
    with pytest.raises(InputError, match="empty"):
        sg.check(torch.tanh, {"x": torch.zeros(0, 3)}, engine="graph")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_non_finite_values_are_reported_not_crashed_on():
    """exp overflowing, constants that overflow and underflow float32 (inf * 0): reported as NaN/inf
    (never counted as equal), not a traceback.  (An inf that is the correctly rounded value passes:
    tests/test_overflow.py.)  A NaN input is refused, naming it."""
    with pytest.raises(sg.SymgradError, match="NaN value"):
        _check(lambda x: torch.tanh(x).sum(), T([1.0, float("nan"), -2.0]), torch.float64)
    report = _check(lambda x: (x.exp() * 1e200 * 1e-200).sum(), T([1.0, 2.0]), torch.float32)
    assert not report.passed
    assert any("NaN/inf" in r.verdict for r in report.records)
    # exp(800) is beyond the dtype: torch's inf is the correctly rounded value in every row (the jvp
    # row said NaN/inf until forward mode had the reverse rows' certified reference)
    report = _check(lambda x: torch.exp(x), T([800.0, 1.0]), torch.float64)
    assert report.passed and "the correctly rounded result" in report.to_text(), report.to_text()


@pytest.mark.parametrize("draw", [
    lambda x: x * torch.rand(4, dtype=x.dtype),
    lambda x: x * torch.rand(4, dtype=x.dtype, generator=torch.Generator().manual_seed(0)),
    lambda x: x[torch.randperm(4)],
    lambda x: x + torch.randn_like(x),
], ids=["rand", "rand-with-generator", "randperm", "randn_like"])
def test_random_draws_inside_the_forward_are_refused(draw):
    """A draw with no tensor argument was folded into a constant at trace time, and torch drew
    again: a false alarm.  Now every seeded-random op is refused, naming the fix."""
    with pytest.raises(sg.SymgradError, match="pass the noise as an input"):
        sg.check(draw, {"x": torch.randn(4, dtype=torch.float64)}, engine="graph")


def test_a_detached_numpy_constant_is_read_from_the_real_tensor():
    """Note [Functionalization and numpy]: the functionalized trace read the constant from garbage."""
    from symgrad.testing_ops import with_backward

    def fn(x):
        return torch.from_numpy(x.detach().numpy() * 2).sum() + (x * x).sum()

    x = T([1.0, -2.0, 0.5])
    assert sg.check(fn, {"x": x}).passed
    wrong = with_backward(lambda x: x * x, lambda x, g: g * 2.001 * x)
    assert not sg.check(lambda x: torch.from_numpy(x.detach().numpy() * 2).sum() + wrong(x).sum(), {"x": x}).passed
