"""Reports: text, GitHub markdown, HTML and JSON contain the rows; write() picks the format by suffix."""

from __future__ import annotations

import json

import pytest
import torch

import symgrad as sg
from symgrad.report import combine


class Twice(torch.autograd.Function):
    """y = x * w; the gradient of w is off by a factor 1.01 (a failing row to render)."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x * w

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g * w, g * x * 1.01


@pytest.fixture(scope="module")
def failing():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 9.0]], dtype=torch.float64)
    w = torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]], dtype=torch.float64)
    return sg.check(lambda x, w: Twice.apply(x, w).sum(), {"x": x, "w": w}, symbolic=lambda x, w: (x * w).sum(),
                    title="twice")


@pytest.fixture(scope="module")
def passing():
    return sg.check(lambda a: (a.exp() * 2).sum(), {"a": torch.tensor([0.1, 0.2], dtype=torch.float64)}, title="ok")


def test_rows(failing):
    rows = {r["input"]: r for r in failing.rows}
    assert set(rows) == {"output", "x", "w"}
    assert rows["x"]["shape"] == "2×3" and rows["x"]["verdict"] == "pass"
    assert rows["w"]["verdict"] == "FAIL"
    assert rows["w"]["worst index"] == "w[1, 2]"  # |0.01 x| is largest at x = 9
    assert float(rows["w"]["max abs err"]) == pytest.approx(0.09, rel=1e-2)
    assert float(rows["w"]["max rel err"]) == pytest.approx(0.01, rel=1e-2)
    assert rows["output"]["shape"] == "scalar"


def test_text(failing):
    text = failing.to_text()
    assert str(failing) == text
    assert "twice: 1 of 3 rows FAIL" in text
    for piece in ("input", "verdict", "w[1, 2]", "FAIL", "Mismatched elements: 6 / 6 (100.0%)", "Greatest absolute difference"):
        assert piece in text


def test_markdown(failing, passing):
    md = failing.to_markdown()
    assert md.startswith("## twice")
    assert "**FAIL**" in md
    assert "| input" in md and "|---" in md
    assert "| w " in md and "w[1, 2]" in md
    assert "- dtype: float64" in md and "- via: backward" in md
    assert "### Closed forms" in md and "### Details" in md
    assert "**PASS**" in passing.to_markdown()
    assert "### Details" not in passing.to_markdown()


def test_html(failing):
    html = failing.to_html()
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")  # a standalone page
    assert "<table>" in html and "<td>w" in html
    assert "w[1, 2]" in html and "FAIL" in html


def test_json(failing):
    data = json.loads(failing.to_json())
    assert data["title"] == "twice" and data["passed"] is False
    by_name = {r["name"]: r for r in data["rows"]}
    assert by_name["w"]["verdict"] == "FAIL"
    assert by_name["w"]["abs_index"] == [1, 2]
    assert by_name["w"]["shape"] == [2, 3]
    assert by_name["w"]["mismatched"] == 6 and by_name["w"]["total"] == 6
    assert by_name["x"]["verdict"] == "pass"
    assert data["meta"]["dtype"] == "float64"
    assert failing.to_dict() == data


@pytest.mark.parametrize("suffix,probe", [(".md", "## twice"), (".html", "<!DOCTYPE html>"), (".json", '"rows"'),
                                          (".txt", "twice: 1 of 3 rows FAIL")])
def test_write_by_suffix(failing, tmp_path, suffix, probe):
    path = tmp_path / "sub" / f"report{suffix}"
    written = failing.write(path)
    assert written == str(path)
    text = path.read_text(encoding="utf-8")
    assert text.lstrip().startswith(probe) if suffix != ".json" else probe in text
    if suffix == ".json":
        json.loads(text)


def test_raise_for_failure_and_assert_correct(failing, passing):
    assert passing.raise_for_failure() is passing
    with pytest.raises(sg.GradientMismatch) as info:
        failing.raise_for_failure()
    assert isinstance(info.value, AssertionError)
    assert "grad of w: FAIL" in str(info.value) and "w[1, 2]" in str(info.value)
    assert "grad of x" not in str(info.value)


def test_failures_and_lookup(failing):
    assert [r.name for r in failing.failures] == ["w"]
    assert failing["x"].passed
    with pytest.raises(KeyError, match="no record named 'nope'"):
        failing["nope"]


def test_combine(failing, passing):
    both = combine([passing, failing], title="both")
    assert [r.name for r in both.records] == ["output", "a", "output", "x", "w"]
    assert not both.passed
    assert both.summary() == "both: 1 of 5 rows FAIL"
    assert "## both" in both.to_markdown()
    with pytest.raises(sg.SymgradError):
        combine([], title="none")


def test_long_closed_forms_are_shortened():
    r = sg.check(lambda a: (a.tanh() * a.sin() * a.cos() * a.exp()).sum(), {"a": torch.tensor([0.3], dtype=torch.float64)})
    row = r.rows[1]
    assert len(row["closed form"]) <= 48
    assert row["closed form"].endswith("…")
    assert len(r["a"].closed_form) > 48  # the full form is kept in the record and the markdown, once
    assert r.to_markdown().count(r["a"].closed_form) == 1
