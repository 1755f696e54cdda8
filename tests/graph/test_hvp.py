"""The op graph's Hessian-vector rules (Note [Hessian-vector rules] in symgrad/graph/hvp.py), cross-checked:
against the exploded back end's exact second derivatives at small sizes, by the symmetry of the
Hessian, against central differences of the graph's own first-order sweep; and a deliberately wrong
rule must make the check fail."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import symgrad as sg
from symgrad.graph import hvp as hvp_module
from symgrad.graph.approx import Approx
from symgrad.graph.engine import backward, forward
from symgrad.graph.hvp import hvp
from symgrad.graph.interpret import to_graph
from symgrad.graph.scalar import Ctx
from symgrad.graph.trace import trace_callable


def _t(*shape, seed=0, low=None):
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return t.abs() + low if low is not None else t


# (torch function, its symbolic twin, inputs): scalar and tensor outputs, every core kind but linalg
PAIRS = {
    "matmul-tanh": (lambda x, w: torch.tanh(x @ w).pow(2).sum(), lambda x, w: sg.sum(sg.tanh(sg.matmul(x, w)) ** 2),
                    lambda: (_t(2, 3), _t(3, 2, seed=1))),
    "bilinear": (lambda x, w: (x @ w).sum(), lambda x, w: sg.sum(sg.matmul(x, w)), lambda: (_t(2, 3), _t(3, 2, seed=1))),
    "softmax-tensor": (lambda x, y: torch.softmax(x, -1) * y, lambda x, y: sg.softmax(x, -1) * y,
                       lambda: (_t(2, 3), _t(2, 3, seed=1))),
    "quotient-log": (lambda x, y: torch.log(1 + x**2) / (1 + y**2), lambda x, y: sg.log(1 + x**2) / (1 + y**2),
                     lambda: (_t(4), _t(4, seed=1))),
    "broadcast-mean": (lambda x, y: torch.sigmoid(x * y).mean(0), lambda x, y: sg.mean(sg.sigmoid(x * y), 0),
                       lambda: (_t(3, 2), _t(2, seed=1))),
    "relu-product": (lambda x: torch.relu(x) * torch.sin(x), lambda x: sg.relu(x) * sg.sin(x), lambda: (_t(5),)),
}


@pytest.mark.parametrize("name", list(PAIRS))
def test_graph_hvp_equals_the_exploded_second_derivative(name):
    """The same v and w on both back ends (seeded): the products agree to float64 rounding."""
    fn, sym, make = PAIRS[name]
    inputs = make()
    graph = sg.check(fn, inputs, order=2, engine="graph")
    exploded = sg.check(fn, inputs, sym, order=2, engine="elementwise")
    assert graph.passed, graph.to_text()
    assert exploded.passed, exploded.to_text()
    for a, b in zip(graph.records[1:], exploded.records[1:]):
        scale = max(np.abs(b.expected).max(), 1e-300)
        np.testing.assert_allclose(a.expected, b.expected, rtol=0, atol=1e-12 * scale)


def _graph(fn, inputs):
    tensors = tuple(inputs)
    names = [f"x{i}" for i in range(len(tensors))]
    graph = to_graph(trace_callable(fn, tensors), [(n, "input", t) for n, t in zip(names, tensors)])
    ctx = Ctx()
    return graph, forward(graph, ctx), graph.outputs[0], [graph.inputs[n] for n in names], ctx


def _flat(d: dict, leaves: list) -> np.ndarray:
    return np.concatenate([np.zeros(n.size) if d.get(n) is None else np.ravel(d[n].v) for n in leaves])


@pytest.mark.parametrize("name", list(PAIRS))
def test_hessian_is_symmetric_and_matches_differences_of_the_gradient(name):
    fn, _, make = PAIRS[name]
    inputs = make()
    graph, values, out, leaves, ctx = _graph(fn, inputs)
    rng = np.random.default_rng(0)
    v = Approx(rng.standard_normal(values[out].shape))
    w1, w2 = ({n: Approx(rng.standard_normal(n.shape)) for n in leaves} for _ in range(2))
    h1 = _flat(hvp(graph, values, out, v, w1, leaves, ctx), leaves)
    h2 = _flat(hvp(graph, values, out, v, w2, leaves, ctx), leaves)
    f1, f2 = _flat(w1, leaves), _flat(w2, leaves)
    assert abs(f1 @ h2 - f2 @ h1) <= 1e-12 * (np.abs(f1) @ np.abs(h2) + 1e-300)
    if name == "relu-product":
        return  # a kink in reach of the step: differences are not the derivative there
    step = 1e-5

    def grad_at(sign):
        moved = [t + sign * step * torch.from_numpy(w1[n].v) for t, n in zip(inputs, leaves)]
        g, vals, o, lv, c = _graph(fn, moved)
        return _flat(backward(g, vals, {o: v}, lv, c), lv)

    np.testing.assert_allclose((grad_at(1) - grad_at(-1)) / (2 * step), h1, rtol=1e-6, atol=1e-7)


def test_stop_has_zero_second_derivative_as_in_torch():
    x = _t(4)
    report = sg.check(lambda x: torch.sin(x) * x.detach() + x * x.detach(), (x,), order=2, engine="graph")
    assert report.passed, report.to_text()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_max_with_ties_routes_through_the_selected_entries(dtype):
    x = torch.tensor([[1.0, 1.0, 0.5], [0.2, -1.0, 0.7]], dtype=dtype)  # a tie in row 0
    report = sg.check(lambda x: torch.amax(x * x, dim=-1).sum() + torch.max(torch.sin(x), dim=0).values.sum(),
                      (x,), order=2, engine="graph")
    assert report.passed, report.to_text()


def test_a_wrong_pointwise_rule_fails(monkeypatch):
    """Second derivatives dropped from the pointwise rule: the check must fail, never pass."""
    x = _t(5)
    assert sg.check(torch.tanh, (x,), order=2, engine="graph").passed
    hvp_module.second_derivatives.cache_clear()
    monkeypatch.setattr(hvp_module, "second_derivatives",
                        lambda expr, k: tuple(tuple(0 for _ in range(k)) for _ in range(k)))
    assert not sg.check(torch.tanh, (x,), order=2, engine="graph").passed


def test_a_wrong_contract_rule_fails(monkeypatch):
    """The bilinear product rule's cross term dropped: the Hessian of sum(x @ w) is all cross terms."""
    x, w = _t(2, 3), _t(3, 2, seed=1)
    fn = PAIRS["bilinear"][0]
    assert sg.check(fn, (x, w), order=2, engine="graph").passed

    def no_cross(spec, args, tangents, g, dg, needed):
        return original(spec, args, [None] * len(args), g, dg, needed)

    original = hvp_module._hvp_contract
    monkeypatch.setattr(hvp_module, "_hvp_contract", no_cross)
    assert not sg.check(fn, (x, w), order=2, engine="graph").passed


# ------------------------------------------------------------- the op table (benchmarks/order2_optable.py)

def _table_params():
    from symgrad.graph.optable import DTYPES, cases

    out = []
    for i, case in enumerate(c for c in cases() if not c.xfail and not c.torch_differs):
        for dt in (d for d in DTYPES if d in case.dtypes):
            marks = [] if i % 12 == 0 else [pytest.mark.slow]  # a sample in the default run; all with -m slow
            out.append(pytest.param(case, dt, id=f"{case.name}-{dt}", marks=marks))
    return out


@pytest.mark.parametrize("case, dtype", _table_params())
def test_op_table_double_backward(case, dtype):
    """torch's own double backward passes (no false alarm), or fails where torch is documented to
    differ; rows torch cannot double-differentiate, and linalg rows, are clear errors."""
    import warnings

    from symgrad.errors import AutogradFailed, UnsupportedOp
    from symgrad.graph.optable import as_function
    from symgrad.graph.order2 import TORCH_DIFFERS

    fn, inputs = as_function(case, getattr(torch, dtype))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = sg.check(fn, inputs, engine="graph", wrt=list(case.wrt) or None, order=2)
    except AutogradFailed as err:
        assert "torch has no derivative for this backward" in str(err)
        return
    except UnsupportedOp as err:
        assert "Hessian-vector rule for the linalg node" in str(err)
        return
    if case.name in TORCH_DIFFERS and dtype == "float64":
        assert not report.passed, report.to_text()
    else:
        assert report.passed, report.to_text()
