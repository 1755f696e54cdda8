"""Seed 004: the weight Jacobian of the [6, 4, 3, 1] tanh net, 20 samples x 47 parameters.

The network and its initialisation are the seed's (weights stored (in, out), init_params with
scale 0.1 and RandomState(0)).  The closed form is compared with three ways of getting the Jacobian
from torch: torch.autograd.functional.jacobian, torch.func.jacrev, and -- as the seed's answer
describes -- 20 backward(v) calls with one-hot v.
"""

from __future__ import annotations

import sys
import time

import numpy.random as npr
import torch
import torch.nn as nn

import symgrad
from symgrad.nn import weight_jacobian
from symgrad.report import combine


def init_params(layer_sizes, scale=0.1, rs=npr.RandomState(0)):
    return [(rs.randn(insize, outsize) * scale, rs.randn(outsize) * scale)
            for insize, outsize in zip(layer_sizes[:-1], layer_sizes[1:])]


class SeedNet(nn.Module):
    def __init__(self, layers=(6, 4, 3, 1)):
        super().__init__()
        w = init_params(list(layers))
        self.first_layer_w, self.first_layer_bias = (nn.Parameter(torch.tensor(a)) for a in w[0])
        self.second_layer_w, self.second_layer_bias = (nn.Parameter(torch.tensor(a)) for a in w[1])
        self.third_layer_w, self.third_layer_bias = (nn.Parameter(torch.tensor(a)) for a in w[2])

    def forward(self, X):
        h = torch.tanh(torch.mm(X, self.first_layer_w) + self.first_layer_bias)
        h = torch.tanh(torch.mm(h, self.second_layer_w) + self.second_layer_bias)
        return torch.tanh(torch.mm(h, self.third_layer_w) + self.third_layer_bias)


def main() -> int:
    torch.manual_seed(0)
    net = SeedNet()
    X = torch.randn(20, 6, dtype=torch.float64)
    reports, timings = [], {}
    for via in ("functional.jacobian", "jacrev", "onehot-vjp"):
        t0 = time.perf_counter()
        wj = weight_jacobian(net, X, via=via, title=f"seed 004: weight Jacobian vs {via}")
        timings[via] = time.perf_counter() - t0
        reports.append(wj.report)
    report = combine(reports, "seed 004: weight Jacobian (20 x 47) against three autograd routes")
    report.meta.update({"parameters": str(len(wj.columns)), "Jacobian": f"{wj.shape[0]} x {wj.shape[1]}",
                        **{f"time ({k})": f"{v:.3f} s" for k, v in timings.items()}})
    text = report.to_markdown() + "\n## The Jacobian (closed form), first rows and columns\n\n" + wj.to_markdown(5, 8) + "\n"
    from pathlib import Path

    Path("reports").mkdir(exist_ok=True)
    Path("reports/seed004_weight_jacobian.md").write_text(text, encoding="utf-8")
    print(f"{report.summary()}; {wj.shape[0]}x{wj.shape[1]} Jacobian, "
          + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()) + " -> reports/seed004_weight_jacobian.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
