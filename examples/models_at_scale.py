"""Models people write, through the op graph: a LeNet-5 on 1x28x28 with the loss inside forward, the
same network with a custom activation whose backward is wrong at one entry, and a transformer encoder
layer checked through random VJPs.  Each writes its report under reports/; the example ends with exit
status 0 when every verdict is the expected one (the wrong backward must fail, the others pass).
"""

from __future__ import annotations

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

import symgrad


class StrayRelu(torch.autograd.Function):
    """relu with a hand-written backward that adds a stray term at one entry (a fused-kernel slip)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        gx = g * (x > 0).to(g.dtype)
        gx.view(-1)[3] += 1e-3
        return gx


class LeNet5(nn.Module):
    def __init__(self, act=F.relu):
        super().__init__()
        self.act = act
        self.c1, self.c2 = nn.Conv2d(1, 6, 5, padding=2), nn.Conv2d(6, 16, 5)
        self.f1, self.f2, self.f3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x, y):
        h = F.max_pool2d(F.relu(self.c1(x)), 2)
        h = F.max_pool2d(F.relu(self.c2(h)), 2).flatten(1)
        h = self.act(self.f1(h))
        return F.cross_entropy(self.f3(F.relu(self.f2(h))), y)


def main() -> int:
    torch.manual_seed(0)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    expected = []
    report = symgrad.check(LeNet5(), {"x": x, "y": y}, title="LeNet-5, cross-entropy inside forward (float32)")
    print(f"{report.summary()} -> {report.write('reports/lenet5.md')}")
    expected.append(report.passed)
    bugged = symgrad.check(LeNet5(act=StrayRelu.apply), {"x": x, "y": y},
                           title="LeNet-5 with a custom relu whose backward is wrong at one entry")
    print(f"{bugged.summary()} -> {bugged.write('reports/lenet5_wrong_backward.md')}")
    print("failing:", ", ".join(r.name for r in bugged.failures))
    expected.append(not bugged.passed)
    encoder = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True).eval()
    report = symgrad.check(encoder, {"src": torch.randn(4, 16, 64)}, title="TransformerEncoderLayer, random VJPs")
    print(f"{report.summary()} ({report.meta['quantity']}) -> {report.write('reports/transformer_encoder.md')}")
    expected.append(report.passed)
    return 0 if all(expected) else 1


if __name__ == "__main__":
    sys.exit(main())
