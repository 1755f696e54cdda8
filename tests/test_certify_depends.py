"""Note [Certify what the verdicts depend on]: in the ``auto`` mode only the entries whose verdicts
the fast reference cannot decide are re-evaluated over mpmath, and every verdict is the one that
certifying every entry with a large bound gives."""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest
import torch

import symgrad as sg
from symgrad.compare.accuracy import InaccurateDerivative, depends_on_reference
from symgrad.compare.compare import ulp
from symgrad.lower.exact import ExactEvaluator
from symgrad.reference import Reference
from symgrad.testing_ops import with_backward

compare_module = importlib.import_module("symgrad.compare.compare")


def _sinc(backward):
    return with_backward(lambda x: torch.sin(x) / x, lambda x, g: g * backward(x))


def _naive(x):
    return (torch.cos(x) * x - torch.sin(x)) / x**2


def _scaled(factor):
    return _sinc(lambda x: _naive(x) * factor)


def _float32(x):
    return _naive(x.float()).double()


CASES = {
    "naive": _sinc(_naive),
    "off by 1e-9": _scaled(1 + 1e-9),
    "off by 1e-13": _scaled(1 + 1e-13),
    "float32 inside": _sinc(_float32),
    "wrong": _sinc(lambda x: torch.cos(x) / x),
}


def _records(report) -> list:
    return [(r.name, r.verdict, r.mismatched, r.inaccurate, bool(r.accuracy_note)) for r in report.records]


def _run(fn, x, v):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InaccurateDerivative)
        return sg.check(fn, {"x": x}, symbolic=lambda x: sg.sin(x) / x, v=v)


def _certify_all(monkeypatch):
    """The old rule: every entry whose fast bound is not small is re-evaluated."""
    monkeypatch.setattr(compare_module, "depends_on_reference", lambda ref, e, *args, **kw: np.ones(np.shape(e), bool))


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_verdicts_are_those_of_certifying_every_entry(name, seed, monkeypatch):
    gen = torch.Generator().manual_seed(seed)
    # from cancelling (1e-5) to plain (2): both rules of the Note meet both kinds of entry
    x = (10 ** (torch.rand(12, generator=gen, dtype=torch.float64) * 5.3 - 5)) * torch.sign(torch.randn(12, generator=gen))
    v = torch.randn(12, generator=gen, dtype=torch.float64)
    fast = _run(CASES[name], x, v)
    with monkeypatch.context() as m:
        _certify_all(m)
        every = _run(CASES[name], x, v)
    assert _records(fast) == _records(every)
    for a, b in zip(fast.records, every.records):
        bad = np.asarray(a.mismatch_mask, bool)
        # a failing entry is shown against its certified value
        np.testing.assert_array_equal(np.asarray(a.expected)[bad], np.asarray(b.expected)[bad])


def _net():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    return model, {"x": torch.randn(5, 3, dtype=torch.float64)}


def test_a_network_gradient_is_not_reevaluated_where_no_verdict_depends_on_it(monkeypatch):
    calls = []
    original = ExactEvaluator.exact
    monkeypatch.setattr(ExactEvaluator, "exact", lambda self, slots, u: calls.append(len(slots)) or original(self, slots, u))
    model, inputs = _net()
    target = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    loss = lambda out, t: ((out - t) ** 2).mean()  # noqa: E731
    report = sg.check(model, inputs, engine="elementwise", loss=loss, target=target, quiet=True)
    assert report.passed
    skipped = [r for r in report.records if "not re-evaluated" in r.reference or "elsewhere" in r.reference]
    assert skipped, [r.reference for r in report.records]
    with monkeypatch.context() as m:
        _certify_all(m)
        calls.clear()
        every = sg.check(model, inputs, engine="elementwise", loss=loss, target=target, quiet=True)
        certified_all = sum(calls)
    assert _records(report) == _records(every) and certified_all > 0
    calls.clear()
    from symgrad.compare.accuracy import reference_mode

    token = reference_mode.set("mpmath")  # on request: every entry
    try:
        asked = sg.check(model, inputs, engine="elementwise", loss=loss, target=target, quiet=True)
    finally:
        reference_mode.reset(token)
    assert all("mpmath" in r.reference for r in asked.records if r.quantity == "grad")


def _ref(e, rounding):
    return Reference("g", np.asarray(e, np.float64), rounding=np.asarray(rounding, np.float64))


def test_an_entry_within_reach_of_its_allowance_depends_on_the_reference():
    e = np.array([1.0, 1.0, 1.0, 1.0])
    b = np.full(4, 1e-14)  # the fast reference's bound
    allowed = np.full(4, 1e-12)
    eps = 2.0**-52
    a = e + np.array([1e-16, 1e-12 - 2e-14, 2e-12, 3e-15])  # accurate; within reach; failing; right, not surely accurate
    got = depends_on_reference(_ref(e, np.ones(4)), e, a, allowed, b, "float64", ulp, eps, 0.0, None, allowance_slope=10.0)
    assert got.tolist() == [True, True, True, True]  # the first: b (45 ulps) alone exceeds the accuracy floor
    b = np.full(4, 1e-16)
    got = depends_on_reference(_ref(e, np.ones(4)), e, a, allowed, b, "float64", ulp, eps, 0.0, None, allowance_slope=10.0)
    assert got.tolist() == [False, True, True, True]
    # NaN on either side, or no bound at all: never decided by the fast values
    got = depends_on_reference(_ref(e, np.ones(4)), e, np.array([np.nan, 1, 1, 1]), allowed,
                               np.array([1e-16, np.inf, 1e-16, 1e-16]), "float64", ulp, eps, 0.0, None, allowance_slope=10.0)
    assert got[:2].tolist() == [True, True] and not got[2]


def test_a_check_certifies_at_most_its_budget_and_keeps_its_verdicts(monkeypatch):
    """Note [A budget of certified entries]: past PER_CHECK re-evaluated entries float64 stays (an
    LSTM's saturated gates took 45 s one by one); the verdicts do not move, the reference line says
    how many were re-evaluated, and a backward 1e-6 off still fails."""
    from symgrad.graph import exact

    x = torch.linspace(1e-4, 3e-3, 200, dtype=torch.float64)
    sinc = lambda x: torch.special.sinc(x).sum()  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = sg.check(sinc, {"x": x}, engine="graph")
        monkeypatch.setattr(exact, "PER_CHECK", 10)
        capped = sg.check(sinc, {"x": x}, engine="graph")
        wrong = with_backward(torch.special.sinc, lambda x, g: g * torch.func.grad(
            lambda y: torch.special.sinc(y).sum())(x) * (1 + 1e-6))
        bug = sg.check(lambda x: wrong(x).sum(), {"x": x}, symbolic=sinc, engine="graph")
    assert "200 cancelling pointwise entries re-evaluated" in full.records[1].reference
    assert "re-evaluated over mpmath" not in capped.records[1].reference
    assert full.passed and capped.passed and not bug.passed
    assert exact.counter["stop"] is None  # the budget ends with its check
