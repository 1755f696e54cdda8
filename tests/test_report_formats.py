"""The renderers (symgrad/report/{text,markdown,html,json}.py): a standalone HTML page that parses,
strict versioned JSON valid against its schema, closed forms shown once, unknown suffixes refused."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
import torch

import symgrad as sg
from symgrad.compare import Record
from symgrad.report import Report, combine
from symgrad.report.common import VERDICT_CODES, closed_form_lines, verdict_code
from symgrad.report.json import SCHEMA_VERSION, schema

VOID = {"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "source", "wbr"}


class Tree(HTMLParser):
    """Builds the element tree; records every structural error (unclosed or mismatched tags)."""

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.tags, self.text = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> Tree:
    tree = Tree()
    tree.feed(page)
    tree.close()
    assert not tree.errors, tree.errors[:5]
    assert not tree.stack, f"unclosed: {tree.stack}"
    return tree


class Scaled(torch.autograd.Function):
    """tanh with a backward off by 1.001 where x > 0: a failing record with a heatmap."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.tanh(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (1 - torch.tanh(x) ** 2) * torch.where(x > 0, 1.001, 1.0)


@pytest.fixture(scope="module")
def failing():
    x = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(3, 4)
    return sg.check(Scaled.apply, {"x": x}, symbolic=lambda x: sg.tanh(x), via="backward", v=torch.ones(3, 4) * 0.5,
                    title="scaled tanh")


def test_html_is_a_standalone_page_that_parses(failing):
    page = failing.to_html()
    tree = parse(page)
    tags = [t for t, _ in tree.tags]
    assert tags[:2] == ["html", "head"] and "body" in tags and "title" in tags
    style = "".join(tree.text)
    assert "prefers-color-scheme: dark" in style  # light and dark
    assert "math" in tags and "mi" in tags  # the closed form as MathML
    svgs = [a for t, a in tree.tags if t == "svg"]
    assert len(svgs) == 1 and svgs[0]["class"] == "heatmap"  # one heatmap: the one failing record
    rects = [a for t, a in tree.tags if t == "rect"]
    assert len(rects) == 12
    red = [a for a in rects if not a["fill"].startswith("hsl(140")]
    assert len(red) == 6  # the entries with x > 0 are outside their allowance, the others inside
    assert "scaled tanh" in "".join(tree.text)


def test_html_folds_long_code_and_marks_kinks():
    rec = Record("w", "grad", (2, 2), "float64", closed_form="; ".join(f"x{i} = sin(x{i - 1})" for i in range(1, 60)) + "; x59",
                 total=4, mismatched=1, max_abs=1.0, expected=np.zeros((2, 2)), actual=np.array([[5.0, 1.0], [0, 0]]),
                 allowed=np.full((2, 2), 1e-3), kink_mask=np.array([[True, False], [False, False]]),
                 mismatch_mask=np.array([[False, True], [False, False]]))
    page = Report([rec], title="hand-made").to_html()
    tree = parse(page)
    tags = [t for t, _ in tree.tags]
    assert "details" in tags and "summary" in tags
    rects = [a for t, a in tree.tags if t == "rect"]
    ringed = [a for a in rects if "stroke" in a]
    assert len(ringed) == 1 and ringed[0]["fill"].startswith("hsl(140")  # on its kink band: within, not red
    assert [a["fill"].startswith("hsl(140") for a in rects] == [True, False, True, True]
    assert "w[0, 1]" in Report([rec]).to_text().split("Worst entries")[1]  # the kink entry is not "worst"
    assert "w[0, 0]" not in Report([rec]).to_text().split("Worst entries")[1]


def test_piecewise_closed_forms_are_mathml_cases():
    x = torch.tensor([[-1.0, 0.5], [2.0, -0.3]], dtype=torch.float64)
    page = sg.check(lambda x: x.relu(), {"x": x}, symbolic=sg.relu, v=torch.randn(2, 2, dtype=torch.float64)).to_html()
    tree = parse(page)
    assert "mtable" in [t for t, _ in tree.tags] and "otherwise" in "".join(tree.text)
    assert "piecewise" not in page.lower().split("<code>")[0].split("</style>")[1]


def test_html_of_a_combined_report_parses(failing):
    ok = sg.check(lambda a: (a.exp() * 2).sum(), {"a": torch.tensor([0.1, 0.2], dtype=torch.float64)}, title="ok")
    tree = parse(combine([ok, failing], title="both").to_html())
    assert sum(1 for t, a in tree.tags if t == "section") == 3


def _browser():
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "chrome") if shutil.which(n)), None)


@pytest.mark.skipif(_browser() is None, reason="no Chromium on this machine")
def test_html_opens_in_headless_chromium(failing, tmp_path):
    path = tmp_path / "report.html"
    failing.write(path)
    out = subprocess.run([_browser(), "--headless", "--disable-gpu", "--no-sandbox", "--dump-dom", path.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "symgrad-report" in out.stdout and "<svg" in out.stdout and "<math" in out.stdout


def _strict_loads(text: str):
    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_json_is_strict_and_non_finite_numbers_are_explicit():
    rec = Record("x", "grad", (2,), "float64", closed_form="1/x[0]", total=2, mismatched=1, max_abs=float("inf"),
                 max_rel=float("nan"), atol=float("-inf"), nonfinite="Non-finite values: autograd has 1 NaN/inf")
    data = _strict_loads(Report([rec]).to_json())
    row = data["rows"][0]
    assert row["max_abs"] == {"nonfinite": "inf"} and row["max_rel"] == {"nonfinite": "nan"}
    assert row["atol"] == {"nonfinite": "-inf"}
    assert row["verdict_code"] == "fail_nonfinite" and row["passed"] is False


def _validate(data):
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - a small structural check instead
        assert data["schema_version"] == SCHEMA_VERSION
        rows = data.get("rows") or [r for c in data["checks"] for r in c["rows"]]
        for row in rows:
            assert set(schema()["$defs"]["record"]["required"]) <= set(row)
            assert row["verdict_code"] in VERDICT_CODES
        return
    jsonschema.Draft202012Validator.check_schema(schema())
    jsonschema.validate(data, schema())


def test_json_validates_against_the_schema(failing):
    data = _strict_loads(failing.to_json())
    assert data["schema_version"] == SCHEMA_VERSION
    _validate(data)
    assert {r["verdict_code"] for r in data["rows"]} == {"pass", "fail"}
    ok = sg.check(lambda a: (a.exp() * 2).sum(), {"a": torch.tensor([0.1, 0.2], dtype=torch.float64)})
    _validate(_strict_loads(combine([ok, failing], title="both").to_json()))


def test_schema_rejects_what_it_should(failing):
    jsonschema = pytest.importorskip("jsonschema")
    data = _strict_loads(failing.to_json())
    data["rows"][0]["verdict_code"] = "looks fine"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, schema())
    data = _strict_loads(failing.to_json())
    data["rows"][0]["max_abs"] = "inf"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, schema())


@pytest.mark.parametrize("verdict_args,code", [
    ({}, "pass"), ({"kinks": 2}, "pass_kink"), ({"unresolved": 3}, "unresolved"), ({"mismatched": 1}, "fail"),
    ({"verified": False}, "unverified"), ({"nonfinite": "NaN on both sides"}, "nonfinite"),
    ({"nonfinite": "NaN", "mismatched": 1}, "fail_nonfinite")])
def test_verdict_codes(verdict_args, code):
    assert verdict_code(Record("x", "grad", (1,), "float64", total=1, **verdict_args)) == code


@pytest.mark.parametrize("name", ["r.pdf", "r", "r.docx", "r.HTM.bak"])
def test_unknown_suffix_is_refused_and_nothing_is_written(failing, tmp_path, name):
    with pytest.raises(sg.SymgradError, match="names no report format") as info:
        failing.write(tmp_path / name)
    assert not (tmp_path / name).exists()
    if name.endswith(".pdf"):
        assert "does not produce PDF" in str(info.value)


def test_backward_twice_keeps_its_factor_and_each_closed_form_is_shown_once():
    eye = torch.eye(3, dtype=torch.float64)
    twice = sg.check(lambda inp: (inp + 1).pow(2), {"inp": eye}, v=torch.full((3, 3), 0.5, dtype=torch.float64),
                     backward_calls=2)
    rec = twice["inp"]
    assert rec.closed_form_latex.startswith("2 \\left(") and rec.closed_form.startswith("2 * (")
    assert "<mn>2</mn>" in twice.to_html()
    md = twice.to_markdown()
    assert md.count("inp[0, 0]") == 1, md  # once: not in the table, not in the details
    text = twice.to_text()
    assert text.count("inp[0, 0]") == 1, text


def test_piecewise_with_equal_branches_is_printed_simplified():
    import symengine as se

    from symgrad.differentiate.elementwise import entry_form

    x = se.Symbol("x[0]")
    text, latex = entry_form(np.array([se.Piecewise((se.Integer(0), x > 0), (se.Integer(0), True))], dtype=object))
    assert (text, latex) == ("0", "0")
    text, _ = entry_form(np.array([se.Piecewise((se.Integer(1), x > 0), (se.Integer(0), True))], dtype=object))
    assert "Piecewise" in text  # a real kink keeps its branches


def test_multiline_closed_forms_go_into_fenced_blocks():
    form = "x0 = sin(x[0]); x1 = cos(x0); x0*x1"
    assert closed_form_lines(form) == ["x0 = sin(x[0])", "x1 = cos(x0)", "x0*x1"]
    md = Report([Record("x", "grad", (1,), "float64", closed_form=form, total=1)]).to_markdown()
    assert "```text\n  x0 = sin(x[0])\n  x1 = cos(x0)\n  x0*x1\n  ```" in md
    assert "`x0 = sin" not in md  # never a multi-line form in single backticks


def test_failure_details_show_the_worst_entries_with_both_values(failing):
    text = failing.to_text()
    assert "Worst entries, farthest past their allowance (autograd | closed form | difference | allowed):" in text
    worst = failing["x"]
    assert f"Closed form of x[{worst.abs_index[0]}, {worst.abs_index[1]}]:" in text
    assert "tanh" in text.split("Closed form of x[", 1)[1]


def test_an_inaccurate_record_in_json_keeps_its_worst_entries_and_reference():
    """Issue 11: the verdict, the reference's accuracy and the worst entries (both values, the error,
    the allowance) reach the JSON, valid against the schema; the schema refuses a negative count."""
    from symgrad.compare.compare import WorstEntry
    from symgrad.compare.record import Record

    rec = Record("x", "grad", (2,), "float64", total=2, inaccurate=1, accuracy_index=(1,), accuracy_ulps=1e7,
                 accuracy_allowed_ulps=20.0, condition=2.0, reference="closed form in 80-bit extended floats, "
                 "mpmath 40 digits for 2 of 2 entries; |error| <= 1e-20 ulp of float64",
                 worst=[WorstEntry((1,), -1.0000165e-06, -1e-06, 1.65e-11, 7.8e10, 4e-21, 19.0, 2.0)])
    data = _strict_loads(Report([rec]).to_json())
    row = data["rows"][0]
    assert row["verdict_code"] == "inaccurate" and row["passed"] is True and row["inaccurate"] == 1
    assert row["worst"][0]["expected"] == -1e-06 and row["worst"][0]["condition"] == 2.0
    assert row["reference"].startswith("closed form")
    _validate(data)
    jsonschema = pytest.importorskip("jsonschema")
    row["inaccurate"] = -1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, schema())


def test_a_straight_through_estimator_is_named_with_its_fix():
    """round's derivative is 0: a Function with an identity backward fails, and the closed form says
    why (a step on every path, not "no path") and names the surrogate that checks it."""
    import torch

    from symgrad.testing_ops import custom

    ste = custom(torch.round, lambda x, g: g)
    x = 3 * torch.randn(8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    report = sg.check(ste, {"x": x}, quiet=True)
    assert not report.passed
    text = report.to_text()
    assert "step function" in text and "no path" not in text and "symbolic=" in text
    assert sg.check(ste, {"x": x}, symbolic=lambda x: x + (torch.round(x) - x).detach(), quiet=True).passed


def test_an_exactly_zero_gradient_states_its_reference_bound_in_sensible_ulps():
    """A renderer whose density relu is dead has every gradient exactly 0, each with a small bound:
    stated in ulps of 0 (the smallest subnormal), it read '|error| <= 4.5e+307 ulp of float64'."""
    import re

    class Render(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.l = torch.nn.Linear(3, 4)

        def forward(self, x, t):
            out = self.l(x)
            sigma, rgb = torch.relu(out[..., 0] - 100.0), torch.sigmoid(out[..., 1:])
            alpha = 1 - torch.exp(-sigma * torch.tensor([1.0, 1.0, 1e10], dtype=x.dtype))
            T = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha + 1e-10], -1), -1)[:, :-1]
            return torch.nn.functional.mse_loss(((alpha * T)[..., None] * rgb).sum(1), t)

    torch.manual_seed(0)
    report = sg.check(Render().double(), {"x": torch.randn(2, 3, 3, dtype=torch.float64),
                                          "t": torch.rand(2, 3, dtype=torch.float64)}, quiet=True)
    stated = [float(x) for x in re.findall(r"\|error\| <= ([0-9.e+-]+) ulp", str(report))]
    assert report.passed and stated and max(stated) < 1e3
