"""Seed 001 (a Japanese autograd tutorial), checked in closed form.

1. ``y = ((x + 1)**2).sum()`` at ``x = ones(2, 2)``: the seed prints ``x.grad`` = 5 everywhere and
   derives it by hand as "2x + 1 = 5".  The derivative is 2(x + 1) = 4.  torch's autograd is right;
   the seed's printed numbers are checked too (as a backward that returns them) and fail.
2. The seed's 3-layer CELU expression, W1 (3x10), W2 (10x10), W3 (10x1), MSE against t = 0,
   written once with symgrad's functions: the same function runs symbolically and in torch.

Writes reports/seed001_autograd_intro.md and prints a one-line summary.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import symgrad as sg
from symgrad.report import combine

STEM = Path(__file__).stem


def square_sum(x):
    return ((x + 1) ** 2).sum()


class SeedPrinted(torch.autograd.Function):
    """The seed's claim as a backward: forward is the seed's y, backward returns the printed x.grad."""

    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        return ((x + 1) ** 2).sum()

    @staticmethod
    def backward(ctx, g):
        return g * torch.full(ctx.shape, 5.0, dtype=g.dtype)  # "x.grad = tensor([[5., 5.], [5., 5.]])"


def celu_net(x, W1, W2, W3, t):
    """y = celu(W3^T celu(W2^T celu(W1^T x))); l = mean((y - t)**2), as in the seed."""
    h1 = sg.celu(sg.matmul(W1.T, x))
    h2 = sg.celu(sg.matmul(W2.T, h1))
    y = sg.celu(sg.matmul(W3.T, h2))
    return sg.mse_loss(y, t)


def main() -> int:
    x = torch.ones(2, 2, requires_grad=True)
    truth = sg.check(square_sum, {"x": x}, title="((x+1)**2).sum() at ones(2,2): torch autograd")
    seed = sg.check(SeedPrinted.apply, {"x": x}, symbolic=square_sum, title="the seed's printed x.grad (5)")
    grad = truth["x"].expected
    notes = [
        f"- closed form: d/dx sum((x+1)**2) = 2(x+1); at x = 1 every entry is **{grad.flat[0]:g}** "
        f"(torch autograd: {truth['x'].verdict}).",
        f"- the seed printed x.grad = 5 and derived '2x + 1 = 5': **wrong** — symgrad's row for it: "
        f"{seed['x'].verdict}, max abs err {seed['x'].max_abs:g} (first worst entry x{list(seed['x'].abs_index)}); every entry is off by 1.",
        "- the seed also shows y as a 2x2 tensor of 4s; ((x+1)**2).sum() is the scalar 16 (the 4s are (x+1)**2 before the sum).",
    ]

    torch.manual_seed(0)
    inputs = {
        "x": torch.tensor([1.0, -2.0, 3.0]),
        "W1": torch.randn(3, 10, requires_grad=True),
        "W2": torch.randn(10, 10, requires_grad=True),
        "W3": torch.randn(10, 1, requires_grad=True),
        "t": torch.zeros(1),
    }
    reports, celu_error = [truth, seed], None
    try:
        for dtype in (torch.float32, torch.float64):
            named = {k: v.detach().to(dtype).requires_grad_(v.requires_grad) for k, v in inputs.items()}
            reports.append(sg.check(celu_net, named, title=f"3-layer CELU + MSE ({dtype})"))
    except sg.SymgradError as err:
        celu_error = f"{type(err).__name__}: {str(err)[:300]}"
        notes.append(f"- 3-layer CELU network: **could not be checked** — symgrad raised {celu_error}")

    report = combine(reports, title="seed 001: autograd intro")
    out = Path("reports") / f"{STEM}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# seed 001\n\n" + "\n".join(notes) + "\n\n" + report.to_markdown(), encoding="utf-8")

    celu = "CELU net: " + ("ERROR (see report)" if celu_error else
                           ", ".join(f"{r.title.split('(')[-1].rstrip(')')} {'pass' if r.passed else 'FAIL'}" for r in reports[2:]))
    print(f"{STEM}: x.grad = {grad.flat[0]:g} (torch {truth['x'].verdict}); seed's printed 5 is "
          f"{'wrong' if not seed.passed else 'NOT flagged?!'}; {celu} -> {out}")
    return 1 if celu_error or not truth.passed else 0


if __name__ == "__main__":
    sys.exit(main())
