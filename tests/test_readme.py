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


RUNNER = r'''
import json, sys, traceback
blocks = json.loads(sys.stdin.read())
results = []
for i, code in enumerate(blocks):
    try:
        exec(compile(code, f"README.md python block {i + 1}", "exec"), {"__name__": f"readme_block_{i + 1}"})
        results.append(None)
    except BaseException:  # noqa: BLE001 - reported by the test with the block's traceback
        results.append(traceback.format_exc(limit=-3))
print("RESULTS " + json.dumps(results))
'''


def python_blocks(text: str) -> list[str]:
    return [chunk.split("```", 1)[0] for chunk in text.split("```python\n")[1:]]


def test_every_python_block_in_the_readme_runs_as_written(tmp_path):
    """Every ```python block, each in a fresh namespace (one process: the imports are paid once),
    with no fixtures: a block that needs a name defines it.  Run from an empty folder, so that files
    a block writes (reports/...) land there."""
    import json
    import os

    blocks = python_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(blocks) >= 5
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "SYMGRAD_QUIET": "1"}
    proc = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(blocks), capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.rsplit("RESULTS ", 1)[1])
    failed = {i + 1: (blocks[i].strip().splitlines()[0], err) for i, err in enumerate(results) if err}
    assert not failed, "\n\n".join(f"block {i} ({first}):\n{err}" for i, (first, err) in failed.items())


def test_the_readme_does_not_teach_the_sum_idiom_for_custom_functions():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    code = [line.split("#", 1)[0] for block in python_blocks(text) for line in block.splitlines()]
    assert not [line for line in code if ".apply(" in line and ").sum()" in line]  # a cotangent of ones
    assert any("v=torch.randn_like(x)" in line for line in code)


def test_help_of_check_lists_every_keyword_and_assert_correct_has_its_signature():
    import inspect
    import pydoc

    import symgrad as sg

    text = pydoc.render_doc(sg.check, renderer=pydoc.plaintext)
    params = inspect.signature(sg.check).parameters
    for name in params:
        assert f"\n    {name} :" in sg.check.__doc__ or f"{name}, " in sg.check.__doc__ or f", {name} :" in sg.check.__doc__, name
        assert name in text
    assert list(inspect.signature(sg.assert_correct).parameters) == list(params)
    # one keyword list (Note [One keyword list] in symgrad/check.py): its own name and docstring, check's keywords
    assert sg.assert_correct.__name__ == "assert_correct" and "GradientMismatch" in sg.assert_correct.__doc__
    assert "assert_correct(fn" in pydoc.render_doc(sg.assert_correct, renderer=pydoc.plaintext)
    import pytest
    import torch

    with pytest.raises(TypeError, match="strictly"):
        sg.assert_correct(torch.sin, {"x": torch.ones(2, dtype=torch.float64)}, strictly=True)
    assert (ROOT / "symgrad" / "py.typed").exists()
    assert '"py.typed"' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")
