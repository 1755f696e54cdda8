"""The pytest plugin and symgrad.testing: assert_close-style failures, HTML reports, xdist-safe names."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest
import torch

import symgrad as sg
from symgrad.testing import assert_gradients, dtypes, engines, report_path

pytest_plugins = ["pytester"]

TEST_FILE = '''
import torch
import symgrad as sg
from symgrad.testing import dtypes


class IgnoresGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return 1 - y * y  # the classic bug: grad_output ignored


class GoodTanh(IgnoresGrad):
    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)


@dtypes("float64", "float32")
def test_good(symgrad_check, dtype):
    x = torch.linspace(-1, 1, 6, dtype=dtype).reshape(2, 3)
    symgrad_check(GoodTanh.apply, {"x": x}, symbolic=sg.tanh, v=torch.randn(2, 3, dtype=dtype))


def test_bad(symgrad_check):
    x = torch.linspace(-1, 1, 6, dtype=torch.float64).reshape(2, 3)
    symgrad_check(IgnoresGrad.apply, {"x": x}, symbolic=sg.tanh, v=torch.randn(2, 3, dtype=torch.float64))
'''


def test_plugin_passes_good_and_fails_bad_with_a_report(pytester):
    pytester.makepyfile(test_grads=TEST_FILE)
    report_dir = pytester.path / "reports"
    result = pytester.runpytest("-p", "symgrad.pytest_plugin", f"--symgrad-report-dir={report_dir}", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    out = result.stdout.str()
    assert "GradientMismatch" in out and "vjp of x: FAIL" in out
    assert "Worst entries, farthest past their allowance (autograd | closed form | difference | allowed):" in out
    assert "Closed form of x[" in out
    written = sorted(report_dir.glob("*.html"))
    assert len(written) == 1 and written[0].name.startswith("test_grads.py_test_bad-main-")
    assert f"HTML report: {written[0]}" in out
    assert "symgrad reports" in out and str(written[0]) in out.split("symgrad reports")[-1]
    assert written[0].read_text().startswith("<!DOCTYPE html>")


@pytest.mark.skipif(importlib.util.find_spec("xdist") is None, reason="pytest-xdist is not installed")
def test_plugin_under_xdist(pytester, monkeypatch):
    root = str(Path(sg.__file__).resolve().parents[1])  # the workers import this checkout's symgrad
    monkeypatch.setenv("PYTHONPATH", root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    pytester.makepyfile(test_grads=TEST_FILE)
    report_dir = pytester.path / "reports"
    result = pytester.runpytest_subprocess("-p", "symgrad.pytest_plugin", "-n", "2",
                                           f"--symgrad-report-dir={report_dir}")
    result.assert_outcomes(passed=2, failed=1)
    written = list(report_dir.glob("*.html"))
    assert len(written) == 1 and re.search(r"-gw\d-", written[0].name)
    assert str(written[0]) in result.stdout.str()


def test_assert_gradients_message_and_unique_paths(tmp_path):
    class Off(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.sin()

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * x.cos() * 1.01

    x = torch.tensor([0.5, 1.5, -2.0], dtype=torch.float64)
    ok = assert_gradients(lambda x: x.sin() * 2, {"x": x}, v=torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64),
                          report_dir=tmp_path)
    assert ok.passed and not list(tmp_path.iterdir())  # nothing written for a pass
    with pytest.raises(sg.GradientMismatch) as info:
        assert_gradients(Off.apply, {"x": x}, symbolic=sg.sin, v=torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64),
                         report_dir=tmp_path, report_name="off by 1%")
    msg = str(info.value)
    assert "Mismatched elements: 3 / 3" in msg
    assert re.search(r"x\[2\]: -0\.8\d+ \| -0\.8\d+ \|", msg)  # the worst entry with both values
    assert "Closed form of x[1]: v[1]*cos(x[1])" in msg  # the worst against its own allowance
    path = msg.split("HTML report: ")[1].strip()
    assert path.startswith(str(tmp_path)) and "off_by_1" in path
    assert len({report_path(tmp_path, "same") for _ in range(50)}) == 50


def test_parametrisation_helpers():
    mark = dtypes()
    assert mark.args[0] == "dtype" and mark.args[1] == [torch.float64, torch.float32]
    assert mark.kwargs["ids"] == ["float64", "float32"]
    assert engines("matrix").args[1] == ["matrix"]
    with pytest.raises(ValueError, match="not torch dtypes"):
        dtypes("float128x")
    with pytest.raises(ValueError, match="unknown engines"):
        engines("numeric")


SINC_FILE = '''
import torch
import symgrad as sg
from symgrad.testing_ops import with_backward


# sinc' computed as written: right, but it cancels near 0 (inaccurate, not wrong)
naive_sinc = with_backward(lambda x: torch.sin(x) / x, lambda x, g: g * (torch.cos(x) * x - torch.sin(x)) / x**2)


def test_naive_sinc(symgrad_check):
    x = torch.tensor([1e-3, -2e-4, 1e-5, -3e-6, 1e-6], dtype=torch.float64)
    symgrad_check(naive_sinc, {"x": x}, symbolic=lambda x: sg.sin(x) / x, v=torch.ones_like(x))


def test_naive_sinc_never_strict(symgrad_check):
    x = torch.tensor([1e-3, -2e-4], dtype=torch.float32)
    symgrad_check(naive_sinc, {"x": x}, symbolic=lambda x: sg.sin(x) / x, v=torch.ones_like(x), strict=False)
'''


def _sinc_run(pytester, *args):
    pytester.makepyfile(test_sinc=SINC_FILE)
    return pytester.runpytest("-p", "symgrad.pytest_plugin", f"--symgrad-report-dir={pytester.path / 'r'}",
                              "-p", "no:cacheprovider", "-W", "always::symgrad.InaccurateDerivative", *args)


def test_an_inaccurate_derivative_warns_by_default_and_fails_with_symgrad_strict(pytester):
    loose = _sinc_run(pytester)
    loose.assert_outcomes(passed=2)
    assert loose.stdout.str().count("InaccurateDerivative: symgrad check: derivatives right but inaccurate") == 2
    strict = _sinc_run(pytester, "--symgrad-strict")
    strict.assert_outcomes(passed=1, failed=1)  # a call's own strict=False still wins
    out = strict.stdout.str()
    assert "GradientMismatch" in out and "inaccurate" in out
    assert re.search(r"FAILED test_sinc.py::test_naive_sinc(?!_never)", out) and "FAILED test_sinc.py::test_naive_sinc_never" not in out


def test_symgrad_strict_and_reference_as_ini_settings(pytester):
    pytester.makeini("[pytest]\nsymgrad_strict = true\nsymgrad_reference = mpmath\n")
    _sinc_run(pytester).assert_outcomes(passed=1, failed=1)
    pytester.makeini("[pytest]\nsymgrad_reference = exact\n")
    bad = _sinc_run(pytester)
    bad.assert_outcomes(errors=2)
    assert "symgrad_reference = 'exact' is not one of auto, mpmath, float" in bad.stdout.str()


def test_symgrad_reference_reaches_the_check(pytester):
    pytester.makepyfile(test_ref='''
import torch
import symgrad as sg

def test_ref(symgrad_check):
    x = torch.tensor([1e-3, 0.5], dtype=torch.float64)
    report = symgrad_check(lambda x: (x.sin() / x).sum(), {"x": x}, symbolic=lambda x: (sg.sin(x) / x).sum())
    print("REFERENCE:", report["x"].reference)
''')
    args = ("-p", "symgrad.pytest_plugin", "-p", "no:cacheprovider", "-s")
    mp = pytester.runpytest(*args, "--symgrad-reference=mpmath")
    mp.assert_outcomes(passed=1)
    assert re.search(r"REFERENCE: .*mpmath \d+ digits for 2 of 2", mp.stdout.str())
    fl = pytester.runpytest(*args, "--symgrad-reference=float")
    fl.assert_outcomes(passed=1)
    assert "REFERENCE:" in fl.stdout.str() and "mpmath" not in fl.stdout.str().split("REFERENCE:")[1].splitlines()[0]
    assert pytester.runpytest(*args, "--symgrad-reference=exact").ret == 4  # a usage error
