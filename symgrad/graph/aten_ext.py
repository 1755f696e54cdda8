"""More handlers, each an ATen op's forward from core nodes: products, cdist, ops that add entries
up (scatter_add, index_add), bilinear, embedding_bag, multilabel_margin_loss, BCE with logits,
rrelu in eval.  The
linear-algebra handlers are in ``aten_linalg``, the order statistics in ``aten_order``, the running
sums in ``aten_scan``.

``prod`` is a chain (or, past ``_CHAIN`` terms, a tree) of pointwise products of slices: its
derivative, the product of the other terms, comes out of reverse mode exactly, zeros included.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from ..errors import UnsupportedOp
from .functions import log_sigmoid, logsigmoid, saved_product, sigmoid
from .aten import HANDLERS, _clamp, _pw_piece, handles
from .aten_tensor import _dims, _index_data, _random, _selection
from .trace import Builder, number

_CHAIN = 32  # up to this many terms a product is a left-to-right chain, as torch's kernel multiplies


def _move_last(b: Builder, x, axis: int):
    n = len(x.shape)
    perm = [i for i in range(n) if i != axis] + [axis]
    return b.layout("permute", x, tuple(perm))


def _index(node) -> np.ndarray:
    return np.arange(1, node.size + 1, dtype=np.int64).reshape(node.shape)


def product(b: Builder, x, axis: int, keepdim: bool):
    """The product of ``x`` along ``axis`` (core nodes only)."""
    x = b.node_of(x)
    shape = list(x.shape)
    n = shape[axis]
    y = _move_last(b, x, axis)
    if n == 0:
        raise UnsupportedOp("prod over an empty axis")
    if n <= _CHAIN:
        idx = _index(y)
        slices = [b.select([y], idx[..., k]) for k in range(n)]
        # one node whose derivative reuses its result, as torch's does (Note [Products reuse their result])
        out = slices[0] if n == 1 else b.pointwise(lambda *s: saved_product(*s), slices)
    else:
        out = y
        while out.shape[-1] > 1:
            idx = _index(out)
            if out.shape[-1] % 2:
                idx = np.concatenate([idx, np.zeros(idx.shape[:-1] + (1,), np.int64)], axis=-1)
            out = b.pointwise(lambda s, t: s * t, [b.select([out], idx[..., 0::2], fill=1.0),
                                                   b.select([out], idx[..., 1::2], fill=1.0)])
        out = b.layout("reshape", out, out.shape[:-1])
    if keepdim:
        shape[axis] = 1
        out = b.layout("reshape", out, tuple(shape))
    return out


@handles("aten.prod.dim_int", "aten.prod.default", "aten.prod")
def _prod(b, args, kwargs, val):
    x = b.node_of(args[0])
    name = str(b.fx_node.target)
    if name.startswith("prims."):
        axes = _dims(args[1], len(x.shape))
        keep = False
    elif name.endswith("dim_int"):
        axes = _dims(args[1], len(x.shape))
        keep = bool(args[2]) if len(args) > 2 else bool(kwargs.get("keepdim", False))
    else:
        axes = tuple(range(len(x.shape)))
        keep = False
    if not x.shape:
        return x
    if len(axes) > 1:
        keep_shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        moved = b.layout("permute", x, tuple([i for i in range(len(x.shape)) if i not in axes] + list(axes)))
        flat = b.layout("reshape", moved, moved.shape[:len(x.shape) - len(axes)] +
                        (int(np.prod([x.shape[a] for a in axes])),))
        out = product(b, flat, len(flat.shape) - 1, False)
        return b.layout("reshape", out, keep_shape) if keep else out
    return product(b, x, axes[0], keep)


def _letters(k: int) -> str:
    return "abcdefgh"[:k]


@handles("aten._cdist_forward")
def _cdist(b, args, kwargs, val):
    """``(Σ_k |x1_ik - x2_jk|^p)^(1/p)`` over the last axis, batched over leading axes."""
    x1, x2, p = b.node_of(args[0]), b.node_of(args[1]), float(args[2])
    lead = tuple(np.broadcast_shapes(x1.shape[:-2], x2.shape[:-2]))  # batch axes broadcast, as torch's do

    def padded(x):
        return (1,) * (len(lead) + 2 - len(x.shape)) + x.shape[:-2]

    shape = lead + (x1.shape[-2], x2.shape[-2], x1.shape[-1])
    a = b.layout("expand", b.layout("reshape", x1, padded(x1) + (x1.shape[-2], 1, x1.shape[-1])), shape)
    c = b.layout("expand", b.layout("reshape", x2, padded(x2) + (1,) + x2.shape[-2:]), shape)
    d = b.pointwise(lambda s, t: s - t, [a, c])
    if p == 2:
        total = b.reduce("sum", b.pointwise(lambda s: s**2, [d]), (len(shape) - 1,), False)
        return b.pointwise(sp.sqrt, [total], tuple(val.shape))
    if p == float("inf"):
        return b.reduce("max", b.pointwise(sp.Abs, [d]), (len(shape) - 1,), False)
    if p == 0:
        raise UnsupportedOp("cdist with p=0 counts non-zeros: it has no derivative")
    q = sp.Float(p) if not p.is_integer() else sp.Integer(int(p))
    total = b.reduce("sum", b.pointwise(lambda s: sp.Abs(s) ** q, [d]), (len(shape) - 1,), False)
    return b.pointwise(lambda s: s ** (1 / q), [total], tuple(val.shape))


for _name in ("aten.clamp_min_", "aten.clamp_max_", "aten.clamp_min.Tensor", "aten.clamp_max.Tensor",
              "aten.clamp.Tensor_out"):
    HANDLERS[_name] = _clamp


# ------------------------------------------------------------------ ops that add entries up

# Note [Many entries landing at one place]
# Up to ``FEW_LANDINGS`` entries per position, ``accumulate`` is one pointwise sum ``x + s_1 + ... +
# s_K`` of K selects (each the size of ``x``).  A graph's hub node (thousands of messages into one
# node of a GNN) made that K selects of the output's size and a pointwise node of K operands: 1,024
# messages took 53 s in float64 and 312 s in float32.  Past it each position's sum is gathered as a
# row, its base ``x`` first and then its entries in ``src``'s order, the order torch's CPU kernels
# (index_add, scatter_add, index_put with accumulate) add them one at a time: in float32 and float64
# in the checked dtype (measured in float32: torch's sum equals a sequential float32 sum, to the
# ulp); in float16 and bfloat16 index_add and scatter_add keep a float32 sum and round it once
# (equal, to the bit, over dims 0 and 1, 3 to 300 entries a position), index_put adds in the half
# dtype (equal to a sequential half sum; ``opmath`` False).  Rows of
# between 2**(j-1) + 1 and 2**j entries form one (positions, 2**j + 1) select (0 where fewer land)
# and one sum over its last axis, so the graph holds at most twice ``src``'s entries in O(log K)
# nodes.  That sum carries ``_sequential_forward``: its forward and tangent rules charge each add one
# rounding on the size of its partial sum (approx.sequential_sum), as the kernel rounds; its
# reverse rule is a broadcast and the select's a scatter of distinct entries, with nothing charged.
FEW_LANDINGS = 16


def _ranks(dest: np.ndarray, size: int):
    """(each entry's rank among those landing at its position, the count landing at each position)."""
    order = np.argsort(dest, kind="stable")
    counts = np.bincount(dest, minlength=size)
    rank = np.empty(dest.size, np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank[order] = np.arange(dest.size) - starts[dest[order]]
    return rank, counts


def accumulate(b: Builder, x, src, dest: np.ndarray, alpha=1, opmath: bool = True):
    """``x`` with ``alpha * src.flat[p]`` added at ``x.flat[dest[p] - 1]`` for every ``p`` (``dest``:
    1-based, src's shape): ``x + s_1 + ... + s_K``, ``s_k`` the ``k``-th entry of ``src`` landing at
    each position (Note [Many entries landing at one place])."""
    x, src = b.node_of(x), b.node_of(src)
    dest = np.asarray(dest, np.int64).ravel() - 1
    rank, counts = _ranks(dest, x.size)
    most = int(counts.max(initial=0))
    if most == 0:
        return x
    a = sp.nsimplify(alpha) if isinstance(alpha, int) else alpha
    if most > FEW_LANDINGS:
        scaled = src if a == 1 else b.pointwise(lambda s: a * s, [src], src.shape)
        return _rows_added(b, x, scaled, dest, rank, counts, opmath)
    terms = []
    for k in range(most):
        idx = np.zeros(x.size, np.int64)
        hit = rank == k
        idx[dest[hit]] = np.nonzero(hit)[0] + 1
        terms.append(b.select([src], idx.reshape(x.shape)))
    return b.pointwise(lambda base, *ts: base + a * sp.Add(*ts), [x] + terms, x.shape)


def _rows_added(b: Builder, x, src, dest, rank, counts, opmath: bool):
    """``x`` plus the entries of ``src`` landing at each position, one row per position (the Note)."""
    width = np.where(counts > 0, 2 ** np.ceil(np.log2(np.maximum(counts, 1))).astype(np.int64), 0)
    sums, where, offset = [], np.arange(1, x.size + 1), x.size  # where no entry lands: x itself
    for w in np.unique(width[width > 0]):
        places = np.nonzero(width == w)[0]
        slot = np.full(counts.size, -1, np.int64)
        slot[places] = np.arange(places.size)
        idx = np.zeros((places.size, int(w) + 1), np.int64)
        idx[:, 0] = places + 1
        mine = slot[dest] >= 0
        idx[slot[dest[mine]], rank[mine] + 1] = x.size + np.nonzero(mine)[0] + 1
        total = b.reduce("sum", b.select([x, src], idx), (1,), False)
        total.attrs["_sequential_forward"] = "opmath" if opmath else "own"
        sums.append(total)
        where[places] = offset + np.arange(places.size) + 1
        offset += places.size
    return b.select([x] + sums, where.reshape(x.shape))


def _ids(node) -> "object":
    import torch

    return torch.arange(1, node.size + 1, dtype=torch.float64).reshape(node.shape)


@handles("aten.scatter_add", "aten.scatter_add_")
def _scatter_add(b, args, kwargs, val):
    import torch

    x, dim, index, src = b.node_of(args[0]), args[1], args[2], b.node_of(args[3])
    dest = torch.gather(_ids(x), dim, index).long().numpy()
    src_pos = np.arange(1, src.size + 1).reshape(src.shape)[tuple(slice(0, n) for n in index.shape)]
    picked = b.select([src], src_pos) if src_pos.shape != src.shape else src
    return accumulate(b, x, picked, dest)


@handles("aten.index_add", "aten.index_add_")
def _index_add(b, args, kwargs, val):
    import torch

    x, dim, index, src = b.node_of(args[0]), args[1], args[2], b.node_of(args[3])
    alpha = args[4] if len(args) > 4 else kwargs.get("alpha", 1)
    dest = torch.index_select(_ids(x), dim, index).long().numpy()
    return accumulate(b, x, src, np.broadcast_to(dest, src.shape), alpha)


@handles("aten.index_put", "aten.index_put_", "aten._unsafe_index_put")
def _index_put(b, args, kwargs, val):
    """``x[indices] = values`` (a selection), or ``+=`` with ``accumulate=True``."""
    acc = args[3] if len(args) > 3 else kwargs.get("accumulate", False)
    if not acc:
        return _selection(b, args, kwargs, val)
    x, indices = b.node_of(args[0]), _index_data(b, "aten.index_put", list(args))[1]
    dest_t = _ids(x)[tuple(slice(None) if i is None else i for i in indices)]
    values = b.node_of(args[2])
    if values.shape != tuple(dest_t.shape):
        values = b.layout("expand", b.layout("reshape", values, (1,) * (dest_t.dim() - len(values.shape)) + values.shape),
                          tuple(dest_t.shape))
    return accumulate(b, x, values, dest_t.long().numpy(), opmath=False)


@handles("aten._trilinear")
def _trilinear(b, args, kwargs, val):
    """``Σ_sumdim i1 ⊗ i2 ⊗ i3``, each input unsqueezed at its ``expand`` axes: one contraction."""
    ins = [b.node_of(a) for a in args[:3]]
    expands, sumdim = args[3:6], set(args[6])
    total = len(ins[0].shape) + len(expands[0])
    letters = "abcdefghijklm"[:total]
    subs = ["".join(letters[p] for p in range(total) if p not in set(e)) for e in expands]
    out = "".join(letters[p] for p in range(total) if p not in sumdim)
    y = b.contract(",".join(subs) + "->" + out, *ins)
    return b.layout("reshape", y, tuple(val.shape))


@handles("aten._embedding_bag_forward_only", "aten._embedding_bag")
def _embedding_bag(b, args, kwargs, val):
    """Bags of weight rows (a ``select`` into ``(bags, longest bag, width)``) summed, averaged or
    maximised; rows at ``padding_idx`` are left out of their bag, as torch leaves them."""
    import torch

    weight, indices, offsets = b.node_of(args[0]), args[1], args[2]
    mode = args[4] if len(args) > 4 else 0
    psw = args[6] if len(args) > 6 else None
    include_last = bool(args[7]) if len(args) > 7 else False
    padding_idx = args[8] if len(args) > 8 and args[8] is not None else -1
    rows = np.asarray(torch.as_tensor(indices).reshape(-1).numpy(), np.int64)
    if len(args) > 3 and args[3]:  # Note [Gradient rules torch defines beside the derivative]
        from .aten_seq import freq_scaled

        weight = freq_scaled(b, weight, rows, padding_idx)
    offs = list(np.asarray(torch.as_tensor(offsets).numpy(), np.int64)) + ([] if include_last else [rows.size])
    bags = [[p for p in range(offs[i], offs[i + 1]) if rows[p] != padding_idx] for i in range(len(offs) - 1)]
    length = max(1, max((len(x) for x in bags), default=1))
    width = weight.shape[1]
    pos = np.zeros((len(bags), length), np.int64)  # 1-based positions into ``indices``, 0: none
    for i, bag in enumerate(bags):
        pos[i, :len(bag)] = np.asarray(bag, np.int64) + 1
    idx = np.where(pos[..., None] > 0, rows[np.maximum(pos - 1, 0)][..., None] * width + np.arange(width) + 1, 0)
    counts = np.array([len(x) for x in bags], np.float64)
    if mode == 2:  # an empty bag is 0, as in torch: its max reads row 0, then a select drops it
        empty = counts == 0
        idx[empty, 0, :] = np.arange(1, width + 1)
        picked = b.select([weight], idx, fill=-np.inf)
        out = b.reduce("max", picked, (1,), False)
        if np.any(empty):
            out = b.select([out], np.where(empty[:, None], 0, np.arange(1, out.size + 1).reshape(out.shape)))
    else:
        picked = b.select([weight], idx)
        picked.attrs["_sequential"] = ("float32", "float64")  # as an embedding's (Note [Sequential reverse sums])
        if psw is not None:
            w_sel = b.select([b.node_of(psw)], pos[..., None] * np.ones((1, 1, width), np.int64))
            picked = b.pointwise(lambda s, t: s * t, [picked, w_sel])
        out = b.reduce("sum", picked, (1,), False)
        # a bag's rows added one at a time (Note [Many entries landing at one place])
        out.attrs["_sequential_forward"] = "opmath"
        if mode == 1:
            out = b.pointwise(lambda s, c: s / c, [out, torch.from_numpy(np.maximum(counts, 1.0)[:, None])])
    return (out, None, None, None)


@handles("aten.multilabel_margin_loss_forward")
def _multilabel_margin(b, args, kwargs, val):
    """``Σ_{j ∈ T} Σ_{i ∉ T} max(0, 1 - (x_j - x_i)) / C`` per sample, ``T`` the labels before the
    first -1: a pointwise hinge over all pairs, weighted by a constant 0/1 pair mask."""
    import torch

    x, target = b.node_of(args[0]), torch.as_tensor(args[1])
    reduction = args[2] if len(args) > 2 else 1
    squeeze = len(x.shape) == 1
    if squeeze:
        x, target = b.layout("reshape", x, (1,) + x.shape), target.reshape(1, -1)
    n, c = x.shape
    pairs = np.zeros((n, c, c))
    is_target = np.zeros((n, c))
    for k in range(n):
        labels = []
        for t in target[k].tolist():
            if t < 0:
                break
            labels.append(t)
        is_target[k, labels] = 1.0
        pairs[k] = np.outer(is_target[k], 1.0 - is_target[k])
    xj = b.layout("expand", b.layout("reshape", x, (n, c, 1)), (n, c, c))
    xi = b.layout("expand", b.layout("reshape", x, (n, 1, c)), (n, c, c))
    hinge = b.pointwise(lambda a, d, m: m * sp.Piecewise((1 - a + d, 1 - a + d > 0), (0, True)),
                        [xj, xi, torch.from_numpy(pairs)], (n, c, c))
    per = b.pointwise(lambda s: s / c, [b.reduce("sum", hinge, (1, 2), False)])
    if reduction == 1:
        out = b.pointwise(lambda s: s / n, [b.reduce("sum", per, (0,), False)])
    elif reduction == 2:
        out = b.reduce("sum", per, (0,), False)
    else:
        out = b.layout("reshape", per, ()) if squeeze else per
    return out, torch.from_numpy(is_target.reshape(val[1].shape) if squeeze else is_target)


# Note [BCE-with-logits as torch's kernel]
# torch's decomposition of binary_cross_entropy_with_logits (a shift by max(-x, 0), two exps and a
# log) differentiates into three terms that cancel, each with its own small bound, while torch's
# backward is one fused formula, sigmoid(x) - t, which cancels in the subtraction: where t = 1 and
# x = 17 its float32 value is 0 (the gradient is -4e-8), and in float64 at x = 10 it is a few
# percent off.  The decomposed closed form's bound allowed 1e-12 of that; torch's own loss failed
# in float64 and float32.  So the op is kept whole (Note [Fused backwards] in trace_fused.py) and
# read as torch computes it: per entry (1 - t) x - log(sigmoid(x)), whose derivative (logsigmoid's
# is 1 - sigmoid) is s - t; with pos_weight p, -p t log(s) - (1 - t) log(1 - s), whose derivatives are
# (1 - t) s - p t (1 - s) and torch's log(1 - s) - p log(s) for the target.
@handles("aten.binary_cross_entropy_with_logits", "symgrad.bce_with_logits")
def _bce_with_logits(b, args, kwargs, val):
    args = list(args) + [None] * (5 - len(args))
    weight = kwargs.get("weight", args[2])
    pos_weight = kwargs.get("pos_weight", args[3])
    reduction = kwargs.get("reduction", args[4] if args[4] is not None else 1)
    x, t = args[0], args[1]
    if pos_weight is None:
        per = b.pointwise(lambda x, t: (1 - t) * x - logsigmoid(x), [x, t])
    else:
        # -p t log s - (1 - t) log(1 - s): its derivative in t is torch's log(1 - s) - p log(s), with
        # the cancellation of 1 - s (bfloat16's pos_weight row failed on the target's gradient)
        per = b.pointwise(lambda x, t, p: -p * t * logsigmoid(x) - (1 - t) * sp.log(1 - sigmoid(x)),
                          [x, t, pos_weight])
    if weight is not None:
        per = b.pointwise(lambda loss, w: loss * w, [per, weight])
    if reduction == 0:
        return per
    axes = tuple(range(len(per.shape)))
    total = b.reduce("sum", per, axes, False)
    n = max(1, int(np.prod(per.shape, dtype=np.int64)))
    return total if reduction == 2 else b.pointwise(lambda s: s / n, [total])


# Note [logsigmoid as torch's kernel]
# torch's decomposition of log_sigmoid_forward is min(0, x) - log1p(exp(-|x|)): two kinks at x = 0
# that cancel, the function being smooth there.  Read as two units chosen apart, the joint kink check
# allowed any slope in [-1/2, 3/2] at 0, where the truth is 1/2: a backward twice torch's passed in
# reverse and forward mode and at order 2.  The op is read whole, as one smooth pointwise function
# whose derivative is the form torch's backward computes, sigmoid(-x) (no cancellation at large x).
@handles("aten.log_sigmoid_forward")
def _log_sigmoid_forward(b, args, kwargs, val):
    import torch

    out = b.pointwise(lambda x: log_sigmoid(x), [args[0]], tuple(val[0].shape))
    return out, torch.zeros(tuple(val[1].shape), dtype=torch.float64)  # the buffer torch's backward reads


@handles("aten.rrelu_with_noise", "aten.rrelu_with_noise_functional", "aten.rrelu")
def _rrelu(b, args, kwargs, val):
    """rrelu in eval: leaky_relu with the mean slope ``(lower + upper) / 2``; in training its slopes
    are random draws."""
    name = str(b.fx_node.target)
    rest = list(args[2:] if "noise" in name else args[1:])
    lower = rest[0] if len(rest) > 0 else kwargs.get("lower", 1 / 8)
    upper = rest[1] if len(rest) > 1 else kwargs.get("upper", 1 / 3)
    training = rest[2] if len(rest) > 2 else kwargs.get("training", False)
    if training:
        return _random(b, args, kwargs, val)
    slope = number((lower + upper) / 2)
    out = b.pointwise(lambda x: _pw_piece((x, x >= 0), (slope * x, True)), [args[0]], tuple(args[0].shape))
    return (out, args[1]) if "functional" in name else out



from . import aten_linalg  # noqa: E402,F401 - registers the linear-algebra handlers


@handles("aten.addbmm")
def _addbmm(b, args, kwargs, val):
    """``beta * input + alpha * Σ_b b1[b] @ b2[b]``."""
    beta, alpha = kwargs.get("beta", 1), kwargs.get("alpha", 1)
    prod = b.contract("bij,bjk->ik", args[1], args[2])
    return b.pointwise(lambda s, t: beta * s + alpha * t, [args[0], prod], tuple(val.shape))


@handles("aten._pdist_forward")
def _pdist(b, args, kwargs, val):
    """Distances between rows ``i < j`` (row-major order), as ``cdist`` computes them."""
    x, p = b.node_of(args[0]), float(args[1]) if len(args) > 1 else 2.0
    n, d = x.shape
    i, j = np.triu_indices(n, 1)
    idx = np.arange(1, x.size + 1).reshape(n, d)
    diff = b.pointwise(lambda s, t: s - t, [b.select([x], idx[i]), b.select([x], idx[j])])
    if p == 2:
        total = b.reduce("sum", b.pointwise(lambda s: s**2, [diff]), (1,), False)
        return b.pointwise(sp.sqrt, [total], tuple(val.shape))
    if p == float("inf"):
        return b.reduce("max", b.pointwise(sp.Abs, [diff]), (1,), False)
    q = sp.Integer(int(p)) if p.is_integer() else sp.Float(p)
    total = b.reduce("sum", b.pointwise(lambda s: sp.Abs(s) ** q, [diff]), (1,), False)
    return b.pointwise(lambda s: s ** (1 / q), [total], tuple(val.shape))
