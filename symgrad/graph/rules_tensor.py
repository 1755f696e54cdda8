"""The rules of the tensor kinds -- ``contract``, ``reduce``, ``layout``, ``select`` -- in Approx
arithmetic: their forward and reverse-mode (VJP) rules, and max/min's forward-mode one (the other
tangents are computed in ``rules.jvp``); ``symgrad.graph.rules`` dispatches to them by node kind.

The linear ones (``contract``, ``layout``, ``select`` and ``reduce`` sums) are checked against
their own forward on every graph before a result is trusted (``symgrad.graph.crosscheck``): a
wrong rule there makes the check fail, never pass.  A tie of max/min is a kink: its entries are
recorded as kink units where the sweep keeps a log (``symgrad.graph.kinklog``), else banded.
"""

from __future__ import annotations

import numpy as np

from .approx import (Approx, einsum, in_sequence, reduce_sum, rerun_share, rounded, sequential_sum, summation_factor,
                     unbroadcast)
from .ir import Node
from .kinklog import MAX_TIE_MEMBERS, _record_ties, indistinct, tie_groups
from .scalar import KINK_ULPS, Ctx

__all__: list = []  # the rules are reached through symgrad.graph.rules' forward, vjp and jvp


def _broadcast(a: Approx, shape: tuple) -> Approx:
    return a if a.shape == shape else a.map(lambda t: np.broadcast_to(t, shape))



def _layout(node: Node, t: np.ndarray) -> np.ndarray:
    op, arg = node.attrs["op"], node.attrs["arg"]
    if op == "reshape":
        return np.reshape(t, arg)
    if op == "permute":
        return np.transpose(t, arg)
    if op == "expand":
        return np.broadcast_to(t, arg)
    raise ValueError(f"unknown layout op {op!r}")


def _select(node: Node, args: list, fill: float | None = None) -> Approx:
    """``fill`` overrides the node's constant for the entries no argument supplies (a tangent's is 0)."""
    gather = _gather_index(node, sum(a.v.size for a in args))

    def take(field, fill=0.0):
        parts = [np.ravel(getattr(a, field)) if getattr(a, field) is not None else np.zeros(a.v.size) for a in args]
        return np.concatenate(parts + [np.full(1, fill)])[gather].reshape(node.shape)

    value = take("v", node.attrs.get("fill", 0.0) if fill is None else fill)
    if not any(a.banded for a in args):
        return Approx(value, take("e"))
    return Approx(value, take("e"), take("lo"), take("hi"))


# Note [Gather with a fill slot]
# A select's entries come from its arguments' flattened values or, where its 1-based index is 0
# (a convolution's padding, a pool's -inf), from a constant.  Gathering from the arguments with one
# more slot at the end holding that constant is one pass over the output; ``np.where(pick,
# flat[where], fill)`` was three and took most of a convolution's select (the patches of a
# 32-channel 32x32 batch hold 2.4M entries, gathered for value, bound and band in every sweep and
# every random-rounding rerun).  The same entries are picked, so the results are identical.  The
# index arrays are made once per call and shared by the fields, not kept between calls: kept per
# node they held some 150 MB on a small ResNet (memory comes before speed).


def _gather_index(node: Node, total: int) -> np.ndarray:
    idx = node.attrs["idx"]
    return np.where(idx > 0, idx - 1, total).ravel()


def _scatter_plan(node: Node) -> tuple:
    """(the picked entries of the select's flattened output, or None for all; their 0-based slots)."""
    flat = node.attrs["idx"].ravel()
    pick = flat > 0
    if pick.all():
        return None, flat - 1
    return pick, flat[pick] - 1


def _reduce(node: Node, a: Approx, ctx: Ctx) -> Approx:
    axes, keep = tuple(node.attrs["axes"]), node.attrs["keepdim"]
    if node.attrs["op"] == "sum":
        if node.attrs.get("_sequential_forward"):  # one axis, not kept: Note [Many entries landing at one place]
            return sequential_sum(a, axes[0], node.attrs["_sequential_forward"] == "opmath")
        return reduce_sum(a, axes, keep)
    fn = np.max if node.attrs["op"] == "max" else np.min
    v = fn(a.v, axis=axes, keepdims=True)
    near = _near_extreme(a, v, axes, ctx)
    e = np.max(np.where(near, a.e, 0.0), axis=axes, keepdims=True)
    out = Approx(v, e)
    return out if keep else out.map(lambda t: np.squeeze(t, axis=axes))


def _near_extreme(a: Approx, ext: np.ndarray, axes: tuple, ctx: Ctx) -> np.ndarray:
    """Entries that a correct evaluation could make the extreme: the extreme itself and any entry
    within rounding (or band) of it -- ties are kinks."""
    finite = np.isfinite(a.v)  # a masked -inf (attention masks) is exact and never an extreme's rival
    err = np.where(finite, a.e, 0.0)
    band = np.where(finite, a.band(), 0.0)
    # the rivals' bounds, not the group's: a masked -1e9 beside ELU outputs (a bound of a few float32
    # ulps of 1e9, hundreds) made every entry of its row a rival of the maximum, and the ties past the sweeps' budget
    # banded a Deep Sets model's gradients at 70 times their size; the rivals of its rivals count too
    near = a.v == ext
    for _ in range(2):
        e_group = np.max(np.where(near, err, 0.0), axis=axes, keepdims=True)
        b_group = np.max(np.where(near, band, 0.0), axis=axes, keepdims=True)
        slack = KINK_ULPS * ctx.eps * err + KINK_ULPS * ctx.eps * e_group + band + b_group  # no overflow: Note [Astronomical values] in rules.py
        with np.errstate(invalid="ignore"):  # a group of -inf only (a fully masked row): its equal entries
            near = (np.abs(a.v - ext) <= slack) | (~np.isfinite(ext) & (a.v == ext))  # tie (forward mode's tangents)
    return near



def _vjp_contract(spec: str, args: list, g: Approx, needed: list) -> list:
    ins, out = spec.split("->")
    subs = ins.split(",")
    grads = []
    for i, (sub, a) in enumerate(zip(subs, args)):
        if not needed[i]:
            grads.append(None)
            continue
        others = [s for j, s in enumerate(subs) if j != i]
        if set(sub) - set(out) - set("".join(others)):
            raise NotImplementedError(f"einsum {spec!r}: an index summed within one operand only")
        spec_i = ",".join([out] + others) + "->" + sub
        grads.append(einsum(spec_i, g, *(args[j] for j in range(len(args)) if j != i)))
    return grads


def _vjp_layout(node: Node, a: Approx, g: Approx) -> Approx:
    op, arg = node.attrs["op"], node.attrs["arg"]
    if op == "reshape":
        return g.map(lambda t: np.reshape(t, a.shape))
    if op == "permute":
        inverse = tuple(np.argsort(arg))
        return g.map(lambda t: np.transpose(t, inverse))
    if op == "expand":
        return unbroadcast(g, a.shape)
    raise ValueError(f"unknown layout op {op!r}")


def _vjp_select(node: Node, args: list, g: Approx) -> list:
    pick, slots = _scatter_plan(node)
    total = sum(a.v.size for a in args)
    mult = node.attrs.get("_multiplicity")
    if mult is None:
        mult = node.attrs["_multiplicity"] = int(np.bincount(slots, minlength=total).max(initial=0))

    def scatter(t):
        flat = np.ravel(t)
        return np.bincount(slots, weights=flat if pick is None else flat[pick], minlength=total)

    v, e = scatter(g.v), scatter(g.e)
    f = summation_factor(mult)
    if f and in_sequence():  # one term at a time: each entry its own count (Note [Sequential reverse sums])
        f = np.maximum(np.bincount(slots, minlength=total) - 1, 0)
    if np.any(f):
        own = f * scatter(np.abs(g.v))
        v, e = rounded(v, own * rerun_share()), e + own
    lo, hi = (scatter(g.lo), scatter(g.hi)) if g.banded else (None, None)
    grads, start = [], 0
    for a in args:
        part = slice(start, start + a.v.size)
        start += a.v.size
        grads.append(Approx(*(None if t is None else t[part].reshape(a.shape) for t in (v, e, lo, hi))))
    return grads


def _vjp_reduce(node: Node, a: Approx, g: Approx, ctx: Ctx, kinks: list | None = None) -> Approx:
    axes, keep = tuple(node.attrs["axes"]), node.attrs["keepdim"]
    kept = list(a.shape)
    for ax in axes:
        kept[ax] = 1
    gk = g.map(lambda t: np.reshape(t, kept)) if not keep else g
    if node.attrs["op"] == "sum":
        return _broadcast(gk, a.shape)
    fn = np.max if node.attrs["op"] == "max" else np.min
    ext = fn(a.v, axis=axes, keepdims=True)
    exact = a.v == ext
    count = np.sum(exact, axis=axes, keepdims=True)
    pick = getattr(kinks, "pick", None)
    weight = _first_entry(exact, axes, pick == "last") if pick else exact / count
    near = _near_extreme(a, ext, axes, ctx)
    tied = np.sum(near, axis=axes, keepdims=True) > 1
    v = gk.v * weight
    e = gk.e * weight + np.where(count > 1, np.abs(v), 0.0)
    v = rounded(v, np.where(count > 1, np.abs(v), 0.0))
    # at a tie each tied entry may receive anything from none of the cotangent to all of it
    g_lo, g_hi = gk.sides()
    lo_end, hi_end = np.minimum(0.0, gk.v - g_lo), np.maximum(0.0, gk.v + g_hi)
    tie = near & tied
    same = indistinct(node.args[0], near, axes)
    if same is not None:  # Note [Ties of indistinct entries]: any split gives the same gradient
        tie = tie & ~same
    if getattr(kinks, "even_ties", False):  # Note [A tie's total] (tie_totals.py): the even split, no band
        tie = np.zeros_like(tie)
    if kinks is not None and getattr(kinks, "ties", True) and tie.any() and not gk.banded:  # Note [Ties as kink units]
        small = tie & (np.sum(near, axis=axes, keepdims=True) <= getattr(kinks, "members", MAX_TIE_MEMBERS))
        if small.any():
            _record_ties(kinks, node.args[0], np.broadcast_to(v, a.shape), np.broadcast_to(gk.v, a.shape),
                         np.broadcast_to(gk.e, a.shape), small, axes)
            tie = tie & ~small
        if tie.any():  # ties too large to be units here: kinkunits may sweep again allowing larger ones
            kinks.oversized = getattr(kinks, "oversized", 0) + int(np.sum(np.any(tie, axis=axes)))  # ties, not entries
    if kinks is not None and tie.any() and not gk.banded and hasattr(kinks, "banded_ties"):
        _note_banded_ties(kinks, node.args[0], tie, np.broadcast_to(weight, a.shape), np.broadcast_to(gk.v, a.shape),
                          np.broadcast_to(gk.e, a.shape), axes)
    lo = np.where(tie, v - lo_end, g_lo * weight)
    hi = np.where(tie, hi_end - v, g_hi * weight)
    return Approx(v, e, lo, hi)



def _note_banded_ties(kinks, arg: Node, tie: np.ndarray, weight: np.ndarray, gv: np.ndarray, ge: np.ndarray,
                      axes: tuple) -> None:
    """Each banded tie's flat members in ``arg``, the sweep's share of each, its cotangent and that
    cotangent's bound (Note [A tie's total] in tie_totals.py)."""
    for members in tie_groups(tie, axes):
        kinks.banded_ties.append((arg, members, weight.ravel()[members], float(gv.ravel()[members[0]]),
                                  float(ge.ravel()[members[0]])))


def _first_entry(exact: np.ndarray, axes: tuple, last: bool = False) -> np.ndarray:
    """1.0 at the first (``last``: the last) True of ``exact`` over ``axes`` in C order, 0.0
    elsewhere (Note [A tie's first entry] in graph/kinkunits.py)."""
    rest = [d for d in range(exact.ndim) if d not in axes]
    moved = np.transpose(exact, rest + list(axes))
    flat = moved.reshape(moved.shape[:len(rest)] + (-1,))
    one = np.zeros(flat.shape)
    at = flat.shape[-1] - 1 - np.argmax(flat[..., ::-1], axis=-1) if last else np.argmax(flat, axis=-1)
    np.put_along_axis(one, at[..., None], 1.0, axis=-1)
    one = one.reshape(moved.shape)
    return np.transpose(one, np.argsort(rest + list(axes)))


def _jvp_extreme(node: Node, a: Approx, t: Approx, ctx: Ctx) -> Approx:
    """max/min: the tangent of the extreme entry (split evenly over exact ties); where entries tie
    within rounding, any of their tangents could be taken -- a band over all of them."""
    axes, keep = tuple(node.attrs["axes"]), node.attrs["keepdim"]
    fn = np.max if node.attrs["op"] == "max" else np.min
    ext = fn(a.v, axis=axes, keepdims=True)
    exact = a.v == ext
    weight = exact / np.sum(exact, axis=axes, keepdims=True)
    v = np.sum(t.v * weight, axis=axes, keepdims=True)
    e = np.sum(t.e * weight, axis=axes, keepdims=True) + np.abs(v)
    near = _near_extreme(a, ext, axes, ctx)
    t_lo, t_hi = t.sides()
    low = np.min(np.where(near, t.v - t_lo, np.inf), axis=axes, keepdims=True)
    high = np.max(np.where(near, t.v + t_hi, -np.inf), axis=axes, keepdims=True)
    out = Approx(v, e, np.maximum(v - low, 0.0), np.maximum(high - v, 0.0))
    return out if keep else out.map(lambda x: np.squeeze(x, axis=axes))
