"""Note [A constant zero base] (symgrad/graph/aten.py): 0**y by y is 0 for y > 0; the closed form
x**y log x is NaN there.  torch's own backward (masked to 0) passes, a backward that keeps the
unmasked formula (NaN) or returns anything else fails, on both engines, in float64 and float32;
an input base at 0 keeps x**y (its x-derivative must stay)."""

import pytest
import torch

import symgrad as sg
from symgrad.testing_ops import custom, vjp, with_backward

BASE = [0.0, 2.0, 0.0, 1.5, 0.0]
Y = [0.5, 1.0, 2.0, 3.0, 0.0]


def _scalar_zero(y):
    return torch.pow(0.0, y)


def _zero_tensor(y):
    return torch.pow(torch.tensor(BASE, dtype=y.dtype), y)


def _unmasked(fn):  # the formula without torch's mask: g * base**y * log(base), NaN at a zero base
    def backward(y, g):
        base = torch.tensor(0.0 if fn is _scalar_zero else BASE, dtype=y.dtype)
        return g * torch.pow(base, y) * torch.log(base)

    return backward


@pytest.mark.parametrize("engine", ["graph", "elementwise"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("fn", [_scalar_zero, _zero_tensor])
def test_zero_base(fn, dtype, engine):
    y = torch.tensor(Y, dtype=dtype)
    check = lambda f: sg.check(lambda y: f(y).sum(), {"y": y}, engine=engine, quiet=True)  # noqa: E731
    assert check(fn).passed
    assert check(with_backward(fn, lambda y, g: vjp(fn, y, g))).passed
    assert not check(with_backward(fn, _unmasked(fn))).passed
    assert not check(with_backward(fn, lambda y, g: vjp(fn, y, g) + g * (y > 1))).passed


@pytest.mark.parametrize("engine", ["graph", "elementwise"])
def test_an_input_base_at_zero_keeps_its_x_derivative(engine):
    x = torch.tensor([0.0, 0.5, 0.0], dtype=torch.float64)
    y = torch.tensor([1.0, 2.0, 2.5], dtype=torch.float64)
    f = lambda x, y: torch.pow(x, y).sum()  # noqa: E731  d/dx at (0, 1) is 1
    assert sg.check(f, {"x": x, "y": y}, engine=engine, quiet=True).passed

    def zero_at_zero(x, y, g):  # drops d/dx where x = 0: 0 instead of 1 at (0, 1)
        gx, gy = vjp(lambda a: torch.pow(a, y), x, g), vjp(lambda b: torch.pow(x, b), y, g)
        return torch.where(x == 0, torch.zeros_like(gx), gx), gy

    bugged = custom(torch.pow, zero_at_zero)
    assert not sg.check(lambda x, y: bugged(x, y).sum(), {"x": x, "y": y}, engine=engine, quiet=True).passed
