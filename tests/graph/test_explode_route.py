"""The op graph's exploded back end as a whole check: ``symgrad.check(..., engine="elementwise")`` on
torch code, exploded through the graph (Note [Exploded twin]): closed forms per entry, rounding
bounds and kink bands from symgrad.lower, the accuracy oracle and joint kink check of the exploded
engine."""

from __future__ import annotations

import time

import pytest
import torch

import symgrad
from symgrad.errors import InputError
from symgrad.testing_ops import with_backward


def check_exploded(fn, inputs, **kw):
    return symgrad.check(fn, inputs, engine="elementwise", quiet=True, **kw)


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).to(dtype)


def test_gradient_with_closed_forms_per_entry():
    x, w = randn(4, 3), randn(3, 2, seed=1)
    report = check_exploded(lambda x, w: torch.tanh(x @ w).pow(2).sum(), {"x": x, "w": w})
    assert report.passed, report.to_text()
    assert report.meta["engine"] == "elementwise" and report.meta["quantity"] == "grad"
    w_rec = next(r for r in report.records if r.name == "w")
    assert "tanh(x[0, 0]*w[0, 0]" in w_rec.closed_form or "tanh(w[0, 0]*x[0, 0]" in w_rec.closed_form


def test_a_wrong_backward_fails():
    x = randn(3, 4)
    good = with_backward(torch.sin, lambda x, g: g * torch.cos(x))
    bad = with_backward(torch.sin, lambda x, g: g * torch.cos(x) * (1 + 1e-6))
    assert check_exploded(lambda x: good(x).pow(2).sum(), {"x": x}).passed
    report = check_exploded(lambda x: bad(x).pow(2).sum(), {"x": x})
    assert not report.passed


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_relu_on_its_kink_and_rounding_in_float32(dtype):
    x = torch.tensor([[-1.0, 0.0, 2.0], [0.0, 3.0, -0.5]], dtype=dtype)
    w = randn(3, 4, dtype=dtype)
    report = check_exploded(lambda x, w: (torch.relu(x) @ w).pow(2).sum(), {"x": x, "w": w})
    assert report.passed, report.to_text()


def test_module_with_the_loss_inside_forward():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 4).double()

        def forward(self, x, y):
            return torch.nn.functional.cross_entropy(torch.tanh(self.fc(x)), y)

    torch.manual_seed(0)
    report = check_exploded(Net(), {"x": randn(5, 3), "y": torch.tensor([0, 3, 1, 1, 2])})
    assert report.passed, report.to_text()
    assert {r.name for r in report.records} >= {"fc.weight", "fc.bias"}


@pytest.mark.parametrize("how", [{}, {"via": "jacrev"}, {"v": "ones"}])
def test_vector_outputs(how):
    x, w = randn(3, 2), randn(2, 4, seed=1)
    kw = {"v": torch.ones(3, 4, dtype=torch.float64)} if how.get("v") else how
    report = check_exploded(lambda x, w: torch.sigmoid(x @ w), {"x": x, "w": w}, **kw)
    assert report.passed, report.to_text()


def test_refused_beyond_the_budget_quickly():
    x, w = randn(32, 64), randn(64, 64, seed=1)
    start = time.perf_counter()
    with pytest.raises(InputError, match="memory budget"):
        check_exploded(lambda x, w: torch.tanh(x @ w).sum(), {"x": x, "w": w}, memory_budget=2**24)
    assert time.perf_counter() - start < 10


def test_auto_sizes_a_captured_constant_before_exploding():
    """``x @ W`` with a closed-over weight has few inputs, but every entry reads W: exploded it took
    72 s (Note [Slow to explode]); 'auto' takes the op graph, and a wrong backward still fails."""
    x, w, v = randn(8, 64), randn(64, 64, seed=1), randn(8, 64, seed=2)
    report = symgrad.check(lambda x: x @ w, {"x": x}, v=v, quiet=True)
    assert report.passed and "graph" in report.meta["engine"], report.meta["engine"]
    bad = with_backward(lambda x: x @ w, lambda x, g: g @ w.T * (1 + 1e-9))
    assert not symgrad.check(bad, {"x": x}, v=v, symbolic=lambda x: x @ w, quiet=True).passed
    small = symgrad.check(lambda x: x @ w[:4, :4], {"x": x[:, :4]}, v=v[:, :4], quiet=True)
    assert small.passed and small.meta["engine"] == "elementwise"  # a small one is still exploded


def test_forward_mode_on_the_exploded_engine():
    x, t = randn(3), randn(3, seed=1)
    assert check_exploded(torch.sin, {"x": x}, tangents={"x": t}, via="func.jvp").passed
    report = check_exploded(lambda x: torch.sin(x) * 2, {"x": x}, tangents={"x": t}, via="forward_ad")
    assert report.passed and report.meta["quantity"] == "jvp"


def _op_rows():
    from symgrad.graph.optable import representative_cases

    return [pytest.param(c, id=c.name) for c in representative_cases("float64")]


@pytest.mark.slow
@pytest.mark.parametrize("case", _op_rows())
def test_op_table_tensor_rules_agree_with_the_exploded_derivative(case):
    """Every representative op row (float64): the tensor rules agree with the exploded derivative,
    or the row is refused with its reason (the exploded engine's verdicts on the same rows:
    tests/nn/test_exploded_torch.py::test_op_table_on_the_exploded_engine).
    ``python -m pytest tests/graph/test_explode_route.py -m slow``"""
    import warnings

    from symgrad.graph.explode_cross import crosscheck_exploded
    from symgrad.graph.interpret import to_graph
    from symgrad.graph.optable import as_function
    from symgrad.graph.trace import trace_callable

    warnings.simplefilter("ignore")
    fn, inputs = as_function(case, torch.float64)
    names = list(inputs)
    graph = to_graph(trace_callable(lambda *a: fn(*a), tuple(inputs[n] for n in names)),
                     [(n, "input" if inputs[n].is_floating_point() else "const", inputs[n]) for n in names])
    result = crosscheck_exploded(graph, wrt=[n for n in (case.wrt or graph.inputs) if n in graph.inputs])
    assert result.passed is not False, str(result)


def test_a_mask_read_by_where_is_no_kink():
    """softplus is where(x > 20, x, log1p(exp(x))): the mask tested against 0 must not make every
    entry a kink whose band lets a wrong backward pass (Note [Indicators in conditions])."""
    from symgrad.graph.optable import wrong_backward

    x = randn(3, 5)
    softplus = torch.nn.functional.softplus
    assert check_exploded(softplus, {"x": x}).passed
    report = check_exploded(wrong_backward(softplus, 1e-6), {"x": x})
    assert not report.passed, report.to_text()
    assert not any(r.kinks for r in report.records)


def test_a_full_exploded_jacobian_of_many_entries_goes_to_the_tensor_back_end():
    """Note [Slow to explode]: the default check of a tensor output explodes its whole Jacobian; an
    sg.tanh twin on 1,024 entries took 43 s and 2.4 GB (the routing had sized one row)."""
    sg = symgrad
    ok = with_backward(torch.tanh, lambda x, g: g * (1 - torch.tanh(x) ** 2))
    wrong = with_backward(torch.tanh, lambda x, g: g * (1 - torch.tanh(x) ** 2) * (1 + 1e-6))
    big, small = torch.randn(400, dtype=torch.float64), torch.randn(40, dtype=torch.float64)
    report = sg.check(ok, {"x": big}, symbolic=sg.tanh)
    assert report.passed and report.meta["engine"].startswith("graph")
    assert not sg.check(wrong, {"x": big}, symbolic=sg.tanh).passed
    assert sg.check(ok, {"x": small}, symbolic=sg.tanh).meta["engine"] == "elementwise"
