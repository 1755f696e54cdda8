"""Contractions through BLAS: ``dot`` (one product, einsum's value) and ``dots`` (the non-negative
products of a rounding bound or a band, recurring operands rearranged once, sparse ones
compressed).  Split out of :mod:`symgrad.graph.approx`, whose arithmetic calls them."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["dot", "dots", "FAST_MIN_WORK", "SPARSE_SAMPLE", "SPARSE_SHARE"]


# Note [Fast contractions]
# numpy's einsum without a path runs its own C loop, not BLAS: a 64 x 983 x 983 product took
# 17-100 ms where BLAS takes a few.  A two-operand contraction whose letters are each either in
# both operands (batch: kept; contracted: summed) or in one operand and the output (free) is a
# batched matrix product after a transpose and reshape of each side, so ``dot`` runs it through
# np.matmul.  Only large, finite operands take that route: small ones cost more to rearrange than
# to loop over, and a reference BLAS may skip a zero's products (0 * inf gives 0 there, NaN in
# numpy's loop), so non-finite values keep numpy's own loop.  Only the float64 reference's summation
# order changes (BLAS's blocked sums err no more than numpy's running sum); the bound, charged for
# the checked dtype's evaluation, does not depend on it, and small integers (the adjoint
# cross-check) stay exact in any order.
FAST_MIN_WORK = 1 << 16  # multiply-adds below which numpy's loop is as fast


@lru_cache(maxsize=1024)  # bounded: a sweep over shapes must not grow it forever
def _plan(spec: str, shapes: tuple):
    """(perm_a, perm_b, (nb, nl, nc, nr), out shape before the final permute, final perm) or None."""
    ins, out = spec.split("->")
    sa, sb = ins.split(",")
    if "." in spec or len(set(sa)) != len(sa) or len(set(sb)) != len(sb) or len(set(out)) != len(out):
        return None
    size: dict = {}
    for sub, shape in ((sa, shapes[0]), (sb, shapes[1])):
        for ch, n in zip(sub, shape):
            if size.setdefault(ch, n) != n:
                return None  # a broadcast size-1 axis: numpy's own rules
    batch = [c for c in out if c in sa and c in sb]
    left = [c for c in out if c in sa and c not in sb]
    right = [c for c in out if c in sb and c not in sa]
    summed = [c for c in sa if c in sb and c not in out]
    if set(sa) | set(sb) != set(batch + left + right + summed) or set(out) - set(sa) - set(sb):
        return None  # an index summed within one operand only
    work = int(np.prod([size[c] for c in batch + left + right + summed], dtype=np.float64))
    if work < FAST_MIN_WORK:
        return None
    dims = tuple(int(np.prod([size[c] for c in group], dtype=np.int64)) for group in (batch, left, summed, right))
    perm_a = tuple(sa.index(c) for c in batch + left + summed)
    perm_b = tuple(sb.index(c) for c in batch + summed + right)
    order = batch + left + right
    mid_shape = tuple(size[c] for c in order)
    final = tuple(order.index(c) for c in out)
    return perm_a, perm_b, dims, mid_shape, final


def dot(spec: str, *arrays) -> np.ndarray:
    """``np.einsum(spec, *arrays)``, through BLAS where it pays (Note [Fast contractions])."""
    if len(arrays) == 2:
        a, b = arrays
        plan = _plan(spec, (a.shape, b.shape))
        if plan is not None and np.isfinite(a).all() and np.isfinite(b).all():
            perm_a, perm_b, (nb, nl, nc, nr), mid_shape, final = plan
            am = np.transpose(a, perm_a).reshape(nb, nl, nc)
            bm = np.transpose(b, perm_b).reshape(nb, nc, nr)
            return np.transpose(np.matmul(am, bm).reshape(mid_shape), final)
    return np.einsum(spec, *arrays, optimize=len(arrays) > 2)


# Note [Sparse bands]
# A contraction's band is a contraction of its operands' bands (Note [Approx arithmetic]), and a
# band is mostly zero where few units sit on a kink: the patches of a convolution's input held a
# band at 5e-6 of their entries in a ResNet block (float32, the random-rounding reruns run each
# such product 16 times).  ``dots`` therefore takes only the rows (free entries of the left operand)
# and columns (of the right one) that hold a nonzero into the matrix product and leaves the others
# exactly 0.  A row of zeros gives exactly 0 in any summation order, and a row that holds a nonzero
# is summed by BLAS as before over a smaller matrix: the entries that are 0 stay 0 (the bounds' and
# bands' terms are never negative, so a positive entry stays positive), the others agree to float64
# rounding.  Whether to look is decided on a strided sample (SPARSE_SAMPLE), so dense operands pay
# a sixty-fourth of a pass; the rows themselves are then found exactly.
SPARSE_SAMPLE = 64  # every this-many-th entry sampled
SPARSE_SHARE = 0.125  # rows (or columns) holding a nonzero, at most this share: the product takes only them


def _live(m: np.ndarray, axis: int):
    """Indices along ``axis`` (1: rows of (nb, nl, nc); 2: columns of (nb, nc, nr)) that hold a
    nonzero, where few do (Note [Sparse bands]); None where the operand is not sparse."""
    n = m.shape[axis]
    if n < 2 * SPARSE_SAMPLE:
        return None
    sample = m.flat[::SPARSE_SAMPLE]  # any layout, a broadcast view too: a copy of the sample only
    if np.count_nonzero(sample) > SPARSE_SHARE * sample.size:
        return None
    live = np.flatnonzero(np.any(m, axis=(0, 2) if axis == 1 else (0, 1)))
    return live if live.size <= SPARSE_SHARE * n else None


def _product(am: np.ndarray, bm: np.ndarray, rows, cols) -> np.ndarray:
    if rows is None and cols is None:
        return np.matmul(am, bm)
    out = np.zeros((am.shape[0], am.shape[1], bm.shape[2]))
    sub_a = am if rows is None else am[:, rows, :]
    sub_b = bm if cols is None else bm[:, :, cols]
    if rows is not None and cols is not None:
        out[:, rows[:, None], cols] = np.matmul(sub_a, sub_b)
    elif rows is not None:
        out[:, rows, :] = np.matmul(sub_a, sub_b)
    else:
        out[:, :, cols] = np.matmul(sub_a, sub_b)
    return out


def dots(spec: str, pairs) -> list:
    """``[dot(spec, a, b) for a, b in pairs]`` for the products of a bound or band (every term of
    them non-negative), with each operand that recurs (a band's side against both signs of the
    other operand) rearranged for BLAS once, not once per product (for a convolution's patches that
    copy costs half as much as the product itself), and a sparse operand's zero rows or columns left
    out of the product (Note [Sparse bands]).  Dense operands give dot's results bit for bit."""
    seen: dict = {}

    def matrix(t, side, perm, dims):
        key = (id(t), side)
        if key not in seen:
            m = np.transpose(t, perm).reshape(dims)
            seen[key] = (t, m, _live(m, 1 + side))  # t kept alive: its id stays its own
        return seen[key][1:]

    finite: dict = {}

    def is_finite(t):
        if id(t) not in finite:
            finite[id(t)] = (t, bool(np.isfinite(t).all()))
        return finite[id(t)][1]

    out = []
    for a, b in pairs:
        plan = _plan(spec, (a.shape, b.shape))
        if plan is None or not (is_finite(a) and is_finite(b)):
            out.append(dot(spec, a, b))
            continue
        perm_a, perm_b, (nb, nl, nc, nr), mid_shape, final = plan
        (am, rows), (bm, cols) = matrix(a, 0, perm_a, (nb, nl, nc)), matrix(b, 1, perm_b, (nb, nc, nr))
        out.append(np.transpose(_product(am, bm, rows, cols).reshape(mid_shape), final))
    return out
