"""The tensor back end's pieces: pointwise work at numpy's cost, kinks, the adjoint cross-check,
the memory guard, and the SymPy functions with torch's derivative forms."""

from __future__ import annotations

import time

import numpy as np
import pytest
import sympy as sp
import torch

import symgrad as sg
from symgrad.graph import rules
from symgrad.graph.functions import DEFINITIONS
from symgrad.testing_ops import with_backward as custom  # custom(forward, backward(x, g))

DTYPES = [torch.float64, torch.float32]


def silu_backward(x, g, scale=1.0):
    s = torch.sigmoid(x)
    return g * s * (1 + x * (1 - s)) * scale


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_custom_silu_on_4096_elements_gets_a_verdict_fast(dtype):
    x = torch.randn(64, 64, dtype=dtype, generator=torch.Generator().manual_seed(0))
    good = custom(torch.nn.functional.silu, silu_backward)
    delta = 1e-6 if dtype == torch.float64 else 1e-3
    bad = custom(torch.nn.functional.silu, lambda x, g: silu_backward(x, g, 1 + delta))
    start = time.perf_counter()
    ok = sg.check(good, {"x": x})
    wrong = sg.check(bad, {"x": x})
    assert time.perf_counter() - start < 30  # was a MemoryError after minutes
    assert ok.passed, ok.to_text()
    assert not wrong.passed
    assert ok.meta["engine"].startswith("graph") and ok.meta["quantity"].startswith("vjp")


def test_backward_ignoring_grad_output_is_caught_by_random_cotangents():
    x = torch.randn(50, 50, dtype=torch.float64)
    ignores_g = custom(torch.tanh, lambda x, g: 1 - torch.tanh(x) ** 2)
    assert not sg.check(ignores_g, {"x": x}).passed


def test_tanh_sum_on_a_million_entries():
    x = torch.randn(1000, 1000, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    start = time.perf_counter()
    report = sg.check(lambda x: sg.tanh(x).sum(), {"x": x})
    assert report.passed, report.to_text()
    assert time.perf_counter() - start < 30  # did not finish before


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_relu_on_its_kink(dtype):
    x = torch.tensor([[-1.0, 0.0, 2.0], [0.0, 3.0, -0.5]], dtype=dtype)
    w = torch.randn(3, 4, dtype=dtype)
    fn = lambda x, w: (torch.relu(x) @ w).pow(2).sum()  # noqa: E731
    assert sg.check(fn, {"x": x, "w": w}, engine="graph").passed
    # relu'(0) taken as 1 is a subgradient choice: inside the band, passes (kink)
    one_sided = custom(lambda x: x.clamp(min=0), lambda x, g: g * (x >= 0).to(g.dtype))
    report = sg.check(lambda x, w: (one_sided(x) @ w).pow(2).sum(), {"x": x, "w": w}, engine="graph")
    assert report.passed and report["x"].kinks > 0
    # relu'(0) = 2 is no one-sided derivative: fails
    two = custom(lambda x: x.clamp(min=0), lambda x, g: g * torch.where(x == 0, 2.0, (x > 0).to(g.dtype)).to(g.dtype))
    assert not sg.check(lambda x, w: (two(x) @ w).pow(2).sum(), {"x": x, "w": w}, engine="graph").passed


def test_max_pool_ties_are_kinks():
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    x[0, 0, 0, 0] = x[0, 0, 0, 1] = 1.0  # a tie inside one window
    report = sg.check(lambda x: torch.nn.functional.max_pool2d(x, 2).pow(2).sum() + x.sum(), {"x": x}, engine="graph")
    assert report.passed, report.to_text()


def test_a_wrong_tensor_rule_never_passes(monkeypatch):
    real = rules._vjp_layout

    def wrong(node, a, g):  # a permute whose adjoint forgets to invert the permutation
        if node.attrs["op"] == "permute":
            return g.map(lambda t: np.transpose(t, node.attrs["arg"]).reshape(a.shape))
        return real(node, a, g)

    monkeypatch.setattr(rules, "_vjp_layout", wrong)
    from symgrad.graph import crosscheck

    monkeypatch.setattr(crosscheck, "_PASSED", set())
    x, w = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    fn = lambda x, w: torch.tanh(x.permute(1, 2, 0) @ w).sum()  # noqa: E731 - (3, 4, 2) @ (2, 5)
    report = sg.check(fn, {"x": x, "w": w}, engine="graph")
    assert not report.passed
    assert any("adjoint cross-check" in r.note for r in report.records)


def test_memory_guard_refuses_a_huge_exploded_check_quickly():
    x = torch.randn(300, 300, dtype=torch.float64)
    start = time.perf_counter()
    with pytest.raises(sg.InputError, match=r"memory budget.*engine='graph'"):
        sg.check(lambda x: torch.tanh(x).sum(), {"x": x}, engine="elementwise", memory_budget=10 * 2**20)
    assert time.perf_counter() - start < 5


def test_a_memory_budget_reads_as_set():
    """A whole number of bytes written as a float is a budget; the refusal says it was set and
    gives sizes a person reads (it said 0.0 GiB of a budget of 1,000 bytes)."""
    x = torch.randn(300, 300, dtype=torch.float64)
    with pytest.raises(sg.InputError, match=r"budget of 9.5 MiB \(as set"):
        sg.check(lambda x: torch.tanh(x).sum(), {"x": x}, engine="elementwise", memory_budget=1e7)
    for bad in (0, -5, 2.5, float("nan"), True, "1G"):
        with pytest.raises(sg.InputError, match="positive whole number of bytes"):
            sg.check(lambda x: torch.tanh(x).sum(), {"x": x}, engine="elementwise", memory_budget=bad)


@pytest.mark.parametrize("fn", list(DEFINITIONS))
def test_torch_form_derivatives_equal_sympy_diff(fn):
    """Each function's derivative, written in the form torch evaluates, is the textbook one:
    symbolically (the printed form) and in value."""
    x = sp.Symbol("x", real=True)
    ours = sp.diff(fn(x), x)
    textbook = sp.diff(DEFINITIONS[fn](x), x)
    rewritten = ours
    for f, definition in DEFINITIONS.items():  # logsigmoid's derivative holds sigmoid
        rewritten = rewritten.replace(f, definition)
    # on each side of 0 (i1's and i1e's forms are 1/2 at their removable point 0, i0e's 0 at its kink)
    for side in (sp.Symbol("p", positive=True), sp.Symbol("n", negative=True)):
        assert sp.simplify((rewritten - textbook).subs(x, side)) == 0
    for point in (-2.5, -0.3, 0.7, 3.0):
        assert float(rewritten.subs(x, point)) == pytest.approx(float(textbook.subs(x, point)), rel=1e-12)


def test_bessel_derivatives_at_zero_are_the_limits_torch_takes():
    """i1' and i1e' are 1/2 at 0 (their forms' limit there, which SymPy's ``limit`` gets wrong: it says
    the difference of i1's two forms tends to 1); i0e has a kink at 0, slopes -1 and 1, and torch's 0."""
    import mpmath as mp

    from symgrad.graph.functions import bessel_i0e, bessel_i1, bessel_i1e

    x = sp.Symbol("x", real=True)
    h = mp.mpf("1e-20")
    with mp.workdps(40):
        for fn, want in ((bessel_i1, 0.5), (bessel_i1e, 0.5), (bessel_i0e, 0.0)):
            assert sp.diff(fn(x), x).subs(x, 0) == sp.Rational(want)
        i1e = lambda t: mp.exp(-abs(t)) * mp.besseli(1, t)  # noqa: E731
        assert float((mp.besseli(1, h) - mp.besseli(1, -h)) / (2 * h)) == 0.5
        assert float((i1e(h) - i1e(-h)) / (2 * h)) == pytest.approx(0.5, rel=1e-15)


def test_the_reciprocal_of_a_tiny_value_keeps_a_finite_bound():
    """The error of s carried through 1/s is |s**-2| e_s: at s = 6.5e-244 (a running sum's first entry
    shifted by its row's maximum) s**-2 overflows, and inf * e_s made the bound of every entry summed
    from it NaN (scalar._power_error writes it |v| e_s / |s|, finite where 1/s is)."""
    from symgrad.graph.approx import Approx
    from symgrad.graph.rules import symbols_for
    from symgrad.graph.scalar import Ctx, evaluate

    (s,) = symbols_for(1)
    out = evaluate(1 / s, {s: Approx(np.array([6.5e-244, 2.0]), np.array([1e-259, 1.0]))}, Ctx())
    assert np.isfinite(out.e).all()
    assert out.e[0] >= 1e-259 / 6.5e-244 / 6.5e-244 and out.e[1] == pytest.approx(0.25 + 0.5)


def test_memory_guard_of_the_op_graph_refuses_before_the_forward():
    """A graph check whose estimated peak is beyond the budget is refused right after tracing, with
    the estimate, the largest nodes and what to do (Note [Memory guard of the op graph])."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(16 * 32 * 32, 10))
    x = torch.randn(2, 3, 32, 32)
    start = time.perf_counter()
    with pytest.raises(sg.InputError, match=r"(?s)[GMK]iB on the op graph.*convolution.*budget of 1 MiB \(as set.*smaller batch.*memory_budget="):
        sg.check(model, {"x": x}, loss=torch.nn.CrossEntropyLoss(), target=torch.tensor([1, 3]), memory_budget=2**20)
    assert time.perf_counter() - start < 10
    assert sg.check(model, {"x": x}, loss=torch.nn.CrossEntropyLoss(), target=torch.tensor([1, 3]), quiet=True).passed


def test_the_memory_budget_heeds_an_address_space_limit(monkeypatch):
    """Under ``prlimit --as`` the machine's free memory overstates what the check may take: a check
    between the limit and the machine's budget got past the guard and died (Note [Memory guard])."""
    import resource

    from symgrad.graph.budget import memory_budget

    from symgrad.graph.budget import _read_bytes

    monkeypatch.delenv("SYMGRAD_MEMORY_BUDGET", raising=False)
    limit = _read_bytes("/proc/self/status", "VmSize:") + 2**30  # 1 GiB of address space left
    monkeypatch.setattr(resource, "getrlimit", lambda which: (limit, resource.RLIM_INFINITY))
    assert 0 < memory_budget() <= 2**30 // 4
