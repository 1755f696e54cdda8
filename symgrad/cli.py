"""The ``symgrad`` command (also ``python -m symgrad``), built on click.

    symgrad check path.py:fn --inputs "x=randn(3,4)" --dtype float32 --report out.html
    symgrad examples            # every examples/*.py, reports under reports/, a summary table
    symgrad ops                 # the coverage tables (op graph and elementwise op table)

Exit status: 0 every check passed, 1 a check failed (or an example ended unexpectedly), 2 a usage
error or a check that could not run (bad input, unsupported op): the message says which.  A
derivative that is right but ``inaccurate`` (less accurate than the problem's conditioning allows)
is a warning with exit status 0, and a failure (exit 1) with ``--strict``.

Inputs are parsed by a small grammar, never evaluated: ``name=randn(3,4)``, ``rand``, ``ones``,
``zeros`` (a shape of integers), ``name=0.5`` (a scalar), ``name=file.pt`` (a tensor saved with
``torch.save``, loaded with ``weights_only=True``) or ``name=file.npy`` (``allow_pickle=False``).
"""

from __future__ import annotations

import math

import importlib
import importlib.util
import re
import subprocess
import sys
import time
from pathlib import Path

import click

from .compare.accuracy import REFERENCE_MODES
from .errors import SymgradError

__all__ = ["main", "cli", "parse_input", "load_target", "run_examples"]

DTYPES = ("float64", "float32", "float16", "bfloat16")
_SPEC = re.compile(r"^\s*([A-Za-z_]\w*)\s*=\s*(.+?)\s*$")
_MAKER = re.compile(r"^(randn|rand|ones|zeros)\(\s*(\d+(?:\s*,\s*\d+)*)?\s*,?\s*\)$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_TARGET_ATTR = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
INPUT_HELP = ("NAME=randn(3,4) | rand(..) | ones(..) | zeros(..) | a number | file.pt | file.npy; "
              "repeat for each input")


def parse_input(spec: str, dtype: str = "float64", generator=None):
    """``"x=randn(3,4)"`` -> ``("x", tensor)``; a ``click.BadParameter`` naming the grammar otherwise."""
    import torch

    m = _SPEC.match(spec)
    if not m:
        raise click.BadParameter(f"{spec!r} is not NAME=VALUE. Use {INPUT_HELP}.", param_hint="--inputs")
    name, value = m.groups()
    torch_dtype = getattr(torch, dtype)
    made = _MAKER.match(value)
    if made:
        kind, dims = made.groups()
        shape = tuple(int(d) for d in dims.split(",")) if dims else ()
        if any(d == 0 for d in shape) or _numel(shape) > 10_000_000:
            raise click.BadParameter(f"{spec!r}: every dimension must be >= 1 and the tensor at most 10^7 entries",
                                     param_hint="--inputs")
        if kind in ("randn", "rand"):
            return name, getattr(torch, kind)(shape, generator=generator, dtype=torch.float64).to(torch_dtype)
        return name, getattr(torch, kind)(shape, dtype=torch_dtype)
    if _NUMBER.match(value):
        if not math.isfinite(float(value)):
            raise click.BadParameter(f"{spec!r}: {value!r} is not a finite number in float64; give a finite value",
                                     param_hint="--inputs")
        return name, torch.tensor(float(value), dtype=torch_dtype)
    if value.endswith((".pt", ".pth", ".npy")):
        return name, _load_tensor(name, Path(value), torch_dtype)
    raise click.BadParameter(f"{spec!r}: cannot read {value!r}. Use {INPUT_HELP} (values are parsed, never evaluated).",
                             param_hint="--inputs")


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _load_tensor(name: str, path: Path, dtype):
    import numpy as np
    import torch

    if not path.is_file():
        raise click.BadParameter(f"input {name!r}: no file {str(path)!r}", param_hint="--inputs")
    try:
        data = np.load(path, allow_pickle=False) if path.suffix == ".npy" else torch.load(path, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any loading failure is the user's file
        raise click.BadParameter(f"input {name!r}: cannot load {str(path)!r} ({type(err).__name__}: {err})",
                                 param_hint="--inputs") from err
    try:
        tensor = torch.as_tensor(data) if not isinstance(data, torch.Tensor) else data
    except (TypeError, ValueError, RuntimeError):  # a dict, a list of tensors, a string: no one tensor
        tensor = None
    if not isinstance(tensor, torch.Tensor) or not (tensor.is_floating_point() or tensor.dtype in (torch.int64, torch.int32, torch.bool)):
        raise click.BadParameter(f"input {name!r}: {str(path)!r} holds no real tensor ({type(data).__name__}); save "
                                 "one tensor per file (torch.save(t, path))", param_hint="--inputs")
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


def load_target(target: str, hint: str = "TARGET"):
    """``path.py:fn`` or ``package.module:fn`` (``fn`` may be dotted: ``MyFn.apply``) -> the object;
    a file or module that does not import is a usage error (exit 2), named with ``hint``."""
    path, sep, attr = target.rpartition(":")
    if not sep or not path or not _TARGET_ATTR.match(attr):
        raise click.BadParameter(f"{target!r} is not FILE.py:NAME or MODULE:NAME (e.g. mylib.py:my_fn or "
                                 "mylib.ops:MyTanh.apply)", param_hint=hint)
    if path.endswith(".py"):
        file = Path(path)
        if not file.is_file():
            raise click.BadParameter(f"no file {path!r}", param_hint=hint)
        name = f"_symgrad_target_{abs(hash(str(file.resolve())))}"
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(file.resolve().parent))  # so that the file's own imports work
        try:
            spec.loader.exec_module(module)
        except Exception as err:  # noqa: BLE001 - any error the file raises on import is the user's to fix
            raise click.BadParameter(f"{path} does not import: {type(err).__name__}: {str(err)[:300]}",
                                     param_hint=hint) from err
        finally:
            sys.path.remove(str(file.resolve().parent))
    else:
        try:
            module = importlib.import_module(path)
        except Exception as err:  # noqa: BLE001 - as above
            raise click.BadParameter(f"cannot import module {path!r}: {type(err).__name__}: {str(err)[:300]}",
                                     param_hint=hint) from err
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise click.BadParameter(f"{path} has no attribute {attr!r}", param_hint=hint)
        obj = getattr(obj, part)
    return obj


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="symgrad", message="symgrad %(version)s")
def cli():
    """symgrad: tells whether torch autograd's derivatives are right, against closed forms."""


@cli.command()
@click.argument("target")
@click.option("--inputs", "-i", "specs", multiple=True, required=True, metavar="NAME=VALUE", help=INPUT_HELP)
@click.option("--symbolic", metavar="FILE.py:NAME", help="the symbolic twin (default: the target itself, traced into the op graph)")
@click.option("--dtype", type=click.Choice(DTYPES), default="float64", show_default=True)
@click.option("--via", default=None, help="how autograd runs (backward, functional.jacobian, func.vjp, ...)")
@click.option("--wrt", multiple=True, help="an input to differentiate (repeat; default: every float input)")
@click.option("--loss", default=None, help="for an nn.Module: a loss by name (mse, l1, cross_entropy, ...)")
@click.option("--target", "target_spec", default=None, metavar="NAME=VALUE", help="the loss's target, as --inputs")
@click.option("--cotangent", type=click.Choice(["none", "random", "ones"]), default="random", show_default=True,
              help="v for a non-scalar output: random catches a backward that ignores grad_output")
@click.option("--tangents", "tangent_kind", type=click.Choice(["random", "ones"]), default="random", show_default=True,
              help="with a forward-mode --via (forward_ad, func.jvp, functional.jvp): one tangent per differentiated input")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of randn/rand inputs and cotangents")
@click.option("--report", "reports", multiple=True, type=click.Path(dir_okay=False),
              help="write the report (.txt, .md, .html, .json); repeat for several")
@click.option("--format", "fmt", type=click.Choice(["text", "markdown", "json"]), default="text", show_default=True,
              help="what is printed on stdout")
@click.option("--strict", is_flag=True,
              help="an 'inaccurate' derivative (right, but less accurate than the problem's conditioning allows; "
                   "a warning by default) fails the check: exit status 1")
@click.option("--reference", type=click.Choice(REFERENCE_MODES), default="auto", show_default=True,
              help="the exact reference: auto (the closed form in extended precision with a rounding bound, "
                   "re-evaluated over mpmath where that bound is not small against an ulp of --dtype), mpmath "
                   "(every entry over mpmath), float (never mpmath)")
@click.option("--order", type=click.Choice(["1", "2"]), default="1", show_default=True,
              help="2: double backward (what gradgradcheck checks), against the exact second derivative")
@click.option("--engine", type=click.Choice(["auto", "graph", "elementwise"]), default="auto", show_default=True,
              help="graph: the op graph's tensor back end; elementwise: one exact expression per entry (small checks)")
@click.option("--memory-budget", "memory_mib", type=int, default=None, metavar="MIB",
              help="MiB the elementwise engine may use before it refuses (default: a share of available memory)")
@click.option("--quiet", "-q", is_flag=True, help="no progress display")
def check(target, specs, symbolic, dtype, via, wrt, loss, target_spec, cotangent, tangent_kind, seed, reports, fmt,
          strict, reference, order, engine, memory_mib, quiet):
    """Check the derivatives of TARGET (FILE.py:NAME or MODULE:NAME) at the given inputs.

    TARGET is a function of tensors, a custom Function's apply (MyFn.apply), an nn.Module instance
    or an nn.Module class that takes no arguments (instantiated, converted to --dtype).

    Exit status 0: every derivative right (an inaccurate one is a warning on stderr); 1: a check
    failed, or with --strict a derivative is inaccurate; 2: a usage error."""
    import torch

    from .check import check as run_check
    from .report.report import format_for, render_as

    for path in reports:  # refuse a bad suffix before the work
        _usage(format_for, path)
    gen = torch.Generator().manual_seed(seed)
    inputs = dict(parse_input(s, dtype, gen) for s in specs)
    fn = _module_or_function(load_target(target), dtype)
    target_t = parse_input(target_spec, dtype, gen)[1] if target_spec else None
    sym = load_target(symbolic if ":" in symbolic else f"{target.rpartition(':')[0]}:{symbolic}",
                      "'--symbolic'") if symbolic else None
    v = None
    if cotangent != "none" and loss is None and via not in ("functional.jacobian", "jacrev", "jacfwd", "func.jvp",
                                                            "functional.jvp", "forward_ad"):  # none: no cotangent
        v = _cotangent(fn, inputs, cotangent, gen)
    extra = {"loss": loss, "target": target_t} if loss or target_t is not None else {}
    extra.update(order=int(order), engine=engine)
    if via in ("forward_ad", "func.jvp", "functional.jvp") and not isinstance(fn, torch.nn.Module):
        names = list(wrt) or [n for n, t in inputs.items() if t.is_floating_point()]
        extra["tangents"] = {n: torch.ones_like(inputs[n]) if tangent_kind == "ones" else
                             torch.randn(inputs[n].shape, generator=gen, dtype=torch.float64).to(inputs[n].dtype)
                             for n in names if n in inputs}
    if memory_mib is not None:
        extra["memory_budget"] = memory_mib * 2**20
    report = _usage(lambda: _warnings_to_stderr(run_check, fn, inputs, sym, wrt=list(wrt) or None, via=via, v=v,
                                                quiet=quiet, title=f"symgrad check {target}", strict=strict,
                                                reference=reference, **extra))
    click.echo(render_as(report, fmt).rstrip("\n"))
    for path in reports:
        click.echo(f"report written: {report.write(path)}", err=True)
    sys.exit(0 if report.passed else 1)


def _warnings_to_stderr(run_check, *args, **kwargs):
    """``run_check(...)``, its ``InaccurateDerivative`` warnings as one line each on stderr (not Python's
    warning display, which names a file and line of symgrad's)."""
    import warnings

    from .compare.accuracy import InaccurateDerivative

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InaccurateDerivative)
        report = run_check(*args, **kwargs)
    for w in caught:
        if issubclass(w.category, InaccurateDerivative):
            click.echo(f"warning: {w.message}", err=True)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return report


def _module_or_function(obj, dtype: str):
    """An nn.Module class is instantiated (no arguments); a module is converted to the checked dtype."""
    import inspect

    import torch

    if inspect.isclass(obj) and issubclass(obj, torch.nn.Module):
        try:
            obj = obj()
        except TypeError as err:
            raise click.BadParameter(f"cannot instantiate {obj.__name__}() without arguments ({err}); point TARGET "
                                     "at a module instance or a function that builds one", param_hint="TARGET") from err
    if isinstance(obj, torch.nn.Module):
        return obj.to(getattr(torch, dtype))
    if not callable(obj):
        raise click.BadParameter(f"TARGET is a {type(obj).__name__}, not a function or an nn.Module", param_hint="TARGET")
    return obj


def _cotangent(fn, inputs, kind, gen):
    """A cotangent for a non-scalar output (None for a scalar one, or if the forward fails: check says why)."""
    import torch

    try:
        with torch.no_grad():
            out = fn(*inputs.values())
    except Exception:  # noqa: BLE001 - the check itself reports the failure properly
        return None
    if not isinstance(out, torch.Tensor) or out.numel() <= 1:
        return None
    if kind == "ones":
        return torch.ones_like(out)
    return torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)


def _usage(fn, *args):
    try:
        return fn(*args)
    except SymgradError as err:
        raise click.UsageError(str(err)) from err


def run_examples(directory: Path, pattern: str = "*.py", timeout: float = 1800.0, echo=print) -> list[dict]:
    """Run each example script (from the directory's parent, as the README does); one row per script."""
    directory = Path(directory).resolve()
    root = directory.parent
    rows = []
    for script in sorted(directory.glob(pattern)):
        if script.name == "run_all.py" or script.name.startswith("_"):
            continue  # the runner itself
        rel = script.relative_to(root)
        start = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, str(rel)], cwd=root, capture_output=True, text=True, timeout=timeout)
            code, out, err = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired:
            code, out, err = "timeout", "", f"stopped after {timeout:.0f} s"
        last = (out.strip().splitlines() or [""])[-1]
        rows.append({"example": str(rel), "result": "as expected" if code == 0 else f"UNEXPECTED (exit {code})",
                     "seconds": f"{time.perf_counter() - start:.1f}", "summary": last[:100],
                     "stderr": "\n".join(err.strip().splitlines()[-5:]) if code != 0 else ""})
        echo(f"[{'ok' if code == 0 else 'UNEXPECTED'}] {rel}")
    return rows


@cli.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False, exists=True), default="examples",
              show_default=True, help="the examples folder (scripts run from its parent)")
@click.option("--pattern", default="*.py", show_default=True)
@click.option("--timeout", type=float, default=1800.0, show_default=True, help="seconds per example")
def examples(directory, pattern, timeout):
    """Run every example; each writes its report under reports/.  Exit 1 if any ends unexpectedly."""
    from tabulate import tabulate

    rows = run_examples(Path(directory), pattern, timeout, echo=lambda s: click.echo(s, err=True))
    if not rows:
        raise click.UsageError(f"no {pattern} in {directory}")
    click.echo(tabulate([[r[k] for k in ("example", "result", "seconds", "summary")] for r in rows],
                        headers=["example", "result", "s", "summary"], tablefmt="simple", disable_numparse=True))
    bad = [r for r in rows if r["result"] != "as expected"]
    for r in bad:
        click.echo(f"\n{r['example']}:\n{r['stderr']}", err=True)
    click.echo(f"{len(rows) - len(bad)} of {len(rows)} examples ended as expected")
    sys.exit(1 if bad else 0)


@cli.command()
def ops():
    """Print the coverage tables: the op graph's ops and the elementwise op table."""
    from .coverage import markdown

    click.echo(markdown())


def main(argv=None) -> None:
    cli.main(args=argv, prog_name="symgrad")


if __name__ == "__main__":  # pragma: no cover
    main()
