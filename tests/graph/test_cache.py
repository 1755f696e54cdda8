"""The op graph's caches: in memory (Note [Graph cache]) and on disk (Note [Disk cache])."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import symgrad as sg
from symgrad.graph import cache as graph_cache
from symgrad.graph import check as graph_check
from symgrad.graph import diskcache


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x, y):
        return F.cross_entropy(self.b(torch.tanh(self.a(x))), y)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMGRAD_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(graph_cache, "_GRAPHS", type(graph_cache._GRAPHS)())
    return tmp_path


def _no_trace(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("traced although a cached graph was there")

    monkeypatch.setattr(graph_check, "trace_callable", refuse)


def test_a_second_process_reads_the_graph_from_disk(cache, monkeypatch):
    torch.manual_seed(0)
    model = Net().double()
    inputs = {"x": torch.randn(5, 4, dtype=torch.float64), "y": torch.tensor([0, 2, 1, 1, 0])}
    first = sg.check(model, inputs, engine="graph")
    assert first.passed and list((cache / "graphs").glob("*.pkl"))
    graph_cache._GRAPHS.clear()  # a new process: nothing in memory
    _no_trace(monkeypatch)
    with torch.no_grad():
        model.a.weight.mul_(1.5)  # new values, same architecture
    second = sg.check(model, inputs, engine="graph")
    assert second.passed
    assert second["a.weight"].expected is not None
    assert not (second["a.weight"].expected == first["a.weight"].expected).all()


def test_a_file_others_can_write_is_never_loaded(cache, monkeypatch):
    torch.manual_seed(1)
    model = Net().double()
    inputs = {"x": torch.randn(5, 4, dtype=torch.float64), "y": torch.tensor([0, 2, 1, 1, 0])}
    sg.check(model, inputs, engine="graph")
    (path,) = (cache / "graphs").glob("*.pkl")
    os.chmod(path, 0o666)
    key = path.stem
    assert diskcache.load(key) is None


def test_changed_integer_data_is_another_graph(cache):
    torch.manual_seed(2)
    model = Net().double()
    x = torch.randn(5, 4, dtype=torch.float64)
    sg.check(model, {"x": x, "y": torch.tensor([0, 2, 1, 1, 0])}, engine="graph")
    graph_cache._GRAPHS.clear()
    report = sg.check(model, {"x": x, "y": torch.tensor([1, 1, 1, 0, 2])}, engine="graph")
    assert report.passed
    assert len(list((cache / "graphs").glob("*.pkl"))) == 2


def test_a_stale_graph_is_traced_again(cache, monkeypatch):
    """A function whose closure changed after its graph was cached: the forward row disagrees, so
    symgrad traces it again instead of comparing derivatives of the old function."""
    w = torch.randn(4, 3, dtype=torch.float64)

    def fn(x):
        return torch.tanh(x @ w).sum()

    x = torch.randn(2, 4, dtype=torch.float64)
    assert sg.check(fn, {"x": x}, engine="graph").passed
    w.mul_(2.0)  # same tensor object, new values: the in-memory key is unchanged
    report = sg.check(fn, {"x": x}, engine="graph")
    assert report.passed and report.records[0].passed


def test_how_often_the_function_runs(cache):
    calls = [0]

    def f(x):
        calls[0] += 1
        return torch.tanh(x).sum()

    def g(x):
        calls[0] += 1
        return torch.tanh(x)

    x = torch.randn(40, 40, dtype=torch.float64)
    counts = []
    for fn in (f, f, g):
        calls[0] = 0
        sg.check(fn, {"x": x}, engine="graph")
        counts.append(calls[0])
    assert counts == [3, 2, 6]  # README "How often your function runs"


class Twice(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, g):
        return 2 * g


def module_level(x):
    return torch.tanh(x).sum()


def test_only_what_its_source_defines_is_cached_on_disk():
    x = torch.randn(3, dtype=torch.float64)
    args = (None, None, None, ["x"], [x])
    assert diskcache.fingerprint(module_level, *args) is not None
    assert diskcache.fingerprint(Net(), *args) is not None
    # a custom Function's apply, a lambda and a closure say nothing of what they compute
    assert diskcache.fingerprint(Twice.apply, *args) is None
    assert diskcache.fingerprint(lambda x: x.sum(), *args) is None
    w = torch.ones(3)
    assert diskcache.fingerprint(lambda x: (w * x).sum(), *args) is None



class Wiggle(torch.autograd.Function):
    """x + 1e-8 sin(1e5 x): a forward float32 cannot tell from x, a derivative off by up to 1e-3."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x + 1e-8 * torch.sin(1e5 * x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (1 + 1e-3 * torch.cos(1e5 * x))


class WithAttribute(nn.Module):
    """Instances differ only in plain attributes their repr does not show (Note [Module state])."""

    def __init__(self, act=None, wiggle=False):
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.act, self.wiggle = act, wiggle

    def forward(self, x):
        h = self.a(x)
        if self.act is not None:
            h = self.act.apply(h)
        if self.wiggle:
            h = h + 1e-8 * torch.sin(1e5 * h)
        return h.pow(2).sum()


@pytest.mark.parametrize("change", ["function attribute", "flag attribute"])
@pytest.mark.parametrize("process", ["same", "new"])
def test_a_graph_is_never_reused_for_a_module_whose_attributes_differ(cache, change, process):
    # float32: a stale graph's forward would agree with torch's, its gradient would not
    torch.manual_seed(3)
    first, x = WithAttribute(), {"x": torch.randn(5, 4)}
    assert sg.check(first, x, engine="graph").passed
    changed = {"act": Wiggle} if change == "function attribute" else {"wiggle": True}
    if process == "new":  # a second process: another instance, the graph only on disk
        graph_cache._GRAPHS.clear()
        second = WithAttribute(**changed)
        second.load_state_dict(first.state_dict())
    else:  # the same object, changed in place
        for k, val in changed.items():
            setattr(first, k, val)
        second = first
    report = sg.check(second, x, engine="graph")
    assert report.passed, report.to_text()
    w = second.a.weight.detach().double().requires_grad_()
    params = {"a.weight": w, "a.bias": second.a.bias.detach().double()}
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(torch.func.functional_call(second, params, (x["x"].double(),)), w)
    torch.testing.assert_close(torch.as_tensor(report["a.weight"].expected), grad, rtol=1e-6, atol=1e-9)


MASK_FILL = float("-inf")  # a module-level name the forward below reads


def _scale(x):
    return 2 * x


class Masked(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        mask = torch.triu(torch.full((4, 4), MASK_FILL, dtype=x.dtype), 1)
        return torch.softmax(_scale(self.a(x)) + mask, -1).sum()


def test_the_key_reads_the_globals_a_forward_reads(cache, monkeypatch):
    """Note [Globals a forward reads]: a flag or a helper of the module changes the key."""
    x = torch.randn(4, 4, dtype=torch.float64)
    args = (None, None, None, ["x"], [x])
    first = diskcache.fingerprint(Masked(), *args)
    assert first is not None and diskcache.fingerprint(Masked(), *args) == first
    monkeypatch.setitem(Masked.forward.__globals__, "MASK_FILL", -1e9)
    assert diskcache.fingerprint(Masked(), *args) != first
    monkeypatch.setitem(Masked.forward.__globals__, "MASK_FILL", float("-inf"))
    assert diskcache.fingerprint(Masked(), *args) == first
    monkeypatch.setitem(Masked.forward.__globals__, "_scale", module_level)  # another helper: another key
    assert diskcache.fingerprint(Masked(), *args) != first
