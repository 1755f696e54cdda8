"""Helpers for tests: ``assert_gradients`` and parametrisation over dtypes and engines.

    from symgrad.testing import assert_gradients, dtypes

    @dtypes("float64", "float32")
    def test_my_tanh(dtype):
        x = torch.randn(3, 4, dtype=dtype)
        assert_gradients(MyTanh.apply, {"x": x}, symbolic=sg.tanh, v=torch.randn_like(x))

On failure it writes the HTML report (unique per process, xdist worker and call) and raises
``symgrad.GradientMismatch`` (an ``AssertionError``) whose message reads like ``assert_close``'s:
the mismatched entries, the worst ones with both values, the closed form of the worst entry, and
the report's path.  The pytest plugin (``symgrad.pytest_plugin``) adds the ``symgrad_check``
fixture, which does the same with reports under pytest's temporary directory.
"""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from pathlib import Path

from .check import check
from .report.common import failure_message
from .report.report import GradientMismatch, Report

__all__ = ["assert_gradients", "failure_message", "report_path", "dtypes", "engines", "DTYPES", "ENGINES"]

DTYPES = ("float64", "float32")
ENGINES = ("elementwise", "matrix")


def report_path(directory=None, name: str = "symgrad-check") -> Path:
    """A fresh file name for a report: ``<dir>/<name>-<worker>-<pid>-<random>.html``.  The directory
    defaults to ``$SYMGRAD_REPORT_DIR``, else ``<tmp>/symgrad-reports``."""
    directory = Path(directory or os.environ.get("SYMGRAD_REPORT_DIR") or Path(tempfile.gettempdir()) / "symgrad-reports")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.")[:80] or "symgrad-check"
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return directory / f"{slug}-{worker}-{os.getpid()}-{uuid.uuid4().hex[:8]}.html"


def assert_gradients(fn, inputs, symbolic=None, *, report_dir=None, report_name: str | None = None,
                     **check_kwargs) -> Report:
    """``symgrad.check(fn, inputs, symbolic, **check_kwargs)``; on failure, write the HTML report and
    raise ``GradientMismatch`` with an ``assert_close``-style message naming it.  Returns the report."""
    report = check(fn, inputs, symbolic, **check_kwargs)
    if report.passed:
        return report
    path = report_path(report_dir, report_name or report.title)
    try:
        written = report.write(path)
    except OSError as err:  # the failure matters more than its report
        written = f"(not written: {err})"
    raise GradientMismatch(failure_message(report, written))


def _parametrize(argname: str, values: list, ids: list[str]):
    import pytest

    return pytest.mark.parametrize(argname, values, ids=ids)


def dtypes(*names: str, argname: str = "dtype"):
    """``pytest.mark.parametrize`` over torch dtypes (default float64 and float32), ids by name."""
    import torch

    names = names or DTYPES
    unknown = [n for n in names if not isinstance(getattr(torch, n, None), torch.dtype)]
    if unknown:
        raise ValueError(f"not torch dtypes: {', '.join(unknown)}; e.g. float64, float32, float16, bfloat16")
    return _parametrize(argname, [getattr(torch, n) for n in names], list(names))


def engines(*names: str, argname: str = "engine"):
    """``pytest.mark.parametrize`` over symgrad's engines (default: elementwise and matrix)."""
    names = names or ENGINES
    unknown = [n for n in names if n not in ("auto", *ENGINES)]
    if unknown:
        raise ValueError(f"unknown engines: {', '.join(unknown)}; engines: auto, {', '.join(ENGINES)}")
    return _parametrize(argname, list(names), list(names))
