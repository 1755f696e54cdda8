"""Running sums and products as core nodes: ``cumsum``, ``logcumsumexp`` and ``cumprod`` along an
axis of any length.

# Note [A running sum in blocks]
``cumsum`` along an axis of n entries is a contraction with a triangular matrix of ones, n x n
constants: 3.2 GB at n = 20,000, and the adjoint cross-check makes integers of that shape too.
Past ``DENSE`` entries the axis is cut into blocks of k = ceil(sqrt n)
(zero-padded at its end): a running sum within each block (a k x k triangle), the blocks' totals
summed before each block (a strict B x B triangle) and added on.  Constants of 2n entries, not
n**2.  Every entry is still a sum of its prefix; its sums are charged as torch's sequential kernel
rounds (Note [Sequential scans] in approx.py), whichever blocks the graph cuts the axis into.  One
thing the blocks change: in a reverse sweep whose cotangents cancel, the sum over blocks is charged
on the blocks' (cancelled) totals, not on every term, so its bound is tighter than one triangle's.
torch's own float32 logcumsumexp failed that way in blocks at n = 2,000 (|x| ~ 30, 3 of 3 seeds)
and passes as one triangle: so its running sum is one triangle up to ``DENSE_LOG`` (a 134 MB
triangle) in float32 and float64.  In half precision a triangle that large made a check of 4,096
entries take 71 s (its random-rounding reruns), and there the blocks start at ``DENSE``.

# Note [Each position its own shift]
``logcumsumexp`` is ``c_i + log sum_{j<=i} exp(x_j - c_i)`` for any constant ``c_i``.  One shift for
the whole axis (its maximum) underflows: at entries of size 300 the first position's only term was
exp(-1000) = 0 and its log -inf, a false alarm on torch's own op.  Each position is shifted by the
running maximum up to it (held constant, read from the traced values as ``cummax`` picks it): every
term is at most 1, the largest exactly 1, and a term that underflows is below 1e-308 of the sum,
whose derivative underflows as well.  Within blocks of k the terms form a k x k triangle; the
blocks' totals, a B x B one; the two meet in a log-add-exp shifted by the running maximum of the
whole axis.  The triangles of terms cost k times the entries; where every finite entry of a row is
within ``_ONE_SHIFT`` (600) of the row's maximum no term can underflow, and the row keeps one shift,
its maximum, and a running sum of exp(x - max) (Note [A running sum in blocks]).  A graph kept for
other values of the same shapes reads other shifts: still the same function, and where they over-
or underflow the forward disagrees with torch's and symgrad traces again.
"""

from __future__ import annotations

import math

import numpy as np
import sympy as sp

from .aten import handles, narrowed_cotangent
from .trace import Builder

__all__ = ["running_sum", "running_product", "log_of", "DENSE", "DENSE_LOG", "DENSE_PRODUCT"]

DENSE = 512  # a running sum over up to this many entries is one triangle (Note [A running sum in blocks])
DENSE_LOG = 4096  # logcumsumexp's in float32 and float64: see the Note
_ONE_BLOCK = 64  # logcumsumexp shifted per position: one k x k block of terms up to this length
_ONE_SHIFT = 600.0  # entries this close to their row's maximum: one shift for the row (exp(-600) > 0)


def _letters(k: int) -> str:
    return "abcdefgh"[:k]


def _moved(b: Builder, x, axis: int):
    n = len(x.shape)
    return b.layout("permute", x, tuple([i for i in range(n) if i != axis] + [axis]))


def _back(b: Builder, x, axis: int):
    back = list(range(len(x.shape) - 1))
    back.insert(axis, len(x.shape) - 1)
    return b.layout("permute", x, tuple(back))


def _ids(node) -> np.ndarray:
    return np.arange(1, node.size + 1, dtype=np.int64).reshape(node.shape)


def _blocks(b: Builder, moved, n: int):
    """``moved`` (..., n) as (..., B, k) blocks, zero-padded at the end; (node, k, B)."""
    k = math.isqrt(n - 1) + 1
    blocks = -(-n // k)
    rows = moved.shape[:-1]
    if blocks * k != n:  # index 0 is the select's fill
        idx = np.zeros(rows + (blocks * k,), np.int64)
        idx[..., :n] = _ids(moved)
        moved = b.select([moved], idx)
    return b.layout("reshape", moved, rows + (blocks, k)), k, blocks


def _unblocked(b: Builder, run, n: int):
    rows = run.shape[:-2]
    run = b.layout("reshape", run, rows + (run.shape[-2] * run.shape[-1],))
    return run if run.shape[-1] == n else b.select([run], _ids(run)[..., :n])


def _scan(nodes, n: int, double: bool) -> None:
    for node in nodes:
        node.attrs.update(_scan=n, _scan_double=double)  # Note [Sequential scans] in approx.py


def running_sum(b: Builder, x, axis: int, double: bool = False, dense: int = DENSE):
    """The running sum of ``x`` along ``axis`` (Note [A running sum in blocks]); ``double``: torch's
    kernel and its backward add in double in a float32 check (Note [Sequential scans]); up to
    ``dense`` entries, one triangle."""
    import torch

    x = b.node_of(x)
    if not x.shape:
        return x
    axis %= len(x.shape)
    n, lead = x.shape[axis], _letters(len(x.shape) - 1)
    moved = _moved(b, x, axis)
    if n <= dense:
        run = b.contract(f"{lead}i,ij->{lead}j", moved, torch.triu(torch.ones(n, n, dtype=torch.float64)))
        _scan([run], n, double)
        return _back(b, run, axis)
    cut, k, blocks = _blocks(b, moved, n)
    within = b.contract(f"{lead}zi,ij->{lead}zj", cut, torch.triu(torch.ones(k, k, dtype=torch.float64)))
    totals = b.reduce("sum", cut, (len(cut.shape) - 1,), False)
    before = b.contract(f"{lead}y,yz->{lead}z", totals,
                        torch.triu(torch.ones(blocks, blocks, dtype=torch.float64), diagonal=1))
    _scan([within, totals, before], n, double)
    run = b.pointwise(lambda s, t: s + t, [within, b.layout("reshape", before, before.shape + (1,))])
    return _back(b, _unblocked(b, run, n), axis)


@handles("aten.cumsum")
def _cumsum(b, args, kwargs, val):
    return narrowed_cotangent(b, running_sum(b, args[0], int(args[1]), double=True))


# Note [A running product in blocks]
# torch's decomposition of ``cumprod`` is a product over an n x n triangle (entries past the
# position replaced by 1): at n = 2,048 over 4 rows that graph held 16 million numbers per node,
# and the check took 33 s and 2.7 GB.  A running product is read here as a running sum is (Note [A
# running sum in blocks]): past ``DENSE_PRODUCT`` entries, within blocks of k = ceil(sqrt n) a k x k
# triangle, the blocks' products before each block a B x B strict triangle, the two multiplied.
# The zero-padding of the last block reaches only positions past n, which are dropped, and that
# block's product, which no position reads.  A product's first-order rounding is the same relative
# bound in any order of its multiplications, and its derivatives come out of reverse mode exactly,
# zeros included, as ``product``'s do.
DENSE_PRODUCT = 64


def _triangle_product(b: Builder, moved, strict: bool = False):
    """Along the last axis of ``moved`` (m entries), position j the product of entries i <= j (i < j
    where ``strict``): a product over an m x m triangle of selected entries, 1 elsewhere."""
    from .aten_ext import product

    m = moved.shape[-1]
    rows, cols = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
    inside = rows < cols if strict else rows <= cols
    idx = np.where(inside, _ids(moved)[..., :, None], 0)  # [..., i, j]: entry i of position j's product
    return product(b, b.select([moved], idx, fill=1.0), len(moved.shape) - 1, False)


def running_product(b: Builder, x, axis: int, dense: int = DENSE_PRODUCT):
    """The running product of ``x`` along ``axis`` (Note [A running product in blocks])."""
    x = b.node_of(x)
    if not x.shape:
        return x
    axis %= len(x.shape)
    n = x.shape[axis]
    moved = _moved(b, x, axis)
    if n <= dense:
        return _back(b, _triangle_product(b, moved), axis)
    from .aten_ext import product

    cut, k, blocks = _blocks(b, moved, n)
    within = _triangle_product(b, cut)
    totals = product(b, cut, len(cut.shape) - 1, False)
    before = _triangle_product(b, totals, strict=True)
    run = b.pointwise(lambda s, t: s * t, [within, b.layout("reshape", before, before.shape + (1,))])
    return _back(b, _unblocked(b, run, n), axis)


@handles("aten.cumprod")
def _cumprod(b, args, kwargs, val):
    return narrowed_cotangent(b, running_product(b, args[0], int(args[1])), tangent=True)


def _running_max(b: Builder, z):
    """The running maximum of ``z`` along its last axis, held constant (picked from the traced
    values); 0 where every entry so far is -inf (Note [An empty prefix])."""
    import torch

    values = b.value_of(z)
    picked = torch.cummax(values, dim=-1).indices.numpy()
    flat = _ids(z) - np.arange(z.shape[-1]) + picked  # the same row, at the picked position
    return b.stop(b.select([z], np.where(_empty(b, z), 0, flat)))


def _row_max(b: Builder, z):
    """The maximum of each row (last axis, kept), held constant; 0 for a row of -inf alone."""
    m = b.reduce("max", z, (len(z.shape) - 1,), True)
    empty = _empty(b, z)[..., -1:]
    return b.stop(b.select([m], np.where(empty, 0, _ids(m))) if empty.any() else m)


# Note [An empty prefix]
# A -inf entry (a mask) is a term exp(-inf) = 0 of every sum after it.  Where every entry so far is
# -inf, the sum is 0 and its log -inf, as torch's is; but its shift was -inf too (-inf - -inf =
# NaN), and log's derivative 1/0 times the terms' 0 is NaN.  There the shift is 0, the sum gets 1
# (log 1 = 0, derivative 1), and the output is a select's fill of -inf, which passes no cotangent
# back: every derivative through those positions is 0, as the output does not move with any input.
def _empty(b: Builder, z) -> np.ndarray:
    """Positions of ``z`` whose prefix along the last axis holds no finite or +inf entry."""
    values = b.value_of(z).numpy()
    with np.errstate(invalid="ignore"):
        return np.maximum.accumulate(np.where(np.isnan(values), np.inf, values), axis=-1) == -np.inf


def log_of(b: Builder, total, shift, empty: np.ndarray, reuse: bool = False):
    """``log(total) + shift``, -inf where the prefix is empty (Note [An empty prefix])."""
    import torch

    if empty.any():
        total = b.pointwise(lambda s, c: s + c, [total, torch.from_numpy(empty.astype(np.float64))])
    out = b.pointwise(lambda s, t: sp.log(s) + t, [total, shift], tuple(empty.shape))
    if reuse:
        _reusing(out)
    return b.select([out], np.where(empty, 0, _ids(out)), fill=-math.inf) if empty.any() else out


def _log_prefix(b: Builder, z, n: int, reuse: bool = False):
    """``log sum_{j<=i} exp(z_j)`` along the last axis of ``z`` (Note [Each position its own shift])."""
    import torch

    k = z.shape[-1]
    empty = _empty(b, z)
    if _spread(b, z) <= _ONE_SHIFT:  # every term within exp's range of its row's maximum
        m = _row_max(b, z)
        terms = b.pointwise(sp.exp, [_charged(b.pointwise(lambda s, t: s - t, [z, m]))])
        lead = _letters(len(z.shape) - 1)
        run = b.contract(f"{lead}i,ij->{lead}j", terms, torch.triu(torch.ones(k, k, dtype=torch.float64)))
        _scan([run], n, False)
        return log_of(b, run, m, empty, reuse)
    c = _running_max(b, z)
    pairs = z.shape[:-1] + (k, k)  # (..., i, j)
    diff = _charged(b.pointwise(lambda s, t: s - t, [b.layout("reshape", z, z.shape[:-1] + (1, k)),
                                                     b.layout("reshape", c, c.shape + (1,))], pairs))
    keep = torch.tril(torch.ones(k, k, dtype=torch.bool)).numpy()
    ids = np.where(keep, _ids(diff), 0)  # j > i: exp(-inf) = 0, an exact term
    terms = b.pointwise(sp.exp, [b.select([diff], ids, fill=-math.inf)])
    total = b.reduce("sum", terms, (len(pairs) - 1,), False)
    return log_of(b, total, c, empty, reuse)


def _spread(b: Builder, z) -> float:
    """The largest distance between two finite entries of one row (the last axis) of ``z``'s traced values."""
    values = b.value_of(z).numpy()
    finite = np.isfinite(values)
    if not finite.any():
        return 0.0
    hi = np.max(np.where(finite, values, -np.inf), axis=-1)
    lo = np.min(np.where(finite, values, np.inf), axis=-1)
    return float(np.max(np.where(finite.any(axis=-1), hi - lo, 0.0)))


def _log_running_sum(b: Builder, moved, n: int, dense: int):
    if _spread(b, moved) <= _ONE_SHIFT:  # one shift per row: a running sum of exp(x - max)
        m = _row_max(b, moved)
        terms = b.pointwise(sp.exp, [_charged(b.pointwise(lambda s, t: s - t, [moved, m]))])
        run = running_sum(b, terms, len(moved.shape) - 1, dense=dense)
        return log_of(b, run, m, _empty(b, moved), reuse=True)
    if n <= _ONE_BLOCK:
        return _log_prefix(b, moved, n, reuse=True)
    cut, k, blocks = _blocks(b, moved, n)
    inner = _log_prefix(b, cut, n)  # (..., B, k): within each block
    rows = cut.shape[:-2]
    last = b.select([inner], _ids(inner)[..., -1])  # each block's total, (..., B)
    upto = _log_prefix(b, last, n)
    idx = np.zeros(rows + (blocks,), np.int64)
    idx[..., 1:] = _ids(upto)[..., :-1]
    before = b.layout("reshape", b.select([upto], idx, fill=-math.inf), rows + (blocks, 1))
    whole = b.layout("reshape", cut, rows + (blocks * k,))
    shift = b.layout("reshape", _running_max(b, whole), rows + (blocks, k))
    apart = [b.pointwise(lambda s, t: s - t, [part, shift], cut.shape) for part in (before, inner)]
    total = b.pointwise(lambda p, q: sp.exp(p) + sp.exp(q), apart)
    run = log_of(b, total, shift, _empty(b, whole).reshape(cut.shape), reuse=True)
    return _unblocked(b, run, n)


def _charged(diff):
    """``z - shift``: torch's backward adds x into an exponent next to terms of the output's size, so
    the exponent errs by |x| roundings besides (graph/rules.py, ``_reused_output``)."""
    diff.attrs["charged_sizes"] = (0,)
    return diff


def _reusing(out):
    """torch's backward, exp(logcumsumexp(log g - out) + x), starts from its rounded output ``out``."""
    out.attrs["reuses_output"] = True  # Note [logsumexp' from its rounded output] in aten_shift.py
    return out


@handles("aten.logcumsumexp")
def _logcumsumexp(b, args, kwargs, val):
    x = b.node_of(args[0])
    if not x.shape:
        return x
    axis = args[1] % len(x.shape)
    half = str(getattr(val, "dtype", "")) in ("torch.float16", "torch.bfloat16")
    return _back(b, _log_running_sum(b, _moved(b, x, axis), x.shape[axis], DENSE if half else DENSE_LOG), axis)
