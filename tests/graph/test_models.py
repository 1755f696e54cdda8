"""The op graph's tensor back end on the models people write: no false alarm on torch's own
autograd, a wrong backward caught with the parameter and index named (float64 and float32)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import symgrad as sg

DTYPES = [torch.float64, torch.float32]


class LeNet(nn.Module):
    def __init__(self, act=None):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 6, 5, padding=2), nn.Conv2d(6, 16, 5)
        self.f1, self.f2, self.f3 = nn.Linear(16 * 5 * 5, 32), nn.Linear(32, 16), nn.Linear(16, 10)
        self.act = act

    def forward(self, x, y):
        h = F.max_pool2d(F.relu(self.c1(x)), 2)
        h = F.avg_pool2d(F.relu(self.c2(h)), 2).flatten(1)
        h = F.relu(self.f1(h))
        h = self.act.apply(h) if self.act is not None else h
        return F.cross_entropy(self.f3(F.relu(self.f2(h))), y)


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=True)

    def forward(self, x):
        return self.layer(x).pow(2).mean()


class LSTMClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.out = nn.LSTM(4, 8, batch_first=True), nn.Linear(8, 3)

    def forward(self, x, y):
        return F.cross_entropy(self.out(self.rnn(x)[0][:, -1]), y)


class GRURegressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.out = nn.GRU(4, 6, batch_first=True, bidirectional=True), nn.Linear(12, 1)

    def forward(self, x, t):
        return F.mse_loss(self.out(self.rnn(x)[0][:, -1]), t)


class TextClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.out = nn.Embedding(20, 8, padding_idx=0), nn.Linear(8, 2)

    def forward(self, tokens, y):
        return F.cross_entropy(self.out(self.emb(tokens).mean(1)), y)


class BasicBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)

    def forward(self, x):
        return F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))) + x).pow(2).mean()


class TemporalCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(3, 8, 3, padding=1)
        self.c2 = nn.Conv1d(8, 8, 3, stride=2, groups=2, dilation=1)
        self.out = nn.Linear(8 * 3, 1)

    def forward(self, x):
        return self.out(self.c2(F.silu(self.c1(x))).flatten(1))


def _models(dtype):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return {
        "lenet": (LeNet(), {"x": r(2, 1, 28, 28), "y": torch.tensor([3, 7])}),
        "transformer": (Encoder(), {"x": r(2, 5, 16)}),
        "lstm": (LSTMClassifier(), {"x": r(3, 4, 4), "y": torch.tensor([0, 2, 1])}),
        "gru": (GRURegressor(), {"x": r(3, 4, 4), "t": r(3, 1)}),
        "embedding": (TextClassifier(), {"tokens": torch.tensor([[1, 4, 0, 7], [0, 0, 3, 9]]), "y": torch.tensor([1, 0])}),
        "resblock": (BasicBlock().eval(), {"x": r(2, 4, 6, 6)}),
        "tcn": (TemporalCNN(), {"x": r(4, 3, 8)}),
    }


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(_models(torch.float64)))
def test_model_passes_on_torch_autograd(name, dtype):
    torch.manual_seed(1)
    model, inputs = _models(dtype)[name]
    report = sg.check(model.to(dtype), inputs, engine="graph")
    assert report.passed, report.to_text()
    assert report.meta["engine"].startswith("graph")
    assert len(report.records) > 2


class OffByOneEntry(torch.autograd.Function):
    """relu whose backward is wrong at one entry (index 5 of the flattened input)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        gx = g * (x > 0).to(g.dtype)
        gx = gx.clone()
        gx.view(-1)[5] = gx.view(-1)[5] * 1.01 + 1e-3
        return gx


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_wrong_custom_layer_inside_a_cnn_is_caught_and_named(dtype):
    torch.manual_seed(2)
    model = LeNet(act=OffByOneEntry).to(dtype)
    x = torch.randn(2, 1, 28, 28, dtype=dtype)
    report = sg.check(model, {"x": x, "y": torch.tensor([1, 2])}, engine="graph")
    assert not report.passed
    failing = {r.name for r in report.failures}
    # entry 5 of the (2, 32) activation is sample 0, unit 5: f1's row 5 and bias entry 5
    assert {"f1.weight", "f1.bias"} <= failing
    bias = report["f1.bias"]
    assert bias.abs_index == (5,)
    assert "f1.bias[5]" in bias.message()


def test_loss_inside_forward_goes_to_the_graph_past_the_elementwise_size():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(32, 40), nn.Tanh(), nn.Linear(40, 1)).double()

    class WithLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, x, t):
            return F.mse_loss(self.m(x), t)

    x, t = torch.randn(16, 32, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    report = sg.check(WithLoss(), {"x": x, "t": t})
    assert report.passed, report.to_text()
    assert report.meta["engine"].startswith("graph")


def test_output_vjps_and_full_jacobian():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(5, 7), nn.GELU(), nn.LayerNorm(7), nn.Linear(7, 3)).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    vjps = sg.check(model, {"x": x}, engine="graph")
    assert vjps.passed and vjps.meta["quantity"].startswith("vjp (3 random")
    assert vjps["0.weight"].shape == (3, 7, 5)
    jac = sg.check(model, {"x": x}, engine="graph", via="jacrev")
    assert jac.passed and jac["0.weight"].shape == (4, 3, 7, 5)


def test_tied_weights_sum_both_uses():
    torch.manual_seed(5)

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Linear(6, 4, bias=False)
            self.head = nn.Linear(4, 6, bias=False)
            self.head.weight = nn.Parameter(self.emb.weight.T.contiguous())
            self.proj = nn.Linear(6, 4, bias=False)
            self.proj.weight = self.emb.weight  # the same tensor used twice, as LMs tie embedding and head

        def forward(self, x):
            return (torch.tanh(self.emb(x)) * self.proj(x)).sum()

    for dtype in DTYPES:
        model = Tied().to(dtype)
        report = sg.check(model, {"x": torch.randn(3, 6, dtype=dtype)}, engine="graph")
        assert report.passed, report.to_text()


class LeakyStray(torch.autograd.Function):
    """leaky_relu (decomposed by torch into a comparison and a where) with a stray term at one entry."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return F.leaky_relu(x, 0.1)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        gx = g * torch.where(x > 0, 1.0, 0.1).to(g.dtype)
        gx.view(-1)[5] += 1e-3
        return gx


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_a_mask_is_no_kink(dtype):
    """where(x > 0, x, 0.1 x): the 0/1 mask equal to 0 is data, not a point on a kink; a band there
    once let a wrong backward pass (every entry 'on a kink')."""
    torch.manual_seed(6)
    conv, fc = nn.Conv2d(1, 4, 3, padding=1).to(dtype), nn.Linear(64, 3).to(dtype)

    def net(x, w, b):
        h = F.max_pool2d(LeakyStray.apply(F.conv2d(x, w, b, padding=1)), 2)
        return fc(h.flatten(1)).pow(2).sum()

    inputs = {"x": torch.randn(2, 1, 8, 8, dtype=dtype), "w": conv.weight.detach(), "b": conv.bias.detach()}
    report = sg.check(net, inputs, wrt=["w", "b"], engine="graph")
    assert not report.passed
    assert {r.name for r in report.failures} == {"w", "b"}
    assert all(r.kinks == 0 for r in report.records)
    good = sg.check(lambda x, w, b: fc(F.max_pool2d(F.leaky_relu(F.conv2d(x, w, b, padding=1), 0.1), 2)
                                       .flatten(1)).pow(2).sum(), inputs, wrt=["w", "b"], engine="graph")
    assert good.passed and all(r.kinks == 0 for r in good.records)
