"""The op graph's caches: in memory (Note [Graph cache]) and on disk (Note [Disk cache])."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import symgrad as sg
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
    monkeypatch.setattr(graph_check, "_GRAPHS", type(graph_check._GRAPHS)())
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
    graph_check._GRAPHS.clear()  # a new process: nothing in memory
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
    graph_check._GRAPHS.clear()
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
