"""The op table of the op graph: every op symgrad's tensor back end is tested on, as data.

Each row (:class:`OpCase`) is a torch callable on tensors, one input factory per argument with the
op's domain (``positive`` for ``log``, ``uniform(-0.9, 0.9)`` for ``atanh``, integer index tensors
for ``gather``), the dtypes it is checked in, its kind and notes.  ``tests/graph/test_ops.py``
runs one parametrised helper over the table in float64 and float32:

* torch's own autograd must pass ``sg.check(fn, inputs, engine="graph")`` (random cotangents for
  tensor outputs);
* (a row with ``torch_differs``: torch's backward is documented not to be the derivative of its
  forward there, and the check must say so: FAIL);
* the same op with a seeded wrong backward (:func:`wrong_backward`: torch's gradient times
  ``1 + 1e-6`` in float64, ``1 + 1e-3`` in float32) must fail, unless the row says the true
  derivative is zero everywhere (``zero_grad``).

A row marked ``xfail`` is an op the op graph cannot check yet, kept in the table with the reason
(a strict xfail: it must start passing before the mark goes).  :func:`coverage_markdown` writes the
README's coverage table from the rows.  Rows live in ``optable_rows`` (pointwise, reductions,
shape, linear algebra) and ``optable_nn`` (nn layers, losses, modules).
"""

from __future__ import annotations

import zlib
from typing import Callable

__all__ = ["representative_cases", "OpCase", "Input", "normal", "uniform", "positive", "ints", "mask", "fixed", "cases", "make_inputs",
           "wrong_backward", "as_function", "FACTOR", "coverage_markdown", "DTYPES", "op_of", "representatives"]

from .opcase import DTYPES, Input, OpCase, fixed, ints, mask, normal, positive, uniform  # noqa: F401 - re-exported

FACTOR = {"float64": 1e-6, "float32": 1e-3}  # the seeded wrong backward's relative error


def make_inputs(case: OpCase, dtype, seed: int = 0) -> dict:
    """The case's inputs in ``dtype`` (a torch dtype), from a generator seeded by the case's name
    (and ``seed``, for sweeps)."""
    import torch

    gen = torch.Generator().manual_seed(zlib.crc32(case.name.encode()) + seed)
    return {k: f.make(gen, dtype) for k, f in case.inputs.items()}


def wrong_backward(fn: Callable, rel: float) -> Callable:
    """``fn`` as a custom ``autograd.Function`` whose backward is torch's own gradient (computed
    with ``torch.autograd.grad`` inside) times ``1 + rel``: a seeded wrong backward."""
    import torch

    class Wrong(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *xs):
            ctx.save_for_backward(*xs)
            return fn(*xs)

        @staticmethod
        def backward(ctx, g):
            xs = ctx.saved_tensors
            with torch.enable_grad():
                leaves = [x.detach().requires_grad_(bool(need)) for x, need in zip(xs, ctx.needs_input_grad)]
                out = fn(*leaves)
                diff = [x for x in leaves if x.requires_grad]
                grads = iter(torch.autograd.grad(out, diff, g, allow_unused=True))
            res = []
            for x in leaves:
                if not x.requires_grad:
                    res.append(None)
                    continue
                gx = next(grads)
                res.append(None if gx is None else gx * (1 + rel))
            return tuple(res)

    return Wrong.apply


def cases() -> list:
    """Every row of the table, in order."""
    from .optable_nn import ROWS as NN_ROWS
    from .optable_rows import ROWS

    return list(ROWS) + list(NN_ROWS)


def op_of(case: OpCase) -> str:
    """The op a row exercises: the first word of its name (``"pad reflect 2d"`` -> ``"pad"``)."""
    return case.name.split()[0]


def representatives() -> set:
    """One row name per op (:func:`op_of`): its first row that is expected to work (or its first row,
    where none is).  The default test run checks these; the other parametrisations are ``slow``."""
    first: dict = {}
    for c in cases():
        key = op_of(c)
        if key not in first or (first[key].xfail and not c.xfail):
            first[key] = c
    return {c.name for c in first.values()}


def representative_cases(dtype: str = "float64") -> list:
    """The representative rows (:func:`representatives`) expected to work in ``dtype``: what the
    slow sweeps of the exploded back end run."""
    reps = representatives()
    return [c for c in cases() if c.name in reps and not c.xfail and dtype in c.dtypes]


def coverage_markdown() -> str:
    """The README's coverage table of the op graph: op, kind, domain, float64, float32, notes."""
    lines = ["| op | kind | domain | float64 | float32 | notes |", "|---|---|---|---|---|---|"]
    for c in cases():
        status = {}
        for dt in DTYPES:
            if dt not in c.dtypes:
                status[dt] = "-"
            elif c.xfail:
                status[dt] = "xfail"
            elif c.torch_differs:
                status[dt] = "torch differs (caught)"
            else:
                status[dt] = "yes" if not c.zero_grad else "yes (zero derivative)"
        notes = c.xfail or c.torch_differs or c.notes
        cells = [c.name, c.kind, c.domain, status["float64"], status["float32"], notes]
        lines.append("| " + " | ".join(str(x).replace("|", "\\|") for x in cells) + " |")
    return "\n".join(lines)


def as_function(case: OpCase, dtype, seed: int = 0) -> tuple:
    """``(fn, inputs)`` for a row: a module row becomes a function of its inputs and parameters
    (``torch.func.functional_call``), its first output where it returns several (RNNs)."""
    import torch

    inputs = make_inputs(case, dtype, seed)
    if case.module is None:
        return case.fn, inputs
    torch.manual_seed(zlib.crc32(case.name.encode()) + seed)
    module = case.module().to(dtype)
    params = {n: p.detach() for n, p in module.named_parameters()}
    keys = list(params)
    n_in = len(inputs)

    def fn(*xs):
        out = torch.func.functional_call(module, dict(zip(keys, xs[n_in:])), tuple(xs[:n_in]))
        return out[0] if isinstance(out, tuple) else out

    named = dict(inputs)
    named.update({"p_" + k.replace(".", "_"): v for k, v in params.items()})
    return fn, named
