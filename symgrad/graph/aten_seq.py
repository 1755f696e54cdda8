"""Handlers for the sequence and embedding side: ``scatter_reduce`` with every reduction,
``embedding`` with ``scale_grad_by_freq``, ``embedding_renorm`` (``max_norm=``) and packed sequences.

Note [Gradient rules torch defines beside the derivative]
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
Two embedding options make torch's backward differ from the derivative of the forward on purpose,
and the graph states the rule torch documents rather than refusing:

* ``scale_grad_by_freq=True``: the gradient reaching weight row ``r`` is divided by the number of
  times ``r`` occurs in the indices (rows at ``padding_idx`` get none).  The lookup reads
  ``W / c + stop_rev(W - W / c)`` (``c`` the per-row counts, 1 for unused rows): its value is ``W``,
  reverse mode sees ``1 / c``, and forward mode -- whose JVP is the plain lookup of the tangent in
  torch -- sees through the ``reverse_only`` stop to ``W``.
* ``max_norm=``: ``F.embedding`` first renormalises the looked-up rows of the weight *in place under
  no_grad* (``embedding_renorm_``), then looks up the modified weight.  Autograd records no
  function for the renormalisation: the weight stays the same leaf, so the gradient is the lookup's
  own, taken at the renormalised values, as if they had been the weight all along (the next
  optimiser step updates that stored, renormalised weight).  That is also what the check verifies:
  a value written into a differentiable input by ``copy_`` (how functionalization writes back an
  in-place update of an input) is read as ``W + stop(V - W)`` -- the new values, differentiated as
  the input (Note [Writes into an input]).  The renormalisation itself is built from core nodes
  (row norms, a ``Piecewise`` scale), behind the ``detach`` torch puts before it.
  ``torch.autograd.gradcheck`` fails on ``F.embedding(i, W, max_norm=1.0)`` from either side: below
  the renormalised point a finite step crosses the norm bound (a kink of the renorm), and from an
  unnormalised weight the finite differences see the renorm's projection, which torch's gradient
  deliberately leaves out.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from ..errors import UnsupportedOp
from .aten import handles
from .trace import Builder

__all__ = ["freq_scaled", "straight_through"]

_FILL = {"sum": 0.0, "mean": 0.0, "prod": 1.0, "amax": -np.inf, "amin": np.inf}


@handles("aten.scatter_reduce.two", "aten.scatter_reduce_.two")
def _scatter_reduce(b, args, kwargs, val):
    """``x`` with the entries of ``src`` reduced into positions ``index`` names along ``dim``; a
    position no entry lands on keeps ``x``'s value, and ``include_self=False`` leaves ``x`` out
    wherever some entry lands (as torch defines it).  One ``select`` per slot of a table of the
    positions' contributors (``x`` first, then the entries of ``src``), combined pointwise, or
    reduced with ``max``/``min`` for ``amax``/``amin`` (ties are kinks, as for ``amax`` itself)."""
    import torch

    x, dim, index, src = b.node_of(args[0]), args[1], args[2], b.node_of(args[3])
    reduce = args[4] if len(args) > 4 else kwargs["reduce"]
    include_self = args[5] if len(args) > 5 else kwargs.get("include_self", True)
    if reduce not in _FILL:
        raise UnsupportedOp(f"scatter_reduce with reduce={reduce!r}: torch names sum, prod, mean, amax and amin")
    ids = torch.arange(1, x.size + 1, dtype=torch.float64).reshape(x.shape)
    dest = torch.gather(ids, dim, index).long().numpy().ravel() - 1
    src_pos = np.arange(src.size).reshape(src.shape)[tuple(slice(0, n) for n in index.shape)].ravel()
    counts = np.bincount(dest, minlength=x.size)
    order = np.argsort(dest, kind="stable")
    rank = np.empty(dest.size, np.int64)
    rank[order] = np.arange(dest.size) - np.concatenate([[0], np.cumsum(counts)[:-1]])[dest[order]]
    keep_self = (counts == 0) | bool(include_self)
    table = np.zeros((x.size, 1 + int(counts.max(initial=0))), np.int64)  # 1-based into [x, src], 0: none
    table[:, 0] = np.where(keep_self, np.arange(1, x.size + 1), 0)
    table[dest, 1 + rank] = x.size + src_pos + 1
    fill = _FILL[reduce]
    if reduce in ("amax", "amin"):
        picked = b.select([x, src], table.reshape(tuple(x.shape) + (-1,)), fill=fill)
        return b.reduce("max" if reduce == "amax" else "min", picked, (len(x.shape),), False)
    terms = [b.select([x, src], table[:, k].reshape(x.shape), fill=fill) for k in range(table.shape[1])]
    if reduce == "prod":
        return b.pointwise(lambda *t: sp.Mul(*t), terms, tuple(x.shape))
    total = b.pointwise(lambda *t: sp.Add(*t), terms, tuple(x.shape))
    if reduce == "sum":
        return total
    n = torch.from_numpy(np.maximum(keep_self + counts, 1).astype(np.float64).reshape(x.shape))
    return b.pointwise(lambda s, c: s / c, [total, n])


def freq_scaled(b: Builder, weight, rows: np.ndarray, padding_idx: int):
    """``weight`` whose reverse-mode gradient reaching row ``r`` is divided by the number of times
    ``r`` occurs in ``rows`` (Note [Gradient rules torch defines beside the derivative])."""
    import torch

    counts = np.bincount(rows.ravel(), minlength=weight.shape[0]).astype(np.float64)
    if padding_idx is not None and 0 <= padding_idx < counts.size:
        counts[padding_idx] = 1.0
    inv = torch.from_numpy((1.0 / np.maximum(counts, 1.0))[:, None])
    scaled = b.pointwise(lambda w, s: w * s, [weight, inv])
    rest = b.pointwise(lambda w, s: w - w * s, [weight, inv])
    return b.pointwise(lambda a, r: a + r, [scaled, b.stop(rest, reverse_only=True)])


@handles("aten.embedding")
def _embedding(b, args, kwargs, val):
    """``weight[indices]``; rows at ``padding_idx`` are looked up but pass no gradient back, as torch
    defines it (a ``stop`` copy of the weight serves them); ``scale_grad_by_freq`` divides each row's
    gradient by its count (``freq_scaled``)."""
    weight, indices = b.node_of(args[0]), args[1]
    padding_idx = args[2] if len(args) > 2 else -1
    rows = np.asarray(indices.detach().cpu().numpy(), np.int64)
    looked = freq_scaled(b, weight, rows, padding_idx) if len(args) > 3 and args[3] else weight
    width = weight.shape[1]
    idx = rows[..., None] * width + np.arange(width) + 1
    if padding_idx is not None and padding_idx >= 0:
        idx = np.where((rows == padding_idx)[..., None], idx + weight.size, idx)
        out = b.select([looked, b.stop(weight, reverse_only=True)], idx)
    else:
        out = b.select([looked], idx)
    out.attrs["_sequential"] = ("float32", "float64")  # Note [Sequential reverse sums] (approx.py)
    return out


@handles("aten.embedding_renorm", "aten.embedding_renorm_")
def _embedding_renorm(b, args, kwargs, val):
    """The weight with each row that ``indices`` names scaled to ``max_norm / (norm + 1e-7)`` where its
    ``norm_type``-norm exceeds ``max_norm`` (torch's kernel), as core nodes."""
    import torch

    weight, indices, max_norm, norm_type = b.node_of(args[0]), args[1], float(args[2]), float(args[3])
    named = np.zeros((weight.shape[0], 1))
    named[np.unique(np.asarray(torch.as_tensor(indices).numpy(), np.int64)), 0] = 1.0
    p = sp.nsimplify(norm_type)
    powered = b.pointwise(lambda w: sp.Abs(w) ** p, [weight])
    norm = b.pointwise(lambda s: s ** (1 / p), [b.reduce("sum", powered, (1,), True)])
    bound = sp.Float(max_norm)

    def scale(n, m):
        return m * sp.Piecewise((bound / (n + sp.Float(1e-7)), n > bound), (1, True)) + (1 - m)

    factor = b.pointwise(scale, [norm, torch.from_numpy(named)])
    return b.pointwise(lambda w, f: w * f, [weight, factor])


def straight_through(b: Builder, leaf, new):
    """``leaf + stop(new - leaf)``: ``new``'s values, differentiated as ``leaf`` (Note [Writes into an
    input])."""
    if tuple(getattr(new, "shape", ())) != tuple(leaf.shape):
        new = b.layout("expand", new, tuple(leaf.shape))
    delta = b.pointwise(lambda n, w: n - w, [new, leaf])
    return b.pointwise(lambda w, d: w + d, [leaf, b.stop(delta)])


@handles("aten._pack_padded_sequence")
def _pack_padded(b, args, kwargs, val):
    """``(data, batch_sizes)``: the rows of the sequences still running at each step, step after step
    (lengths sorted longest first, as ``pack_padded_sequence`` passes them)."""
    import torch

    x, lengths, batch_first = b.node_of(args[0]), args[1], args[2]
    lengths = np.asarray(torch.as_tensor(lengths).numpy(), np.int64)
    if np.any(np.diff(lengths) > 0) or lengths.size == 0 or lengths.min() <= 0:
        raise UnsupportedOp("_pack_padded_sequence with lengths not sorted longest first (or a zero length): "
                            "pack_padded_sequence(..., enforce_sorted=False) sorts them")
    pos = np.arange(1, x.size + 1).reshape(x.shape)
    if batch_first:
        pos = pos.swapaxes(0, 1)
    chosen = [pos[t, :int((lengths > t).sum())] for t in range(int(lengths.max()))]
    idx = np.concatenate(chosen, 0).reshape((-1,) + tuple(x.shape[2:]))
    sizes = torch.tensor([c.shape[0] for c in chosen], dtype=torch.int64)
    return (b.select([x], idx), sizes)


@handles("aten._nested_tensor_from_mask_left_aligned")
def _mask_left_aligned(b, args, kwargs, val):
    """Whether a padding mask keeps each sequence's entries at its start (TransformerEncoder asks before
    its inference fast path): a fact about the integer mask, not about the values."""
    import torch

    return bool(torch._nested_tensor_from_mask_left_aligned(torch.zeros(args[0].shape), torch.as_tensor(args[1])))
