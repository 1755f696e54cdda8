"""Weight-Jacobian benchmark: symgrad end to end beside torch.autograd.gradcheck and functional.jacobian.

Run: ``python benchmarks/bench_weight_jacobian.py [--widths 4 8 16 32] [--samples 20] [--repeat 3]``

Rows: seed 004's [6, 4, 3, 1] tanh net, then [6, w, w, 1] tanh MLPs of growing width, 20 samples,
float64.  ``symgrad`` is the whole check (fx trace, per-sample derivation, lowering, evaluation over
the batch, torch's Jacobian, comparison); ``gradcheck`` is torch.autograd.gradcheck over all
parameters (finite differences, a yes/no answer); ``functional.jacobian`` is torch's Jacobian alone.
Times are the best of ``--repeat`` runs after one warm-up (imports); "first check" is the first
call for that architecture.  A last row shows that symgrad's cost
does not grow with the batch (seed 004 at 2,000 samples).
"""

from __future__ import annotations

import argparse
import time

import numpy.random as npr
import torch
import torch.nn as nn
from tabulate import tabulate

import symgrad


class TanhMLP(nn.Module):
    """Seed 004's net (weights (in, out), bias, tanh after every layer), any layer sizes."""

    def __init__(self, layers, seed=0):
        super().__init__()
        rs = npr.RandomState(seed)
        self.n = len(layers) - 1
        for i, (a, b) in enumerate(zip(layers[:-1], layers[1:])):
            setattr(self, f"w{i}", nn.Parameter(torch.tensor(rs.randn(a, b) * 0.1)))
            setattr(self, f"b{i}", nn.Parameter(torch.tensor(rs.randn(b) * 0.1)))

    def forward(self, X):
        h = X
        for i in range(self.n):
            h = torch.tanh(torch.mm(h, getattr(self, f"w{i}")) + getattr(self, f"b{i}"))
        return h


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def as_function(net, X):
    names = [n for n, _ in net.named_parameters()]
    return lambda *p: torch.func.functional_call(net, dict(zip(names, p)), (X,))


def row(label, layers, n, repeat):
    net = TanhMLP(layers)
    X = torch.randn(n, layers[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    params = tuple(p.detach().clone().requires_grad_() for p in net.parameters())
    f = as_function(net, X)
    t_first, _ = best(lambda: symgrad.check(net, X), 1)  # the first check of this architecture
    t_sg, report = best(lambda: symgrad.check(net, X), repeat)
    t_gc, ok = best(lambda: torch.autograd.gradcheck(f, params), repeat)
    t_jac, _ = best(lambda: torch.autograd.functional.jacobian(f, params), repeat)
    n_params = sum(p.numel() for p in params)
    return [label, n, n_params, f"{t_first:.3f}", f"{t_sg:.3f}", f"{t_gc:.3f}", f"{t_jac:.4f}",
            "pass" if report.passed else "FAIL", str(ok)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, nargs="*", default=[4, 8, 16, 32])
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    row("warm-up", [6, 4, 3, 1], args.samples, 1)  # imports, torch kernels
    rows = [row("seed 004 [6, 4, 3, 1]", [6, 4, 3, 1], args.samples, args.repeat)]
    for w in args.widths:
        rows.append(row(f"[6, {w}, {w}, 1]", [6, w, w, 1], args.samples, args.repeat))
    big = TanhMLP([6, 4, 3, 1])
    Xb = torch.randn(2000, 6, dtype=torch.float64)
    t_big, rep = best(lambda: symgrad.check(big, Xb, via="jacrev"), args.repeat)
    headers = ["network", "samples", "params", "symgrad first check (s)", "symgrad check, best (s)", "gradcheck (s)",
               "functional.jacobian (s)",
               "symgrad verdict", "gradcheck"]
    print(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
    print(f"\nseed 004 with 2,000 samples (Jacobian 2000 x 47 via jacrev): symgrad check {t_big:.3f} s, "
          f"{'pass' if rep.passed else 'FAIL'}; engine: {rep.meta.get('engine')}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
