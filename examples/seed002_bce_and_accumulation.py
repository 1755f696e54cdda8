"""Seed 002 (a Japanese autograd notebook), checked in closed form.

1. BCE-with-logits of z = x w + b (x = ones(5), w 5x3, b 3, target zeros(3)) -> grads of w and b.
2. out = (inp + 1)**2 at inp = eye(5) with out.backward(ones_like(inp)): 2(inp + 1).
3. Accumulation: a second backward doubles inp.grad, zero_() restores it -- each state compared with
   the closed form, not just printed.
4. no_grad / detach give no graph: requires_grad is False, and a check of a function that detaches w
   reports w's row as FAIL (autograd gave no gradient, the closed form is not zero) -- an expected failure.

Writes reports/seed002_bce_and_accumulation.md and prints a one-line summary.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import symgrad as sg
from symgrad.compare import compare
from symgrad.reference import Reference
from symgrad.report import Report, combine

STEM = Path(__file__).stem


def bce_layer(x, w, b, y):
    z = sg.matmul(x, w) + b
    return sg.binary_cross_entropy_with_logits(z, y)


def square(inp):
    return (inp + 1).pow(2)


def accumulation_report(closed_form) -> Report:
    """Replay the seed's three backward calls and compare each inp.grad with k * closed form."""
    inp = torch.eye(5, dtype=torch.float64, requires_grad=True)
    out = square(inp)
    states = []
    out.backward(torch.ones_like(inp), retain_graph=True)
    states.append(("first call", 1, inp.grad.clone()))
    out.backward(torch.ones_like(inp), retain_graph=True)
    states.append(("second call (accumulated)", 2, inp.grad.clone()))
    inp.grad.zero_()
    out.backward(torch.ones_like(inp), retain_graph=True)
    states.append(("after zero_()", 1, inp.grad.clone()))
    records = []
    for label, k, grad in states:
        ref = Reference(f"inp.grad, {label}", k * closed_form, closed_form=f"{k} * 2*(inp + 1)")
        records.append(compare(ref, grad.numpy(), "float64", quantity="vjp", index_name="inp"))
    return Report(records, title="accumulation: backward twice, then zero_()")


def main() -> int:
    torch.manual_seed(0)
    x, y = torch.ones(5), torch.zeros(3)
    w, b = torch.randn(5, 3, requires_grad=True), torch.randn(3, requires_grad=True)
    bce = sg.check(bce_layer, {"x": x, "w": w, "b": b, "y": y}, title="BCE with logits: grads of w and b")
    # With x = ones(5), every row of w.grad equals b.grad (dz/dw_ij = x_i = 1): check it on the closed form.
    rows_equal = bool(abs(bce["w"].expected - bce["b"].expected[None, :]).max() < 1e-12)

    eye = torch.eye(5, dtype=torch.float64)
    ones = torch.ones(5, 5, dtype=torch.float64)
    once = sg.check(square, {"inp": eye}, v=ones, title="(inp+1)**2, backward(ones_like(inp))")
    twice = sg.check(square, {"inp": eye}, v=ones, backward_calls=2, title="the same, backward called twice")
    accumulation = accumulation_report(once["inp"].expected)

    with torch.no_grad():
        z_no_grad = torch.matmul(x, w) + b
    z_detached = (torch.matmul(x, w) + b).detach()
    detached = sg.check(lambda x, w, b: (torch.matmul(x, w.detach()) + b).sum(), {"x": x, "w": w, "b": b},
                        symbolic=lambda x, w, b: (sg.matmul(x, w) + b).sum(), title="w detached inside the function")
    caught = (not detached["w"].passed and detached["w"].mismatched == detached["w"].total
              and "no gradient" in detached["w"].note and detached["b"].passed)
    if caught:
        detach_msg = (f"symgrad catches a function that detaches w: w's row FAILs ({detached['w'].mismatched} of "
                      f"{detached['w'].total} entries; autograd gave no gradient, the closed form is x[i] = 1), "
                      "b's row passes (the expected failure is below)")
    else:
        detach_msg = "UNEXPECTED: symgrad did not report the detached w as failing"

    report = combine([bce, once, twice, accumulation], title="seed 002: BCE with logits and gradient accumulation")
    notes = [
        f"- x = ones(5), so every row of w.grad equals b.grad: {'yes' if rows_equal else 'NO'} (closed form).",
        "- closed form of (inp+1)**2 under backward(ones): 2(inp + 1) -> 4 on the diagonal of eye(5), 2 elsewhere; "
        "the seed's first call, its doubled second call and the call after zero_() are each compared above.",
        f"- torch.no_grad(): z.requires_grad = {z_no_grad.requires_grad}; z.detach().requires_grad = {z_detached.requires_grad}.",
        f"- {detach_msg}",
    ]
    out = Path("reports") / f"{STEM}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    expected_failure = detached.to_markdown().replace("## ", "## Expected failure: ", 1)
    out.write_text("# seed 002\n\n" + "\n".join(notes) + "\n\n" + report.to_markdown() + "\n" + expected_failure,
                   encoding="utf-8")
    print(f"{STEM}: BCE grads {'pass' if bce.passed else 'FAIL'}; backward(ones) {'pass' if once.passed else 'FAIL'}; "
          f"accumulation x2 {'pass' if twice.passed and accumulation.passed else 'FAIL'}; "
          f"no_grad/detach -> requires_grad {z_no_grad.requires_grad}/{z_detached.requires_grad}; "
          f"detached w {'caught (FAIL, as expected)' if caught else 'NOT caught'} -> {out}")
    return 0 if report.passed and rows_equal and caught else 1


if __name__ == "__main__":
    sys.exit(main())
