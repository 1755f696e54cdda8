"""The README stays true: its coverage tables are the generated ones, and CI runs its test command."""

import subprocess
import sys
from pathlib import Path

from symgrad.coverage import END, START

ROOT = Path(__file__).resolve().parents[1]


def test_coverage_tables_match_the_op_table_and_importer():
    # A fresh interpreter: other tests register user ops, which must not count as coverage.
    generated = subprocess.run([sys.executable, "-m", "symgrad.coverage"], capture_output=True, text=True,
                               check=True, cwd=ROOT).stdout
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert section == generated.strip(), "README coverage is stale: run python -m symgrad.coverage --write README.md"


def test_every_op_row_is_in_the_readme():
    from symgrad.ops import OPS

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in OPS:
        assert f"| {name} " in text


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert 'python -m pip install "torch==2.13.0+cpu" -e ".[test]" && python -m pytest' in readme
    assert 'pip install --quiet "torch==2.13.0+cpu" -e ".[test]"' in ci and "python -m pytest" in ci


def test_readme_has_no_placeholders():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "PLACEHOLDER" not in text


def test_the_one_report_section_shows_what_its_code_prints():
    import contextlib
    import io

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## One report", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    shown = section.split("```python\n", 1)[1].split("```", 1)[1].split("```\n", 1)[1].split("```", 1)[0]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own example
    clean = lambda t: [line.rstrip() for line in t.strip().splitlines()]  # noqa: E731
    assert clean(out.getvalue()) == clean(shown)
