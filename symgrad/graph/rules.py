"""One forward rule and one reverse-mode (VJP) rule per core node kind, in Approx arithmetic.

Every rule here is written in :mod:`symgrad.graph.approx`'s arithmetic, so its value, its rounding
bound and its kink band come out together (Note [Approx arithmetic]).  A rule returns one entry per
argument (``None`` where the argument has no derivative), as tinygrad's and jax's tables do.

The rules of the linear kinds (``contract``, ``select``, ``layout``, ``reduce`` sums) are checked
against their own forward on every graph before a result is trusted (``symgrad.graph.crosscheck``):
a wrong rule there makes the check fail, never pass.  Pointwise rules are ``sympy.diff`` of the
node's form; nothing per composite op is written by hand.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import numpy as np
import sympy as sp

from . import linalg
from .approx import Approx, add, einsum, mul, reduce_sum, rounded, summation_factor, unbroadcast
from .derivforms import as_torch_computes
from .ir import Node
from .exact import certified
from .scalar import KINK_ULPS, Ctx, evaluate

__all__ = ["forward", "vjp", "jvp", "symbols_for", "derivatives", "KinkLog"]


@lru_cache(maxsize=None)
def symbols_for(k: int) -> tuple:
    return tuple(sp.Symbol(f"s{i}", real=True) for i in range(k))


@lru_cache(maxsize=4096)
def derivatives(expr: sp.Expr, k: int) -> tuple:
    """∂expr/∂s_i for each argument: ``sympy.diff``, never written by hand, then put in the form
    torch computes (graph/derivforms.py: Notes [acosh' as torch computes it], [pow' at a zero base])."""
    return tuple(as_torch_computes(expr, sp.diff(expr, s)) for s in symbols_for(k))


def _broadcast(a: Approx, shape: tuple) -> Approx:
    return a if a.shape == shape else a.map(lambda t: np.broadcast_to(t, shape))


# ----------------------------------------------------------------------------------------- forward

def _step_valued(node: Node) -> bool:
    """Whether ``node``'s value is piecewise constant in the leaves (a constant, a floor, a mask, and
    arithmetic, layout and sums of those): an exact tie of such values stays a tie under any small
    move of the inputs, where ``x > 0`` at x = 0 is a kink (Note [Exact orderings of values]).
    Remembered per node (``attrs["_step_valued"]``); arguments come first in a graph's order."""
    hit = node.attrs.get("_step_valued")
    if hit is not None:
        return hit
    stack, order = [node], []
    while stack:  # the unknown arguments first, without recursion (a graph may be thousands deep)
        n = stack.pop()
        if n.attrs.get("_step_valued") is None:
            order.append(n)
            stack.extend(a for a in n.args if a.attrs.get("_step_valued") is None)
    for n in reversed(order):
        if n.attrs.get("_step_valued") is not None:
            continue
        if n.kind == "leaf":
            flag = n.attrs.get("role") == "const"
        elif n.kind == "pointwise":
            derivs = derivatives(n.attrs["expr"], len(n.args))
            flag = all(a.attrs["_step_valued"] or d == 0 for a, d in zip(n.args, derivs))
        elif n.kind in ("contract", "reduce", "layout", "select"):
            flag = all(a.attrs["_step_valued"] for a in n.args)
        else:  # stop keeps its argument's values; linear algebra: continuous
            flag = n.kind == "stop" and all(a.attrs["_step_valued"] for a in n.args)
        n.attrs["_step_valued"] = bool(flag)
    return node.attrs["_step_valued"]


def forward(node: Node, args: list, ctx: Ctx) -> Approx:
    kind = node.kind
    if kind == "pointwise":
        env = dict(zip(symbols_for(len(args)), args))
        expr = node.attrs["expr"]
        if all(_step_valued(a) for a in node.args):  # Note [Exact orderings of values] in scalar.py
            ctx = replace(ctx, values=True)
        return _finite_errors(_broadcast(certified(expr, env, ctx, evaluate(expr, env, ctx)), node.shape))
    if kind == "contract":
        return einsum(node.attrs["spec"], *args)
    if kind == "reduce":
        return _reduce(node, args[0], ctx)
    if kind == "layout":
        return args[0].map(lambda t: _layout(node, t))
    if kind == "select":
        return _select(node, args)
    if kind == "stop":
        return args[0]
    if kind == "linalg":
        return linalg.forward(node.attrs["op"], args, node.attrs)
    raise ValueError(f"no forward rule for node kind {kind!r}")


# Note [Astronomical values]
# Bounds are kept in units of float64's eps, so a value near the float64 limit -- a score plus
# ``torch.finfo(torch.float64).min``, Hugging Face's additive attention mask -- has a bound past the
# largest float: it overflows to inf, and exp of the masked score (0, derivative 0) turns it into
# 0 * inf = NaN, which spreads an unbounded error over the whole softmax row.  An entry larger than
# DBL_MAX * eps (about 4e292) keeps a bound of at most DBL_MAX (an absolute error of about one ulp
# of it); such entries are masks, and what they feed (exp, a softmax) sends them to 0.  Entries of
# ordinary size keep inf where their bound is truly unbounded.
_HUGE = float(np.finfo(np.float64).max) * 2.0**-52


def _astronomical(a: Approx) -> Approx:
    if a.e is None or not np.any(np.isinf(a.e)):
        return a
    with np.errstate(invalid="ignore"):
        cap = np.isinf(a.e) & (np.abs(a.v) >= _HUGE)
    if not cap.any():
        return a
    e = np.where(cap, np.finfo(np.float64).max, a.e)
    return Approx(a.v, e) if not a.banded else Approx(a.v, e, a.lo, a.hi)


def _finite_errors(a: Approx) -> Approx:
    """An infinite value (a masked score, ``x + (-inf)``) is what every evaluation gives: its rounding
    bound is 0, not ``inf`` (which would turn into ``0 * inf = nan`` in the bounds downstream)."""
    finite = np.isfinite(a.v)
    if finite.all():
        return _astronomical(a)
    e = np.where(finite, a.e, 0.0)
    return Approx(a.v, e) if not a.banded else Approx(a.v, e, np.where(finite, a.lo, 0.0), np.where(finite, a.hi, 0.0))


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
    e_group = np.max(err, axis=axes, keepdims=True)
    b_group = np.max(band, axis=axes, keepdims=True)
    slack = KINK_ULPS * ctx.eps * err + KINK_ULPS * ctx.eps * e_group + band + b_group  # no overflow: Note [Astronomical values]
    with np.errstate(invalid="ignore"):  # a group of -inf only (a fully masked row): no rival
        return np.abs(a.v - ext) <= slack


# ---------------------------------------------------------------------------------------------- vjp

def vjp(node: Node, args: list, g: Approx, ctx: Ctx, needed: list, kinks: list | None = None) -> list:
    """One cotangent per argument (``None``: no derivative, or not ``needed``), in Approx arithmetic.

    ``kinks``: where given, a pointwise derivative on a kink does not widen the band; instead each
    kinked entry is recorded as ``(argument node, flat entry, [changes of its cotangent entry, one per
    other side])`` for the joint kink check (Note [Kink units] in ``symgrad/graph/kinkunits.py``)."""
    kind = node.kind
    if kind == "pointwise":
        env = dict(zip(symbols_for(len(args)), args))
        grads, banded = [], []
        for i, (a, d, need) in enumerate(zip(args, derivatives(node.attrs["expr"], len(args)), needed)):
            if d == 0 or not need:
                grads.append(None)
                continue
            local = _broadcast(certified(d, env, ctx, evaluate(d, env, ctx)), node.shape)  # Note [Certified pointwise values]
            local = _reused_output(node, env, ctx, local)
            if kinks is not None and local.banded and a.shape == node.shape:
                if getattr(kinks, "flip", False):
                    local = _other_side(local)
                banded.append((node.args[i], local))
                local = Approx(local.v, local.e)
            grads.append(unbroadcast(_times_cotangent(g, local, _chosen(d)), a.shape))
        if banded:
            _record_node_kinks(kinks, banded, g)
        return grads
    if kind == "contract":
        return _vjp_contract(node.attrs["spec"], args, g, needed)
    if kind == "reduce":
        return [_vjp_reduce(node, args[0], g, ctx, kinks)]
    if kind == "layout":
        return [_vjp_layout(node, args[0], g)]
    if kind == "select":
        return _vjp_select(node, args, g)
    if kind == "stop":
        return [None]
    if kind == "linalg":
        op = node.attrs["op"]
        return linalg.vjp(op, args, linalg.forward(op, args, node.attrs), g, needed, node.attrs)
    raise ValueError(f"no vjp rule for node kind {kind!r}")


def _reused_output(node: Node, env: dict, ctx: Ctx, local: Approx) -> Approx:
    """``local`` charged |out| roundings of its own size where torch's derivative recomputes from the
    node's rounded output ``out`` through exp (Note [logsumexp' from its rounded output] in
    graph/aten_shift.py)."""
    if not node.attrs.get("reuses_output"):
        return local
    out = _broadcast(evaluate(node.attrs["expr"], env, ctx), node.shape)
    with np.errstate(invalid="ignore"):
        extra = np.where(np.isfinite(out.v), np.abs(local.v) * np.abs(out.v), 0.0)
    return Approx(rounded(local.v, extra), local.e + extra, *((local.lo, local.hi) if local.banded else ()))


def _chosen(d) -> bool:
    """Whether the derivative ``d`` picks a branch (``where``, ``masked_fill``, ``relu``): an entry it
    sends nowhere (an exact 0) has no derivative path, whatever the cotangent."""
    return isinstance(d, sp.Basic) and d.has(sp.Piecewise)


def _times_cotangent(g: Approx, local: Approx, chosen: bool = False) -> Approx:
    """``g * local``, where an exactly zero cotangent (the branch ``where`` did not take) times an
    infinite local derivative or bound (``exp(800)`` in softplus' unused branch) is 0, not NaN: the
    derivative of what was computed does not depend on the branch left out.  Likewise ``chosen``
    (Note [Masked entries under a NaN cotangent]): an exact 0 of a branch-picking derivative times a
    NaN or infinite cotangent is 0.  Forward mode calls it with the roles swapped: an exactly zero
    local derivative (``where``'s, for the branch it did not take) times that branch's tangent, NaN
    at softplus(1e5) (exp(1e5) / (1 + exp(1e5))), is 0."""
    out = mul(g, local)
    with np.errstate(invalid="ignore"):
        masked = (g.v == 0) & ~(g.e > 0) & ~(np.isfinite(local.v) & np.isfinite(local.e))
        if chosen:
            masked = masked | ((local.v == 0) & (local.e == 0) & ~np.isfinite(g.v))
    if not np.any(masked):
        return out
    v, e = np.where(masked, 0.0, out.v), np.where(masked, 0.0, out.e)
    return Approx(v, e, *((np.where(masked, 0.0, out.lo), np.where(masked, 0.0, out.hi)) if out.banded else ()))


# Note [Masked entries under a NaN cotangent]
# A row of attention scores masked entirely with -inf gives a NaN softmax row (0/0), and so a NaN
# cotangent reaching ``masked_fill``.  The masked entries never reach the output: torch's backward
# of ``where``/``masked_fill``/``threshold`` selects 0 for them, and the derivative of the computed
# function with respect to them is 0 too.  ``g * 0`` would make it NaN and blame torch's correct 0,
# so an exact 0 of a branch-picking (``Piecewise``) derivative stays 0 under a non-finite cotangent.
# A product with a constant 0 (``x * 0``) is not a branch and keeps NaN, as torch's ``mul`` does.
# The NaN forward row itself still fails the check (Non-finite values: nothing to verify there).


class KinkLog(list):
    """The kinked units a reverse sweep met (``vjp``'s ``kinks``); ``flip``: the sweep takes every
    kinked unit's other one-sided derivative (Note [Other side everywhere] in graph/kinkunits.py)."""

    def __init__(self, flip: bool = False, ties: bool = True, members: int = 0):
        super().__init__()
        self.flip = flip
        self.ties = ties  # ties of max/min as units (Note [Ties as kink units]); False: as bands
        self.members = members or MAX_TIE_MEMBERS  # the largest tie taken as a unit


def _other_side(local: Approx) -> Approx:
    """A banded derivative moved to the far edge of its band (``v + hi``, or ``v - lo`` where the
    band lies below), its band re-expressed around the new value."""
    v, lo, hi = np.broadcast_arrays(local.v, local.lo, local.hi)
    new = np.where(hi > 0, v + hi, v - lo)
    return Approx(new, local.e, new - (v - lo), (v + hi) - new)


def _record_kinks(kinks: list, arg: Node, g: Approx, local: Approx) -> None:
    """Each change comes with its rounding bound (units of eps): the cotangent's bound times the
    jump, plus the cotangent times the local derivative's bound (the jump is a difference of two
    rounded derivative values).  The other side's value is a rounded computation too."""
    lo, hi = (np.ravel(t) for t in np.broadcast_arrays(local.lo, local.hi))
    gv = np.ravel(np.broadcast_to(g.v, local.shape))
    ge = np.ravel(np.broadcast_to(g.e, local.shape))
    le = np.ravel(np.broadcast_to(local.e, local.shape))
    units = np.flatnonzero((lo > 0) | (hi > 0))
    if not units.size:
        return
    g_u, ge_u, le_u, lo_u, hi_u = (np.broadcast_to(t, gv.shape)[units] for t in (gv, ge, le, lo, hi))
    slack = np.abs(g_u) * 2 * le_u
    # the same numbers as one unit at a time, computed over all units at once (Python floats after)
    columns = (units.tolist(), (-g_u * lo_u).tolist(), (ge_u * lo_u + slack).tolist(), (g_u * hi_u).tolist(),
               (ge_u * hi_u + slack).tolist())
    for u, c_lo, t_lo, c_hi, t_hi in zip(*columns):
        changes = [(c, t) for c, t in ((c_lo, t_lo), (c_hi, t_hi)) if c != 0]
        if changes:
            kinks.append((arg, u, changes))


# Note [One side per node]
# A pointwise node on its kink is evaluated on one side for all of its arguments at once: elu traces
# to ``where(x > 0, x, alpha * expm1(x))``, whose derivatives with respect to its two branches jump at
# the same condition, 1 and 0 on one side, 0 and alpha on the other.  Recorded as two units, the
# joint kink check chose their sides independently and accepted 0 and 1 + alpha too (an elu backward
# counting both branches at 0, 3 where the sides are 1 and 2, passed on the op graph).  So where
# several arguments of one node are banded at one entry and each band has a single far edge (one
# other side), the entry is one unit whose change moves every argument to its far edge together.  An
# argument whose band reaches both ways (the sweep took a value between the sides) keeps the units
# per argument, as before: wider, never narrower than the truth.
def _record_node_kinks(kinks: list, banded: list, g: Approx) -> None:
    if len(banded) == 1:
        _record_kinks(kinks, banded[0][0], g, banded[0][1])
        return
    shape = banded[0][1].shape
    sides = [tuple(np.ravel(np.broadcast_to(t, shape)) for t in (local.lo, local.hi)) for _, local in banded]
    both = np.zeros(int(np.prod(shape, dtype=np.int64)), bool)
    for lo, hi in sides:
        both |= (lo > 0) & (hi > 0)
    joint = (sum(((lo > 0) | (hi > 0)).astype(int) for lo, hi in sides) >= 2) & ~both
    for (arg, local), (lo, hi) in zip(banded, sides):  # the other entries: one unit per argument
        alone = Approx(local.v, local.e, np.where(joint, 0.0, lo).reshape(shape), np.where(joint, 0.0, hi).reshape(shape))
        if alone.banded:
            _record_kinks(kinks, arg, g, alone)
    gv = np.ravel(np.broadcast_to(g.v, shape))
    ge = np.ravel(np.broadcast_to(g.e, shape))
    errs = [np.ravel(np.broadcast_to(local.e, shape)) for _, local in banded]
    for u in np.flatnonzero(joint):
        moves = [gv[u] * hi[u] if hi[u] > 0 else -gv[u] * lo[u] for lo, hi in sides]
        bound = sum(ge[u] * max(lo[u], hi[u]) + abs(gv[u]) * 2 * le[u] for (lo, hi), le in zip(sides, errs))
        if any(moves):
            kinks.append((tuple(arg for arg, _ in banded), int(u), [(tuple(moves), bound)]))


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
    if f:
        own = f * scatter(np.abs(g.v))
        v, e = rounded(v, own), e + own
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
    weight = exact / count
    near = _near_extreme(a, ext, axes, ctx)
    tied = np.sum(near, axis=axes, keepdims=True) > 1
    v = gk.v * weight
    e = gk.e * weight + np.where(count > 1, np.abs(v), 0.0)
    v = rounded(v, np.where(count > 1, np.abs(v), 0.0))
    # at a tie each tied entry may receive anything from none of the cotangent to all of it
    g_lo, g_hi = gk.sides()
    lo_end, hi_end = np.minimum(0.0, gk.v - g_lo), np.maximum(0.0, gk.v + g_hi)
    tie = near & tied
    if kinks is not None and getattr(kinks, "ties", True) and tie.any() and not gk.banded:  # Note [Ties as kink units]
        small = tie & (np.sum(near, axis=axes, keepdims=True) <= getattr(kinks, "members", MAX_TIE_MEMBERS))
        if small.any():
            _record_ties(kinks, node.args[0], np.broadcast_to(v, a.shape), np.broadcast_to(gk.v, a.shape),
                         np.broadcast_to(gk.e, a.shape), small, axes)
            tie = tie & ~small
    lo = np.where(tie, v - lo_end, g_lo * weight)
    hi = np.where(tie, hi_end - v, g_hi * weight)
    return Approx(v, e, lo, hi)


# Note [Ties as kink units]
# At a tie of max/min each tied entry may receive anything from none of the cotangent to all of
# it -- but together they receive exactly the cotangent: torch's amax splits it evenly, max()
# sends it to one index, and any convex combination is a subgradient.  Entrywise bands alone would
# pass a backward that sends the whole cotangent to *every* tied entry.  With a kink log (the
# joint kink check's sweeps, Note [Kink units]) a tied group is one unit instead: one generator per
# tied entry, "all of the cotangent to this entry" minus the sweep's own split, so the joint fit
# accepts exactly the convex combinations (its weights are capped simplices).  Each tied entry costs
# a reverse sweep, so a tie of more entries than the graph's size allows (``tie_members`` in
# graph/kinkunits.py: MAX_TIE_MEMBERS on a model, up to MAX_SMALL_TIE on a small function, whose
# amax over 64 equal entries passed a backward sending the whole cotangent to each) keeps the band.  Without a log the
# entrywise band stays (sound, weaker); where ties would take the units past MAX_KINK_UNITS (relu
# then max pooling ties every all-zero window), the sweeps are run again with ties as bands, so the
# relu units keep their joint check (graph/kinkunits.py).
MAX_TIE_MEMBERS = 8  # on a model, a larger tie (a dead channel under global max pooling) keeps its band
MAX_SMALL_TIE = 1024  # on a small graph, ties up to this many entries are units


def _record_ties(kinks: list, arg: Node, v: np.ndarray, gv: np.ndarray, ge: np.ndarray, tie: np.ndarray,
                 axes: tuple) -> None:
    order = [d for d in range(v.ndim) if d not in axes] + list(axes)
    rows = int(np.prod([v.shape[d] for d in axes], dtype=np.int64))

    def grouped(t):
        return np.transpose(np.asarray(t), order).reshape(-1, rows)

    ids = grouped(np.arange(v.size).reshape(v.shape))
    for group in np.flatnonzero(grouped(tie).sum(axis=1) > 1):
        members = ids[group][grouped(tie)[group]]
        given, total = v.ravel()[members], float(gv.ravel()[members[0]])
        bound = np.full(len(members), float(ge.ravel()[members[0]]) + abs(total))
        changes = [(total * (np.arange(len(members)) == j) - given, bound) for j in range(len(members))]
        kinks.append((arg, members, changes))


# ---------------------------------------------------------------------------------------------- jvp

def jvp(node: Node, args: list, tangents: list, ctx: Ctx) -> Approx | None:
    """The tangent of ``node`` from its arguments' tangents (``None``: zero), in Approx arithmetic."""
    if all(t is None for t in tangents):
        return None
    if node.kind == "stop":  # detach: no derivative; a convention of torch's backward only: forward mode passes
        return tangents[0] if node.attrs.get("reverse_only") and not ctx.backward_graph else None
    kind = node.kind
    if kind == "pointwise":
        env = dict(zip(symbols_for(len(args)), args))
        out = None
        for t, d in zip(tangents, derivatives(node.attrs["expr"], len(args))):
            if t is None or d == 0:
                continue
            local = _reused_output(node, env, ctx, _broadcast(certified(d, env, ctx, evaluate(d, env, ctx)), node.shape))
            term = _times_cotangent(local, _broadcast(t, node.shape))  # a branch not taken: 0, even times inf
            out = term if out is None else add(out, term)
        return _half_jvp_rounding(out, tangents, node.shape, ctx)
    if kind == "contract":
        out = None
        for i, t in enumerate(tangents):
            if t is not None:
                term = einsum(node.attrs["spec"], *(t if j == i else a for j, a in enumerate(args)))
                out = term if out is None else add(out, term)
        return out
    if kind == "linalg":  # forward-mode rules in symgrad.graph.linalg (Note [Linalg rounding])
        return linalg.jvp(node.attrs["op"], args, tangents, node.attrs)
    filled = [Approx(np.zeros(a.shape)) if t is None else t for a, t in zip(args, tangents)]
    if kind == "select":  # the constant fill (padding, a product's 1) has no tangent
        return _select(node, filled, fill=0.0)
    if kind == "layout" or (kind == "reduce" and node.attrs["op"] == "sum"):
        return forward(node, filled, ctx)
    if kind == "reduce":
        return _jvp_extreme(node, args[0], filled[0], ctx)
    raise NotImplementedError(f"no forward-mode rule for {kind} nodes ({node.origin or node.name})")


def _half_jvp_rounding(out: Approx | None, tangents: list, shape: tuple, ctx: Ctx) -> Approx | None:
    """In a half check, one more rounding on the sizes of all the argument tangents: torch's
    forward-mode formulas of binary ops combine them before selecting (maximum's tangent is
    ``t_other + mask * (t_self - t_other)``, rounded twice in the half dtype)."""
    given = [t for t in tangents if t is not None]
    if out is None or len(tangents) < 2 or ctx.dtype not in ("float16", "bfloat16"):
        return out
    size = sum(np.abs(_broadcast(t, shape).v) for t in given)
    return Approx(out.v, out.e + size, *((out.lo, out.hi) if out.banded else ()))


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
