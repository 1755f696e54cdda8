"""Cases an adversarial review found, kept as regressions.

Each states the correct verdict from the mathematics, not from symgrad's output.
"""

import numpy as np
import pytest
import sympy
import torch

import symgrad as sg


def custom(fwd, bwd):
    class F(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *xs):
            ctx.save_for_backward(*xs)
            return fwd(*xs)

        @staticmethod
        def backward(ctx, g):
            return bwd(g, *ctx.saved_tensors)

    return F.apply


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
