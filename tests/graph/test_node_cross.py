"""The default node-by-node cross-check of the non-linear tensor rules (Note [Node cross-check]):
a deliberately wrong rule of each non-linear kind never passes and the report names its node;
right rules agree (the op table's run, tests/graph/test_ops.py, has it on throughout); a node it
cannot explode is reported as not cross-checked, never as a pass; a second check does no work."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from symgrad.errors import SymgradError
from symgrad.graph import engine, linalg, node_cross, rules
from symgrad.graph.approx import Approx
from symgrad.graph.check import check_graph
from symgrad.graph.engine import forward
from symgrad.graph.interpret import to_graph
from symgrad.graph.scalar import Ctx
from symgrad.graph.trace import trace_callable


@pytest.fixture(autouse=True)
def fresh_caches(monkeypatch):
    """Every test starts with nothing remembered (the caches are per process)."""
    from symgrad.graph import crosscheck

    monkeypatch.setattr(node_cross, "_PASSED", set())
    monkeypatch.setattr(node_cross, "_SKIPPED", {})
    monkeypatch.setattr(crosscheck, "_PASSED", set())


def randn(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def graph_of(fn, **named):
    names = list(named)
    tensors = tuple(named[n] for n in names)
    gm = trace_callable(fn, tensors)
    return to_graph(gm, [(n, "input" if t.is_floating_point() else "const", t) for n, t in zip(names, tensors)])


def nodes_check(fn, **named):
    g = graph_of(fn, **named)
    return node_cross.crosscheck_nodes(g, forward(g, Ctx()))


def spoil(kind: str, fix):
    """engine's vjp rule with ``fix`` applied to every cotangent a ``kind`` node returns."""
    real = rules.vjp

    def wrong(node, args, g, ctx, needed, kinks=None):
        grads = real(node, args, g, ctx, needed, kinks)
        return [None if x is None else fix(node, x) for x in grads] if node.kind == kind else grads

    return wrong


# ------------------------------------------------------------------------------- right rules

RIGHT = {
    "tanh and a broadcast bias": (lambda x, b: torch.tanh(x + b).pow(2).sum(), dict(x=randn(5, 6), b=randn(6, seed=1))),
    "softmax and log": (lambda x: torch.log_softmax(x, -1).sum() + torch.softmax(x, 0).pow(3).sum(), dict(x=randn(4, 7))),
    "gelu and layer_norm": (lambda x: torch.nn.functional.layer_norm(torch.nn.functional.gelu(x), (7,)).pow(2).sum(),
                            dict(x=randn(5, 7))),
    "relu at its kink and max pooling": (lambda x: torch.nn.functional.max_pool2d(torch.relu(x), 2, padding=1).sum(),
                                         dict(x=torch.where(randn(1, 2, 5, 5) > 0.5, 0.0, randn(1, 2, 5, 5, seed=3)))),
    "a masked softmax": (lambda x: torch.softmax(x.masked_fill(torch.triu(torch.ones(4, 4, dtype=torch.bool), 1),
                                                               float("-inf")), -1).pow(2).sum(), dict(x=randn(4, 4))),
    "where, abs, sign, clamp": (lambda x: (x.abs() + torch.where(x > 0, x, x * x) + x.clamp(-0.5, 0.5) * x.sign()).sum(),
                                dict(x=torch.tensor([0.0, 1.0, -2.0, 0.3, 0.5], dtype=torch.float64))),
    "lgamma, digamma, erf": (lambda x: (torch.lgamma(x) + torch.erf(x) * torch.digamma(x)).sum(), dict(x=randn(6).abs() + 0.5)),
    "detach": (lambda x: (x * x.detach().exp()).sum(), dict(x=randn(3))),
    "amax ties": (lambda x: x.amax(-1).sum() + x.amin(0).pow(2).sum(),
                  dict(x=torch.tensor([[1.0, 1.0, 0.5], [2.0, -1.0, 2.0]], dtype=torch.float64))),
    "inv, det, slogdet": (lambda a: torch.linalg.inv(a).sum() + torch.linalg.det(a) + torch.linalg.slogdet(a)[1],
                          dict(a=randn(4, 4) + 4 * torch.eye(4, dtype=torch.float64))),
    "solve": (lambda a, b: torch.linalg.solve(a, b).pow(2).sum(),
              dict(a=randn(2, 4, 4) + 4 * torch.eye(4, dtype=torch.float64), b=randn(2, 4, 3, seed=1))),
    "cholesky": (lambda a: torch.linalg.cholesky(a @ a.mT + 4 * torch.eye(4, dtype=torch.float64)).pow(2).sum(),
                 dict(a=randn(4, 4))),
}


@pytest.mark.parametrize("case", sorted(RIGHT))
def test_right_rules_agree(case):
    fn, named = RIGHT[case]
    got = nodes_check(fn, **named)
    assert not got.failed, got.failures()
    assert got.checked > 0 and not got.skipped, str(got)


def test_the_report_says_what_was_cross_checked():
    x, w = randn(3, 4), randn(4, 2, seed=1)
    report = check_graph(lambda x, w: torch.tanh(x @ w).pow(2).sum(), {"x": x, "w": w})
    assert report.passed
    text = report.meta["cross-checked"]
    assert "linear nodes (adjoint" in text and "non-linear nodes (against the exploded exact derivative" in text
    assert "cross-check failures" not in report.meta


def test_a_node_it_cannot_explode_is_not_a_pass():
    a = randn(4, 4)
    got = nodes_check(lambda a: torch.linalg.eigvalsh(a @ a.mT).sum(), a=a)
    assert [n.attrs["op"] for n, _ in got.skipped] == ["eigvalsh"]
    assert "no exact scalar form" in str(got) and "not cross-checked" in str(got)
    report = check_graph(lambda a: torch.linalg.eigvalsh(a @ a.mT).sum(), {"a": a})
    assert "1 not cross-checked" in report.meta["cross-checked"]


# ------------------------------------------------------------------------------- wrong rules

def _scale(node, x):
    return Approx(x.v * 1.001, x.e, *((x.lo, x.hi) if x.banded else ()))


def _wrong_report(monkeypatch, kind, fix, fn, named):
    monkeypatch.setattr(engine, "vjp_rule", spoil(kind, fix))
    got = nodes_check(fn, **named)
    assert got.failed and all(n.kind == kind for n, _ in got.failed), str(got)
    report = check_graph(fn, named)
    assert not report.passed
    assert kind in report.meta["cross-check failures"] and "fails the node cross-check" in report.meta["cross-check failures"]
    assert all(not r.verified for r in report.records if r.quantity != "forward")
    return report


def test_a_scaled_pointwise_rule_never_passes(monkeypatch):
    report = _wrong_report(monkeypatch, "pointwise", _scale, lambda x: torch.tanh(x).sum(), dict(x=randn(3, 5)))
    assert "tanh" in report.meta["cross-check failures"]


def test_a_broadcast_reduction_that_drops_an_axis_never_passes(monkeypatch):
    real = rules.unbroadcast

    def first_row(a, shape):  # the bias gets the first row's cotangent, not the sum over the rows
        if a.shape == tuple(shape) or a.v.ndim == len(shape):
            return real(a, shape)
        return real(a.map(lambda t: np.asarray(t)[(0,) * (a.v.ndim - len(shape))]), shape)

    monkeypatch.setattr(rules, "unbroadcast", first_row)
    fn, named = lambda x, b: torch.tanh(x + b).sum(), dict(x=randn(4, 3), b=randn(3, seed=1))
    got = nodes_check(fn, **named)
    assert got.failed and "d/da1" in got.failures(), str(got)
    assert not check_graph(fn, named).passed


def test_a_max_routed_to_the_wrong_entry_never_passes(monkeypatch):
    real = rules._vjp_reduce

    def rolled(node, a, g, ctx, kinks=None):  # the cotangent lands one entry past the maximum
        out = real(node, a, g, ctx, kinks)
        if node.attrs["op"] == "sum":
            return out
        axis = node.attrs["axes"][0]
        return out.map(lambda t: np.roll(np.broadcast_to(t, a.shape), 1, axis=axis))

    monkeypatch.setattr(rules, "_vjp_reduce", rolled)
    fn, named = lambda x: x.amax(-1).pow(2).sum(), dict(x=randn(3, 5))
    got = nodes_check(fn, **named)
    assert [n.attrs["op"] for n, _ in got.failed] == ["max"], str(got)
    report = check_graph(fn, named)
    assert not report.passed and "reduce node max" in report.meta["cross-check failures"]


@pytest.mark.parametrize("op, fn", [
    ("inv", lambda a: torch.linalg.inv(a).pow(2).sum()),
    ("det", lambda a: torch.linalg.det(a)),
    ("cholesky", lambda a: torch.linalg.cholesky(a @ a.mT + torch.eye(4, dtype=torch.float64)).sum()),
])
def test_a_wrong_linalg_rule_never_passes(monkeypatch, op, fn):
    real = linalg.vjp

    def transposed(op_, args, out, g, needed, attrs=None):  # a rule that forgot a transpose, or a symmetrisation
        got = real(op_, args, out, g, needed, attrs)
        if op_ != op:
            return got
        fix = (lambda t: np.tril(t)) if op == "cholesky" else (lambda t: np.swapaxes(t, -1, -2))
        return [None if x is None else x.map(fix) for x in got]

    monkeypatch.setattr(linalg, "vjp", transposed)
    a = randn(4, 4) + 3 * torch.eye(4, dtype=torch.float64)
    got = nodes_check(fn, a=a)
    assert [n.attrs["op"] for n, _ in got.failed] == [op], str(got)
    report = check_graph(fn, {"a": a})
    assert not report.passed and f"linalg node {op}" in report.meta["cross-check failures"]


# ----------------------------------------------------------------------------------- caching

def test_a_second_check_of_the_same_graph_does_no_exploded_work():
    x, w = randn(6, 5), randn(5, 4, seed=1)
    fn = lambda x, w: torch.nn.functional.gelu(x @ w).softmax(-1).amax(-1).sum()  # noqa: E731
    first = node_cross.counter["exploded"]
    assert check_graph(fn, {"x": x, "w": w}).passed
    done = node_cross.counter["exploded"]
    assert done > first
    report = check_graph(fn, {"x": x, "w": w})
    assert report.passed and node_cross.counter["exploded"] == done
    assert "non-linear nodes" in report.meta["cross-checked"]


def test_nodes_that_reduce_alike_share_one_check():
    """Two tanh nodes of different shapes reduce to the same 3 x 3 node: one exploded check."""
    first = node_cross.counter["exploded"]
    got = nodes_check(lambda x, y: torch.tanh(x).sum() + torch.tanh(y).sum(), x=randn(5, 6), y=randn(7, 4, seed=1))
    assert got.checked >= 2 and not got.failed
    assert node_cross.counter["exploded"] - first == got.checked - 1


# ------------------------------------------------------------------------------- exact side

def test_conditions_are_decided_at_exact_values():
    import symengine as se

    from symgrad.graph.node_cross_exact import evaluate

    x = se.Symbol("x")
    sign = se.Piecewise((1, x > 0), (0, se.Eq(x, 0)), (-1, True))
    assert evaluate(sign.xreplace({x: se.Integer(0)}), 120) == 0
    q = se.Piecewise((x, se.exp(x) > se.Rational(13, 10)), (2 * x, True))
    assert float(evaluate(q.xreplace({x: se.Rational(3, 10)}), 120)) == 0.3
    assert float(evaluate(se.polygamma(0, x).xreplace({x: se.Integer(1)}), 120)) == pytest.approx(
        -0.5772156649015329, rel=1e-15)


@pytest.mark.slow
def test_no_node_of_the_op_table_fails():
    """Every representative row of the op table, float64: no rule disagrees with its exact derivative
    (the op table's own test cannot tell a false alarm here on its rows where torch differs)."""
    from symgrad.graph.optable import as_function, cases, representatives

    reps, failed = representatives(), []
    for case in cases():
        if case.name not in reps or "float64" not in case.dtypes or case.xfail:
            continue
        fn, inputs = as_function(case, torch.float64)
        try:
            got = nodes_check(fn, **inputs)
        except SymgradError:  # a row the graph refuses is test_ops' business
            continue
        failed += [(case.name, got.failures())] if got.failed else []
    assert not failed, failed
