"""The exploded back end of the op graph (Note [Exploded back end]) and the cross-check of the tensor
rules against it (Note [Exploded cross-check]): a deliberately wrong tensor rule of every node kind
is caught."""

from __future__ import annotations

import time

import numpy as np
import pytest
import symengine as se
import torch

from symgrad.errors import InputError, UnsupportedOp
from symgrad.graph import engine, rules
from symgrad.graph.approx import Approx
from symgrad.graph.explode import explode, exact_number
from symgrad.graph.explode_cross import crosscheck_exploded
from symgrad.graph.interpret import to_graph
from symgrad.graph.trace import trace_callable


def graph_of(fn, **named):
    names = list(named)
    tensors = tuple(named[n] for n in names)
    gm = trace_callable(fn, tensors)
    return to_graph(gm, [(n, "input" if t.is_floating_point() else "const", t) for n, t in zip(names, tensors)])


def randn(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------- exploding

def test_explode_gives_the_exact_entries():
    x, w = randn(2, 3), randn(3, 2, seed=1)
    g = graph_of(lambda x, w: torch.tanh(x @ w) * 0.5, x=x, w=w)
    exprs, syms = explode(g)
    assert exprs.shape == (2, 2) and set(syms) == {"x", "w"}
    want = se.tanh(sum(syms["x"][1, j] * syms["w"][j, 0] for j in range(3))) / 2
    assert (exprs[1, 0] - want).expand() == 0
    env = {s: exact_number(v) for n, t in (("x", x), ("w", w)) for s, v in zip(syms[n].ravel(), t.numpy().ravel())}
    got = np.array([float(e.xreplace(env).n(53)) for e in exprs.ravel()]).reshape(2, 2)
    np.testing.assert_allclose(got, (torch.tanh(x @ w) * 0.5).numpy(), rtol=1e-15)


def test_constants_are_exact_and_integer_data_moves_entries():
    x = randn(4, 3)
    idx = torch.tensor([2, 0, 2])
    g = graph_of(lambda x, i: x[i] * 0.1, x=x, i=idx)
    exprs, syms = explode(g)
    assert exprs[0, 1] == syms["x"][2, 1] * se.Rational(*(0.1).as_integer_ratio())


def test_symgrad_functions_keep_their_derivative():
    """expm1 / sigmoid as unknown SymPy functions would get derivative 0 from symengine."""
    x = randn(3)
    g = graph_of(lambda x: torch.expm1(x).sum() + torch.sigmoid(x).sum(), x=x)
    exprs, syms = explode(g)
    d = exprs.item().diff(syms["x"][0])
    s = 1 / (1 + se.exp(-syms["x"][0]))
    assert (d - se.exp(syms["x"][0]) - s.diff(syms["x"][0])).expand() == 0


def test_linalg_is_refused_with_the_alternative():
    """Beyond Note [Exploded linear algebra]'s 4 x 4 (tests/graph/test_det_singular.py runs the small ones)."""
    a = randn(5, 5) + 3 * torch.eye(5, dtype=torch.float64)
    g = graph_of(lambda a: torch.linalg.inv(a).sum(), a=a)
    with pytest.raises(UnsupportedOp, match="tensor back end"):
        explode(g)


def test_memory_guard_refuses_before_building():
    x, w = randn(64, 512), randn(512, 512, seed=1)
    g = graph_of(lambda x, w: torch.tanh(x @ w).sum(), x=x, w=w)
    start = time.perf_counter()
    with pytest.raises(InputError) as err:
        explode(g, budget=2**30)
    assert time.perf_counter() - start < 2
    text = str(err.value)
    assert "MiB" in text and "memory budget" in text and "engine='graph'" in text and len(text) < 800


# ---------------------------------------------------------------------- the cross-check catches

def _roll(a: Approx) -> Approx:
    """The cotangent sent to the wrong entries (a transpose, a wrong index)."""
    v = np.roll(np.asarray(a.v, np.float64).ravel(), 1).reshape(a.shape)
    return Approx(v, a.e, a.lo, a.hi) if a.banded else Approx(v, a.e)


def _drop_first(a: Approx) -> Approx:
    """One term of one entry dropped."""
    v = np.array(np.broadcast_to(a.v, a.shape), np.float64)
    v.flat[0] = 0.0
    return Approx(v, a.e)


def _transpose(a: Approx) -> Approx:
    return Approx(np.asarray(a.v).T, np.broadcast_to(a.e, a.shape).T)


SQ = randn(3, 3, seed=2)
CASES = {
    # kind: (function, inputs, how the rule is spoiled)
    "pointwise": (lambda x: (torch.tanh(x) * x).sum(), {"x": randn(2, 3)}, "drop_second"),
    "pointwise_scaled": (lambda x: torch.sin(x).sum(), {"x": randn(4)}, "scale"),
    "pointwise_step": (lambda x: (x * torch.floor(3 * x)).sum(), {"x": randn(5, seed=8)}, "scale"),
    "contract": (lambda x, w: torch.tanh(x @ w).sum(), {"x": randn(3, 3), "w": randn(3, 3, seed=1)}, "transpose"),
    "reduce_sum": (lambda x: torch.tanh(x.sum(0)).pow(2).sum(), {"x": randn(3, 4)}, "drop_first"),
    "reduce_max": (lambda x: (x.amax(1) ** 2).sum(), {"x": randn(3, 4)}, "roll"),
    "layout": (lambda x: (x.permute(1, 0) * SQ).sum(), {"x": randn(3, 3, seed=3)}, "transpose"),
    "select": (lambda x: (torch.cat([x[:, 1:], x[:, :1]], 1) * SQ).sum(), {"x": randn(3, 3, seed=4)}, "roll"),
    "stop": (lambda x: (x * x.detach()).sum(), {"x": randn(5)}, "leak"),
}


def _spoiled(kind: str, how: str):
    real = rules.vjp

    def wrong(node, args, g, ctx, needed, kinks=None):
        grads = real(node, args, g, ctx, needed, kinks)
        if node.kind != kind:
            return grads
        if how == "leak":
            return [g]
        if how == "drop_second":
            return [grads[0], None] if len(grads) == 2 and grads[1] is not None else grads
        fix = {"roll": _roll, "drop_first": _drop_first, "transpose": _transpose,
               "scale": lambda a: Approx(a.v * 1.001, a.e)}[how]
        return [None if x is None else fix(x) for x in grads]

    return wrong


def _depends_through_stop(graph, wrt):
    live = set()
    for node in graph.nodes:
        if node in wrt or any(a in live for a in node.args):
            live.add(node)
    return live


@pytest.mark.parametrize("method", ["reverse", "diff"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_right_rules_agree(case, method):
    fn, inputs, _ = CASES[case]
    result = crosscheck_exploded(graph_of(fn, **inputs), method=method)
    assert result.passed is True, str(result)
    assert result.compared > 0


@pytest.mark.parametrize("method", ["reverse", "diff"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_wrong_rule_of_every_kind_is_caught(case, method, monkeypatch):
    fn, inputs, how = CASES[case]
    g = graph_of(fn, **inputs)
    kind = case.split("_")[0] if case.split("_")[0] in ("pointwise", "reduce") else case
    assert kind in g.counts(), g.counts()
    monkeypatch.setattr(engine, "vjp_rule", _spoiled(kind, how))
    if how == "leak":  # the sweep itself skips stop nodes: let the cotangent reach the wrong rule
        monkeypatch.setattr(engine, "_depends", _depends_through_stop)
    result = crosscheck_exploded(g, method=method)
    assert result.passed is False, str(result)
    assert "disagree" in str(result)


def test_a_graph_it_cannot_explode_is_not_a_pass():
    a = randn(5, 5) + 3 * torch.eye(5, dtype=torch.float64)
    result = crosscheck_exploded(graph_of(lambda a: torch.linalg.inv(a).sum(), a=a))
    assert result.passed is None and "linalg" in result.reason


def test_sampled_entries_of_a_larger_graph():
    x, w = randn(8, 20), randn(20, 10, seed=1)
    g = graph_of(lambda x, w: torch.relu(x @ w).sum(1).pow(2), x=x, w=w)
    result = crosscheck_exploded(g, sample_outputs=4, sample_entries=8)
    assert result.passed is True, str(result)
    assert result.compared == 2 * 16  # two cotangents, 8 entries of each leaf


# ------------------------------------------------------------------ reverse mode over the entries

REVERSE_CASES = {
    "mlp": (lambda x, w: torch.tanh(x @ w).pow(2).sum(), {"x": randn(3, 2), "w": randn(2, 4, seed=1)}),
    "max_and_moves": (lambda x: (x.amax(0) * x.permute(1, 0)[0]).sum() + x.expand(2, 3, 3).sin().sum(),
                      {"x": randn(3, 3, seed=5)}),
    "select_and_stop": (lambda x: (torch.cat([x[1:], x[:1] * x.detach()[:1]]) ** 3).sum(), {"x": randn(4, seed=6)}),
    "softmax_step": (lambda x: (torch.softmax(x, -1) * torch.floor(3 * x)).sum(), {"x": randn(2, 3, seed=7)}),
}


@pytest.mark.parametrize("case", sorted(REVERSE_CASES))
def test_reverse_mode_entries_equal_symengine_diff(case):
    from symgrad.graph.explode import clean_derivative, explode_nodes, output_node
    from symgrad.graph.explode_reverse import gradient_entries
    from symgrad.lower.ties import untag

    fn, inputs = REVERSE_CASES[case]
    g = graph_of(fn, **inputs)
    out = output_node(g)
    built, syms = explode_nodes(g)
    leaves = [g.inputs[n] for n in syms]
    rev = gradient_entries(g, built, out, np.full(out.shape, se.Integer(1), object), leaves)
    env = {s: exact_number(v) for n in syms for s, v in zip(syms[n].ravel(), g.inputs[n].attrs["value"].ravel())}
    total = built[out].ravel()[0]
    for leaf in leaves:
        for s, r in zip(syms[leaf.name].ravel(), rev[leaf].ravel()):
            want = float(untag(clean_derivative(total.diff(s)).xreplace(env)).n(80))
            got = float(untag(r.xreplace(env)).n(80))
            assert got == pytest.approx(want, rel=1e-14, abs=1e-300), (leaf.name, s)


def test_check_graph_with_the_exploded_crosscheck(monkeypatch):
    from symgrad.graph import check_graph

    x, w = randn(3, 3), randn(3, 3, seed=1)
    fn = lambda x, w: torch.tanh(x @ w).sum()  # noqa: E731
    report = check_graph(fn, {"x": x, "w": w}, exploded_crosscheck=True)
    assert report.passed and "the tensor rules agree" in report.meta["exploded cross-check"]
    # a wrong pointwise rule: the adjoint cross-check cannot see it, the exploded one does
    monkeypatch.setattr(engine, "vjp_rule", _spoiled("pointwise", "scale"))
    wrong = check_graph(fn, {"x": x, "w": w}, exploded_crosscheck=True)
    assert not wrong.passed
    assert all(not r.verified for r in wrong.records if r.quantity != "forward")


def test_padded_max_pooling_and_broadcast_contractions():
    """-inf fill of a padded max pool is never a candidate (0 * -inf would be NaN); a size-1 axis
    of an einsum operand broadcasts."""
    x = randn(1, 1, 4, 4, seed=9)
    g = graph_of(lambda x: torch.nn.functional.max_pool2d(x, 3, stride=2, padding=1).pow(2).sum(), x=x)
    assert crosscheck_exploded(g).passed is True
    a, b = randn(1, 3, 4, seed=10), randn(2, 4, 5, seed=11)
    g = graph_of(lambda a, b: torch.tanh(torch.matmul(a, b)).sum(), a=a, b=b)
    exprs, syms = explode(g)
    assert exprs.shape == ()
    assert crosscheck_exploded(g).passed is True


def test_leaves_named_like_the_cotangent_symbols():
    import symgrad

    v, w = randn(3, 2), randn(2, 2, seed=1)
    report = symgrad.check(lambda v, w: torch.tanh(v @ w), {"v": v, "w": w}, engine="elementwise",
                           v=torch.ones(3, 2, dtype=torch.float64))
    assert report.passed, report.to_text()
    assert crosscheck_exploded(graph_of(lambda v, w: torch.tanh(v @ w), v=v, w=w)).passed is True
