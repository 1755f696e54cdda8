"""The kept corpus of seeded bugs and correct custom Functions (symgrad/testing_corpus.py)."""

import pytest
import torch

from symgrad.testing_corpus import DTYPES, corpus, run_case

# a few seconds: correct kernels and bugs of 1 % in both half dtypes, and the precision bugs
FAST = {
    "tanh: correct", "tanh: scaled", "tanh: computed in bfloat16", "tanh: computed in float16",
    "tanh: computed in float32", "softmax: correct", "softmax: correct, float32 accumulation",
    "softmax: missing term", "layer_norm: correct", "layer_norm: correct, float32 accumulation",
    "gelu: correct", "gelu: correct, float32 accumulation", "matmul: scaled", "exp: scaled", "sin: scaled",
    "cumprod: divides by x (shipped)", "atan2: sign (shipped)",
}


def _fast_cases():
    return [c for c in corpus() if c.name in FAST]


@pytest.mark.parametrize("case", _fast_cases(), ids=lambda c: c.label)
def test_corpus_subset(case):
    got = run_case(case, baselines=False)
    assert got["passed"] == (case.bug is None), got["report"].to_text()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_the_correct_sinc_twin_is_accurate_and_the_shipped_one_is_not(dtype):
    """Note [An accurate sinc backward]: the fixed twin passes strict=True in every dtype (its Taylor
    branch used to stop at |x| = 0.02, leaving cancelling entries `inaccurate`); the shipped naive one
    stays `inaccurate` (or non-finite in float16) and fails it."""
    import symgrad as sg

    cases = {c.name: c for c in corpus([dtype]) if c.name.startswith("sinc")}
    for name, accurate in (("sinc: correct", True), ("sinc: cancellation (shipped)", False)):
        case = cases[name]
        report = sg.check(case.fn, case.inputs, symbolic=case.reference, engine="graph", quiet=True, strict=True)
        assert report.passed == accurate, report.to_text()
        assert (not report.inaccurate) == (accurate or dtype == torch.float16), report.to_text()


def test_the_op_graph_reference_of_sinc_is_exact_near_0():
    """torch.sinc traces to sin(P x) * Q / x (P = fl(pi), Q = fl(1/pi)); its exact derivative at
    x = 1e-3, -pi**2 x / 3 (1 - (pi x)**2 / 10 + ...), was 5e4 ulps off when SymPy folded P Q to 53 bits."""
    import math

    import symgrad as sg

    x = torch.tensor([1e-3, -2e-4, 1e-5], dtype=torch.float64)
    report = sg.check(torch.sinc, {"x": x}, engine="graph", v=torch.ones_like(x), reference="mpmath")
    rec = report["x"]
    t = math.pi * x
    series = math.pi * t * (-1 / 3 + t**2 / 30 - t**4 / 840)  # to 1e-17 relative at |t| <= 3.2e-3
    expected = torch.as_tensor(rec.expected, dtype=torch.float64).reshape(-1)
    assert torch.allclose(expected, series, rtol=1e-15, atol=0), (expected - series) / series


def test_corpus_is_large_and_covers_every_dtype():
    cases = corpus()
    assert len(cases) >= 60
    assert {c.dtype for c in cases} == set(DTYPES)
    assert {c.bug is None for c in cases} == {True, False}


def test_half_precision_bug_of_one_percent_is_caught_in_float16():
    """A tanh backward off by 1 % fails in float16 (it passed with the float32-style allowance)."""
    (case,) = [c for c in corpus([torch.float16]) if c.name == "tanh: scaled"]
    assert not run_case(case, baselines=False)["passed"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_whole_corpus_no_false_alarm(seed):
    """Every correct custom Function of the corpus passes, in every dtype."""
    alarms = []
    for case in corpus(DTYPES, seed=seed):
        if case.bug is None and not run_case(case, baselines=False)["passed"]:
            alarms.append(case.label)
    assert not alarms, alarms


@pytest.mark.slow
def test_whole_corpus_catches_float32_and_float16_bugs():
    """Every seeded bug but the ones the README lists as missed fails in float32 and float16."""
    missed = [c.label for c in corpus([torch.float32, torch.float16])
              if c.bug is not None and not c.name.startswith(("sinc", "layer_norm", "softmax: computed"))
              and run_case(c, baselines=False)["passed"]]
    assert not missed, missed
