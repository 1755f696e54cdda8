"""symgrad.graph.check_exploded: the op graph's exploded back end as a whole check (Note
[Exploded route]): closed forms per entry, rounding bounds and kink bands from symgrad.lower."""

from __future__ import annotations

import time

import pytest
import torch

from symgrad.errors import InputError, UnsupportedOp
from symgrad.graph import check_exploded
from symgrad.testing_ops import with_backward


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).to(dtype)


def test_gradient_with_closed_forms_per_entry():
    x, w = randn(4, 3), randn(3, 2, seed=1)
    report = check_exploded(lambda x, w: torch.tanh(x @ w).pow(2).sum(), {"x": x, "w": w})
    assert report.passed, report.to_text()
    assert report.meta["engine"] == "graph (exploded back end)" and report.meta["quantity"] == "grad"
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


def test_forward_mode_is_the_tensor_back_ends():
    with pytest.raises(UnsupportedOp, match="check_graph"):
        check_exploded(torch.sin, {"x": randn(3)}, tangents={"x": randn(3)})
