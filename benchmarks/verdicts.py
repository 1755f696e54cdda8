"""False alarms and caught bugs, measured: the script behind the README's figures.

For random compositions of supported ops (``symgrad.testing_ops``) at several input scales, in float64
and float32, it checks torch's own autograd (every failure is a false alarm) and four seeded bugs:

* ``scaled``: the backward times 1 + δ (δ = 1e-6 in float64, 1e-3 in float32);
* ``one entry``: one entry of the gradient off by a relative 1e-3 (float64: 1e-6);
* ``low precision``: a float64 backward computed in float32 (float32: computed in bfloat16);
* ``ignores g``: a backward that ignores ``grad_output`` (correct only for a cotangent of ones).

Beside symgrad it applies ``torch.autograd.gradcheck`` (float64 only; it cannot run in float32) and a
FlashAttention-style rule (a bug is flagged where max|backward - float64 reference| exceeds twice
max|torch's same-dtype gradient - float64 reference|).

Run: ``python benchmarks/verdicts.py [--cases N] [--engine graph|auto]`` (default 40 cases, graph).
"""

from __future__ import annotations

import argparse
import random

import torch
from tabulate import tabulate

import symgrad as sg
from symgrad.testing_ops import OPS_FOR_SCRIPTS, compose, vjp, with_backward

DELTA = {torch.float64: 1e-6, torch.float32: 1e-3}
LOW = {torch.float64: torch.float32, torch.float32: torch.bfloat16}


def _grad(fn, x, dtype=None):
    with torch.enable_grad():
        xx = x.detach().to(dtype or x.dtype).requires_grad_()
        (g,) = torch.autograd.grad(fn(xx), xx)
    return g


def buggy(fn, kind: str, dtype):
    """``fn`` as a custom Function whose backward has the seeded bug ``kind``."""

    def backward(x, g):
        if kind == "low precision":
            return vjp(fn, x.to(LOW[dtype]), g.to(LOW[dtype])).to(x.dtype)
        if kind == "ignores g":
            return vjp(fn, x, torch.ones_like(g))
        grad = vjp(fn, x, g)
        if kind == "scaled":
            return grad * (1 + DELTA[dtype])
        grad = grad.clone()
        k = int(grad.abs().argmax())
        grad.view(-1)[k] = grad.view(-1)[k] * (1 + 10 * DELTA[dtype])
        return grad

    return with_backward(fn, backward)


def flash_rule(fn_bug, fn, x) -> bool:
    """True when the FlashAttention-style 2x rule flags ``fn_bug``'s gradient."""
    ref = _grad(fn, x, torch.float64)
    same = _grad(fn, x)
    got = _grad(fn_bug, x)
    return bool((got.double() - ref).abs().max() > 2 * (same.double() - ref).abs().max() + 1e-30)


def gradcheck_flags(fn_bug, x) -> bool | None:
    if x.dtype != torch.float64:
        return None
    try:
        return not torch.autograd.gradcheck(fn_bug, (x.detach().clone().requires_grad_(),), raise_exception=False)
    except Exception:  # noqa: BLE001 - a crash inside gradcheck counts as flagged
        return True


def main(cases: int, engine: str) -> None:
    rng = random.Random(0)
    kinds = ["scaled", "one entry", "low precision", "ignores g"]
    tally = {}
    for _ in range(cases):
        names = rng.sample(OPS_FOR_SCRIPTS, rng.randint(1, 3))
        for dtype in (torch.float64, torch.float32):
            for scale in (0.3, 1.0, 3.0):
                gen = torch.Generator().manual_seed(rng.randrange(2**31))
                x = (scale * torch.randn(3, 5, generator=gen, dtype=torch.float64)).to(dtype)
                w = torch.randn(3, 5, generator=gen, dtype=torch.float64).to(dtype)
                chain = compose(names, w).chain  # a tensor output: checked through random cotangents
                row = tally.setdefault(("correct", str(dtype)), [0, 0, 0, 0])
                row[0] += 1
                row[1] += not sg.check(chain, {"x": x}, engine=engine, quiet=True).passed
                row[2] += bool(gradcheck_flags(chain, x))
                for kind in kinds:
                    bug = buggy(chain, kind, dtype)
                    row = tally.setdefault((kind, str(dtype)), [0, 0, 0, 0])
                    row[0] += 1
                    row[1] += not sg.check(bug, {"x": x}, engine=engine, quiet=True).passed
                    row[2] += bool(gradcheck_flags(bug, x))
                    row[3] += flash_rule(lambda t: (w * bug(t)).sum(), lambda t: (w * chain(t)).sum(), x)
    rows = []
    for (kind, dtype), (n, sym, gc, fa) in tally.items():
        gc_text = f"{gc}/{n}" if dtype == "torch.float64" else "cannot run"
        label = "false alarms" if kind == "correct" else "caught"
        rows.append([kind, dtype.replace("torch.", ""), label, f"{sym}/{n}", gc_text,
                     "-" if kind == "correct" else f"{fa}/{n}"])
    print(f"engine={engine}; {cases} random compositions (tensor outputs) x 3 input scales per dtype")
    print(tabulate(rows, headers=["backward", "dtype", "counted", "symgrad", "gradcheck", "2x rule"]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--engine", default="graph", choices=["graph", "auto"])
    args = parser.parse_args()
    main(args.cases, args.engine)
