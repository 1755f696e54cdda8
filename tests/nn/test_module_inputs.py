"""How a module's inputs and options reach the check (cases an adversarial review found).

Verdicts come from the mathematics: a correct model passes, a wrong backward fails.
"""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import symgrad as sg

f64 = torch.float64


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 2)
        self.b = nn.Linear(4, 2)

    def forward(self, u, v):
        return self.a(u) * self.b(v)


def test_dict_inputs_are_matched_to_forward_by_name():
    torch.manual_seed(0)
    m = TwoInputs().double()
    u, v = torch.randn(5, 3, dtype=f64), torch.randn(5, 4, dtype=f64)
    t = torch.randn(5, 2, dtype=f64)
    report = sg.check(m, {"v": v, "u": u}, loss=nn.MSELoss(), target=t)
    assert report.passed, report.to_text()
    np.testing.assert_allclose(report["output"].expected, F.mse_loss(m(u, v), t).item(), rtol=1e-12)
    with pytest.raises(sg.InputError, match="do not match"):
        sg.check(m, {"p": u, "q": v}, loss=nn.MSELoss(), target=t)


class InPlaceAlias(nn.Module):
    def __init__(self):
        super().__init__()
        self.l = nn.Linear(4, 3)
        self.o = nn.Linear(3, 3)

    def forward(self, x):
        z = self.l(x)
        h = F.relu(z, inplace=True)  # z now holds relu(z), and is used again below
        return self.o(torch.tanh(h)) + z


@pytest.mark.parametrize("engine", ["elementwise", "matrix"])
def test_in_place_op_rebinds_its_input(engine):
    torch.manual_seed(1)
    m = InPlaceAlias().double()
    x, t = torch.randn(6, 4, dtype=f64), torch.randn(6, 3, dtype=f64)
    report = sg.check(m, {"x": x}, loss=nn.MSELoss(), target=t, engine=engine)
    assert report.passed, report.to_text()


class Tanh2(torch.autograd.Function):
    """tanh whose second backward call is wrong (it consumes its saved state)."""

    @staticmethod
    def forward(ctx, z):
        y = torch.tanh(z)
        ctx.save_for_backward(y)
        ctx.calls = 0
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        ctx.calls += 1
        return g * (1 - y * y) * (1.0 if ctx.calls == 1 else 0.5)


class Net(nn.Module):
    def __init__(self, act=torch.tanh):
        super().__init__()
        self.l1 = nn.Linear(3, 4)
        self.l2 = nn.Linear(4, 1)
        self.act = act

    def forward(self, x):
        return self.l2(self.act(self.l1(x)))


def test_backward_calls_reach_a_module_check():
    torch.manual_seed(2)
    x, t = torch.randn(5, 3, dtype=f64), torch.randn(5, 1, dtype=f64)
    assert sg.check(Net().double(), {"x": x}, loss=nn.MSELoss(), target=t, backward_calls=2).passed
    report = sg.check(Net(Tanh2.apply).double(), {"x": x}, loss=nn.MSELoss(), target=t, backward_calls=2)
    assert not report["l1.weight"].passed and report["l2.weight"].passed


def test_tangents_reach_a_module_check():
    torch.manual_seed(3)
    m = Net().double()
    x = torch.randn(5, 3, dtype=f64)
    tangents = {name: torch.randn_like(p) for name, p in m.named_parameters()}
    report = sg.check(m, {"x": x}, via="functional.jvp", tangents=tangents)
    assert report.passed, report.to_text()


def test_model_and_input_of_different_dtypes_is_a_clear_error():
    with pytest.raises(sg.InputError, match=r"model.double\(\)"):
        sg.check(Net(), {"x": torch.randn(5, 3, dtype=f64)}, loss=nn.MSELoss(), target=torch.zeros(5, 1, dtype=f64))


class SoftmaxShift(nn.Module):
    """softmax(z + c): the loss does not depend on c, so dL/dc is identically 0."""

    def __init__(self):
        super().__init__()
        self.l = nn.Linear(3, 4)
        self.c = nn.Parameter(torch.tensor(0.7))

    def forward(self, x):
        return torch.softmax(self.l(x) + self.c, dim=1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_identically_zero_gradient_is_no_false_alarm(dtype):
    torch.manual_seed(4)
    m = SoftmaxShift().to(dtype)
    x, t = torch.randn(6, 3, dtype=dtype), torch.softmax(torch.randn(6, 4, dtype=dtype), 1)
    report = sg.check(m, {"x": x}, loss=nn.MSELoss(), target=t)
    assert report.passed, report.to_text()
    # zero up to the rounding of the op graph's float64 evaluation (the exploded engine simplified it to 0)
    assert np.all(np.abs(report["c"].expected) < 1e-14)


def test_unused_parameter_is_a_zero_gradient():
    class Unused(Net):
        def __init__(self):
            super().__init__()
            self.spare = nn.Linear(2, 2)

    torch.manual_seed(5)
    report = sg.check(Unused().double(), {"x": torch.randn(4, 3, dtype=f64)}, loss=nn.MSELoss(),
                      target=torch.zeros(4, 1, dtype=f64))
    assert report.passed and "no gradient (None" in report["spare.weight"].note


def test_entries_float32_cannot_resolve_are_counted():
    # tanh' at 9 is 6e-8 in float32 arithmetic with a rounding error as large: a sign flip there
    # cannot be seen in float32, and the record says so instead of staying silent
    x = torch.tensor([9.0, 0.5, -0.3])
    rec = sg.check(lambda x: torch.tanh(x).sum(), {"x": x}, symbolic=lambda x: sg.tanh(x).sum())["x"]
    assert rec.passed and rec.unresolved == 1
    assert "not even their sign is checked" in rec.message()


class MaskAct(nn.Module):
    def forward(self, x):
        return x * (x > 0).float() + 0.1 * torch.where(x < 0, x, torch.zeros_like(x))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_comparisons_and_where_import_with_their_kinks(dtype):
    torch.manual_seed(6)
    m = nn.Sequential(nn.Linear(3, 4), MaskAct(), nn.Linear(4, 1)).to(dtype)
    x, t = torch.randn(5, 3, dtype=dtype), torch.zeros(5, 1, dtype=dtype)
    assert sg.check(m, {"x": x}, loss=nn.MSELoss(), target=t).passed
    with torch.no_grad():  # sample 1 on every unit's kink: x * (x > 0) is relu there
        m[0].bias.copy_(-(x[1:2] @ m[0].weight.t())[0])
    report = sg.check(m, {"x": x}, loss=nn.MSELoss(), target=t)
    assert report.passed, report.to_text()
    assert report["0.weight"].kinks > 0


def test_where_takes_the_branch_and_never_evaluates_the_other():
    x = torch.tensor([-1.0, 0.5, 2.0], dtype=f64)
    report = sg.check(lambda x: torch.where(x > 0, torch.log(x.clamp(min=1e-3)), x).sum(), {"x": x},
                      symbolic=lambda x: sg.where(sg.gt(x, 0), sg.log(sg.clamp(x, min=1e-3)), x).sum())
    assert report.passed, report.to_text()
    np.testing.assert_allclose(report["x"].expected, [1.0, 2.0, 0.5])
