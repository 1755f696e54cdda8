"""The model families of ``benchmarks/model_families.py`` and ``tests/graph/test_model_families.py``: ``FAMILIES[name](dtype, seed)`` returns
``(model, inputs, check_kwargs)``; ``bugged(model, kind, factor)`` seeds a wrong backward."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from symgrad.testing_ops import with_backward

__all__ = ["FAMILIES", "TORCH_BUGS", "bugged"]

FAMILIES = {}
# families where torch's own derivative is wrong: a FAIL on the unmodified model is the right verdict
TORCH_BUGS = {
    "logcumsumexp": "torch's logcumsumexp JVP divides by cumsum(exp(x - max)) + 1e-13 (FunctionsManual.cpp): "
                    "biased wherever the running sum is small; x = [-30, 0] gives 0.48 for 1",
}


def family(fn):
    FAMILIES[fn.__name__] = fn
    return fn


def _rand(seed, dtype):
    g = torch.Generator().manual_seed(1000 + seed)
    return lambda *s: torch.randn(*s, generator=g, dtype=dtype)


class Head(nn.Module):
    """``body`` then a linear head on the flattened output (small output, parameters after)."""

    def __init__(self, body, features, out=3):
        super().__init__()
        self.body, self.head = body, nn.Linear(features, out)

    def forward(self, x):
        return self.head(torch.tanh(self.body(x)).flatten(1))


def _head(body, x, dtype, out=3):
    n = body.to(dtype)(x).flatten(1).shape[1]
    return Head(body, n, out).to(dtype)


def _simple(body_fn, shape):
    def build(dtype, seed):
        x = _rand(seed, dtype)(*shape)
        return _head(body_fn(), x, dtype), {"x": x}, {}
    return build


for _name, _body, _shape in [
    ("conv1d", lambda: nn.Conv1d(2, 4, 3, stride=2, padding=1, dilation=2), (2, 2, 9)),
    ("conv3d", lambda: nn.Conv3d(2, 3, 2, stride=1, padding=1), (1, 2, 3, 3, 3)),
    ("convT1d", lambda: nn.ConvTranspose1d(4, 4, 3, stride=2, output_padding=1, groups=2, dilation=2), (2, 4, 5)),
    ("convT2d", lambda: nn.ConvTranspose2d(2, 4, 3, stride=2, padding=1, output_padding=1, groups=2), (2, 2, 3, 3)),
    ("groupnorm", lambda: nn.Sequential(nn.Conv2d(4, 4, 1), nn.GroupNorm(2, 4)), (2, 4, 3, 3)),
    ("instancenorm", lambda: nn.Sequential(nn.Conv2d(2, 3, 1), nn.InstanceNorm2d(3, affine=True)), (2, 2, 3, 3)),
    ("batchnorm_train", lambda: nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3)).train(), (3, 2, 3, 3)),
    ("batchnorm_eval", lambda: nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3)).eval(), (3, 2, 3, 3)),
    ("batchnorm1d_train", lambda: nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5)).train(), (6, 4)),
    ("layernorm_noaffine", lambda: nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6, elementwise_affine=False)), (3, 4)),
    ("pixelshuffle", lambda: nn.Sequential(nn.Conv2d(2, 8, 1), nn.PixelShuffle(2)), (2, 2, 2, 2)),
    ("pixelunshuffle", lambda: nn.Sequential(nn.Conv2d(2, 2, 1), nn.PixelUnshuffle(2)), (2, 2, 4, 4)),
    ("upsample_nearest", lambda: nn.Sequential(nn.Conv2d(2, 2, 1), nn.Upsample(scale_factor=2, mode="nearest")), (1, 2, 3, 3)),
    ("upsample_bilinear_ac", lambda: nn.Sequential(nn.Conv2d(2, 2, 1), nn.Upsample(size=(5, 4), mode="bilinear", align_corners=True)), (1, 2, 3, 3)),
    ("adaptive_avg", lambda: nn.Sequential(nn.Conv2d(2, 3, 1), nn.AdaptiveAvgPool2d((2, 3))), (2, 2, 5, 7)),
    ("adaptive_max", lambda: nn.Sequential(nn.Conv2d(2, 3, 1), nn.AdaptiveMaxPool2d(2)), (2, 2, 5, 5)),
    ("avgpool_ceil", lambda: nn.Sequential(nn.Conv2d(2, 2, 1), nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False)), (2, 2, 6, 6)),
    ("maxpool_ceil_dil", lambda: nn.Sequential(nn.Conv2d(2, 2, 1), nn.MaxPool2d(2, 2, ceil_mode=True, dilation=1)), (2, 2, 5, 5)),
    ("maxpool1d", lambda: nn.Sequential(nn.Conv1d(2, 2, 1), nn.MaxPool1d(3, 2, padding=1)), (2, 2, 7)),
    ("dropout_eval", lambda: nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5)).eval(), (3, 4)),
    ("prelu", lambda: nn.Sequential(nn.Linear(4, 6), nn.PReLU(6, 0.2)), (3, 4)),
    ("hardswish", lambda: nn.Sequential(nn.Linear(4, 6), nn.Hardswish()), (3, 4)),
    ("mish", lambda: nn.Sequential(nn.Linear(4, 6), nn.Mish()), (3, 4)),
    ("silu", lambda: nn.Sequential(nn.Linear(4, 6), nn.SiLU()), (3, 4)),
    ("gelu_tanh", lambda: nn.Sequential(nn.Linear(4, 6), nn.GELU(approximate="tanh")), (3, 4)),
    ("softplus_beta", lambda: nn.Sequential(nn.Linear(4, 6), nn.Softplus(beta=2.0, threshold=1.0)), (3, 4)),
    ("elu_selu_celu", lambda: nn.Sequential(nn.Linear(4, 6), nn.ELU(0.7), nn.Linear(6, 6), nn.SELU(), nn.CELU(0.5)), (3, 4)),
    ("misc_acts", lambda: nn.Sequential(nn.Linear(4, 6), nn.Hardsigmoid(), nn.Linear(6, 6), nn.LogSigmoid(),
                                        nn.Softsign(), nn.Tanhshrink(), nn.Hardtanh(-0.5, 0.5)), (3, 4)),
    ("fold_unfold", lambda: nn.Sequential(nn.Conv2d(2, 2, 1), nn.Unfold(2, stride=1), nn.Fold((4, 4), 2)), (1, 2, 4, 4)),
    ("depthwise_sep", lambda: nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 6, 1), nn.ReLU6()), (2, 4, 4, 4)),
    ("adaptive_avg1d", lambda: nn.Sequential(nn.Conv1d(2, 3, 1), nn.AdaptiveAvgPool1d(3), nn.Flatten(), nn.Linear(9, 4)), (2, 2, 7)),
]:
    FAMILIES[_name] = _simple(_body, _shape)


class TiedMaxPool(nn.Module):
    """A per-channel positive scale then max pooling over inputs with many equal values (ties)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([1.5, 0.5]))
        self.head = nn.Linear(2 * 2 * 2, 3)

    def forward(self, x):
        h = F.max_pool2d(x * self.scale.view(1, 2, 1, 1), 2)
        return self.head(h.flatten(1))


@family
def maxpool_ties(dtype, seed):
    x = (_rand(seed, dtype)(2, 2, 4, 4) * 2).round().clamp(0, 1)  # 0/1 entries: every window has ties
    return TiedMaxPool().to(dtype), {"x": x}, {}


class EmbedPad(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.head = nn.Embedding(10, 4, padding_idx=2, max_norm=None), nn.Linear(4, 3)

    def forward(self, tokens):
        return self.head(self.emb(tokens).sum(1))


@family
def embedding_pad(dtype, seed):
    return EmbedPad().to(dtype), {"tokens": torch.tensor([[3, 2, 3, 9], [1, 2, 0, 2]])}, {}


class FullTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.t = nn.Transformer(8, 2, 1, 1, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, src, tgt):
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1], dtype=src.dtype)
        return self.head(self.t(src, tgt, tgt_mask=mask, tgt_is_causal=True)[:, -1])


@family
def transformer_full(dtype, seed):
    r = _rand(seed, dtype)
    return FullTransformer().to(dtype).eval(), {"src": r(2, 3, 8), "tgt": r(2, 2, 8)}, {}


class DeepGRU(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.GRU(3, 4, num_layers=2, dropout=0.0, batch_first=True), nn.Linear(4, 2)

    def forward(self, x):
        out, h = self.rnn(x)
        return self.head(out[:, -1] + h[0])


@family
def gru_deep(dtype, seed):
    return DeepGRU().to(dtype), {"x": _rand(seed, dtype)(2, 3, 3)}, {}


class RNNTanhRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.RNN(3, 4, batch_first=True)
        self.b = nn.RNN(4, 3, nonlinearity="relu", batch_first=True)

    def forward(self, x):
        return self.b(self.a(x)[0])[0].sum(1)


@family
def rnn_relu(dtype, seed):
    return RNNTanhRelu().to(dtype), {"x": _rand(seed, dtype)(2, 3, 3)}, {}


class ResNetBlock(nn.Module):
    """A basic block with a strided 1x1 downsample, BatchNorm in train mode."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(2, 4, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.down = nn.Sequential(nn.Conv2d(2, 4, 1, stride=2, bias=False), nn.BatchNorm2d(4))
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = F.relu(self.b1(self.c1(x)))
        h = F.relu(self.b2(self.c2(h)) + self.down(x))
        return self.head(F.adaptive_avg_pool2d(h, 1).flatten(1))


@family
def resnet_block_train(dtype, seed):
    return ResNetBlock().to(dtype).train(), {"x": _rand(seed, dtype)(3, 2, 6, 6)}, {}


class TinyUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(1, 2, 3, padding=1)
        self.mid = nn.Conv2d(2, 4, 3, padding=1)
        self.up = nn.ConvTranspose2d(4, 2, 2, stride=2)
        self.out = nn.Conv2d(4, 1, 1)

    def forward(self, x):
        d = F.relu(self.down(x))
        m = F.relu(self.mid(F.max_pool2d(d, 2)))
        return self.out(torch.cat([self.up(m), d], 1))


@family
def unet(dtype, seed):
    return TinyUNet().to(dtype), {"x": _rand(seed, dtype)(1, 1, 4, 4)}, {}


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(4, 2), nn.Linear(2, 4)
        self.head = nn.Linear(4 * 9, 2)

    def forward(self, x):
        h = self.conv(x)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(h.mean((2, 3))))))
        return self.head((h * s[:, :, None, None]).flatten(1))


@family
def squeeze_excite(dtype, seed):
    return SqueezeExcite().to(dtype), {"x": _rand(seed, dtype)(2, 2, 3, 3)}, {}


class TiedTwice(nn.Module):
    """One Linear applied twice, and a head tied to the embedding's transpose inside forward."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.mix = nn.Linear(4, 4)

    def forward(self, tokens):
        h = torch.tanh(self.mix(torch.tanh(self.mix(self.emb(tokens)))))
        return h.mean(1) @ self.emb.weight.T


@family
def tied_weights(dtype, seed):
    return TiedTwice().to(dtype), {"tokens": torch.tensor([[1, 5, 2], [6, 0, 5]])}, {}


class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 2)

    def forward(self, x):
        return torch.tanh(self.a(x)), self.b(x).exp()


class DictOut(TupleOut):
    def forward(self, x):
        a, b = super().forward(x)
        return {"logits": a, "scale": b}


@family
def tuple_output(dtype, seed):
    return TupleOut().to(dtype), {"x": _rand(seed, dtype)(3, 4)}, {}


@family
def dict_output(dtype, seed):
    return DictOut().to(dtype), {"x": _rand(seed, dtype)(3, 4)}, {}


class WithBuffers(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("shift", torch.linspace(-1, 1, 4))
        self.register_buffer("mask", torch.tensor([True, False, True, True]))

    def forward(self, x):
        h = self.lin(x) - self.shift
        return torch.where(self.mask, torch.tanh(h), h.masked_fill(h > 0.5, 0.0))


@family
def buffers_where(dtype, seed):
    return WithBuffers().to(dtype), {"x": _rand(seed, dtype)(3, 4)}, {}


class IntInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x, idx, count):
        h = self.lin(x).gather(1, idx)
        return h * count.to(h.dtype)


@family
def integer_inputs(dtype, seed):
    r = _rand(seed, dtype)
    return IntInputs().to(dtype), {"x": r(3, 4), "idx": torch.tensor([[2, 0], [1, 1], [0, 2]]),
                                   "count": torch.tensor([[1, 2], [3, 0], [2, 2]])}, {}


class ScanSortTopk(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 6)

    def forward(self, x):
        h = self.lin(x)
        top, _ = h.topk(3, dim=1)
        srt, _ = h.sort(dim=1, descending=True)
        return torch.cat([h.cumsum(1), h.cumprod(1), top, srt[:, :2]], 1)


class LogCumSumExp(nn.Module):
    """A first entry 30 below the rest: torch's JVP bias (1e-13 against exp(-30)) shows in float32 too."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 6)
        self.register_buffer("offset", torch.tensor([-30.0, 0, 0, 0, 0, 0]))

    def forward(self, x):
        return (self.lin(x) + self.offset).logcumsumexp(1)


@family
def logcumsumexp(dtype, seed):
    return LogCumSumExp().to(dtype), {"x": _rand(seed, dtype)(3, 4) * 4}, {}


@family
def cumsum_topk_sort(dtype, seed):
    return ScanSortTopk().to(dtype), {"x": _rand(seed, dtype)(3, 4)}, {}


class LossInside(nn.Module):
    def __init__(self, loss, out=4):
        super().__init__()
        self.lin, self.loss = nn.Linear(3, out), loss

    def forward(self, x, target):
        return self.loss(self.lin(x), target)


def _loss_family(name, loss, target_fn, out=4):
    def build(dtype, seed):
        r = _rand(seed, dtype)
        return LossInside(loss, out).to(dtype), {"x": r(5, 3), "target": target_fn(r, dtype)}, {}
    FAMILIES[name] = build


_W = torch.tensor([0.5, 1.0, 2.0, 1.5])
_loss_family("ce_smoothing", lambda o, t: F.cross_entropy(o, t, label_smoothing=0.1), lambda r, d: torch.tensor([0, 3, 1, 1, 2]))
_loss_family("ce_ignore_weight", lambda o, t: F.cross_entropy(o, t, weight=_W.to(o.dtype), ignore_index=1),
             lambda r, d: torch.tensor([0, 3, 1, 1, 2]))
_loss_family("ce_probs", lambda o, t: F.cross_entropy(o, t, label_smoothing=0.05), lambda r, d: r(5, 4).softmax(1))
_loss_family("nll", lambda o, t: F.nll_loss(F.log_softmax(o, 1), t, reduction="sum"), lambda r, d: torch.tensor([0, 3, 1, 1, 2]))
_loss_family("bce_logits_posw", lambda o, t: F.binary_cross_entropy_with_logits(o, t, pos_weight=torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=o.dtype)),
             lambda r, d: (r(5, 4) > 0).to(d))
_loss_family("bce", lambda o, t: F.binary_cross_entropy(torch.sigmoid(o), t), lambda r, d: torch.rand(5, 4).to(d))
_loss_family("huber", lambda o, t: F.huber_loss(o, t, delta=0.5), lambda r, d: r(5, 4))
_loss_family("smooth_l1", lambda o, t: F.smooth_l1_loss(o, t, beta=0.3), lambda r, d: r(5, 4))
_loss_family("l1", lambda o, t: F.l1_loss(o, t), lambda r, d: r(5, 4))
_loss_family("kl_div", lambda o, t: F.kl_div(F.log_softmax(o, 1), t, reduction="batchmean"), lambda r, d: r(5, 4).softmax(1))
_loss_family("kl_div_logt", lambda o, t: F.kl_div(F.log_softmax(o, 1), t, reduction="sum", log_target=True),
             lambda r, d: r(5, 4).log_softmax(1))
_loss_family("poisson_nll", lambda o, t: F.poisson_nll_loss(o, t), lambda r, d: r(5, 4).abs())
_loss_family("cosine_embedding", lambda o, t: F.cosine_embedding_loss(o[:, :2], o[:, 2:], t, margin=0.1),
             lambda r, d: torch.tensor([1, -1, 1, -1, -1]))
_loss_family("margin_ranking", lambda o, t: F.margin_ranking_loss(o[:, 0], o[:, 1], t, margin=0.2),
             lambda r, d: torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0], dtype=d))
_loss_family("triplet", lambda o, t: F.triplet_margin_loss(o[:, :2], o[:, 2:4], o[:, 4:], margin=1.0) + 0 * t.sum(),
             lambda r, d: r(1), out=6)
_loss_family("multilabel_soft", lambda o, t: F.multilabel_soft_margin_loss(o, t), lambda r, d: (r(5, 4) > 0).to(d))
_loss_family("multi_margin", lambda o, t: F.multi_margin_loss(o, t), lambda r, d: torch.tensor([0, 3, 1, 1, 2]))
_loss_family("hinge_embedding", lambda o, t: F.hinge_embedding_loss(o, t), lambda r, d: torch.tensor([1.0, -1.0]).repeat(10)[:20].reshape(5, 4).to(d))
_loss_family("gaussian_nll", lambda o, t: F.gaussian_nll_loss(o[:, :2], t, o[:, 2:].exp()), lambda r, d: r(5, 2))


class CTCModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)

    def forward(self, x, targets):
        logp = self.lin(x).log_softmax(2)  # (T, N, C)
        return F.ctc_loss(logp, targets, torch.tensor([5, 5]), torch.tensor([2, 1]), blank=0)


@family
def ctc(dtype, seed):
    return CTCModel().to(dtype), {"x": _rand(seed, dtype)(5, 2, 3), "targets": torch.tensor([[1, 2], [3, 0]])}, {}


@family
def loss_kwarg_mse(dtype, seed):
    r = _rand(seed, dtype)
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.GELU(), nn.Flatten(), nn.Linear(3 * 3, 2)).to(dtype)
    return model, {"x": r(2, 2, 5)}, {"loss": F.mse_loss, "target": r(2, 2)}


@family
def loss_kwarg_ce(dtype, seed):
    r = _rand(seed, dtype)
    model = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Linear(5, 3)).to(dtype)
    return model, {"x": r(4, 4)}, {"loss": nn.CrossEntropyLoss(label_smoothing=0.1), "target": torch.tensor([0, 2, 1, 1])}


@family
def jacrev_conv(dtype, seed):
    r = _rand(seed, dtype)
    model = nn.Sequential(nn.Conv1d(1, 2, 2), nn.Tanh(), nn.Flatten()).to(dtype)
    return model, {"x": r(2, 1, 4)}, {"via": "jacrev"}


def _weight_norm(dtype, seed):
    lin = nn.utils.parametrizations.weight_norm(nn.Linear(4, 3))
    return nn.Sequential(lin, nn.Tanh()).to(dtype), {"x": _rand(seed, dtype)(3, 4)}, {}


def _spectral_norm(dtype, seed):
    lin = nn.utils.parametrizations.spectral_norm(nn.Linear(4, 3))
    return nn.Sequential(lin, nn.Tanh()).to(dtype).eval(), {"x": _rand(seed, dtype)(3, 4)}, {}


FAMILIES["weight_norm"] = _weight_norm
FAMILIES["spectral_norm_eval"] = _spectral_norm


# --- seeded bugs -------------------------------------------------------------------------------

def _identity(x):
    return x.clone()


def _backward(kind, factor):
    def scaled(x, g):
        return g * factor

    def entry(x, g):
        g = g.clone().contiguous()
        k = int(g.abs().argmax())
        g.view(-1)[k] = g.view(-1)[k] * factor
        return g

    return {"scaled": scaled, "entry": entry}[kind]


def _first_owner(model):
    """(parent, attribute name) of the first layer below ``model`` that owns parameters."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if any(True for _ in child.parameters(recurse=False)):
                return parent, name
    return None


class _Seeded(nn.Module):
    """``inner`` with its output (a tensor, or the first tensor of a tuple or dict) passed through
    ``layer`` (forward hooks are refused by symgrad, so the bug sits in a wrapping module)."""

    def __init__(self, inner, layer):
        super().__init__()
        self.inner, self.layer = inner, layer

    def __getattr__(self, name):  # the wrapped layer's weight, read by the model (tied weights)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)

    def forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            return self.layer(out)
        if isinstance(out, tuple) and isinstance(out[0], nn.utils.rnn.PackedSequence):  # an RNN on packed input
            return (out[0]._replace(data=self.layer(out[0].data)),) + out[1:]
        if isinstance(out, tuple) and isinstance(out[0], torch.Tensor):
            return (self.layer(out[0]),) + out[1:]
        if isinstance(out, dict):
            key = next(iter(out))
            return {**out, key: self.layer(out[key])}
        raise TypeError(f"cannot seed a bug into an output of type {type(out).__name__}")


def bugged(model, kind, factor):
    """``model`` with its first parameter-owning layer's output passed through a custom Function
    whose backward is wrong (``kind`` 'scaled': every entry times ``factor``; 'entry': the largest)."""
    layer = with_backward(_identity, _backward(kind, factor))
    owner = _first_owner(model)
    if owner is None:
        return _Seeded(model, layer)
    parent, name = owner
    setattr(parent, name, _Seeded(getattr(parent, name), layer))
    return model


from . import families_vision  # noqa: E402,F401 -- registers the vision families in FAMILIES
from . import families_seq  # noqa: E402,F401 -- the sequence / attention families register into FAMILIES
