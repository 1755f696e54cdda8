"""The command line: symgrad check / examples / ops, exit codes 0 pass, 1 fail, 2 usage."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

from symgrad.cli import cli, parse_input

ROOT = Path(__file__).resolve().parents[1]

MODULE = textwrap.dedent('''
    import torch
    import symgrad as sg
    from symgrad.testing_ops import with_backward

    class IgnoresGrad(torch.autograd.Function):
        """tanh whose backward ignores grad_output: right only for a cotangent of ones."""
        @staticmethod
        def forward(ctx, x):
            y = torch.tanh(x)
            ctx.save_for_backward(y)
            return y
        @staticmethod
        def backward(ctx, g):
            (y,) = ctx.saved_tensors
            return 1 - y * y

    def twin(x):
        return sg.tanh(x)

    def layer(x, w):
        return torch.tanh(x @ w).sum()

    def _sinc(backward):
        return with_backward(lambda x: torch.sin(x) / x, lambda x, g: g * backward(x))

    # sinc' computed as written: right, but it cancels near 0 (millions of ulps where a few are allowed)
    naive_sinc = _sinc(lambda x: (torch.cos(x) * x - torch.sin(x)) / x**2)
    wrong_sinc = _sinc(lambda x: torch.cos(x) / x)

    def sinc_twin(x):
        return sg.sin(x) / x

    def sin_twin(x):
        return sg.sin(x)

    class OffJvp(torch.autograd.Function):
        """sin whose forward mode (jvp) is off by 1e-6; its backward is right."""
        @staticmethod
        def forward(x):
            return torch.sin(x)
        @staticmethod
        def setup_context(ctx, inputs, output):
            (ctx.x,) = inputs
            ctx.save_for_backward(ctx.x)
        @staticmethod
        def backward(ctx, g):
            return g * torch.cos(ctx.saved_tensors[0])
        @staticmethod
        def jvp(ctx, t):
            return t * torch.cos(ctx.x) * (1 + 1e-6)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x):
            return torch.tanh(self.fc(x))
''')


@pytest.fixture()
def target(tmp_path):
    path = tmp_path / "mylib.py"
    path.write_text(MODULE, encoding="utf-8")
    return path


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_parse_input_grammar():
    gen = torch.Generator().manual_seed(0)
    name, t = parse_input("x=randn(3, 4)", "float32", gen)
    assert name == "x" and t.shape == (3, 4) and t.dtype == torch.float32
    assert parse_input("b=ones(2)")[1].tolist() == [1.0, 1.0]
    assert parse_input("s=-0.5")[1].item() == -0.5 and parse_input("z=zeros()")[1].shape == ()
    for bad in ("x=__import__('os').getcwd()", "x=randn(3)+1", "randn(3)", "x=randn(-1)", "x=eval('1')", "1x=ones(2)",
                "x=randn(0, 2)"):
        with pytest.raises(click.BadParameter):
            parse_input(bad)


def test_inputs_from_files(tmp_path):
    import numpy as np

    torch.save(torch.arange(6.0).reshape(2, 3), tmp_path / "a.pt")
    np.save(tmp_path / "b.npy", np.ones(4))
    assert parse_input(f"a={tmp_path / 'a.pt'}", "float64")[1].dtype == torch.float64
    assert parse_input(f"b={tmp_path / 'b.npy'}")[1].shape == (4,)
    with pytest.raises(click.BadParameter, match="no file"):
        parse_input(f"c={tmp_path / 'missing.pt'}")
    torch.save({"x": torch.ones(2)}, tmp_path / "d.pt")  # a dict, not a tensor: a usage error, not a traceback
    with pytest.raises(click.BadParameter, match="holds no real tensor"):
        parse_input(f"d={tmp_path / 'd.pt'}")
    for number in ("1e400", "-1e999"):  # parsed as inf: refused like nan
        with pytest.raises(click.BadParameter, match="not a finite number"):
            parse_input(f"x={number}")


def test_check_passes_with_exit_0_and_writes_reports(target, tmp_path):
    html, js = tmp_path / "r.html", tmp_path / "r.json"
    res = run("check", f"{target}:layer", "-i", "x=randn(3,4)", "-i", "w=randn(4,2)", "--report", str(html),
              "--report", str(js), "-q")
    assert res.exit_code == 0, res.output
    assert "all derivatives match the closed form" in res.output
    assert html.read_text().startswith("<!DOCTYPE html>")
    assert json.loads(js.read_text())["passed"] is True


def test_check_prints_json_on_request(target):
    res = run("check", f"{target}:layer", "-i", "x=randn(3,4)", "-i", "w=randn(4,2)", "--format", "json", "-q")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["passed"] is True and {r["verdict_code"] for r in data["rows"]} == {"pass"}


def test_check_catches_a_backward_that_ignores_grad_output(target):
    # the default cotangent is random, not ones: the classic bug fails (exit 1)
    res = run("check", f"{target}:IgnoresGrad.apply", "-i", "x=randn(3,4)", "--symbolic", "twin", "-q")
    assert res.exit_code == 1, res.output
    assert "FAIL" in res.output and "Worst entries" in res.output
    ones = run("check", f"{target}:IgnoresGrad.apply", "-i", "x=randn(3,4)", "--symbolic", "twin", "--cotangent",
               "ones", "-q")
    assert ones.exit_code == 0, ones.output  # why the weak form must not be the default


def test_check_a_module_class_with_a_loss(target):
    res = run("check", f"{target}:Net", "-i", "x=randn(5,4)", "--loss", "mse", "--target", "t=randn(5,3)", "-q",
              "--dtype", "float32")
    assert res.exit_code == 0, res.output
    assert "fc.weight" in res.output and "fc.bias" in res.output


@pytest.fixture()
def small(tmp_path):
    """Inputs near 0, where the naive sinc backward cancels."""
    path = tmp_path / "small.pt"
    torch.save(torch.tensor([1e-3, -2e-4, 1e-5, -3e-6, 1e-6], dtype=torch.float64), path)
    return path


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_strict_makes_an_inaccurate_derivative_exit_1(target, small, dtype):
    base = ["check", f"{target}:naive_sinc", "-i", f"x={small}", "--symbolic", "sinc_twin", "--dtype", dtype, "-q"]
    loose = CliRunner().invoke(cli, base, catch_exceptions=False)
    assert loose.exit_code == 0, loose.output
    assert "inaccurate" in loose.output and "warning:" in loose.stderr and "--strict" not in loose.stdout
    strict = run(*base, "--strict")
    assert strict.exit_code == 1, strict.output
    assert "inaccurate" in strict.output
    wrong = run("check", f"{target}:wrong_sinc", "-i", f"x={small}", "--symbolic", "sinc_twin", "--dtype", dtype, "-q")
    assert wrong.exit_code == 1 and "FAIL" in wrong.output


def test_reference_option_reaches_the_check(target, small):
    for mode, needle in (("mpmath", "mpmath"), ("float", None)):
        res = run("check", f"{target}:naive_sinc", "-i", f"x={small}", "--symbolic", "sinc_twin", "--reference", mode,
                  "--format", "json", "-q")
        assert res.exit_code == 0, res.output
        rows = json.loads(res.stdout)["rows"]
        refs = [r["reference"] for r in rows if r.get("quantity") != "forward"]
        assert refs and all(("mpmath" in r) == (needle is not None) for r in refs), rows
    bad = run("check", f"{target}:naive_sinc", "-i", f"x={small}", "--reference", "exact")
    assert bad.exit_code == 2 and "exact" in bad.output


@pytest.mark.parametrize("args,needle", [
    (["check", "nofile.py:f", "-i", "x=ones(2)"], "no file"),
    (["check", "{t}:nothere", "-i", "x=ones(2)"], "no attribute"),
    (["check", "{t}", "-i", "x=ones(2)"], "is not FILE.py:NAME"),
    (["check", "{t}:layer", "-i", "x=ones(2)", "--report", "out.pdf"], "does not produce PDF"),
    (["check", "{t}:layer", "-i", "x=ones(2)", "--dtype", "float8"], "float8"),
    (["check", "{t}:layer", "-i", "x=ones(3, 4)", "-i", "w=ones(3, 2)"], "Error"),
    (["nonsense"], "No such command"),
])
def test_usage_errors_exit_2(target, args, needle):
    res = run(*[a.replace("{t}", str(target)) for a in args])
    assert res.exit_code == 2, res.output
    assert needle in res.output


def test_ops_prints_the_coverage_table():
    from symgrad.coverage import markdown

    res = run("ops")
    assert res.exit_code == 0 and res.output.strip() == markdown().strip()


def test_examples_runs_each_script_and_exits_1_on_an_unexpected_end(tmp_path):
    ex = tmp_path / "examples"
    ex.mkdir()
    (ex / "seed_a.py").write_text("print('a: as the seed says')\n")
    (ex / "seed_b.py").write_text("import sys\nprint('b: broke')\nsys.exit(3)\n")
    res = run("examples", "--dir", str(ex))
    assert res.exit_code == 1
    assert "seed_a.py" in res.output and "as expected" in res.output and "UNEXPECTED (exit 3)" in res.output
    assert "1 of 2 examples ended as expected" in res.output
    (ex / "seed_b.py").unlink()
    assert run("examples", "--dir", str(ex)).exit_code == 0
    assert run("examples", "--dir", str(ex), "--pattern", "zzz*.py").exit_code == 2


def test_python_dash_m_symgrad_help():
    out = subprocess.run([sys.executable, "-m", "symgrad", "--help"], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    for command in ("check", "examples", "ops"):
        assert command in out.stdout


def test_import_symgrad_stays_light():
    """The command line, rich and the report renderers load only when used (README: import ≤ 2 s)."""
    code = ("import sys, symgrad; print(sorted(m for m in ('click', 'rich', 'tqdm', 'symgrad.cli', "
            "'symgrad.report.html', 'symgrad.pytest_plugin') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_check_takes_order_engine_and_memory_budget(target):
    res = run("check", f"{target}:layer", "-i", "x=randn(3,4)", "-i", "w=randn(4,2)", "--order", "2", "-q",
              "--format", "json")
    assert res.exit_code == 0, res.output
    assert "hvp" in json.loads(res.output)["meta"]["quantity"]
    res = run("check", f"{target}:layer", "-i", "x=randn(3,4)", "-i", "w=randn(4,2)", "--engine", "graph", "-q")
    assert res.exit_code == 0 and "all derivatives match" in res.output, res.output
    res = run("check", f"{target}:layer", "-i", "x=randn(30,40)", "-i", "w=randn(40,20)", "--engine", "elementwise",
              "--memory-budget", "1", "-q")
    assert res.exit_code == 2 and "memory budget" in res.output, res.output


def test_check_runs_forward_mode_with_tangents(target):
    """A forward-mode --via gets one tangent per differentiated input (random, or ones)."""
    res = run("check", f"{target}:OffJvp.apply", "-i", "x=randn(5)", "--via", "forward_ad", "-q")
    assert res.exit_code == 1 and "jvp" in res.output, res.output
    res = run("check", f"{target}:OffJvp.apply", "-i", "x=randn(5)", "--symbolic", "sin_twin", "--via", "forward_ad",
              "-q")  # with a twin too: no cotangent is made for a forward-mode via (it was, and refused)
    assert res.exit_code == 1 and "jvp" in res.output and "v=" not in res.output, res.output
    res = run("check", f"{target}:OffJvp.apply", "-i", "x=randn(5)", "--via", "functional.jvp", "--tangents", "ones",
              "-q")
    assert res.exit_code == 0, res.output  # functional.jvp runs the (right) backward twice, not jvp


@pytest.mark.parametrize("source,needle", [("def f(x:\n    return x\n", "SyntaxError"),
                                           ("import not_a_real_pkg_xyz\ndef f(x): return x\n", "ModuleNotFoundError"),
                                           ("raise ValueError('half-written')\n", "half-written")])
def test_a_target_that_does_not_import_is_a_usage_error(tmp_path, target, source, needle):
    """Exit 1 means a check failed: a typo in the target's file exits 2, naming the error."""
    bad = tmp_path / "bad.py"
    bad.write_text(source)
    for args in ([f"{bad}:f", "-i", "x=ones(2)"], [f"{target}:layer", "-i", "x=ones(2)", "--symbolic", f"{bad}:f"]):
        res = CliRunner().invoke(cli, ["check", *args])
        assert res.exit_code == 2 and needle in res.output and "does not import" in res.output, res.output
