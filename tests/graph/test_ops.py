"""One parametrised op test over the op table (``symgrad.graph.optable``), in float64 and float32:
torch's own autograd passes, and a seeded wrong backward (torch's gradient times 1 + 1e-6 in
float64, 1 + 1e-3 in float32) fails wherever the true derivative is not zero.

The default run checks one representative row per op (``optable.representatives``: the first row
of each op, in both dtypes, with its seeded bug); the other parametrisations of an op (``pad
reflect 2d`` beside ``pad constant 0``) and the seed sweep (four more input draws per row) are
marked ``slow`` (pyproject's addopts ``-m 'not slow'``); run them with
``python -m pytest tests/graph/test_ops.py -m slow``.
Rows marked ``xfail`` are strict: an op that starts working must have its mark removed."""

from __future__ import annotations

import warnings

import pytest
import torch

import symgrad as sg
from symgrad.graph.optable import (DTYPES, FACTOR, as_function, cases, coverage_markdown, representatives,
                                   wrong_backward)

REPRESENTATIVES = representatives()


def _params():
    out = []
    for case in cases():
        for dt in DTYPES:
            marks = []
            if dt not in case.dtypes:
                continue
            if case.xfail:
                marks.append(pytest.mark.xfail(reason=case.xfail, strict=True))
            if case.slow or case.name not in REPRESENTATIVES:
                marks.append(pytest.mark.slow)
            out.append(pytest.param(case, dt, id=f"{case.name}-{dt}", marks=marks))
    return out


PARAMS = _params()


def _check(fn, inputs, case):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sg.check(fn, inputs, engine="graph", wrt=list(case.wrt) or None)


@pytest.mark.parametrize("case, dtype", PARAMS)
def test_torch_autograd_passes(case, dtype):
    fn, inputs = as_function(case, getattr(torch, dtype))
    report = _check(fn, inputs, case)
    if case.torch_differs:  # documented: torch's backward is not the derivative of its forward here
        assert not report.passed, report.to_text()
    else:
        assert report.passed, report.to_text()


@pytest.mark.parametrize("case, dtype", PARAMS)
def test_seeded_wrong_backward_fails(case, dtype):
    fn, inputs = as_function(case, getattr(torch, dtype))
    report = _check(wrong_backward(fn, FACTOR[dtype]), inputs, case)
    if case.zero_grad:  # a zero derivative scaled is still right: the check must not invent a failure
        assert report.passed, report.to_text()
    else:
        assert not report.passed, report.to_text()


MODULES = [p for p in PARAMS if p.values[0].module is not None]


@pytest.mark.parametrize("case, dtype", MODULES)
def test_module_passes_as_a_module(case, dtype):
    """The module rows also go in as modules (parameters found by symgrad, not passed as inputs)."""
    torch.manual_seed(0)
    model = case.module().to(getattr(torch, dtype))
    fn, inputs = as_function(case, getattr(torch, dtype))
    own = {k: v for k, v in inputs.items() if k in case.inputs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = sg.check(_FirstOutput(model), own, engine="graph")
    assert report.passed, report.to_text()


class _FirstOutput(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, *xs):
        out = self.inner(*xs)
        return out[0] if isinstance(out, tuple) else out


def test_the_wrong_backward_helper_is_wrong_by_its_factor():
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(wrong_backward(torch.sin, 1e-3)(x).sum(), x)
    assert torch.allclose(g, torch.cos(x) * (1 + 1e-3), rtol=0, atol=1e-15)


def test_table_rows_are_unique_and_described():
    names = [c.name for c in cases()]
    assert len(names) == len(set(names))
    kinds = {c.kind for c in cases()}
    assert kinds <= {"pointwise", "reduction", "shape", "linalg", "nn", "loss", "module"}
    assert all(c.xfail or c.fn is not None or c.module is not None for c in cases())


def test_every_op_has_a_representative_in_the_default_run():
    from symgrad.graph.optable import op_of

    ops = {op_of(c) for c in cases()}
    assert {op_of(c) for c in cases() if c.name in REPRESENTATIVES} == ops
    assert len(REPRESENTATIVES) == len(ops) < len(cases())
    assert "pad constant 0" in REPRESENTATIVES and "pad reflect 2d" not in REPRESENTATIVES


def test_coverage_markdown_lists_every_row():
    table = coverage_markdown()
    lines = table.splitlines()
    assert lines[0].startswith("| op | kind | domain | float64 | float32 | notes |")
    assert len(lines) == 2 + len(cases())
    assert any("| xfail |" in line for line in lines) == any(c.xfail for c in cases())
    assert "| gelu | pointwise |" in table


SWEEP_SEEDS = (1, 2, 3, 4)


@pytest.mark.slow
@pytest.mark.parametrize("case, dtype", [p for p in PARAMS if not p.values[0].xfail and p.values[1] in p.values[0].sweep_dtypes])
def test_sweep_over_seeds(case, dtype):
    """Four more draws of every row's inputs: no false alarm, and the wrong backward caught."""
    for seed in SWEEP_SEEDS:
        fn, inputs = as_function(case, getattr(torch, dtype), seed)
        report = _check(fn, inputs, case)
        assert report.passed != bool(case.torch_differs), f"seed {seed}\n" + report.to_text()
        wrong = _check(wrong_backward(fn, FACTOR[dtype]), inputs, case)
        assert wrong.passed if case.zero_grad else not wrong.passed, f"seed {seed}\n" + wrong.to_text()


def test_an_op_outside_the_table_names_itself_and_register():
    from symgrad.errors import UnsupportedOp

    a = torch.tensor([[2.0, 0.5], [0.3, 1.5]], dtype=torch.float64)
    with pytest.raises(UnsupportedOp) as err:
        sg.check(torch.special.airy_ai, {"a": a}, engine="graph")
    text = str(err.value)
    assert "special_airy_ai" in text and "register(" in text and "fx node" in text


def test_a_singular_matrix_is_refused_with_a_clear_error():
    from symgrad.errors import SymgradError

    a = torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=torch.float64)
    with pytest.raises(SymgradError, match="singular"):  # torch's own forward refuses it while tracing
        sg.check(torch.linalg.inv, {"a": a}, engine="graph")


JACREV_ROWS = ("gelu", "atan2", "logsumexp", "cumprod with a zero", "amax with ties", "gather", "scatter_add",
               "pad reflect 2d", "linalg.solve", "linalg.eigvalsh", "conv2d", "layer_norm", "sdpa causal",
               "cross_entropy label_smoothing", "nn.GRUCell")


JACREV_DEFAULT = ("gelu", "gather", "linalg.solve", "layer_norm")  # the rest of JACREV_ROWS is slow


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", [n if n in JACREV_DEFAULT else pytest.param(n, marks=pytest.mark.slow)
                                  for n in JACREV_ROWS])
def test_full_jacobian_via_jacrev(name, dtype):
    """The same rows through torch.func.jacrev: the whole Jacobian, one product per output entry (the
    wrong backward, an old-style autograd.Function that torch.func refuses, through
    torch.autograd.functional.jacobian)."""
    (case,) = [c for c in cases() if c.name == name]
    fn, inputs = as_function(case, getattr(torch, dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        good = sg.check(fn, inputs, engine="graph", via="jacrev", wrt=list(case.wrt) or None)
        bad = sg.check(wrong_backward(fn, FACTOR[dtype]), inputs, engine="graph", via="functional.jacobian",
                       wrt=list(case.wrt) or None)
    assert good.passed and good.meta["quantity"].startswith("jacobian"), good.to_text()
    assert not bad.passed, bad.to_text()


def test_logcumsumexp_float64_reverse_mode_passes_and_torchs_jvp_offset_is_caught():
    """torch's logcumsumexp_jvp divides by ``cumsum(exp(x - max)) + 1e-13``: in float64 that is
    thousands of ulps off the derivative; its reverse mode is exact to rounding."""
    x = torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x[:, 0] -= 4.0  # a small first term: the 1e-13 is large beside it
    report = sg.check(lambda x: torch.logcumsumexp(x, 1), {"x": x}, engine="graph")
    rows = {r.quantity: r.passed for r in report.records}
    assert rows["vjp"] and not rows["jvp"], report.to_text()
    t = torch.randn(3, 6, dtype=torch.float64)
    _, tangent = torch.func.jvp(lambda x: torch.logcumsumexp(x, 1), (x,), (t,))
    exact = torch.cumsum(torch.exp(x) * t, 1) / torch.cumsum(torch.exp(x), 1)
    assert (tangent - exact).abs().max() > 1e-13  # the offset is torch's, not the check's
    wrong = sg.check(wrong_backward(lambda x: torch.logcumsumexp(x, 1), 1e-6), {"x": x}, engine="graph")
    assert not {r.quantity: r.passed for r in wrong.records}["vjp"], wrong.to_text()
