"""Seed 003: the Linear-ReLU-Linear-ReLU-Linear-Sigmoid Sequential the seed ran through gradcheck.

gradcheck answers True or False by finite differences; symgrad gives each parameter's closed form
and how far autograd is from it, for the same net (15-30-15-1, float64, 10 samples).
"""

from __future__ import annotations

import sys

import torch
import torch.nn as nn

import symgrad


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(15, 30), nn.ReLU(), nn.Linear(30, 15), nn.ReLU(), nn.Linear(15, 1), nn.Sigmoid())

    def forward(self, x):
        return self.net(x)


def main() -> int:
    torch.manual_seed(0)
    net = Net().double()
    inputs = torch.randn((10, 15), requires_grad=True, dtype=torch.double)
    gradcheck_ok = torch.autograd.gradcheck(net, inputs)
    report = symgrad.check(net, inputs, via="functional.jacobian", title="seed 003: Sequential (gradcheck's net)")
    report.meta["torch.autograd.gradcheck"] = str(gradcheck_ok)
    path = report.write("reports/seed003_sequential.md")
    print(f"{report.summary()}; gradcheck said {gradcheck_ok} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
