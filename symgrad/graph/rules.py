"""One forward rule and one reverse-mode (VJP) rule per core node kind, in Approx arithmetic.

Every rule here is written in :mod:`symgrad.graph.approx`'s arithmetic, so its value, its rounding
bound and its kink band come out together (Note [Approx arithmetic]).  A rule returns one entry per
argument (``None`` where the argument has no derivative), as tinygrad's and jax's tables do.

``forward``, ``vjp`` and ``jvp`` dispatch by node kind.  The pointwise rules are here: they are
``sympy.diff`` of the node's form; nothing per composite op is written by hand.  The rules of the
tensor kinds (``contract``, ``select``, ``layout``, ``reduce``) are in ``symgrad.graph.rules_tensor``;
the linear ones (and ``reduce`` sums) are checked against their own forward on every graph before a
result is trusted (``symgrad.graph.crosscheck``): a wrong rule there makes the check fail, never
pass.  The kinked entries a reverse sweep meets are recorded by ``symgrad.graph.kinklog``.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import numpy as np
import sympy as sp

from . import linalg
from .approx import EPS, SMALLEST_NORMAL, Approx, add, charged, einsum, mul, scale, unbroadcast
from .derivforms import as_torch_computes
from .ir import Node
from .exact import certified
from .kinklog import (_other_sides, _record_node_kinks, _region_changes, _same_points, _sides,
                      shared_both_ways)
# the dispatchers below look these names up here (tests patch a rule as rules._vjp_layout etc.)
from .rules_tensor import (_broadcast, _jvp_extreme, _layout, _reduce, _select, _vjp_contract, _vjp_layout,
                           _vjp_reduce, _vjp_select)
from .scalar import Ctx, evaluate

__all__ = ["forward", "vjp", "jvp", "symbols_for", "derivatives"]


@lru_cache(maxsize=None)
def symbols_for(k: int) -> tuple:
    return tuple(sp.Symbol(f"s{i}", real=True) for i in range(k))


@lru_cache(maxsize=4096)
def derivatives(expr: sp.Expr, k: int) -> tuple:
    """∂expr/∂s_i for each argument: ``sympy.diff``, never written by hand, then put in the form
    torch computes (graph/derivforms.py: Notes [acosh' as torch computes it], [pow' at a zero base])."""
    return tuple(as_torch_computes(expr, sp.diff(expr, s)) for s in symbols_for(k))


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


# ---------------------------------------------------------------------------------------------- vjp

def vjp(node: Node, args: list, g: Approx, ctx: Ctx, needed: list, kinks: list | None = None) -> list:
    """One cotangent per argument (``None``: no derivative, or not ``needed``), in Approx arithmetic.

    ``kinks``: where given, a pointwise derivative on a kink does not widen the band; instead each
    kinked entry is recorded as ``(argument node, flat entry, [changes of its cotangent entry, one per
    other side])`` for the joint kink check (Note [Kink units] in ``symgrad/graph/kinkunits.py``)."""
    kind = node.kind
    if kind == "pointwise":
        return _vjp_pointwise(node, args, g, ctx, needed, kinks)
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


def _moving(node: Node, ctx: Ctx) -> Ctx:
    """``ctx`` knowing which of the node's argument symbols move with the inputs (Note [Equalities at
    a kink] in scalar.py)."""
    moving = node.attrs.get("_moving")
    if moving is None:  # remembered per node, as ``_step_valued`` is
        moving = node.attrs["_moving"] = frozenset(
            s for s, a in zip(symbols_for(len(node.args)), node.args) if not _step_valued(a))
    return replace(ctx, moving=moving) if moving and ctx.moving != moving else ctx


def _vjp_pointwise(node: Node, args: list, g: Approx, ctx: Ctx, needed: list, kinks) -> list:
    env = dict(zip(symbols_for(len(args)), args))
    forms = derivatives(node.attrs["expr"], len(args))
    ctx = _moving(node, ctx)
    local = {}
    for i, (d, need) in enumerate(zip(forms, needed)):
        if d != 0 and need:
            value = _broadcast(certified(d, env, ctx, evaluate(d, env, ctx)), node.shape)  # Note [Certified pointwise values]
            local[i] = _reused_output(node, env, ctx, value, i)
    kinked = [i for i in local if kinks is not None and local[i].banded and args[i].shape == node.shape]
    regions = None
    if len(kinked) > 1 and shared_both_ways([local[i] for i in kinked]):
        regions = _one_sided([forms[i] for i in kinked], args, ctx, node.shape)
    if kinked and getattr(kinks, "flip", False):
        for i, moved in zip(kinked, _other_sides([local[i] for i in kinked], regions)):
            local[i] = moved
    grads = []
    for i, (a, d) in enumerate(zip(args, forms)):
        if i not in local:
            grads.append(None)
            continue
        # Note [A cotangent passed on as it is]
        if d in (1, -1) and not np.any(local[i].e) and not _widening(node, i, ctx.dtype):
            grads.append(unbroadcast(scale(g, float(d)), a.shape))
            continue
        chosen = Approx(local[i].v, local[i].e) if i in kinked else local[i]
        grads.append(unbroadcast(_times_cotangent(g, chosen, _chosen(d)), a.shape))
    if kinked:
        start = len(kinks)
        _record_node_kinks(kinks, [(node.args[i], local[i]) for i in kinked], g, _same_points(args, node.shape),
                           regions)
        _note_drivers(kinks, start, node, args)
    return grads


# Note [A cotangent passed on as it is]
# Where a pointwise node's local derivative is exactly 1 or -1 (``a + b``, ``a - b``, a copy), torch's
# backward passes the cotangent on unchanged (or negated): no rounding.  Charged one rounding per entry
# as any product, the broadcast sum after it was charged a half rounding on every term: a bfloat16
# bias gradient, the sum of 512 rows of ``A + b``'s cotangent, was allowed 14 % of its size and a
# bias gradient summed row by row in bfloat16 passed.  A node computing in a wider dtype than its
# argument is the exception (a widening cast, ``x_half + w_float32``): torch rounds the wider
# cotangent to the argument's dtype (Note [Nodes computed in a wider dtype]).  An argument made by
# one of the trace's decompositions has no dtype of its own for its rules; the dtype its value is
# stored in (``_stored``, noted by interpret._note_dtype and aten._cast) tells whether it is narrower.
def _widening(node: Node, i: int, checked: str) -> bool:
    """Whether ``node`` computes in a dtype wider than its argument ``i``'s (its cotangent is rounded
    there); an argument from a decomposition counts in the dtype its value is stored in (``_stored``),
    a node without either (a constant) in the ``checked`` dtype."""
    if node.attrs.get("_narrows_cotangent"):  # aten.narrowed_cotangent's node
        return True
    a = node.args[i].attrs
    own, arg = node.attrs.get("_dtype", checked), a.get("_dtype", a.get("_stored", checked))
    return EPS.get(own, 0.0) < EPS.get(arg, 0.0)


def _note_drivers(kinks, start: int, node: Node, args: list) -> None:
    """The comparisons whose uncertain value put the units recorded from ``start`` on their kink:
    per unit, per entry it moves, the set of comparison entries (Note [One step, one side] in kinklog.py)."""
    if not hasattr(kinks, "drivers"):
        return
    for i in range(start, len(kinks)):
        arg, entry, changes = kinks[i]
        entries = [entry] if isinstance(entry, int) else entry if isinstance(entry, list) else []
        keys = [_driver(node, args, u) for u in entries]  # one entry, or those at one exact point (_record_group)
        if keys and all(keys):
            kinks.drivers[i] = tuple(keys)
        elif isinstance(arg, tuple) and len(arg) == 2 and isinstance(entry, int) and _compares_its_pair(node):
            # the regions of one pair of values (Note [Sides of one region]): maximum(x, y) and
            # minimum(x, y) at x == y, their changes in the same order (arg 0 above, then below)
            kinks.drivers[i] = (frozenset({("pair", id(arg[0]), id(arg[1]), entry)}),)


def _compares_its_pair(node: Node) -> bool:
    """Whether every condition of the node's expression compares its two arguments with each other
    (maximum, minimum, where(x > y, x, y)): its kink is where they are equal, whatever else it computes."""
    if len(node.args) != 2:
        return False
    pair = set(symbols_for(2))
    rels = node.attrs["expr"].atoms(sp.Rel)
    return bool(rels) and all({r.lhs, r.rhs} == pair for r in rels)


def _driver(node: Node, args: list, u: int) -> frozenset:
    """The comparison entries (id, flat entry) whose uncertain 0/1 reaches ``node``'s entry ``u``
    through its step-valued arguments; empty where none does."""
    key: set = set()
    for a, v in zip(node.args, args):
        if v.banded and a.kind != "leaf" and _step_valued(a):
            j = _entry_in(a.shape, node.shape, u)
            if np.ravel(np.broadcast_to(v.band(), a.shape))[j] > 0:
                key |= _step_roots(a, j)
    return frozenset(key)


def _entry_in(arg_shape: tuple, shape: tuple, u: int) -> int:
    """The flat entry of an argument broadcast to ``shape`` that the output's flat entry ``u`` reads."""
    if not arg_shape:
        return 0
    at = np.unravel_index(u, shape)[len(shape) - len(arg_shape):]
    return int(np.ravel_multi_index(tuple(0 if d == 1 else k for k, d in zip(at, arg_shape)), arg_shape))


def _step_roots(node: Node, j: int) -> set:
    """The comparisons of moving values that step-valued ``node``'s entry ``j`` is computed from,
    through pointwise nodes of steps only (``~c``, ``c.float()``, ``1 - k``), as (id, flat entry)."""
    roots, todo, seen = set(), [(node, j)], set()
    while todo:
        n, k = todo.pop()
        if (id(n), k) in seen:
            continue
        seen.add((id(n), k))
        ups = [a for a in n.args if a.kind != "leaf"]
        if n.kind != "pointwise" or not ups or not all(_step_valued(a) for a in ups) or any(
                a.kind == "leaf" and not _step_valued(a) for a in n.args):
            roots.add((id(n), k))  # a comparison of values that move (or a node not walked through)
            continue
        todo.extend((a, _entry_in(a.shape, n.shape, k)) for a in ups)
    return roots


def _one_sided(forms: list, args: list, ctx: Ctx, shape: tuple) -> list:
    """The banded derivatives ``forms`` evaluated just off the kink, once per direction: each argument
    moved up, then down, alone (Note [Sides of one region] in graph/kinklog.py).  Per direction, per
    form, the flat values (NaN where undefined there)."""
    values = [np.ravel(np.broadcast_to(a.v, shape)).astype(np.float64) for a in args]
    with np.errstate(all="ignore"):
        size = np.maximum.reduce([np.where(np.isfinite(v), np.abs(v), 0.0) for v in values])
    step = np.maximum(size, 2.0**-40) * 2.0**-20
    syms = symbols_for(len(args))
    out = []
    for i in range(len(args)):
        for sign in (1.0, -1.0):
            env = {s: Approx((v + sign * step if j == i else v).reshape(shape)) for j, (s, v) in enumerate(zip(syms, values))}
            out.append([np.ravel(np.broadcast_to(evaluate(d, env, ctx).v, shape)) for d in forms])
    return out


def _reused_output(node: Node, env: dict, ctx: Ctx, local: Approx, i: int) -> Approx:
    """``local`` (the derivative by argument ``i``) charged |out| roundings of its own size where torch's
    derivative recomputes from the node's rounded output ``out`` through exp (Note [logsumexp' from its
    rounded output] in graph/aten_shift.py), and |a_i| where the node marks argument ``i`` as one whose
    size enters an exponent torch's backward rounds (``charged_sizes``; Note [Each position its own
    shift] in graph/aten_scan.py); one rounding of its own size where torch's backward reads the
    node's output rounded to a half dtype (``output_rounded_in``)."""
    reused, sized = node.attrs.get("reuses_output"), i in node.attrs.get("charged_sizes", ())
    rounded_in = node.attrs.get("output_rounded_in")  # Note [A half softmax in float32] in graph/aten_shift.py
    if not (reused or sized or rounded_in):
        return local
    out = _broadcast(evaluate(node.attrs["expr"], env, ctx), node.shape).v if reused or rounded_in else None
    extra = 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        if rounded_in is not None:  # one rounding of the output torch's backward reads; a subnormal one, its spacing
            below = np.where(out != 0, np.maximum(1.0, SMALLEST_NORMAL[rounded_in] / np.abs(out)), 1.0)
            extra = extra + np.abs(local.v) * (EPS[rounded_in] / ctx.eps) * below
        sizes = [out] if reused else []
        if sized:
            sizes.append(np.broadcast_to(env[symbols_for(len(env))[i]].v, node.shape))
        for size in sizes:
            extra = extra + np.where(np.isfinite(size), np.abs(local.v) * np.abs(size), 0.0)
    return charged(local, extra)


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


# ---------------------------------------------------------------------------------------------- jvp

def jvp(node: Node, args: list, tangents: list, ctx: Ctx, kinks=None) -> Approx | None:
    """The tangent of ``node`` from its arguments' tangents (``None``: zero), in Approx arithmetic.
    ``kinks``: a ``ForwardKinkLog`` taking a pointwise derivative on a kink as a unit, not a band
    (Note [Forward kink units] in graph/forward_kinks.py)."""
    if all(t is None for t in tangents):
        return None
    if node.kind == "stop":  # detach: no derivative; a convention of torch's backward only: forward mode passes
        return tangents[0] if node.attrs.get("reverse_only") and not ctx.backward_graph else None
    kind = node.kind
    if kind == "pointwise":
        return _jvp_pointwise(node, args, tangents, ctx, kinks)
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


def _jvp_pointwise(node: Node, args: list, tangents: list, ctx: Ctx, kinks) -> Approx | None:
    env = dict(zip(symbols_for(len(args)), args))
    forms = derivatives(node.attrs["expr"], len(args))
    ctx = _moving(node, ctx)
    local, ts = {}, {}
    for i, (t, d) in enumerate(zip(tangents, forms)):
        if t is not None and d != 0:
            value = _broadcast(certified(d, env, ctx, evaluate(d, env, ctx)), node.shape)
            local[i], ts[i] = _reused_output(node, env, ctx, value, i), _broadcast(t, node.shape)
    paired = _paired_tangents(node, args, forms, local, ts, ctx)  # Note [Paired sides in forward mode]
    out = None
    for i in local:
        if kinks is not None and local[i].banded:
            local[i] = kinks.record(node, i, local[i], ts[i], args[i].shape)
        term = _times_cotangent(local[i], ts[i])  # a branch not taken: 0, even times inf
        out = term if out is None else add(out, term)
    if kinks is not None:
        pending = set(kinks.pending()) | set(paired[0] if paired is not None else ())
        kinks.close(node, {j: (d,) for j in pending if (d := _driver(node, args, j))})
    if paired is not None:
        entries, changes, sizes = paired
        if kinks is not None:
            kinks.record_paired(node, entries, changes, sizes)
        else:
            out = _widened(out, entries, [[float(np.dot(c, s)) for c in cs] for cs, s in zip(changes, sizes)])
    return _half_jvp_rounding(out, tangents, node, ctx)


# Note [Paired sides in forward mode]
# Where a node's derivatives in several arguments are banded both ways at one entry (maximum(a, b)
# at a == b, torch's tangent (ta + tb) / 2), the valid tangents are those of the regions that meet
# there, ta and tb, and what lies between (Note [Sides of one region] in graph/kinklog.py): not
# each argument's band on its own, which accepted ta + tb and 0 (a custom jvp adding both tangents
# at a tie passed forward_ad and jvp).  Such entries take the torch convention's centre in every
# argument, and their region changes are one unit (``ForwardKinkLog.record_paired``), or, in a sweep
# without a log, one band over the regions' tangents.
def _paired_tangents(node: Node, args: list, forms: tuple, local: dict, ts: dict, ctx: Ctx):
    """``(entries, changes, sizes)`` for the entries where several banded arguments pair by region:
    per entry the region changes (a tuple over the banded arguments) and those arguments' tangents;
    their bands are taken off ``local`` there.  None where no entry pairs."""
    kinked = [i for i in local if local[i].banded and args[i].shape == node.shape]
    if len(kinked) < 2 or not shared_both_ways([local[i] for i in kinked]):
        return None
    sides, paired = _sides([local[i] for i in kinked])
    regions = _one_sided([forms[i] for i in kinked], args, ctx, node.shape)
    centres = [np.ravel(np.broadcast_to(local[i].v, node.shape)) for i in kinked]
    sizes_all = [np.ravel(np.broadcast_to(ts[i].v, node.shape)) for i in kinked]
    entries, changes, sizes = [], [], []
    for u in np.flatnonzero(paired):
        found = _region_changes(int(u), sides, centres, regions, 1.0)
        if found:
            entries.append(int(u))
            changes.append(found)
            sizes.append(tuple(float(s[u]) for s in sizes_all))
    if not entries:
        return None
    for i, (lo, hi) in zip(kinked, sides):
        keep = np.ones(lo.shape, bool)
        keep[entries] = False
        local[i] = Approx(local[i].v, local[i].e, np.where(keep, lo, 0.0).reshape(node.shape),
                          np.where(keep, hi, 0.0).reshape(node.shape))
    return entries, changes, sizes


def _widened(out: Approx, entries: list, moves: list) -> Approx:
    """``out`` with a band at each flat entry reaching its moves (the regions' tangent changes)."""
    lo, hi = (np.array(np.ravel(np.broadcast_to(s, out.shape))) for s in out.sides())
    for u, m in zip(entries, moves):
        lo[u] = max(lo[u], -min(m + [0.0]))
        hi[u] = max(hi[u], max(m + [0.0]))
    return Approx(out.v, out.e, lo.reshape(out.shape), hi.reshape(out.shape))


_COMBINING_JVP = ("aten.maximum", "aten.minimum", "aten.fmax", "aten.fmin")


def _half_jvp_rounding(out: Approx | None, tangents: list, node: Node, ctx: Ctx) -> Approx | None:
    """In a half check, one more rounding on the sizes of all the argument tangents where torch's
    forward-mode formula of a binary op combines them before selecting (maximum's tangent is
    ``t_other + mask * (t_self - t_other)``, rounded twice in the half dtype).  Not a ``where``'s,
    ``where(c, t_self, t_other)``, which picks one exactly: charged there, leaky_relu's 0.01 t was
    allowed half its size in bfloat16, and a jvp 1 % off passed."""
    given = [t for t in tangents if t is not None]
    if (out is None or len(tangents) < 2 or ctx.dtype not in ("float16", "bfloat16")
            or not (node.origin or "").startswith(_COMBINING_JVP)):
        return out
    shape = node.shape
    size = sum(np.abs(_broadcast(t, shape).v) for t in given)
    return Approx(out.v, out.e + size, *((out.lo, out.hi) if out.banded else ()))
