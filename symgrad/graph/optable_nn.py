"""Rows of the op table (``symgrad.graph.optable``): nn layers as functions, losses, and modules."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .opcase import OpCase, fixed, ints, mask, normal, positive, uniform

__all__ = ["ROWS"]


def fnn(name, fn, inputs, **kw):
    return OpCase(name, fn, inputs, "nn", **kw)


def loss(name, fn, inputs, **kw):
    return OpCase(name, fn, inputs, "loss", **kw)


def mod(name, factory, inputs, **kw):
    """A module row: the module's parameters are checked along with its float inputs."""
    return OpCase(name, None, inputs, "module", module=factory, **kw)


IMG = {"x": normal(2, 3, 5, 5)}
SEQ = {"x": normal(2, 3, 7)}

ROWS = [
    fnn("linear", F.linear, {"x": normal(4, 3), "w": normal(2, 3), "b": normal(2)}),
    fnn("bilinear", F.bilinear, {"x": normal(4, 3), "y": normal(4, 2), "w": normal(5, 3, 2), "b": normal(5)}),
    fnn("conv1d", lambda x, w, b: F.conv1d(x, w, b, padding=1), {**SEQ, "w": normal(4, 3, 3), "b": normal(4)}),
    fnn("conv1d stride dilation", lambda x, w: F.conv1d(x, w, stride=2, dilation=2), {**SEQ, "w": normal(2, 3, 2)}),
    fnn("conv1d groups", lambda x, w: F.conv1d(x, w, groups=3), {"x": normal(2, 6, 5), "w": normal(3, 2, 3)}),
    fnn("conv2d", lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1), {**IMG, "w": normal(4, 3, 3, 3), "b": normal(4)}),
    fnn("conv2d dilation groups", lambda x, w: F.conv2d(x, w, dilation=2, groups=3), {"x": normal(1, 3, 6, 6), "w": normal(3, 1, 2, 2)}),
    fnn("conv2d padding=same", lambda x, w: F.conv2d(x, w, padding="same"), {**IMG, "w": normal(2, 3, 3, 2)}),
    fnn("conv3d", lambda x, w: F.conv3d(x, w, padding=1), {"x": normal(1, 2, 3, 3, 3), "w": normal(2, 2, 2, 2, 2)}),
    fnn("conv_transpose1d", lambda x, w, b: F.conv_transpose1d(x, w, b, stride=2, padding=1, output_padding=1),
        {**SEQ, "w": normal(3, 2, 3), "b": normal(2)}),
    fnn("conv_transpose1d groups dilation", lambda x, w: F.conv_transpose1d(x, w, groups=3, dilation=2),
        {"x": normal(1, 3, 4), "w": normal(3, 2, 2)}),
    fnn("conv_transpose2d", lambda x, w: F.conv_transpose2d(x, w, stride=2, padding=1),
        {"x": normal(1, 3, 3, 3), "w": normal(3, 2, 3, 3)}),
    fnn("max_pool1d", lambda x: F.max_pool1d(x, 2), SEQ),
    fnn("max_pool1d stride padding", lambda x: F.max_pool1d(x, 3, 2, padding=1), SEQ),
    fnn("max_pool2d", lambda x: F.max_pool2d(x, 2), IMG),
    fnn("max_pool2d stride padding ceil", lambda x: F.max_pool2d(x, 3, 2, padding=1, ceil_mode=True), IMG),
    fnn("max_pool2d with ties", lambda x: F.max_pool2d(x, 2),
        {"x": fixed([[[[1.0, 1.0, 0.0, 2.0], [0.5, 1.0, 2.0, 2.0]]]])}, notes="ties are kinks"),
    fnn("avg_pool1d", lambda x: F.avg_pool1d(x, 3, 2, padding=1), SEQ),
    fnn("avg_pool2d", lambda x: F.avg_pool2d(x, 2), IMG),
    fnn("avg_pool2d padding no count_include_pad", lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False), IMG),
    fnn("adaptive_avg_pool1d", lambda x: F.adaptive_avg_pool1d(x, 3), SEQ),
    fnn("adaptive_avg_pool2d", lambda x: F.adaptive_avg_pool2d(x, (2, 3)), IMG),
    fnn("adaptive_avg_pool2d to 1", lambda x: F.adaptive_avg_pool2d(x, 1), IMG),
    fnn("avg_pool3d", lambda x: F.avg_pool3d(x, 2), {"x": normal(1, 2, 4, 4, 4)}),
    fnn("max_pool3d", lambda x: F.max_pool3d(x, 2, 1), {"x": normal(1, 2, 3, 3, 3)}),
    fnn("adaptive_avg_pool3d", lambda x: F.adaptive_avg_pool3d(x, (2, 2, 3)), {"x": normal(1, 2, 3, 4, 5)}),
    fnn("adaptive_max_pool1d", lambda x: F.adaptive_max_pool1d(x, 3), SEQ),
    fnn("adaptive_max_pool2d", lambda x: F.adaptive_max_pool2d(x, (2, 3)), IMG),
    fnn("lp_pool1d", lambda x: F.lp_pool1d(x, 2.0, 2), {"x": positive(2, 3, 6)}),
    fnn("fractional_max_pool2d (samples given)",
        lambda x: F.fractional_max_pool2d(x, 2, output_size=3, _random_samples=torch.tensor(
            [[[0.3, 0.7], [0.5, 0.1], [0.9, 0.2]]] * 2, dtype=x.dtype)), IMG),
    fnn("layer_norm", lambda x, w, b: F.layer_norm(x, (5,), w, b), {"x": normal(3, 5), "w": normal(5), "b": normal(5)}),
    fnn("layer_norm 2 dims", lambda x: F.layer_norm(x, (3, 4)), {"x": normal(2, 3, 4)}),
    fnn("group_norm", lambda x, w, b: F.group_norm(x, 2, w, b), {"x": normal(2, 4, 3), "w": normal(4), "b": normal(4)}),
    fnn("batch_norm eval", lambda x, w, b: F.batch_norm(x, torch.tensor([0.1, -0.2, 0.3], dtype=x.dtype),
                                                         torch.tensor([1.5, 0.5, 2.0], dtype=x.dtype), w, b),
        {"x": normal(4, 3), "w": normal(3), "b": normal(3)}),
    fnn("batch_norm training (functional)", lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
        {"x": normal(4, 3, 2), "w": normal(3), "b": normal(3)}),
    fnn("instance_norm", lambda x: F.instance_norm(x), {"x": normal(2, 3, 5)}),
    fnn("rms_norm", lambda x, w: F.rms_norm(x, (5,), w), {"x": normal(3, 5), "w": normal(5)}),
    fnn("local_response_norm", lambda x: F.local_response_norm(x, 2), {"x": normal(2, 4, 3)}),
    fnn("embedding", lambda w, i: F.embedding(i, w), {"w": normal(5, 3), "i": ints(5, 2, 4)}),
    fnn("embedding padding_idx", lambda w, i: F.embedding(i, w, padding_idx=1),
        {"w": normal(5, 3), "i": fixed([[1, 2, 1], [0, 4, 3]])}, notes="rows at padding_idx get no gradient (torch's definition)"),
    fnn("embedding_bag mean", lambda w, i, o: F.embedding_bag(i, w, o, mode="mean"),
        {"w": normal(6, 3), "i": ints(6, 7), "o": fixed([0, 3, 5])}),
    fnn("embedding_bag sum", lambda w, i: F.embedding_bag(i, w, mode="sum"), {"w": normal(6, 3), "i": ints(6, 2, 3)}),
    fnn("embedding_bag max", lambda w, i: F.embedding_bag(i, w, mode="max"), {"w": normal(6, 3), "i": fixed([[0, 2, 5], [1, 3, 4]])}),
    fnn("embedding_bag per_sample_weights", lambda w, i, o, p: F.embedding_bag(i, w, o, mode="sum", per_sample_weights=p),
        {"w": normal(6, 3), "i": ints(6, 7), "o": fixed([0, 3, 5]), "p": normal(7)}),
    fnn("one_hot matmul", lambda w, i: F.one_hot(i, 5).to(w.dtype) @ w, {"w": normal(5, 3), "i": ints(5, 4)},
        notes="the one-hot matrix is integer data (no derivative); the rest of the model is checked"),
    fnn("scaled_dot_product_attention", F.scaled_dot_product_attention,
        {"q": normal(2, 3, 4), "k": normal(2, 5, 4), "v": normal(2, 5, 3)}),
    fnn("sdpa causal", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        {"q": normal(1, 2, 4, 3), "k": normal(1, 2, 4, 3), "v": normal(1, 2, 4, 3)}),
    fnn("sdpa bool mask", lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m | torch.eye(4, 5, dtype=torch.bool)),
        {"q": normal(2, 4, 3), "k": normal(2, 5, 3), "v": normal(2, 5, 3), "m": mask(4, 5)}),
    fnn("sdpa float mask", lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
        {"q": normal(2, 4, 3), "k": normal(2, 5, 3), "v": normal(2, 5, 3), "m": normal(4, 5)}),
    fnn("dropout eval", lambda x: F.dropout(x, 0.5, training=False), {"x": normal(3, 4)}),
    fnn("alpha_dropout eval", lambda x: F.alpha_dropout(x, 0.5, training=False), {"x": normal(3, 4)}),
]

C = {"x": normal(4, 5)}
ROWS += [
    loss("cross_entropy", F.cross_entropy, {**C, "t": ints(5, 4)}),
    loss("cross_entropy probabilities", lambda x, p: F.cross_entropy(x, p.softmax(1)), {**C, "p": normal(4, 5)}),
    loss("cross_entropy weight", lambda x, t: F.cross_entropy(x, t, weight=torch.linspace(0.5, 2, 5, dtype=x.dtype)),
         {**C, "t": ints(5, 4)}),
    loss("cross_entropy ignore_index", lambda x, t: F.cross_entropy(x, t, ignore_index=2),
         {**C, "t": fixed([0, 2, 4, 1])}),
    loss("cross_entropy label_smoothing", lambda x, t: F.cross_entropy(x, t, label_smoothing=0.1), {**C, "t": ints(5, 4)}),
    loss("cross_entropy 2d", F.cross_entropy, {"x": normal(2, 3, 2, 2), "t": ints(3, 2, 2, 2)}),
    loss("cross_entropy sum", lambda x, t: F.cross_entropy(x, t, reduction="sum"), {**C, "t": ints(5, 4)}),
    loss("nll_loss", lambda x, t: F.nll_loss(x.log_softmax(1), t), {**C, "t": ints(5, 4)}),
    loss("nll_loss none", lambda x, t: F.nll_loss(x, t, reduction="none"), {**C, "t": ints(5, 4)}),
    loss("mse_loss", F.mse_loss, {"x": normal(3, 4), "y": normal(3, 4)}),
    loss("l1_loss", F.l1_loss, {"x": normal(3, 4), "y": normal(3, 4)}),
    loss("smooth_l1_loss", lambda x, y: F.smooth_l1_loss(x, y, beta=0.5), {"x": normal(3, 4), "y": normal(3, 4)}),
    loss("huber_loss", lambda x, y: F.huber_loss(x, y, delta=0.7), {"x": normal(3, 4), "y": normal(3, 4)}),
    loss("kl_div", lambda x, y: F.kl_div(x.log_softmax(1), y.softmax(1), reduction="batchmean"), C | {"y": normal(4, 5)}),
    loss("kl_div log_target", lambda x, y: F.kl_div(x, y, reduction="sum", log_target=True), C | {"y": normal(4, 5)}),
    loss("binary_cross_entropy", F.binary_cross_entropy, {"p": uniform(0.1, 0.9, 3, 4), "y": uniform(0, 1, 3, 4)}),
    loss("binary_cross_entropy weight", lambda p, y, w: F.binary_cross_entropy(p, y, w),
         {"p": uniform(0.1, 0.9, 3, 4), "y": uniform(0, 1, 3, 4), "w": positive(3, 4)}, wrt=("p", "y"),
         notes="torch has no derivative for weight"),
    loss("bce_with_logits", F.binary_cross_entropy_with_logits, {"x": normal(3, 4), "y": uniform(0, 1, 3, 4)}),
    loss("bce_with_logits pos_weight", lambda x, y, p: F.binary_cross_entropy_with_logits(x, y, pos_weight=p),
         {"x": normal(3, 4), "y": uniform(0, 1, 3, 4), "p": positive(4)}, wrt=("x", "y"),
         notes="torch has no derivative for pos_weight"),
    loss("poisson_nll_loss", F.poisson_nll_loss, {"x": normal(3, 4), "y": positive(3, 4)}),
    loss("poisson_nll_loss no log_input full", lambda x, y: F.poisson_nll_loss(x, y, log_input=False, full=True),
         {"x": positive(3, 4), "y": uniform(1.5, 4, 3, 4)}),
    loss("gaussian_nll_loss", F.gaussian_nll_loss, {"x": normal(3, 4), "y": normal(3, 4), "v": positive(3, 4)},
         notes="its Python test any(var < 0) is traced at the checked values (Note [Value-dependent branches])"),
    loss("cosine_embedding_loss", lambda x, y, t: F.cosine_embedding_loss(x, y, t, margin=0.1),
         {"x": normal(4, 5), "y": normal(4, 5), "t": fixed([1, -1, 1, -1])}),
    loss("margin_ranking_loss", lambda x, y, t: F.margin_ranking_loss(x, y, t, margin=0.2),
         {"x": normal(6), "y": normal(6), "t": fixed([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])}),
    loss("triplet_margin_loss", F.triplet_margin_loss,
         {"anchor": normal(4, 5), "positive": normal(4, 5), "negative": normal(4, 5)}),
    loss("hinge_embedding_loss", lambda x, t: F.hinge_embedding_loss(x, t, margin=1.5),
         {"x": positive(6), "t": fixed([1.0, -1.0, 1.0, -1.0, -1.0, 1.0])}),
    loss("multilabel_soft_margin_loss", lambda x, y: F.multilabel_soft_margin_loss(x, y.to(x.dtype)),
         {"x": normal(3, 4), "y": mask(3, 4)}),
    loss("soft_margin_loss", F.soft_margin_loss, {"x": normal(3, 4), "y": fixed([[1.0, -1.0, 1.0, 1.0]] * 3)}, wrt=("x",),
         notes="torch has no derivative for the target"),
    loss("multi_margin_loss", F.multi_margin_loss, {**C, "t": ints(5, 4)}),
    loss("multilabel_margin_loss", F.multilabel_margin_loss, {"x": normal(2, 4), "t": fixed([[3, 0, -1, 1], [1, 2, 3, -1]])},
         notes="symgrad's own definition: torch 2.13's decomposition of it computes another value (1.349 vs 0.918 here)"),
    loss("multilabel_margin_loss none", lambda x, t: F.multilabel_margin_loss(x, t, reduction="none"),
         {"x": normal(3, 5), "t": fixed([[4, -1, 0, 0, 0], [0, 1, 2, 3, 4], [2, 1, -1, 3, 3]])}),
]

ROWS += [
    mod("nn.Linear", lambda: nn.Linear(4, 3), {"x": normal(2, 4)}),
    mod("nn.Conv2d", lambda: nn.Conv2d(2, 3, 3, padding=1), {"x": normal(1, 2, 4, 4)}),
    mod("nn.BatchNorm2d eval", lambda: nn.BatchNorm2d(3).eval(), {"x": normal(2, 3, 2, 2)}),
    mod("nn.LayerNorm", lambda: nn.LayerNorm(4), {"x": normal(3, 4)}),
    mod("nn.GroupNorm", lambda: nn.GroupNorm(2, 4), {"x": normal(2, 4, 3)}),
    mod("nn.InstanceNorm1d affine", lambda: nn.InstanceNorm1d(3, affine=True), {"x": normal(2, 3, 5)}),
    mod("nn.RMSNorm", lambda: nn.RMSNorm(4), {"x": normal(3, 4)}),
    mod("nn.Embedding", lambda: nn.Embedding(6, 3, padding_idx=0), {"i": fixed([[0, 1, 5], [2, 0, 4]])}),
    mod("nn.MultiheadAttention", lambda: _mha(), {"x": normal(2, 4, 4)}),
    mod("nn.RNN", lambda: nn.RNN(3, 4, num_layers=2, batch_first=True), {"x": normal(2, 3, 3)}),
    mod("nn.LSTM bidirectional", lambda: nn.LSTM(3, 2, bidirectional=True), {"x": normal(3, 2, 3)}),
    mod("nn.GRU", lambda: nn.GRU(3, 4, batch_first=True), {"x": normal(2, 3, 3)}),
    mod("nn.LSTM 2 layers batch_first", lambda: nn.LSTM(3, 2, num_layers=2, batch_first=True), {"x": normal(2, 3, 3)}),
    mod("nn.GRU bidirectional", lambda: nn.GRU(2, 3, bidirectional=True), {"x": normal(3, 2, 2)}),
    mod("nn.RNNCell", lambda: nn.RNNCell(3, 4), {"x": normal(2, 3)}),
    mod("nn.LSTMCell", lambda: nn.LSTMCell(3, 4), {"x": normal(2, 3)}),
    mod("nn.GRUCell", lambda: nn.GRUCell(3, 4), {"x": normal(2, 3)}),
    mod("nn.TransformerEncoderLayer eval", lambda: nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0, batch_first=True).eval(),
        {"x": normal(2, 3, 4)}),
    mod("nn.TransformerDecoderLayer eval", lambda: _decoder(), {"x": normal(2, 3, 4)}),
    mod("nn.PReLU", lambda: nn.PReLU(3), {"x": normal(2, 3, 2)}),
    mod("nn.Bilinear", lambda: nn.Bilinear(3, 2, 4), {"x": normal(2, 3), "y": normal(2, 2)}),
]


class _SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


def _mha():
    return _SelfAttention().eval()


class _Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerDecoderLayer(4, 2, 8, dropout=0.0, batch_first=True)

    def forward(self, x):
        return self.layer(x, x.flip(1))


def _decoder():
    return _Decoder().eval()

