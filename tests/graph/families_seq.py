"""Sequence, attention and NLP model families for ``benchmarks/model_families.py`` (registered in
``FAMILIES`` of ``tests/graph/families.py``, which imports this module at its end): attention with
masks, decoders, rotary and ALiBi positions, LSTM variants and packed sequences, embedding bags and
renormalised embeddings, RMSNorm / SwiGLU, top-k routing, a message-passing layer, checkpointing and
in-place activations."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.utils.checkpoint import checkpoint

from .families import FAMILIES, TORCH_BUGS, _rand, family

__all__: list = []  # the families register themselves in FAMILIES


# --- attention -----------------------------------------------------------------------------------

def _causal(n, float_mask, dtype):
    upper = torch.ones(n, n, dtype=torch.bool).triu(1)
    return torch.zeros(n, n, dtype=dtype).masked_fill(upper, float("-inf")) if float_mask else upper


class MHAMasks(nn.Module):
    """Self-attention with a causal mask and a key padding mask (a padded key in one sequence)."""

    def __init__(self, float_mask, need_weights):
        super().__init__()
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)
        self.float_mask, self.need_weights = float_mask, need_weights

    def forward(self, x):
        n = x.shape[1]
        pad = torch.zeros(x.shape[0], n, dtype=torch.bool)
        pad[1, -1] = True
        if self.float_mask:
            pad = torch.zeros(pad.shape, dtype=x.dtype).masked_fill(pad, float("-inf"))
        out, w = self.att(x, x, x, key_padding_mask=pad, attn_mask=_causal(n, self.float_mask, x.dtype),
                          need_weights=self.need_weights)
        y = self.head(out).flatten(1)
        return torch.cat([y, w.flatten(1)], 1) if self.need_weights else y


@family
def mha_bool_masks(dtype, seed):
    return MHAMasks(False, True).to(dtype), {"x": _rand(seed, dtype)(2, 4, 8)}, {}


@family
def mha_float_masks(dtype, seed):
    return MHAMasks(True, False).to(dtype), {"x": _rand(seed, dtype)(2, 4, 8)}, {}


class MHACross(nn.Module):
    """Cross-attention, sequence first, kdim/vdim != embed_dim, bias_kv and a zero attention slot."""

    def __init__(self):
        super().__init__()
        self.att = nn.MultiheadAttention(6, 2, kdim=4, vdim=5, add_bias_kv=True, add_zero_attn=True)
        self.head = nn.Linear(6, 2)

    def forward(self, q, k, v):
        out, w = self.att(q, k, v, average_attn_weights=False)
        return torch.cat([self.head(out).flatten(), w.flatten()])


@family
def mha_cross_kv(dtype, seed):
    r = _rand(seed, dtype)
    return MHACross().to(dtype), {"q": r(3, 2, 6), "k": r(4, 2, 4), "v": r(4, 2, 5)}, {}


class Decoder(nn.Module):
    def __init__(self, norm_first):
        super().__init__()
        self.dec = nn.TransformerDecoderLayer(8, 2, 12, dropout=0.0, activation="gelu", batch_first=True,
                                              norm_first=norm_first)
        self.head = nn.Linear(8, 2)

    def forward(self, tgt, memory):
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1], dtype=tgt.dtype)
        return self.head(self.dec(tgt, memory, tgt_mask=mask, tgt_is_causal=True)).flatten(1)


def _decoder(norm_first):
    def build(dtype, seed):
        r = _rand(seed, dtype)
        return Decoder(norm_first).to(dtype), {"tgt": r(2, 3, 8), "memory": r(2, 4, 8)}, {}
    return build


FAMILIES["decoder_prenorm_gelu"] = _decoder(True)
FAMILIES["decoder_postnorm_gelu"] = _decoder(False)


class EncoderPadded(nn.Module):
    """A two-layer encoder in eval mode with a source key padding mask (torch's fast path is off
    while parameters need gradients)."""

    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(8, 2, 12, dropout=0.0, batch_first=True, norm_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        pad = torch.tensor([[False, False, False, False], [False, False, True, True]])
        return self.head(self.enc(x, src_key_padding_mask=pad)[:, 0])


@family
def encoder_padding(dtype, seed):
    return EncoderPadded().to(dtype).eval(), {"x": _rand(seed, dtype)(2, 4, 8)}, {}


class SDPA(nn.Module):
    """Query/key/value projections, then F.scaled_dot_product_attention with ``mode`` masking."""

    def __init__(self, mode):
        super().__init__()
        self.qkv, self.out, self.mode = nn.Linear(6, 18), nn.Linear(6, 3), mode

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, 2, 3).permute(2, 0, 3, 1, 4)
        if self.mode == "causal":
            h = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif self.mode == "bool":
            keep = torch.tensor([[True, True, False, True]]).expand(n, 4)
            h = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        else:
            bias = torch.linspace(-1, 1, n * n, dtype=x.dtype).view(n, n)
            h = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.3)
        return self.out(h.transpose(1, 2).reshape(b, n, 6)).flatten(1)


for _mode in ("causal", "bool", "float"):
    FAMILIES[f"sdpa_{_mode}"] = (lambda m: lambda dtype, seed: (SDPA(m).to(dtype), {"x": _rand(seed, dtype)(2, 4, 6)}, {}))(_mode)


class MaskedSoftmax(nn.Module):
    """Scores masked with -inf (rows partly masked; row 0 of the mask keeps one entry) then softmax."""

    def __init__(self):
        super().__init__()
        self.q, self.k = nn.Linear(4, 4), nn.Linear(4, 4)
        self.register_buffer("mask", torch.tensor([[True, True, True, False], [False, True, False, True],
                                                   [False, False, False, False]]))

    def forward(self, x):
        s = self.q(x) @ self.k(x).transpose(-1, -2)  # (b, 3, 3)... x is (b, 3, 4), keys 3
        s = torch.cat([s, s[..., :1]], -1).masked_fill(self.mask, float("-inf"))
        return s.softmax(-1).flatten(1)


@family
def masked_softmax(dtype, seed):
    return MaskedSoftmax().to(dtype), {"x": _rand(seed, dtype)(2, 3, 4)}, {}


def _rotate_half(x):
    a, b = x.chunk(2, -1)
    return torch.cat([-b, a], -1)


class Rotary(nn.Module):
    """Rotary position embeddings (cos/sin buffers, rotate-half) on q and k, an ALiBi bias, causal."""

    def __init__(self, n=4, d=4, heads=2):
        super().__init__()
        self.qkv, self.out, self.heads = nn.Linear(heads * d, 3 * heads * d), nn.Linear(heads * d, 2), heads
        inv = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
        ang = torch.outer(torch.arange(n, dtype=torch.float64), inv).repeat(1, 2)
        self.register_buffer("cos", ang.cos())
        self.register_buffer("sin", ang.sin())
        slopes = torch.tensor([2.0 ** -(i + 1) for i in range(heads)], dtype=torch.float64)
        dist = torch.arange(n)[None, :] - torch.arange(n)[:, None]
        self.register_buffer("alibi", slopes[:, None, None] * dist.clamp(max=0))

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q = q * self.cos + _rotate_half(q) * self.sin
        k = k * self.cos + _rotate_half(k) * self.sin
        s = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + self.alibi
        s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        h = (s.softmax(-1) @ v).transpose(1, 2).reshape(b, n, -1)
        return self.out(h).flatten(1)


@family
def rotary_alibi(dtype, seed):
    return Rotary().to(dtype), {"x": _rand(seed, dtype)(2, 4, 8)}, {}


class AttentionPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj, self.score, self.head = nn.Linear(3, 5), nn.Linear(5, 1, bias=False), nn.Linear(5, 2)

    def forward(self, x, lengths):
        h = torch.tanh(self.proj(x))
        s = self.score(h).squeeze(-1)
        s = s.masked_fill(torch.arange(x.shape[1])[None, :] >= lengths[:, None], float("-inf"))
        return self.head((s.softmax(1).unsqueeze(-1) * h).sum(1))


@family
def attention_pool(dtype, seed):
    return AttentionPool().to(dtype), {"x": _rand(seed, dtype)(3, 4, 3), "lengths": torch.tensor([4, 2, 1])}, {}


# --- recurrent -----------------------------------------------------------------------------------

class LSTMProj(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        out, (h, c) = self.rnn(x)
        return torch.cat([self.head(out[:, -1]), h.transpose(0, 1).flatten(1), c[-1]], 1)


@family
def lstm_proj_bidir(dtype, seed):
    return LSTMProj().to(dtype), {"x": _rand(seed, dtype)(2, 3, 3)}, {}


class CellLoop(nn.Module):
    """A GRUCell and an LSTMCell stepped in a Python loop (weights shared across time steps)."""

    def __init__(self):
        super().__init__()
        self.gru, self.lstm, self.head = nn.GRUCell(3, 4), nn.LSTMCell(4, 3), nn.Linear(3, 2)

    def forward(self, x):
        h = torch.zeros(x.shape[1], 4, dtype=x.dtype)
        hc = None
        for t in range(x.shape[0]):
            h = self.gru(x[t], h)
            hc = self.lstm(h, hc)
        return self.head(hc[0] + hc[1])


@family
def cell_loops(dtype, seed):
    return CellLoop().to(dtype), {"x": _rand(seed, dtype)(3, 2, 3)}, {}


class Packed(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.LSTM(3, 4, batch_first=True, bidirectional=True), nn.Linear(8, 2)

    def forward(self, x, lengths):
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return self.head(out).flatten(1)


@family
def packed_lstm(dtype, seed):
    return Packed().to(dtype), {"x": _rand(seed, dtype)(3, 4, 3), "lengths": torch.tensor([2, 4, 1])}, {}


class PackedGRU(Packed):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(3, 4, num_layers=2, batch_first=True, bidirectional=True)


@family
def packed_gru(dtype, seed):
    return PackedGRU().to(dtype), {"x": _rand(seed, dtype)(3, 4, 3), "lengths": torch.tensor([4, 3, 1])}, {}


# --- embeddings ----------------------------------------------------------------------------------

class Bag(nn.Module):
    def __init__(self, mode, weighted=False, padding_idx=None, freq=False):
        super().__init__()
        self.bag = nn.EmbeddingBag(9, 4, mode=mode, padding_idx=padding_idx, scale_grad_by_freq=freq)
        self.head, self.weighted = nn.Linear(4, 2), weighted

    def forward(self, tokens, offsets, weights):
        return self.head(self.bag(tokens, offsets, per_sample_weights=weights if self.weighted else None))


def _bag(mode, weighted=False, padding_idx=None, freq=False, tokens=(1, 4, 4, 8, 0, 3, 2, 7)):
    def build(dtype, seed):
        r = _rand(seed, dtype)
        inputs = {"tokens": torch.tensor(tokens), "offsets": torch.tensor([0, 3, 3, 5]), "weights": r(len(tokens))}
        return Bag(mode, weighted, padding_idx, freq).to(dtype), inputs, {}
    return build


FAMILIES["embbag_sum_weighted"] = _bag("sum", weighted=True)
FAMILIES["embbag_mean_pad"] = _bag("mean", padding_idx=4)
FAMILIES["embbag_max"] = _bag("max")  # bag 1 is empty: 0, as torch makes it
FAMILIES["embbag_mean_freq"] = _bag("mean", freq=True, tokens=(1, 8, 8, 4, 0, 3, 2, 7))  # 8 twice, sorting last
FAMILIES["embbag_sum_freq"] = _bag("sum", freq=True)  # 8 and 7 once each, sorting after 4 (thrice)
TORCH_BUGS["embbag_sum_freq"] = (
    "torch's CPU embedding_bag backward with scale_grad_by_freq divides by counts[indices_data[i]], i the "
    "unique-group counter, not by the current index's count: an index seen once that sorts after a repeated one "
    "is divided by the repeated count (pytorch/pytorch#190063; the 2.13 build here has it)")


class EmbedNorm(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.emb, self.head = nn.Embedding(10, 4, **kw), nn.Linear(4, 3)

    def forward(self, tokens):
        return self.head(torch.tanh(self.emb(tokens)).sum(1))


@family
def embedding_max_norm(dtype, seed):
    model = EmbedNorm(max_norm=1.0).to(dtype)
    return model, {"tokens": torch.tensor([[3, 2, 3, 9], [1, 2, 0, 2]])}, {}


@family
def embedding_freq(dtype, seed):
    model = EmbedNorm(scale_grad_by_freq=True, padding_idx=0).to(dtype)
    return model, {"tokens": torch.tensor([[3, 2, 3, 9], [1, 2, 0, 2]])}, {}


# --- transformer blocks of recent models ---------------------------------------------------------

class SwiGLUBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.RMSNorm(6, eps=1e-6)
        self.gate, self.up, self.down = nn.Linear(6, 8, bias=False), nn.Linear(6, 8, bias=False), nn.Linear(8, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        h = self.norm(x)
        x = x + self.down(F.silu(self.gate(h)) * self.up(h))
        return self.head(F.rms_norm(x, (6,))).flatten(1)


@family
def rmsnorm_swiglu(dtype, seed):
    return SwiGLUBlock().to(dtype), {"x": _rand(seed, dtype)(2, 3, 6)}, {}


class TopKMoE(nn.Module):
    """Top-2 routing over 3 experts: topk, softmax of the chosen logits, index_add of the outputs."""

    def __init__(self):
        super().__init__()
        self.router = nn.Linear(4, 3)
        self.experts = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        logits = self.router(x)
        top, idx = logits.topk(2, dim=1)
        gates = top.softmax(1)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            rows, slot = (idx == e).nonzero(as_tuple=True)
            y = expert(x[rows]) * gates[rows, slot].unsqueeze(1)
            out = out.index_add(0, rows, y)
        return self.head(torch.tanh(out))


@family
def moe_topk(dtype, seed):
    return TopKMoE().to(dtype), {"x": _rand(seed, dtype)(5, 4)}, {}


class GNN(nn.Module):
    """Two message-passing rounds: gather at sources, scatter-add (and amax) at destinations."""

    def __init__(self):
        super().__init__()
        self.msg, self.upd, self.head = nn.Linear(3, 3), nn.Linear(6, 3), nn.Linear(3, 2)

    def forward(self, x, edges):
        src, dst = edges
        for _ in range(2):
            m = torch.tanh(self.msg(x))[src]
            agg = torch.zeros_like(x).index_add_(0, dst, m)
            mx = torch.zeros_like(x).scatter_reduce(0, dst[:, None].expand_as(m), m, "amax", include_self=False)
            x = torch.tanh(self.upd(torch.cat([agg, mx], 1)))
        return self.head(x.mean(0, keepdim=True))


@family
def gnn_scatter(dtype, seed):
    edges = torch.tensor([[0, 1, 2, 3, 3, 4], [1, 2, 0, 0, 4, 3]])
    return GNN().to(dtype), {"x": _rand(seed, dtype)(5, 3), "edges": edges}, {}


class Checkpointed(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2)

    def _inner(self, x):
        return self.b(F.gelu(self.a(x)))

    def forward(self, x):
        return self.head(torch.tanh(checkpoint(self._inner, x, use_reentrant=False)))


@family
def checkpointed(dtype, seed):
    return Checkpointed().to(dtype), {"x": _rand(seed, dtype)(3, 4)}, {}


class InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.act = nn.Linear(4, 5), nn.Linear(5, 5), nn.ReLU(inplace=True)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        h = self.act(self.a(x))  # in place on the linear's output, which its backward does not keep
        g = self.b(h)
        g += h
        g = torch.tanh(g).mul(2.0)
        g[:, 0] += 1.0  # a write into a slice
        g.mul_(0.5)
        return self.head(F.silu(g, inplace=True) + g)


@family
def inplace_acts(dtype, seed):
    return InPlace().to(dtype), {"x": _rand(seed, dtype)(3, 4)}, {}


# --- eval mode, where torch's inference fast paths (native MHA, nested tensors) apply without grad ---

class EncoderNested(nn.Module):
    """Post-norm encoder in eval mode with a padding mask and nested tensors enabled: under no_grad
    torch runs its fused kernel on a nested tensor and returns 0 at padded positions."""

    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(8, 2, 12, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        pad = torch.tensor([[False, False, False, False], [False, False, True, True]])
        return self.head(self.enc(x, src_key_padding_mask=pad)).flatten(1)


@family
def encoder_nested_eval(dtype, seed):
    return EncoderNested().to(dtype).eval(), {"x": _rand(seed, dtype)(2, 4, 8)}, {}


@family
def mha_eval(dtype, seed):
    return MHAMasks(False, False).to(dtype).eval(), {"x": _rand(seed, dtype)(2, 4, 8)}, {}


# --- more sequence models: grouped-query attention, HF-style masks, causal convolutions, scans ---

class GQA(nn.Module):
    """Grouped-query attention: 4 query heads share 2 key/value heads (enable_gqa), causal."""

    def __init__(self):
        super().__init__()
        self.q, self.kv, self.out = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, 4, 2).transpose(1, 2)
        k, v = self.kv(x).view(b, n, 2, 2, 2).permute(3, 0, 2, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.out(h.transpose(1, 2).reshape(b, n, 8)).flatten(1)


@family
def sdpa_gqa(dtype, seed):
    return GQA().to(dtype), {"x": _rand(seed, dtype)(2, 3, 8)}, {}


class FinfoMask(nn.Module):
    """Padding added as (1 - mask) * finfo.min to the scores (HF style), then softmax in the dtype."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.out = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x, attention_mask):
        s = torch.baddbmm(torch.zeros(1, dtype=x.dtype), self.q(x), self.k(x).transpose(1, 2), alpha=0.5)
        s = s + (1.0 - attention_mask[:, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        return self.out(s.softmax(-1) @ self.v(x)).flatten(1)


@family
def hf_finfo_mask(dtype, seed):
    return FinfoMask().to(dtype), {"x": _rand(seed, dtype)(2, 4, 4),
                                   "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])}, {}


class CausalConv(nn.Module):
    """WaveNet-style: left padding, dilated causal Conv1d, gated tanh * sigmoid, residual, GLU."""

    def __init__(self):
        super().__init__()
        self.conv, self.res, self.glu = nn.Conv1d(3, 6, 2, dilation=2), nn.Conv1d(3, 3, 1), nn.Conv1d(3, 4, 1)
        self.head = nn.Linear(2 * 6, 2)

    def forward(self, x):
        h = self.conv(F.pad(x, (2, 0)))
        h = torch.tanh(h[:, :3]) * torch.sigmoid(h[:, 3:])
        h = F.glu(self.glu(self.res(h) + x), dim=1)
        return self.head(h.flatten(1)[:, -12:])


@family
def causal_conv_glu(dtype, seed):
    return CausalConv().to(dtype), {"x": _rand(seed, dtype)(2, 3, 6)}, {}


class LMLoss(nn.Module):
    """A tiny language model's loss: tied embedding / output projection, cross-entropy over the
    shifted tokens with padding ignored (-100) and label smoothing."""

    def __init__(self):
        super().__init__()
        self.emb, self.mix, self.norm = nn.Embedding(7, 6), nn.Linear(6, 6), nn.LayerNorm(6, bias=False)

    def forward(self, tokens, labels):
        h = self.norm(F.gelu(self.mix(self.emb(tokens))))
        logits = h @ self.emb.weight.T
        return F.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1), ignore_index=-100,
                               label_smoothing=0.1)


@family
def lm_loss_ignore(dtype, seed):
    tokens = torch.tensor([[1, 5, 2, 6], [3, 0, 4, 4]])
    return LMLoss().to(dtype), {"tokens": tokens, "labels": tokens.masked_fill(tokens == 4, -100)}, {}


class SelectiveScan(nn.Module):
    """A diagonal state-space scan in closed form: decays exp(-softplus(.)) accumulated by cumsum of
    logs, and a causal linear attention (elu + 1 features, cumsum of k v)."""

    def __init__(self):
        super().__init__()
        self.dt, self.inp, self.q, self.k = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        logdecay = -F.softplus(self.dt(x)).cumsum(1)  # (b, t, d)
        u = self.inp(x)
        w = torch.exp(logdecay[:, :, None, :] - logdecay[:, None, :, :])  # (b, t, s, d): decay from s to t
        causal = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).tril()[None, :, :, None]
        ssm = (w.masked_fill(~causal, 0.0) * u[:, None]).sum(2)
        q, k = F.elu(self.q(x)) + 1, F.elu(self.k(x)) + 1
        kv = (k[..., None] * u[:, :, None, :]).cumsum(1)
        lin = (q[..., None] * kv).sum(2) / ((q * k.cumsum(1)).sum(-1, keepdim=True))
        return self.head(torch.cat([ssm, lin], -1)).flatten(1)


@family
def ssm_linear_attention(dtype, seed):
    return SelectiveScan().to(dtype), {"x": _rand(seed, dtype)(2, 4, 3)}, {}


class RNNState(nn.Module):
    """An LSTM started from a given (h0, c0) (inputs, differentiated), dropout between layers in eval."""

    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.LSTM(3, 4, num_layers=2, dropout=0.3), nn.Linear(4, 2)

    def forward(self, x, h0, c0):
        out, _ = self.rnn(x, (h0, c0))
        return self.head(out[-1])


@family
def lstm_initial_state(dtype, seed):
    r = _rand(seed, dtype)
    return RNNState().to(dtype).eval(), {"x": r(3, 2, 3), "h0": r(2, 2, 4), "c0": r(2, 2, 4)}, {}


class RelativeBias(nn.Module):
    """T5-style relative position buckets: an embedding looked up at a computed integer matrix,
    added to the scores; sinusoidal absolute positions as a buffer."""

    def __init__(self, n=5, d=4):
        super().__init__()
        self.bias, self.qk, self.head = nn.Embedding(4, 2), nn.Linear(d, 2 * 2 * d), nn.Linear(2 * n, 2)
        rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]
        self.register_buffer("bucket", (rel.sign() + 1) + (rel.abs() > 2).long(), persistent=False)
        pos = torch.arange(n, dtype=torch.float64)[:, None] / 10000 ** (torch.arange(0, d, 2) / d)
        self.register_buffer("pe", torch.cat([pos.sin(), pos.cos()], 1))

    def forward(self, x):
        b, n, d = x.shape
        q, k = (self.qk(x + self.pe)).view(b, n, 2, 2, d).permute(2, 0, 3, 1, 4)
        s = q @ k.transpose(-1, -2) + self.bias(self.bucket).permute(2, 0, 1)
        return self.head(s.softmax(-1).amax(-1).transpose(1, 2).reshape(b, -1))


@family
def t5_relative_bias(dtype, seed):
    return RelativeBias().to(dtype), {"x": _rand(seed, dtype)(2, 5, 4)}, {}


class TopPFilter(nn.Module):
    """Nucleus (top-p) filtering of logits: sort, cumulative softmax, scatter a removal mask back,
    -inf, softmax; the removed set is data, fixed at the checked values."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 6)

    def forward(self, x):
        logits = self.lin(x)
        srt, idx = logits.sort(-1, descending=True)
        remove = srt.softmax(-1).cumsum(-1) > 0.8
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = False
        mask = remove.scatter(-1, idx, remove)
        return logits.masked_fill(mask, float("-inf")).softmax(-1)


@family
def top_p_filter(dtype, seed):
    return TopPFilter().to(dtype), {"x": _rand(seed, dtype)(3, 4) * 2}, {}
