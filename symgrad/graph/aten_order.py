"""Order statistics as core nodes: sort, topk, kthvalue, median, mode, cummax and cummin pick
entries by their values, so each is a ``select`` of the picked entries (a ``max`` over the tied
ones, Note [Ties of order statistics]) beside the indices, integer data.
"""

from __future__ import annotations

import numpy as np

from .aten import handles, indices_read
from .aten_ext import _ids


@handles("aten.sort", "aten.topk", "aten.kthvalue", "aten.median.dim", "aten.nanmedian.dim", "aten.mode",
         "aten.cummax", "aten.cummin", "aten.sort.stable")
def _order(b, args, kwargs, val):
    """Values picked by indices that the float64 values choose (torch's ``(values, indices)``): the
    values are a ``select`` (a gather along the op's axis), the indices integer data."""
    import torch

    x = b.node_of(args[0])
    name = str(b.fx_node.target)
    several = "sort" in name or "topk" in name  # several outputs may draw on one tie (Note [A tie shared by outputs])
    own = b.torch_value(b.fx_node) if several or indices_read(b.fx_node) else None  # Note [Torch's own picks]
    with torch.no_grad():
        out = own if own is not None else b.fx_node.target(b.value_of(x), *args[1:], **kwargs)
    indices = out[1]
    if "sort" in name:
        dim = kwargs.get("dim", args[2] if "stable" in name and len(args) > 2 else (args[1] if len(args) > 1 else -1))
    elif "topk" in name:
        dim = args[2] if len(args) > 2 else kwargs.get("dim", -1)
    elif "kthvalue" in name:
        dim = args[2] if len(args) > 2 else kwargs.get("dim", -1)
    else:
        dim = args[1] if len(args) > 1 else kwargs.get("dim", -1)
    if not isinstance(dim, int):
        dim = -1
    ids = _ids(x)
    keep = indices if indices.dim() == ids.dim() else indices.unsqueeze(dim)
    picked = torch.gather(ids, dim, keep).reshape(indices.shape)
    prefix = "cummax" in name or "cummin" in name
    if indices_read(b.fx_node):  # Note [Ties of order statistics]: torch's indices pin its choice
        return b.select([x], picked.long().numpy()), indices
    pinned = _shared(b, x, picked.long().numpy(), dim) if several and own is not None else None
    return _tied_select(b, x, picked.long().numpy(), dim, prefix, pinned), indices


# Note [A tie shared by outputs]
# sort([1, 1]) has two outputs drawing on one tie: near it they are min(x0, x1) and max(x0, x1),
# whose choices are one choice -- the outputs take distinct entries (a permutation, or a convex
# combination of permutations).  Read as two free maxima, each output picked its side alone, and a
# backward routing both outputs to the first tied entry (a cotangent of (3, 0) where (1, 2) and
# (2, 1) are the two sides) passed, in reverse and forward mode, on both engines.  So an output of
# sort or topk whose value another output of its row shares is a plain select at torch's own pick
# (Note [Torch's own picks]): the permutation torch's forward made, which its backward and a custom
# Function saving its indices both follow.  A single output at a tie (topk(1), a tie that only one
# output reaches) stays a free max.
def _shared(b, x, picked: np.ndarray, dim) -> np.ndarray | None:
    """Outputs whose float64 value another output along ``dim`` holds too."""
    if dim is None or not x.shape or picked.size == 0:
        return None
    vals = b.value_of(x).detach().double().cpu().numpy().reshape(-1)[picked - 1]
    moved = np.moveaxis(vals, dim % vals.ndim, -1)
    order = np.argsort(moved, axis=-1, kind="stable")
    srt = np.take_along_axis(moved, order, axis=-1)
    same = srt[..., 1:] == srt[..., :-1]
    dup = np.zeros(srt.shape, bool)
    dup[..., 1:] |= same
    dup[..., :-1] |= same
    back = np.empty_like(dup)
    np.put_along_axis(back, order, dup, axis=-1)
    return np.moveaxis(back, -1, dim % vals.ndim)



# Note [Torch's own picks]
# Where an order statistic's indices are read after it (``E[idx]``, a gather by ``argmax``), they are
# taken from torch's own run of the traced graph on the inputs as given, in the checked dtype
# (``Builder.torch_value``), not from the float64 forward: in float32, ``max(x + 3, dim)`` ties two
# entries that float64 tells apart, torch picked the first, the graph the second, and every row
# failed (the expert the index selects differs).  The values then follow those indices.  Where the
# traced graph does not run, the float64 forward picks, as before.
@handles("aten.median.default", "aten.nanmedian.default")
def _median_all(b, args, kwargs, val):
    import torch

    x = b.node_of(args[0])
    with torch.no_grad():
        flat = b.value_of(x).reshape(-1)
        k = (flat.numel() - 1) // 2
        index = torch.sort(flat, stable=True).indices[k]
    if len(x.shape) > 1:  # the ties of median() are among all entries
        x = b.layout("reshape", x, (x.size,))
    return _tied_select(b, x, np.array(int(index) + 1), 0 if x.shape else None, False)


# Note [Ties of order statistics]
# sort, topk, kthvalue, median, mode, cummax and cummin pick an entry by its value.  Where several
# entries along the axis hold the picked value, which one is picked is the implementation's choice
# (torch's median() spreads the gradient evenly over them, median(dim) routes it to one), and every
# choice -- any convex combination -- is a valid derivative: locally, the picked value is the
# max over the tied entries, whose derivative has one side per entry.  So a tied pick is read as
# ``max`` over the tied entries (a ``select`` of the candidates and a ``reduce``), and the kink rule
# of ``max`` (ties are kinks, Note [Kink units]) judges whichever entry autograd routed to.  An
# untied pick stays a plain ``select``.  So does a tied pick whose indices the computation reads
# (``E[idx]`` after a top-k router): torch's indices are its side of the tie, and the values must
# follow them -- a value routed to another tied entry while ``idx`` still selects torch's expert is no
# side of the function (whose other sides select other experts, a jump).  With the tie free, a router
# whose backward flipped the sign passed (zero-initialised router, every logit tied).
def _tied_select(b, x, picked: np.ndarray, dim, prefix: bool, pinned: np.ndarray | None = None):
    """The entries of ``x`` at 1-based flat ``picked`` ids, each read as the max over the entries
    along ``dim`` that tie with it (only those up to the output's own position where ``prefix``:
    cummax / cummin); ``pinned`` outputs are plain picks (Note [A tie shared by outputs])."""
    vals = b.value_of(x).detach().double().cpu().numpy().reshape(x.shape)
    if dim is None or not x.shape or picked.size == 0:
        return b.select([x], picked)
    dim %= len(x.shape)
    flat = picked.reshape(-1) - 1
    coords = np.array(np.unravel_index(flat, x.shape))  # (ndim, m)
    n = x.shape[dim]
    rows = np.repeat(coords[:, :, None], n, axis=2)
    rows[dim] = np.arange(n)[None, :]
    row_ids = np.ravel_multi_index(tuple(rows), x.shape)  # (m, n), 0-based
    tie = vals.reshape(-1)[row_ids] == vals.reshape(-1)[flat][:, None]
    if prefix:  # the output's position along dim bounds the window
        position = np.unravel_index(np.arange(picked.size), picked.shape)[dim] if picked.shape == x.shape else None
        if position is not None:
            tie &= np.arange(n)[None, :] <= np.asarray(position)[:, None]
    if pinned is not None and pinned.any():
        keep = pinned.reshape(-1)
        tie[keep] = row_ids[keep] == flat[keep][:, None]
    k = int(tie.sum(axis=1).max())
    if k <= 1:
        return b.select([x], picked)
    cand = np.where(tie, row_ids, flat[:, None])
    order = np.argsort(~tie, axis=1, kind="stable")[:, :k]
    cand = np.take_along_axis(cand, order, axis=1) + 1
    node = b.select([x], cand.reshape(picked.shape + (k,)))
    return b.reduce("max", node, (len(picked.shape),), False)
