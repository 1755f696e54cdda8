"""Vision and miscellaneous model families, added to ``FAMILIES`` of ``tests/graph/families.py`` (same
protocol: ``FAMILIES[name](dtype, seed)`` returns ``(model, inputs, check_kwargs)``).

Spatial transformers (``affine_grid`` + ``grid_sample``), interpolation modes, convolution padding modes
and memory formats, the less common pooling layers, activations and heads, and small architectures
(ConvNeXt, MobileNetV3, ViT patch embedding, a VAE, a flow layer with ``slogdet``, an orthogonal
parametrization, ``no_grad``/``detach`` inside forward, training-mode dropout)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .families import FAMILIES, _head, _rand

__all__ = ["VISION", "REFUSED_VISION", "FLOAT32_LIMITS"]

VISION: list[str] = []  # the names this file adds, in order
# refused with a message naming cause and fix (the words the message must hold)
REFUSED_VISION = {
    "dropout_train": "model.eval()",  # torch draws a new mask on every call
    "fractional_maxpool_drawn": "draws random numbers",  # torch draws new samples on every call
}
# float32 checks whose seeded 1e-3 bug is below what the rounding bounds can resolve, said in the report
# (none now: the STN with bicubic sampling was one until its reruns kept grid corners' integer sums
# exact, Note [Exact integer sums] in symgrad/graph/scalar.py)
FLOAT32_LIMITS: dict = {}


def _add(name, build):
    FAMILIES[name] = build
    VISION.append(name)


def family(fn):
    _add(fn.__name__, fn)
    return fn


def _simple(body_fn, shape):
    def build(dtype, seed):
        torch.manual_seed(seed)
        x = _rand(seed, dtype)(*shape)
        return _head(body_fn(), x, dtype), {"x": x}, {}
    return build


class Lambda(nn.Module):
    """A functional op as a layer (after a 1x1 conv, so the seeded bug has a layer to sit on)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _conv_then(fn, cin=2, cout=2, dims=2):
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims](cin, cout, 1)
    return nn.Sequential(conv, Lambda(fn))


# --- interpolation, convolution padding modes, pooling, activations ------------------------------

for _name, _body, _shape in [
    ("interp_bicubic", lambda: _conv_then(lambda h: F.interpolate(h, size=(5, 4), mode="bicubic", align_corners=False)), (1, 2, 3, 3)),
    ("interp_bicubic_ac", lambda: _conv_then(lambda h: F.interpolate(h, scale_factor=1.7, mode="bicubic", align_corners=True)), (1, 2, 3, 3)),
    ("interp_trilinear", lambda: _conv_then(lambda h: F.interpolate(h, size=(3, 4, 3), mode="trilinear"), dims=3), (1, 2, 2, 2, 2)),
    ("interp_area", lambda: _conv_then(lambda h: F.interpolate(h, size=(2, 3), mode="area")), (1, 2, 5, 7)),
    ("interp_nearest_exact", lambda: _conv_then(lambda h: F.interpolate(h, scale_factor=1.5, mode="nearest-exact")), (1, 2, 3, 4)),
    ("interp_bilinear_aa", lambda: _conv_then(lambda h: F.interpolate(h, size=(3, 2), mode="bilinear", antialias=True)), (1, 2, 6, 5)),
    ("interp_bicubic_aa", lambda: _conv_then(lambda h: F.interpolate(h, size=(2, 3), mode="bicubic", antialias=True)), (1, 2, 5, 6)),
    ("interp_bilinear_frac", lambda: _conv_then(lambda h: F.interpolate(h, scale_factor=1.3, mode="bilinear", recompute_scale_factor=False)), (1, 2, 4, 3)),
    ("interp_linear1d", lambda: _conv_then(lambda h: F.interpolate(h, scale_factor=2.5, mode="linear"), dims=1), (2, 2, 3)),
    ("conv_reflect", lambda: nn.Conv2d(2, 3, 3, padding=2, padding_mode="reflect"), (1, 2, 4, 5)),
    ("conv_replicate", lambda: nn.Conv2d(2, 3, 3, padding=(1, 2), padding_mode="replicate"), (1, 2, 4, 4)),
    ("conv_circular", lambda: nn.Conv1d(2, 3, 3, padding=2, padding_mode="circular"), (2, 2, 5)),
    ("conv_same_dilated", lambda: nn.Conv2d(2, 4, 3, padding="same", dilation=2, groups=2), (1, 2, 5, 5)),
    ("convT2d_dil_groups", lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, dilation=2), (1, 4, 3, 3)),
    ("convT3d", lambda: nn.ConvTranspose3d(2, 2, 2, stride=(1, 2, 1), padding=0), (1, 2, 2, 2, 2)),
    ("lppool2d", lambda: _conv_then(nn.LPPool2d(2, 2)), (2, 2, 4, 4)),
    ("lppool1d_p3", lambda: nn.Sequential(nn.Conv1d(2, 2, 1), nn.Softplus(), nn.LPPool1d(3, 2)), (2, 2, 6)),
    ("adaptive_max1d", lambda: _conv_then(nn.AdaptiveMaxPool1d(3), dims=1), (2, 2, 7)),
    ("adaptive_max3d", lambda: _conv_then(nn.AdaptiveMaxPool3d((2, 1, 2)), dims=3), (1, 2, 3, 3, 3)),
    ("avgpool_divisor", lambda: _conv_then(nn.AvgPool2d(2, 1, padding=1, divisor_override=3)), (1, 2, 3, 3)),
    ("avgpool1d_nopad", lambda: _conv_then(nn.AvgPool1d(3, 2, padding=1, count_include_pad=False), dims=1), (2, 2, 6)),
    ("maxpool3d", lambda: _conv_then(nn.MaxPool3d(2, 1), dims=3), (1, 2, 3, 3, 3)),
    ("lrn", lambda: _conv_then(nn.LocalResponseNorm(3, alpha=0.1, beta=0.75, k=1.0), cout=5), (1, 2, 3, 3)),
    ("softmax2d", lambda: _conv_then(nn.Softmax2d(), cout=3), (2, 2, 3, 3)),
    ("shrinks", lambda: nn.Sequential(nn.Linear(4, 8), nn.Hardshrink(0.3), nn.Linear(8, 8), nn.Softshrink(0.2),
                                      nn.Linear(8, 8), nn.Threshold(0.1, -0.5), nn.Tanhshrink()), (3, 4)),
    ("rrelu_eval", lambda: nn.Sequential(nn.Linear(4, 6), nn.RReLU(0.1, 0.3)).eval(), (3, 4)),
    ("glu_softmin", lambda: nn.Sequential(nn.Linear(4, 8), nn.GLU(1), nn.Softmin(1), nn.Linear(4, 4), nn.LogSigmoid()), (3, 4)),
    ("zeropad_constpad", lambda: nn.Sequential(nn.Conv2d(2, 2, 1), nn.ZeroPad2d((1, 0, 2, 1)), nn.ConstantPad2d(1, 0.5),
                                               nn.ReflectionPad2d(1), nn.ReplicationPad2d((0, 1, 1, 0))), (1, 2, 3, 3)),
    ("channel_shuffle", lambda: nn.Sequential(nn.Conv2d(2, 4, 1), nn.ChannelShuffle(2)), (1, 2, 2, 3)),
]:
    _add(_name, _simple(_body, _shape))


# --- spatial transformer --------------------------------------------------------------------------

class SpatialTransformer(nn.Module):
    """theta from a linear localisation net (near the identity), then affine_grid + grid_sample of
    features.  Nearest sampling is piecewise constant in theta (its gradient there is 0, so a bug
    seeded on the localisation net changes nothing): there the features' 1x1 conv comes first and
    carries the seeded bug."""

    def __init__(self, mode, padding, align):
        super().__init__()
        if mode == "nearest":
            self.feat = nn.Conv2d(2, 2, 1)
        self.loc = nn.Linear(2 * 4 * 4, 6)
        if mode != "nearest":
            self.feat = nn.Conv2d(2, 2, 1)
        with torch.no_grad():
            self.loc.weight.mul_(0.1)
            self.loc.bias.copy_(torch.tensor([0.9, 0.1, 0.05, -0.1, 1.1, -0.05]))
        self.mode, self.padding, self.align = mode, padding, align
        self.head = nn.Linear(2 * 3 * 5, 3)

    def forward(self, x):
        theta = self.loc(x.flatten(1)).view(-1, 2, 3)
        grid = F.affine_grid(theta, [x.shape[0], 2, 3, 5], align_corners=self.align)
        y = F.grid_sample(self.feat(x), grid, mode=self.mode, padding_mode=self.padding, align_corners=self.align)
        return self.head(y.flatten(1))


def _stn(mode, padding, align):
    def build(dtype, seed):
        torch.manual_seed(seed)
        return SpatialTransformer(mode, padding, align).to(dtype), {"x": _rand(seed, dtype)(2, 2, 4, 4)}, {}
    return build


for _mode, _pad, _align in [("bilinear", "zeros", False), ("bilinear", "border", True),
                            ("bilinear", "reflection", False), ("nearest", "zeros", True),
                            ("bicubic", "zeros", False), ("nearest", "reflection", False)]:
    _add(f"stn_{_mode}_{_pad}_{'ac' if _align else 'nac'}", _stn(_mode, _pad, _align))


class GridSample3d(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 1)
        self.theta = nn.Parameter(torch.tensor([[[0.9, 0.1, 0.0, 0.05], [0.0, 1.0, 0.1, -0.1], [0.1, 0.0, 0.8, 0.0]]]))

    def forward(self, x):
        h = self.conv(x)
        grid = F.affine_grid(self.theta.expand(x.shape[0], 3, 4), [x.shape[0], 2, 2, 3, 2], align_corners=False)
        return F.grid_sample(h, grid, mode="bilinear", align_corners=False).flatten(1)


@family
def grid_sample_3d(dtype, seed):
    torch.manual_seed(seed)
    return GridSample3d().to(dtype), {"x": _rand(seed, dtype)(1, 1, 3, 3, 3)}, {}


# --- layers with indices, random samples, two inputs ----------------------------------------------

class PoolUnpool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.out = nn.Conv2d(2, 2, 1), nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x):
        h, idx = F.max_pool2d(self.conv(x), 2, return_indices=True)
        return self.out(F.max_unpool2d(torch.tanh(h), idx, 2, output_size=x.shape[-2:])).flatten(1)


@family
def max_unpool(dtype, seed):
    torch.manual_seed(seed)
    return PoolUnpool().to(dtype), {"x": _rand(seed, dtype)(2, 2, 4, 4)}, {}


class FractionalPool(nn.Module):
    """FractionalMaxPool2d with its random samples fixed in a buffer (torch draws them otherwise)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)
        self.register_buffer("samples", torch.tensor([[[0.3, 0.7], [0.5, 0.1]]]).expand(2, 2, 2).clone())
        self.head = nn.Linear(2 * 3 * 3, 3)

    def forward(self, x):
        h = F.fractional_max_pool2d(self.conv(x), 2, output_size=3, _random_samples=self.samples.to(x.dtype))
        return self.head(h.flatten(1))


@family
def fractional_maxpool(dtype, seed):
    torch.manual_seed(seed)
    return FractionalPool().to(dtype), {"x": _rand(seed, dtype)(2, 2, 5, 5)}, {}


class BilinearHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 5)
        self.bil = nn.Bilinear(3, 5, 2)

    def forward(self, x):
        return self.bil(torch.tanh(self.a(x)), self.b(x))


@family
def bilinear(dtype, seed):
    torch.manual_seed(seed)
    return BilinearHead().to(dtype), {"x": _rand(seed, dtype)(3, 4)}, {}


class SimilarityHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 5), nn.Linear(4, 5)
        self.cos, self.dist = nn.CosineSimilarity(dim=1), nn.PairwiseDistance(p=2.0, eps=1e-6)
        self.dist1 = nn.PairwiseDistance(p=1.5, keepdim=True)

    def forward(self, x, y):
        u, v = self.a(x), self.b(y)
        return torch.cat([self.cos(u, v)[:, None], self.dist(u, v)[:, None], self.dist1(u, v)], 1)


@family
def similarity_heads(dtype, seed):
    torch.manual_seed(seed)
    r = _rand(seed, dtype)
    return SimilarityHeads().to(dtype), {"x": r(3, 4), "y": r(3, 4)}, {}


# --- small architectures --------------------------------------------------------------------------

class ConvNeXtBlock(nn.Module):
    def __init__(self, dim=4):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pw1, self.pw2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(0.5 * torch.ones(dim))
        self.head = nn.Linear(dim, 2)

    def forward(self, x):
        h = self.dw(x).permute(0, 2, 3, 1)
        h = self.gamma * self.pw2(F.gelu(self.pw1(self.norm(h))))
        return self.head((x + h.permute(0, 3, 1, 2)).mean((2, 3)))


@family
def convnext_block(dtype, seed):
    torch.manual_seed(seed)
    return ConvNeXtBlock().to(dtype), {"x": _rand(seed, dtype)(2, 4, 3, 3)}, {}


class MobileNetV3Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.expand, self.bn1 = nn.Conv2d(3, 6, 1, bias=False), nn.BatchNorm2d(6)
        self.dw, self.bn2 = nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False), nn.BatchNorm2d(6)
        self.se1, self.se2 = nn.Conv2d(6, 2, 1), nn.Conv2d(2, 6, 1)
        self.project = nn.Conv2d(6, 3, 1)

    def forward(self, x):
        h = F.hardswish(self.bn1(self.expand(x)))
        h = F.relu6(self.bn2(self.dw(h)))
        s = F.hardsigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(h, 1)))))
        return (x + self.project(h * s)).flatten(1)


@family
def mobilenetv3_block(dtype, seed):
    torch.manual_seed(seed)
    return MobileNetV3Block().to(dtype).eval(), {"x": _rand(seed, dtype)(2, 3, 3, 3)}, {}


class ViTEmbed(nn.Module):
    def __init__(self, dim=6):
        super().__init__()
        self.patch = nn.Conv2d(2, dim, 2, stride=2)
        self.cls = nn.Parameter(0.1 * torch.ones(1, 1, dim))
        self.pos = nn.Parameter(torch.linspace(-0.2, 0.2, 5 * dim).view(1, 5, dim))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 3)

    def forward(self, x):
        tok = self.patch(x).flatten(2).transpose(1, 2)
        tok = torch.cat([self.cls.expand(x.shape[0], -1, -1), tok], 1) + self.pos
        att = torch.softmax(tok @ tok.transpose(1, 2) / tok.shape[-1] ** 0.5, -1) @ tok
        return self.head(self.norm(att)[:, 0])


@family
def vit_patch_embed(dtype, seed):
    torch.manual_seed(seed)
    return ViTEmbed().to(dtype), {"x": _rand(seed, dtype)(2, 2, 4, 4)}, {}


class TinyVAE(nn.Module):
    """Encoder to (mu, logvar), z = mu + exp(logvar / 2) * eps with eps a fixed buffer, decoder; the
    reconstruction and KL terms are returned together."""

    def __init__(self):
        super().__init__()
        self.enc, self.mu, self.logvar = nn.Linear(6, 5), nn.Linear(5, 2), nn.Linear(5, 2)
        self.dec1, self.dec2 = nn.Linear(2, 5), nn.Linear(5, 6)
        self.register_buffer("eps", torch.tensor([[0.3, -1.2], [0.8, 0.1], [-0.5, 0.6]]))

    def forward(self, x):
        h = F.relu(self.enc(x))
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.exp(0.5 * logvar) * self.eps[: x.shape[0]]
        recon = torch.sigmoid(self.dec2(F.softplus(self.dec1(z))))
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), 1)
        return torch.cat([F.binary_cross_entropy(recon, x, reduction="none").sum(1, keepdim=True), kl[:, None]], 1)


@family
def vae(dtype, seed):
    torch.manual_seed(seed)
    return TinyVAE().to(dtype), {"x": torch.rand(3, 6, generator=torch.Generator().manual_seed(seed)).to(dtype)}, {}


class FlowLayer(nn.Module):
    """z = x W^T + b with log|det W| added per sample (a linear normalising flow), then a tanh coupling."""

    def __init__(self, n=3):
        super().__init__()
        self.w = nn.Parameter(torch.eye(n) + 0.3 * torch.randn(n, n))
        self.b = nn.Parameter(torch.zeros(n))
        self.s = nn.Linear(1, n - 1)

    def forward(self, x):
        z = x @ self.w.T + self.b
        sign, logdet = torch.linalg.slogdet(self.w)
        z1, z2 = z[:, :1], z[:, 1:]
        s = torch.tanh(self.s(z1))
        logp = -0.5 * (z1.pow(2).sum(1) + (z2 * s.exp()).pow(2).sum(1))
        return logp + logdet + s.sum(1) + torch.logdet(self.w @ self.w.T) * 0.25 + 0 * sign


@family
def flow_slogdet(dtype, seed):
    torch.manual_seed(seed)
    return FlowLayer().to(dtype), {"x": _rand(seed, dtype)(4, 3)}, {}


def _orthogonal(omap, shape):
    def build(dtype, seed):
        torch.manual_seed(seed)
        lin = nn.utils.parametrizations.orthogonal(nn.Linear(*shape), orthogonal_map=omap)
        model = nn.Sequential(lin, nn.Tanh(), nn.Linear(shape[1], 2)).to(dtype)
        return model, {"x": _rand(seed, dtype)(4, shape[0])}, {}
    return build


_add("orthogonal", _orthogonal(None, (3, 3)))  # square: matrix_exp (Note [Matrix exponential as a series])
_add("orthogonal_cayley", _orthogonal("cayley", (3, 3)))
_add("orthogonal_householder", _orthogonal("householder", (4, 3)))


class NoGradDetach(nn.Module):
    """A statistic computed under no_grad and a detached target inside forward (stop-gradients)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        with torch.no_grad():
            scale = h.abs().mean() + 1
        target = self.b(h).detach()
        return self.b(h / scale) - 0.5 * target.tanh()


@family
def nograd_detach(dtype, seed):
    torch.manual_seed(seed)
    return NoGradDetach().to(dtype), {"x": _rand(seed, dtype)(3, 4)}, {}


@family
def dropout_train(dtype, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5), nn.Tanh(), nn.Linear(6, 2)).to(dtype).train()
    return model, {"x": _rand(seed, dtype)(3, 4)}, {}


@family
def fractional_maxpool_drawn(dtype, seed):
    """nn.FractionalMaxPool2d drawing its samples in forward: refused (torch draws them anew on every call)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(2, 2, 1), nn.FractionalMaxPool2d(2, output_size=3), nn.Flatten(), nn.Linear(18, 2))
    return model.to(dtype), {"x": _rand(seed, dtype)(1, 2, 5, 5)}, {}


class ChannelsLast(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.c2 = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.c2(F.silu(self.c1(x.contiguous(memory_format=torch.channels_last)))).flatten(1)


@family
def channels_last(dtype, seed):
    torch.manual_seed(seed)
    model = ChannelsLast().to(dtype).to(memory_format=torch.channels_last)
    return model, {"x": _rand(seed, dtype)(2, 4, 3, 3)}, {}
