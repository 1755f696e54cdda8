"""Progress on stderr only for long work, silenced by quiet=/SYMGRAD_QUIET; stages logged to "symgrad"."""

from __future__ import annotations

import io
import logging
import time

import torch

import symgrad as sg
from symgrad.progress import is_quiet, progress, stage


def test_quiet_by_keyword_and_environment(monkeypatch):
    monkeypatch.setenv("SYMGRAD_PROGRESS", "1")
    monkeypatch.delenv("SYMGRAD_QUIET", raising=False)
    assert not is_quiet(None)
    assert is_quiet(True)
    monkeypatch.setenv("SYMGRAD_QUIET", "1")
    assert is_quiet(None)


def test_shown_only_after_the_delay(monkeypatch):
    monkeypatch.setenv("SYMGRAD_PROGRESS", "1")
    monkeypatch.delenv("SYMGRAD_QUIET", raising=False)
    with progress("fast", delay=5.0, stream=io.StringIO()) as bar:
        bar.stage("one")
    assert not bar.shown and [s for s, _ in bar.stages] == ["one"]
    with progress("slow", delay=0.05, stream=io.StringIO()) as bar:
        stage("waiting")
        time.sleep(0.5)
    assert bar.shown and bar.stages[0][0] == "waiting"
    monkeypatch.setenv("SYMGRAD_QUIET", "1")
    with progress("slow", delay=0.05, stream=io.StringIO()) as bar:
        time.sleep(0.3)
    assert not bar.shown


def test_nested_progress_is_shared():
    with progress("outer", quiet=True) as outer:
        with progress("inner", quiet=True) as inner:
            stage("x")
    assert inner is outer and [s for s, _ in outer.stages] == ["x"]


def test_check_logs_its_stages_and_quiet_changes_no_result(caplog):
    x = torch.tensor([0.3, -1.2], dtype=torch.float64)
    with caplog.at_level(logging.DEBUG, logger="symgrad"):
        loud = sg.check(lambda x: (x.tanh() * 3).sum(), {"x": x})
    text = caplog.text
    for name in ("building the symbolic forward", "differentiating in closed form", "evaluating the closed form",
                 "running autograd (via=backward)", "comparing"):
        assert name in text
    quiet = sg.check(lambda x: (x.tanh() * 3).sum(), {"x": x}, quiet=True)
    assert quiet.to_dict() == loud.to_dict()


def test_the_reruns_say_how_far_they_are(monkeypatch):
    """A long stage shows its fraction done (issue 9): the random-rounding reruns count themselves."""
    from symgrad.progress import Progress

    seen = []
    original = Progress.advance

    def spy(self, done, total):
        original(self, done, total)
        seen.append((done, total, self._label()))

    monkeypatch.setattr(Progress, "advance", spy)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    sg.check(model, {"x": torch.randn(4, 8)}, loss=torch.nn.MSELoss(), target=torch.randn(4, 3), quiet=True)
    assert seen and all(0 <= d < t for d, t, _ in seen), seen[:3]
    assert any(label.endswith(f"({d}/{t})") and "reruns" in label for d, t, label in seen), seen[:3]
