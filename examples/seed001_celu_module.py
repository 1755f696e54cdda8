"""Seed 001: the CELU network y = celu(W3ᵀ celu(W2ᵀ celu(W1ᵀ x))), loss mean((y - t)²), as an nn.Module.

The seed computed W1.grad, W2.grad and W3.grad with backward(); here the module is imported through
torch.fx and every gradient is checked against the closed form (float32, as in the seed).
"""

from __future__ import annotations

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

import symgrad


class CeluNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.W1 = nn.Parameter(torch.randn(3, 10))
        self.W2 = nn.Parameter(torch.randn(10, 10))
        self.W3 = nn.Parameter(torch.randn(10, 1))

    def forward(self, x):
        return F.celu(torch.matmul(self.W3.T, F.celu(torch.matmul(self.W2.T, F.celu(torch.matmul(self.W1.T, x))))))


def main() -> int:
    torch.manual_seed(0)
    model = CeluNet()
    x = torch.tensor([1.0, -2.0, 3.0])
    t = torch.zeros([1])
    report = symgrad.check(model, x, loss=lambda y, t: torch.mean((y - t) ** 2), target=t,
                           title="seed 001: CELU network as an nn.Module")
    path = report.write("reports/seed001_celu_module.md")
    print(f"{report.summary()} ({report.meta.get('engine')}) -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
