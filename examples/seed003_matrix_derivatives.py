"""Seed 003 (a Chinese/Japanese post on checking gradients), verified in closed form.

1. f = a^T X b with the seed's tensors: df/dX = a b^T.
2. F = A X with F.backward(ones_like(F)): X.grad = A^T 1 1^T.
3. The nn.Linear(5, 3) (double) on a 10x5 input that the seed ran through gradcheck: here the full
   Jacobians w.r.t. the input, the weight and the bias are compared with the closed form of
   x W^T + b, via F.linear on (x, weight, bias) taken from the module.

Writes reports/seed003_matrix_derivatives.md and prints a one-line summary.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import sympy as sp
import torch
import torch.nn.functional as F

import symgrad as sg
from symgrad.report import combine

STEM = Path(__file__).stem


def main() -> int:
    a = torch.tensor([[1], [2], [3.0], [4]])
    X = torch.tensor([[1, 2, 3], [5, 6, 7], [8, 9, 10], [5, 4, 3.0]], requires_grad=True)
    b = torch.tensor([[2], [3], [4.0]])
    A_, X_, B_ = sp.MatrixSymbol("a", 4, 1), sp.MatrixSymbol("X", 4, 3), sp.MatrixSymbol("b", 3, 1)
    atxb = sg.check(lambda a, X, b: a.view(1, -1).mm(X).mm(b), {"a": a, "X": X, "b": b}, symbolic=A_.T * X_ * B_,
                    wrt="X", title="f = a^T X b: df/dX = a b^T")
    seed_claim = (a @ b.T).numpy()
    abt_ok = bool(np.array_equal(atxb["X"].expected, seed_claim))

    A = torch.tensor([[1, 2], [3, 4.0]])
    X2 = torch.tensor([[1, 2, 3], [4, 5.0, 6]], requires_grad=True)
    AX = sg.check(lambda A, X: A.mm(X), {"A": A, "X": X2}, symbolic=sp.MatrixSymbol("A", 2, 2) * sp.MatrixSymbol("X", 2, 3),
                  wrt="X", v=torch.ones(2, 3), title="F = A X, backward(ones_like(F)): X.grad = A^T 1 1^T")
    ax_claim = np.array([[4.0, 4, 4], [6, 6, 6]])  # the seed's printed X.grad
    ax_ok = bool(np.array_equal(AX["X"].expected, ax_claim))

    torch.manual_seed(0)
    linear = torch.nn.Linear(5, 3).double()
    inputs = {"x": torch.randn(10, 5, dtype=torch.double),
              "weight": linear.weight.detach().clone(), "bias": linear.bias.detach().clone()}
    lin = sg.check(F.linear, inputs, symbolic=lambda x, weight, bias: x @ weight.T + bias, via="functional.jacobian",
                   title="nn.Linear(5, 3).double() on a 10x5 input: full Jacobians (the seed's gradcheck)")

    report = combine([atxb, AX, lin], title="seed 003: matrix derivatives")
    notes = [
        f"- a^T X b: closed form a b^T equals the seed's a.mm(b.view(1,-1)): {'yes' if abt_ok else 'NO'}.",
        f"- A X with backward(ones): closed form A^T 1 1^T equals the seed's printed [[4,4,4],[6,6,6]]: {'yes' if ax_ok else 'NO'}.",
        "- the seed's gradcheck compares finite differences; here the Jacobians of F.linear(x, W, b) w.r.t. x, W and b "
        "are compared entry by entry with the closed form of x W^T + b.",
    ]
    out = Path("reports") / f"{STEM}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# seed 003\n\n" + "\n".join(notes) + "\n\n" + report.to_markdown(), encoding="utf-8")
    print(f"{STEM}: a^T X b {'pass' if atxb.passed and abt_ok else 'FAIL'}; A X backward(ones) "
          f"{'pass' if AX.passed and ax_ok else 'FAIL'}; Linear(5,3) Jacobians {'pass' if lin.passed else 'FAIL'} -> {out}")
    return 0 if report.passed and abt_ok and ax_ok else 1


if __name__ == "__main__":
    sys.exit(main())
