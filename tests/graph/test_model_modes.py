"""Issue "every op real models use": each model family checked with loss=, with the loss inside
forward, and through its output's VJPs/JVPs, in float64 and float32; and with a custom layer whose
backward is wrong at one entry, caught with the parameter and index named."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import symgrad as sg

DTYPES = [torch.float64, torch.float32]


class PreNormEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, norm_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.layer(x).mean(1))


class LSTMClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.LSTM(3, 5, batch_first=True), nn.Linear(5, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


class GRURegressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.GRU(3, 4, batch_first=True), nn.Linear(4, 1)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


class TextClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.head = nn.Embedding(12, 6, padding_idx=0), nn.Linear(6, 3)

    def forward(self, tokens):
        return self.head(self.emb(tokens).mean(1))


class ResBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(2, 2, 3, padding=1, bias=False), nn.BatchNorm2d(2)
        self.c2, self.b2 = nn.Conv2d(2, 2, 3, padding=1, bias=False), nn.BatchNorm2d(2)
        self.head = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        h = F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))) + x)
        return self.head(h.flatten(1))


class LeNetSmall(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.c1(x)), 2)
        h = F.avg_pool2d(F.relu(self.c2(h)), 2)
        return self.head(h.flatten(1))


class TCN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv1d(2, 4, 3, padding=2, dilation=2), nn.Conv1d(4, 4, 3, stride=2, groups=2)
        self.head = nn.Linear(4 * 3, 3)

    def forward(self, x):
        return self.head(self.c2(F.gelu(self.c1(x))).flatten(1))


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerDecoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.layer(x, x.flip(1)).mean(1))


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        causal = torch.triu(torch.ones(x.shape[1], x.shape[1], dtype=torch.bool), 1)
        return self.head(self.attn(x, x, x, attn_mask=causal, need_weights=False)[0].mean(1))


class Cells(nn.Module):
    """An LSTMCell, a GRUCell and an RNNCell unrolled over the sequence by hand."""

    def __init__(self):
        super().__init__()
        self.lstm, self.gru, self.rnn = nn.LSTMCell(3, 4), nn.GRUCell(4, 4), nn.RNNCell(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = c = torch.zeros(x.shape[0], 4, dtype=x.dtype)
        g = r = h
        for t in range(x.shape[1]):
            h, c = self.lstm(x[:, t], (h, c))
            g = self.gru(h, g)
            r = self.rnn(g, r)
        return self.head(r)


class DeepBiLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.LSTM(3, 3, num_layers=2, bidirectional=True, batch_first=True), nn.Linear(6, 1)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


class BagClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.bag, self.head = nn.EmbeddingBag(12, 6, mode="mean"), nn.Linear(6, 3)

    def forward(self, tokens):
        return self.head(self.bag(tokens))


class Upsampler(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(2, 2, 3, padding=1), nn.Linear(2 * 6 * 6, 3)

    def forward(self, x):
        h = F.interpolate(self.conv(x), size=(6, 6), mode="bilinear", align_corners=False)
        return self.head(torch.tanh(h).flatten(1))


def _family(name, dtype):
    g = torch.Generator().manual_seed(7)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    table = {
        "lenet": (LeNetSmall(), r(2, 1, 8, 8)),
        "resblock": (ResBlock().eval(), r(2, 2, 4, 4)),
        "encoder": (PreNormEncoder().eval(), r(2, 4, 8)),
        "lstm": (LSTMClassifier(), r(2, 3, 3)),
        "gru": (GRURegressor(), r(2, 3, 3)),
        "text": (TextClassifier(), torch.tensor([[1, 4, 0, 7], [0, 2, 3, 11]])),
        "tcn": (TCN(), r(2, 2, 8)),
        "decoder": (Decoder().eval(), r(2, 3, 8)),
        "mha": (Attention(), r(2, 4, 8)),
        "cells": (Cells(), r(2, 3, 3)),
        "bilstm2": (DeepBiLSTM(), r(2, 3, 3)),
        "bag": (BagClassifier(), torch.tensor([[1, 4, 2, 7], [5, 2, 3, 11]])),
        "upsample": (Upsampler(), r(2, 2, 4, 4)),
    }
    torch.manual_seed(3)
    body, x = table[name]
    return body.to(dtype), x


def _loss(out):
    if out.shape[-1] == 1:
        return lambda o, t: F.mse_loss(o, t), torch.linspace(-1, 1, out.shape[0], dtype=out.dtype).reshape(-1, 1)
    return lambda o, t: F.cross_entropy(o, t), torch.arange(out.shape[0]) % out.shape[-1]


class WithLoss(nn.Module):
    def __init__(self, body, loss):
        super().__init__()
        self.body, self.loss = body, loss

    def forward(self, x, target):
        return self.loss(self.body(x), target)


ISSUE_FAMILIES = ["lenet", "resblock", "encoder", "lstm", "gru", "text", "tcn"]
# beyond the issue's seven: the other layers it lists, each as a model in every mode; the default run
# has one mode of each (loss inside forward, float32; the seeded bug in float64), the rest is slow
MORE_FAMILIES = ["decoder", "mha", "cells", "bilstm2", "bag", "upsample"]
FAMILIES = ISSUE_FAMILIES + MORE_FAMILIES


def _families(default):
    """(name, mode-or-dtype) parameters: the issue's families always, the others ``slow`` but for ``default``."""
    def marks(name, key):
        return [pytest.mark.slow] if name in MORE_FAMILIES and key != default else []

    return marks


_PASS_MARKS = _families(("inside", torch.float32))
_BUG_MARKS = _families(torch.float64)


@pytest.mark.parametrize("name, mode, dtype", [
    pytest.param(n, m, d, id=f"{n}-{m}-{d}", marks=_PASS_MARKS(n, (m, d)))
    for n in FAMILIES for m in ("loss=", "inside", "vjp") for d in DTYPES])
def test_family_passes(name, mode, dtype):
    body, x = _family(name, dtype)
    loss, target = _loss(body(x))
    if mode == "loss=":
        report = sg.check(body, {"x": x}, loss=loss, target=target, engine="graph")
    elif mode == "inside":
        report = sg.check(WithLoss(body, loss), {"x": x, "target": target}, engine="graph")
    else:
        report = sg.check(body, {"x": x}, engine="graph")
        assert report.meta["quantity"].startswith("vjp (3 random cotangents")
    assert report.passed, report.to_text()


class WrongAtOneEntry(torch.autograd.Function):
    """The identity, with a backward that is wrong at entry 1 of its input."""

    @staticmethod
    def forward(ctx, h):
        return h.clone()

    @staticmethod
    def backward(ctx, g):
        g = g.clone()
        g.view(-1)[1] = g.view(-1)[1] * 1.01 + 1e-3
        return g


class Bugged(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return WrongAtOneEntry.apply(self.body(x))


LOOSE = {("decoder", torch.float32): "float32 allows the post-norm decoder's head gradients ~0.5 of their size "
                                     "(three LayerNorms and two attentions of rounding, bounded entry by entry): a 1% "
                                     "bug passes unseen there, and the report says so ('Resolution: ...'); float64 "
                                     "catches it"}


@pytest.mark.parametrize("name, dtype", [pytest.param(n, d, id=f"{n}-{d}", marks=_BUG_MARKS(n, d))
                                         for n in FAMILIES for d in DTYPES])
def test_wrong_custom_layer_is_caught_and_named(name, dtype):
    body, x = _family(name, dtype)
    loss, target = _loss(body(x))
    model = Bugged(body)
    report = sg.check(model, {"x": x}, loss=loss, target=target, engine="graph")
    if (name, dtype) in LOOSE:  # documented: caught, or the report says how large a bug passes unseen
        # (caught on an AVX-512 build, whose float32 kernels the statistical allowance resolves)
        assert not report.passed or "a relative bug smaller than that passes unseen" in report.to_text(), LOOSE[name, dtype]
        return
    assert not report.passed
    # entry 1 of the (batch, outputs) output: the head's bias entry 1 % outputs is off
    k = 1 % body(x).shape[-1]
    bias = report["body.head.bias"]
    assert not bias.passed and bias.abs_index == (k,) and f"body.head.bias[{k}]" in bias.message()


class _UpcastRMSNorm(nn.Module):
    """Llama's RMSNorm: computes in float32 whatever the input's dtype, then casts back."""

    def __init__(self, d, scale=1.0):
        super().__init__()
        self.weight, self.scale = nn.Parameter(torch.linspace(0.5, 1.5, d)), scale

    def forward(self, x):
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        out = self.weight * h.to(x.dtype)
        if self.scale == 1.0:
            return out
        from symgrad.testing_ops import with_backward  # a backward off by `scale`, forward unchanged
        return with_backward(lambda t: t, lambda t, g: g * self.scale)(out)


@pytest.mark.parametrize("scale,passes", [(1.0, True), (1.01, False)])
def test_a_forward_that_casts_to_float32_inside_a_float64_check(scale, passes):
    """Note [A forward that computes in a narrower dtype]: the check takes float32's allowances."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), _UpcastRMSNorm(8, scale), nn.Linear(8, 3)).double()
    report = sg.check(model, {"input": torch.randn(4, 8, dtype=torch.float64)}, quiet=True)
    assert report.passed is passes, str(report)
    assert report.meta["dtype"] == "float32" and "casts" in report.meta["computes in"]


def test_a_cast_that_only_makes_a_mask_keeps_the_dtype():
    """``x.float() > 0`` rounds nothing that reaches a value: the check stays float64, and a bug of
    1e-6 still fails."""
    from symgrad.testing_ops import with_backward

    class Gate(nn.Module):
        def __init__(self, scale=1.0):
            super().__init__()
            self.a, self.scale = nn.Linear(8, 16), scale

        def forward(self, x):
            h = self.a(x)
            if self.scale != 1.0:
                h = with_backward(lambda t: t, lambda t, g: g * self.scale)(h)
            return (h * (h.float() > 0)).pow(2).sum()

    torch.manual_seed(0)
    x = torch.randn(4, 8, dtype=torch.float64)
    report = sg.check(Gate().double(), {"x": x}, quiet=True)
    assert report.passed and report.meta["dtype"] == "float64", str(report)
    assert not sg.check(Gate(1 + 1e-6).double(), {"x": x}, quiet=True).passed


@pytest.mark.parametrize("style", ["parametrizations", "hooks"])
@pytest.mark.parametrize("dtype, delta", [(torch.float64, 1e-6), (torch.float32, 1e-3)])
def test_spectral_norm_in_training_mode(style, dtype, delta):
    """spectral_norm's power iteration writes its u and v buffers in place under no_grad each training
    forward: functionalization refused the write, and a GAN discriminator in training mode could not be
    checked.  The trace is then taken without functionalization (the write read as written, u and v
    constants to autograd as they are to torch); the buffers are put back after the check."""
    from .families import bugged

    sn = nn.utils.parametrizations.spectral_norm if style == "parametrizations" else nn.utils.spectral_norm
    torch.manual_seed(0)
    model = nn.Sequential(sn(nn.Linear(6, 5)), nn.LeakyReLU(0.2), sn(nn.Linear(5, 1))).to(dtype).train()
    x, t = torch.randn(4, 6, dtype=dtype), torch.randn(4, 1, dtype=dtype)
    before = {n: b.clone() for n, b in model.named_buffers()}
    assert sg.check(model, {"x": x}, loss=nn.MSELoss(), target=t, quiet=True).passed
    assert all(torch.equal(b, before[n]) for n, b in model.named_buffers())
    assert not sg.check(bugged(model, "scaled", 1 + delta), {"x": x}, loss=nn.MSELoss(), target=t, quiet=True).passed
