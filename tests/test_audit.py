"""Regression tests for the adversarial audit (issue 13): code execution, input handling, state.

Each test fails on the code before its fix.  Expected values come from torch or numpy, never
from symgrad.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import pytest

import symgrad as sg
from symgrad.errors import InputError, SymgradError

torch.manual_seed(0)


# -- item 8: strings never reach sympify / eval ------------------------------------------------
def _payload(marker) -> str:
    return f"__import__('pathlib').Path({str(marker)!r}).touch() or 0.01"


def _mlp(slope):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(), nn.Linear(4, 1)).double()
    model[1].negative_slope = slope
    return model


class _SlopeAttr(nn.Module):
    """A string in an attribute torch's constructor never saw: only the deep guards can catch it."""

    def __init__(self, slope):
        super().__init__()
        self.lin = nn.Linear(3, 1).double()
        self.slope = slope

    def forward(self, x):
        return F.leaky_relu(self.lin(x), self.slope)


X = torch.randn(5, 3, dtype=torch.float64)
Y = torch.randn(5, 1, dtype=torch.float64)


@pytest.mark.parametrize("how", ["backward_calls", "matrix", "elementwise", "import"])
@pytest.mark.parametrize("make", [_mlp, _SlopeAttr], ids=["module-attr", "forward-arg"])
def test_string_in_module_attribute_never_runs(tmp_path, how, make):
    marker = tmp_path / "pwned"
    model = make(_payload(marker))
    with pytest.raises(SymgradError) as info:
        if how == "import":
            sg.import_fn(model)(sg.symbols("x", (2, 3)))
        else:
            kw = {"backward_calls": dict(backward_calls=2), "matrix": dict(engine="matrix"),
                  "elementwise": dict(engine="elementwise")}[how]
            sg.check(model, (X,), loss="mse", target=Y, **kw)
    assert not marker.exists(), "a string from a module attribute ran as code"
    message = str(info.value).lower()
    assert "str" in message and "number" in message and len(message) < 1000


@pytest.mark.parametrize("how", ["backward_calls", "matrix"])
def test_string_label_smoothing_never_runs(tmp_path, how):
    marker = tmp_path / "pwned"
    model = nn.Linear(3, 4).double()
    loss = nn.CrossEntropyLoss()
    loss.label_smoothing = _payload(marker)
    kw = dict(backward_calls=2) if how == "backward_calls" else dict(engine="matrix")
    with pytest.raises(InputError, match="label_smoothing"):
        sg.check(model, (X,), loss=loss, target=torch.tensor([0, 1, 2, 3, 0]), **kw)
    assert not marker.exists()


def test_string_passed_to_symgrad_functions_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    x = sg.symbols("x", (2,))
    with pytest.raises(InputError, match="negative_slope"):
        sg.leaky_relu(x, _payload(marker))
    with pytest.raises(InputError, match="label_smoothing"):
        sg.cross_entropy(sg.symbols("z", (2, 3)), torch.tensor([0, 1]), label_smoothing=_payload(marker))
    with pytest.raises(InputError):
        x + _payload(marker)
    with pytest.raises(InputError):
        sg.check(lambda x: x.sum(), (X,), symbolic=lambda x: _payload(marker))
    assert not marker.exists()


def test_numbers_of_every_kind_still_accepted():
    import fractions

    import numpy as np

    x = sg.symbols("x", (1,))
    for slope in (0.1, np.float32(0.1), torch.tensor(0.1), fractions.Fraction(1, 10)):
        out = sg.leaky_relu(x, slope)
        assert out.shape == (1,)
    model = _mlp(0.2)
    assert sg.check(model, (X,), loss="mse", target=Y).passed


def test_string_in_symbols_map_never_runs(tmp_path):
    import sympy as sp

    marker = tmp_path / "pwned"
    q = sp.symbols("q0:3")
    with pytest.raises(InputError, match="symbols_map"):
        sg.check(None, {"x": X[0]}, symbolic=sum(qi**2 for qi in q), symbols_map={"x": [_payload(marker), q[1], q[2]]})
    assert not marker.exists()


# -- item 11: check() inside torch.no_grad() ---------------------------------------------------
def test_check_inside_no_grad():
    x = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    with torch.no_grad():
        assert sg.check(lambda x: torch.tanh(x).sum(), (x,), symbolic=lambda x: sg.tanh(x).sum()).passed
        model = nn.Sequential(nn.Linear(3, 2), nn.Tanh()).double()
        assert sg.check(model, (X,), loss="mse", target=torch.randn(5, 2, dtype=torch.float64)).passed
        assert sg.check(lambda x: torch.sin(x).sum(), (x,)).passed  # the fx import path
    assert torch.is_grad_enabled()


# -- item 12: the matrix engine's cache is bounded and keeps no parameter values ---------------
def _cached_bytes() -> int:
    from symgrad.matrix import references as R

    total = 0
    for net, *_ in R._STRUCTURES.values():
        for v in net.values.values():
            if v is not None:
                total += v.nbytes if v.base is None and all(s for s in v.strides) else 0
    return total


def test_matrix_cache_is_bounded_over_many_widths():
    from symgrad.matrix import references as R

    R.clear_caches()
    x = torch.randn(4, 3, dtype=torch.float64)
    y = torch.randn(4, 1, dtype=torch.float64)
    for width in range(2, 14):  # 12 architectures
        model = nn.Sequential(nn.Linear(3, width), nn.Tanh(), nn.Linear(width, 1)).double()
        assert sg.check(model, (x,), loss="mse", target=y, engine="matrix").passed
    assert len(R._STRUCTURES) <= R.CACHE_SIZE
    assert len(R._VERIFIED) <= R.CACHE_SIZE and len(R._FORMS) <= R.CACHE_SIZE
    assert _cached_bytes() == 0, "the cache keeps copies of parameter values"
    # a cache hit still refreshes the values: a changed weight changes the gradient
    model = nn.Sequential(nn.Linear(3, 13), nn.Tanh(), nn.Linear(13, 1)).double()
    assert sg.check(model, (x,), loss="mse", target=y, engine="matrix").passed
    with torch.no_grad():
        model[0].weight.mul_(2.0)
    assert sg.check(model, (x,), loss="mse", target=y, engine="matrix").passed


# -- item 9: Report.write is atomic and does not follow symlinks; escaping helpers -------------
def _report(title="t"):
    x = torch.tensor([0.5, 1.5], dtype=torch.float64)
    return sg.check(lambda x: (x * x).sum(), (x,), symbolic=lambda x: (x * x).sum(), title=title)


@pytest.mark.parametrize("suffix", [".md", ".html", ".json", ".txt"])
def test_write_replaces_a_symlink_instead_of_following_it(tmp_path, suffix):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = tmp_path / f"report{suffix}"
    link.symlink_to(victim)
    _report().write(link)
    assert victim.read_text() == "precious", "write followed the symlink"
    assert not link.is_symlink() and "x" in link.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["victim.txt", f"report{suffix}"])  # no temp left


def test_write_leaves_the_old_report_when_rendering_fails(tmp_path, monkeypatch):
    path = tmp_path / "r.md"
    path.write_text("old report")
    report = _report()
    monkeypatch.setattr(type(report), "to_markdown", lambda self: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        report.write(path)
    assert path.read_text() == "old report"
    assert [p.name for p in tmp_path.iterdir()] == ["r.md"]


def test_text_report_escapes_terminal_control_characters(tmp_path):
    path = tmp_path / "r.txt"
    _report(title="evil\x1b[2J\rtitle").write(path)
    text = path.read_text()
    assert "\x1b" not in text and "\r" not in text and "\\x1b[2J" in text


def test_escape_markdown_and_code_helpers():
    from symgrad.report.report import escape_markdown, markdown_code

    evil = "<img src=x onerror=alert(1)> **bold** | cell\n# head `code`"
    out = escape_markdown(evil)
    assert "<" not in out and "\n" not in out and "|" not in out.replace("\\|", "")
    assert "\\*\\*bold\\*\\*" in out and "\\#" in out and "\\`code\\`" in out
    code = markdown_code("a `b` c")
    assert code.startswith("``") and code.endswith("``") and "a `b` c" in code
