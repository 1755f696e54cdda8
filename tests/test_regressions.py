"""Cases an adversarial review found, kept as regressions.

Each states the correct verdict from the mathematics, not from symgrad's output.
"""

import numpy as np
import pytest
import sympy
import torch

import symgrad as sg
from helpers import custom


@pytest.mark.parametrize("dtype,xs", [(torch.float64, [-12.0, -9.0, 1.0, 8.0]), (torch.float32, [-6.0, -4.0, 1.0, 8.0])])
def test_wrong_sign_on_small_entries_fails_beside_a_large_one(dtype, xs):
    # d/dx sum(exp(x)) = exp(x) > 0; this backward flips the sign for x < 0, where exp(x) is
    # 1e-7 to 1e-3 of the largest entry.  A tolerance on the tensor's scale would miss it.
    f = custom(lambda x: x.exp().sum(), lambda g, x: g * torch.where(x < 0, -x.exp(), x.exp()))
    rec = sg.check(f, {"x": torch.tensor(xs, dtype=dtype)}, symbolic=lambda x: sg.exp(x).sum())["x"]
    assert rec.verdict == "FAIL"
    assert rec.mismatched == 2


def test_wrong_sign_on_small_entries_float32_square():
    # d/dx sum(x^2) = 2x; the backward negates it for |x| < 1.
    f = custom(lambda x: (x * x).sum(), lambda g, x: g * torch.where(x.abs() < 1, -2 * x, 2 * x))
    x = torch.tensor([1000.0, 0.004, -0.003])
    rec = sg.check(f, {"x": x}, symbolic=lambda x: (x * x).sum())["x"]
    assert rec.verdict == "FAIL" and rec.mismatched == 2


def test_float32_preactivation_rounded_onto_the_kink_is_a_kink():
    # Exactly, 1 + 1e-9 - 1 = 1e-9 > 0 (relu' = 1); float32 computes 0 (relu' = 0).  Both sides
    # of the kink are within rounding: a kink, not a bug.
    a, b, c = (torch.tensor([v]) for v in (1.0, 1e-9, -1.0))
    report = sg.check(lambda a, b, c: torch.relu(a + b + c).sum(), {"a": a, "b": b, "c": c},
                      symbolic=lambda a, b, c: sg.relu(a + b + c).sum())
    assert report.passed, report.to_text()
    assert all(report[n].verdict == "pass (kink)" for n in "abc")


def test_float32_cancelling_sum_is_not_a_false_alarm():
    x = torch.tensor([-0.6731024384498596, -1.209532380104065, 1.344070315361023, 2.3832194805145264,
                      -0.5664638876914978, -1.1536167860031128, -0.12457412481307983])
    report = sg.check(lambda x: x.sum(), {"x": x})
    assert report.passed, report.to_text()


def test_sympy_max_of_three_with_a_tie():
    # torch.max over a stack splits the gradient evenly between the tied maxima.
    p, q, s = sympy.symbols("p q s")
    f64 = dict(dtype=torch.float64)
    inputs = {"p": torch.tensor(2.0, **f64), "q": torch.tensor(2.0, **f64), "s": torch.tensor(0.5, **f64)}
    report = sg.check(lambda p, q, s: torch.max(torch.stack([p, q, s])), inputs, symbolic=sympy.Max(p, q, s))
    assert report.passed, report.to_text()
    assert float(report["s"].expected) == 0.0
    no_tie = sg.check(None, {"p": torch.tensor(1.0, **f64), "q": torch.tensor(2.0, **f64), "s": torch.tensor(0.5, **f64)},
                      symbolic=sympy.Max(p, q, s))
    assert [float(no_tie[n].expected) for n in "pqs"] == [0.0, 1.0, 0.0]


def test_kink_band_with_conditions_in_opposite_directions():
    # |x| written as relu(x) + relu(-x): at 0 the one-sided derivatives are -1 and +1, so a
    # backward returning +1 there is a valid choice; +2 is not.
    x = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64)
    sym = lambda x: (sg.relu(x) + sg.relu(-x)).sum()  # noqa: E731
    plus_one = custom(lambda x: x.abs().sum(), lambda g, x: g * torch.where(x >= 0, 1.0, -1.0).double())
    assert sg.check(plus_one, {"x": x}, symbolic=sym)["x"].verdict == "pass (kink)"
    plus_two = custom(lambda x: x.abs().sum(), lambda g, x: g * torch.where(x > 0, 1.0, torch.where(x < 0, -1.0, 2.0)).double())
    assert sg.check(plus_two, {"x": x}, symbolic=sym)["x"].verdict == "FAIL"


def test_three_way_tie_of_chained_maximum_accepts_torch_max():
    x = torch.tensor([3.0, 1.0, 3.0, 3.0], dtype=torch.float64)
    report = sg.check(lambda x: torch.max(x), {"x": x},
                      symbolic=lambda x: sg.maximum(sg.maximum(sg.maximum(x[0], x[1]), x[2]), x[3]))
    assert report.passed, report.to_text()
    np.testing.assert_allclose(report["x"].actual, [1 / 3, 0, 1 / 3, 1 / 3])


# -- models ------------------------------------------------------------------------------------
import torch.nn as nn  # noqa: E402


def _on_kink_model(dtype, seed):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)).to(dtype)
    x = torch.randn(3, 4, dtype=dtype)
    t = torch.randn(3, 1, dtype=dtype)
    with torch.no_grad():  # sample 0's pre-activations on the relu kink, as torch computes them
        m[0].bias.copy_(-(x[0:1] @ m[0].weight.t())[0])
    return m, x, t


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 3, 23, 31])
def test_correct_relu_model_with_units_rounded_onto_the_kink_passes(dtype, seed):
    m, x, t = _on_kink_model(dtype, seed)
    report = sg.check(m, {"x": x}, loss=nn.MSELoss(), target=t)
    assert report.passed, report.to_text()


class _SignFlipLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W, b):
        ctx.save_for_backward(x, W)
        return x @ W.t() + b

    @staticmethod
    def backward(ctx, g):
        x, W = ctx.saved_tensors
        return g @ W, -(g.t() @ x), g.sum(0)  # the weight gradient has the wrong sign


class _BadLinear(nn.Linear):
    def forward(self, x):
        return _SignFlipLinear.apply(x, self.weight, self.bias)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_wrong_weight_gradient_is_caught_even_with_units_on_the_kink(dtype):
    good, x, t = _on_kink_model(dtype, 3)
    bad = nn.Sequential(_BadLinear(4, 8), nn.ReLU(), nn.Linear(8, 1)).to(dtype)
    bad.load_state_dict(good.state_dict())
    report = sg.check(bad, {"x": x}, loss=nn.MSELoss(), target=t)
    assert report["0.weight"].verdict == "FAIL"
    assert report["0.bias"].passed and report["2.weight"].passed


def test_float64_celu_with_alpha_is_not_a_false_alarm():
    # torch's float64 celu' for alpha != 1 is itself about 2e-8 off, term by term.
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 7), nn.CELU(alpha=1.7), nn.Linear(7, 6), nn.CELU(alpha=1.7), nn.Linear(6, 3)).double()
    x, t = 2 * torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    assert sg.check(m, {"x": x}, loss=nn.MSELoss(), target=t).passed


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matrix_engine_with_units_exactly_on_the_kink(dtype):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(20, 80), nn.ReLU(), nn.Linear(80, 80), nn.ReLU(), nn.Linear(80, 2)).to(dtype)
    with torch.no_grad():
        m[0].bias.zero_()
        m[2].bias.zero_()
    x = torch.randn(8, 20, dtype=dtype)
    x[0] = 0  # every first-layer unit of sample 0 at exactly 0
    report = sg.check(m, {"x": x}, loss=nn.MSELoss(), target=torch.randn(8, 2, dtype=dtype), engine="matrix")
    assert report.passed, report.to_text()
    # 160 units on the kink, within the sweeps' budget (Note [A budget of sweeps]): the joint kink
    # check, not entrywise bands.  The second layer's units reach 2.bias; the first layer's reach
    # 0.bias only through a second-layer unit on its other side (Note [Other side everywhere])
    assert report["2.bias"].verdict == "pass (kink)"


class _Clamped(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.a, self.b, self.how = nn.Linear(4, 6), nn.Linear(6, 2), how

    def forward(self, x):
        h = self.a(x)
        h = {"method_min": lambda: h.clamp(min=0), "fn_max": lambda: torch.clamp(h, max=0.3)}[self.how]()
        return self.b(h)


@pytest.mark.parametrize("how", ["method_min", "fn_max"])
def test_matrix_engine_reads_clamp_bounds_from_the_call(how):
    torch.manual_seed(1)
    m = _Clamped(how).double()
    x, t = 3 * torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    for engine in ("elementwise", "matrix"):
        report = sg.check(m, {"x": x}, loss=nn.MSELoss(), target=t, engine=engine)
        assert report.passed, (engine, report.to_text())


def test_model_reading_a_buffer():
    class Buf(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 3)
            self.register_buffer("scale", torch.tensor([1.0, 2.0, 3.0]))

        def forward(self, x):
            return torch.sigmoid(self.a(x)) * self.scale

    m = Buf().double()
    x, t = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    assert sg.check(m, {"x": x}, loss="mse", target=t).passed
    assert sg.check(m, {"x": x}, loss="mse", target=t, engine="elementwise").passed
