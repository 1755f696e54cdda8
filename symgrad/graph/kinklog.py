"""The kinked units a reverse sweep meets, as the joint kink check's generators.

``symgrad.graph.rules``' ``vjp`` records here, instead of widening a band, each entry where a
pointwise derivative sits on its kink (one unit per node and entry, Note [One side per node]) and
each tie of max/min small enough to be one unit (Note [Ties as kink units]);
``symgrad.graph.kinkunits`` runs the sweeps and the joint check over what is recorded.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager

import numpy as np

from .approx import Approx
from .ir import Node

__all__ = ["KinkLog", "MAX_TIE_MEMBERS", "MAX_SMALL_TIE", "tie_rows", "indistinct", "shared_both_ways", "merge_driven",
           "tie_groups"]


class KinkLog(list):
    """The kinked units a reverse sweep met (``vjp``'s ``kinks``); ``flip``: the sweep takes every
    kinked unit's other one-sided derivative (Note [Other side everywhere] in graph/kinkunits.py);
    ``pick``: every tie's first or last entry (Note [A tie's first entry])."""

    def __init__(self, flip: bool = False, ties: bool = True, members: int = 0, pick: str | None = None):
        super().__init__()
        self.flip = flip
        self.pick = pick  # "first"/"last": a tie's own share goes to that entry, not evenly (Note [A tie's first entry])
        self.ties = ties  # ties of max/min as units (Note [Ties as kink units]); False: as bands
        self.members = members or MAX_TIE_MEMBERS  # the largest tie taken as a unit
        self.oversized = 0  # ties met that were larger than ``members`` (banded), counted per group
        self.owners: list = []  # per recorded unit, the node whose rule recorded it
        self.drivers: dict = {}  # unit index -> the step entries that put it on its kink (Note [One step, one side])
        self.banded_ties: list = []  # (arg, members, cotangent, its bound) per banded tie (Note [A tie's total])
        self.even_ties = False  # every tie at its even split, unbanded (tie_totals._only_bands)

    def owned_by(self, node) -> None:
        """The units recorded since the last call came from ``node``'s rule."""
        self.owners.extend([node] * (len(self) - len(self.owners)))


# Note [One step, one side]
# A comparison is one choice for everything it decides.  torch's logaddexp traces to max = where(x >=
# y, x, y), min = where(x >= y, y, x) and max + log1p(exp(min - max)): at x == y the step ``x >= y``
# is on its kink and both wheres could take either branch, but they take the same one, and on
# either side the gradient is (1/2, 1/2) -- the function is smooth there.  Recorded as one unit per
# where, the joint kink check chose their sides independently (max from x, min from x) and passed a
# backward giving (1, 0), a bug that shipped.  So the units a pointwise rule records because a
# step-valued argument (``rules._step_valued``: a comparison's 0/1 and what is computed from such
# values only) is uncertain at that entry carry that step's entry as their driver (``drivers``), and
# after the sweep units with the same driver and as many changes become one unit whose changes move
# all of them together (``merge_driven``).  A driver is the comparison itself, found through
# the pointwise nodes of steps in between (``~c``, ``c.float()``, ``1 - k``: rules._step_roots), and
# entries at one exact point (Note [One choice at one point]) are driven by each entry's comparison;
# units of one comparison node join wherever they share an entry; units driven by several
# comparisons join only those driven by exactly the same ones, as either may flip alone.  A node
# whose conditions all compare its two arguments (maximum, minimum) is driven by that pair at that
# entry, its changes one per region in the same order (Note [Sides of one region]): maximum(x, y)
# and minimum(x, y) at x == y take one region, as the usual stable logaddexp needs.  Flipping
# every unit (Note [Other side everywhere]) was consistent already.  Still beyond it: two comparisons
# of the same values (``x >= y`` for the max, ``x > y`` or ``x < y`` for the min), a float mask's products whose
# value bands do not cancel (``k x + (1 - k) y`` at x == y), kinks of different ops at one point
# with no comparison between them (relu(x) + log1p(exp(-|x|))).  Forward mode groups its units by
# comparison the same way (forward_kinks.py), not yet maximum/minimum pairs.
def merge_driven(log: "KinkLog") -> None:
    """Units of one sweep driven by the same comparison entries become one unit (the Note): units
    driven by single comparison entries of one comparison node join wherever they share one; units
    driven by several comparisons join only those driven by exactly the same ones."""
    groups = _driven_groups(log.drivers)
    merged = [idx for idx in groups if len(idx) > 1 and len({len(log[i][2]) for i in idx}) == 1]
    if not merged:
        return
    drop: set = set()
    for idx in merged:
        args, entries, moves, bounds = [], [], [[] for _ in log[idx[0]][2]], [0.0] * len(log[idx[0]][2])
        for i in idx:
            for c, (change, bound) in enumerate(log[i][2]):  # change c of every unit: one region, or the other side
                for node, at, move in _moves(log[i][0], log[i][1], change):
                    if c == 0:
                        args.append(node)
                        entries.append(at)
                    moves[c].append(move)
                bounds[c] += float(np.sum(bound))
        log[idx[0]] = (tuple(args), tuple(entries), [(tuple(m), b) for m, b in zip(moves, bounds)])
        drop.update(idx[1:])
    keep = [i for i in range(len(log)) if i not in drop]
    owners = log.owners
    log[:] = [log[i] for i in keep]
    log.owners = [owners[i] for i in keep if i < len(owners)]
    log.drivers = {}


def _moves(arg, entry, change) -> list:
    """(argument node, flat entry, move) for each entry one change of a unit moves."""
    if isinstance(arg, tuple):  # Note [One side per node]: several arguments at one entry
        return [(a, entry, c) for a, c in zip(arg, change)]
    if isinstance(entry, list):  # Note [One choice at one point]: several entries of one argument
        return [(arg, e, float(c)) for e, c in zip(entry, np.ravel(change))]
    return [(arg, entry, change)]


def _driven_groups(drivers: dict) -> list:
    """Sorted unit indices per group: single-comparison drivers joined by a shared entry of the same
    comparison node (union-find), the others by equal keys."""
    parent: dict = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, keys in drivers.items():
        simple = all(len(k) == 1 for k in keys) and len({next(iter(k))[0] for k in keys}) == 1
        for k in (keys if simple else (("exact", keys),)):
            for elem in (k if simple else (k,)):
                parent[find(("unit", i))] = find(("key", elem))
    groups: dict = {}
    for i in drivers:
        groups.setdefault(find(("unit", i)), []).append(i)
    return [sorted(g) for g in groups.values()]


def _other_side(local: Approx) -> Approx:
    """A banded derivative moved to the far edge of its band (``v + hi``, or ``v - lo`` where the
    band lies below), its band re-expressed around the new value."""
    v, lo, hi = np.broadcast_arrays(local.v, local.lo, local.hi)
    new = np.where(hi > 0, v + hi, v - lo)
    return Approx(new, local.e, new - (v - lo), (v + hi) - new)


def _sides(banded: list) -> tuple:
    """Flat (lower, upper) band per banded derivative, and the entries where several are banded and
    some both ways (where their sides pair by region, Note [Sides of one region])."""
    shape = banded[0].shape
    sides = [tuple(np.ravel(np.broadcast_to(t, shape)) for t in (local.lo, local.hi)) for local in banded]
    both = np.zeros(int(np.prod(shape, dtype=np.int64)), bool)
    for lo, hi in sides:
        both |= (lo > 0) & (hi > 0)
    several = sum(((lo > 0) | (hi > 0)).astype(int) for lo, hi in sides) >= 2
    return sides, several & both


def shared_both_ways(banded: list) -> bool:
    """Whether some entry has several of these derivatives banded, one of them both ways."""
    return bool(_sides(banded)[1].any())


def _other_sides(banded: list, regions) -> list:
    """:func:`_other_side` for the banded derivatives of one node's arguments; where several are
    banded both ways at one entry, all move to the edges of one region (Note [Sides of one region]),
    not each to its own upper edge (maximum(a, b) at a tie: (1, 0), never (1, 1))."""
    moved = [_other_side(local) for local in banded]
    if regions is None:
        return moved
    shape = banded[0].shape
    sides, paired = _sides(banded)
    centres = [np.ravel(np.broadcast_to(local.v, shape)) for local in banded]
    news = [np.ravel(np.array(np.broadcast_to(m.v, shape))) for m in moved]
    for u in np.flatnonzero(paired):
        changes = _region_changes(int(u), sides, centres, regions, 1.0)
        if changes:
            for k, d in enumerate(changes[0]):
                news[k][u] = centres[k][u] + d
    out = []
    for (lo, hi), c, new, local in zip(sides, centres, news, banded):
        out.append(Approx(new.reshape(shape), local.e, (new - (c - lo)).reshape(shape), ((c + hi) - new).reshape(shape)))
    return out


# Note [One choice at one point]
# Entries of one pointwise node whose arguments are exactly the same numbers, computed with no
# rounding at all (a relu over a zero background: conv(0) + b is b at every background pixel), are
# one scalar function at one point: a kernel decides its derivative there by the same rule at each
# of them (torch's relu takes 0 at every one, clamp the inside at every one).  As one unit per entry
# the joint kink check could take a different side at each, and with a scalar loss a few hundred such
# units explained almost anything: a bias backward giving twice the gradient passed in a small CNN.
# So such entries are one unit: every one moves to its other side together.  Entries within rounding
# of a kink (torch may round each to either side on its own), or exactly on it at distinct points,
# stay one unit each.
def _same_points(args: list, shape: tuple):
    """Per entry of a node's output, a group label of the entries whose arguments are the same exact
    numbers (Note [One choice at one point]); -1 where some argument carries rounding."""
    n = int(np.prod(shape, dtype=np.int64))
    if not n:
        return None
    values = [np.ravel(np.broadcast_to(a.v, shape)) for a in args]
    exact = np.ones(n, bool)
    for a in args:
        if a.e is not None:
            exact &= np.ravel(np.broadcast_to(a.e, shape)) == 0
    if not exact.any():
        return None
    rows = np.stack(values, axis=1)[exact] + 0.0  # + 0.0: -0.0 and 0.0 are one point
    labels = np.full(n, -1, np.int64)
    labels[exact] = np.unique(rows, axis=0, return_inverse=True)[1].reshape(-1)
    return labels


def _record_kinks(kinks: list, arg: Node, g: Approx, local: Approx, points=None) -> None:
    """Each change comes with its rounding bound (units of eps): the cotangent's bound times the
    jump, plus the cotangent times the local derivative's bound (the jump is a difference of two
    rounded derivative values).  The other side's value is a rounded computation too.  ``points``:
    group labels of entries at one exact point (Note [One choice at one point])."""
    lo, hi = (np.ravel(t) for t in np.broadcast_arrays(local.lo, local.hi))
    gv = np.ravel(np.broadcast_to(g.v, local.shape))
    ge = np.ravel(np.broadcast_to(g.e, local.shape))
    le = np.ravel(np.broadcast_to(local.e, local.shape))
    units = np.flatnonzero((lo > 0) | (hi > 0))
    if not units.size:
        return
    if points is not None:
        labels, keep = points[units], np.ones(units.size, bool)
        for label in np.unique(labels[labels >= 0]):
            mine = labels == label
            if mine.sum() > 1:
                _record_group(kinks, arg, units[mine], gv, ge, le, lo, hi)
                keep &= ~mine
        units = units[keep]
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


def _record_group(kinks: list, arg: Node, members: np.ndarray, gv, ge, le, lo, hi) -> None:
    """One unit for entries at one exact point: each side's change over all of them at once."""
    g_m, ge_m, le_m, lo_m, hi_m = (np.broadcast_to(t, gv.shape)[members] for t in (gv, ge, le, lo, hi))
    slack = np.abs(g_m) * 2 * le_m
    changes = []
    for c, t in ((-g_m * lo_m, ge_m * lo_m + slack), (g_m * hi_m, ge_m * hi_m + slack)):
        if np.any(c != 0):
            changes.append((c, t))
    if changes:
        kinks.append((arg, members.tolist(), changes))


# Note [One side per node]
# A pointwise node on its kink is evaluated on one side for all of its arguments at once: elu traces
# to ``where(x > 0, x, alpha * expm1(x))``, whose derivatives with respect to its two branches jump at
# the same condition, 1 and 0 on one side, 0 and alpha on the other.  Recorded as two units, the
# joint kink check chose their sides independently and accepted 0 and 1 + alpha too (an elu backward
# counting both branches at 0, 3 where the sides are 1 and 2, passed on the op graph).  So where
# several arguments of one node are banded at one entry and each band has a single far edge (one
# other side), the entry is one unit whose change moves every argument to its far edge together.
# Where a band reaches both ways (the sweep took a value between the sides, as maximum's even split
# at a tie), the sides are paired by region instead (Note [Sides of one region] below).
def _record_node_kinks(kinks: list, banded: list, g: Approx, points=None, regions=None) -> None:
    """``regions``: per direction off the kink, per banded argument, its derivative there (rules'
    ``_one_sided``; Note [Sides of one region])."""
    if len(banded) == 1:
        _record_kinks(kinks, banded[0][0], g, banded[0][1], points)
        return
    shape = banded[0][1].shape
    sides, both_ways = _sides([local for _, local in banded])
    several = sum(((lo > 0) | (hi > 0)).astype(int) for lo, hi in sides) >= 2
    joint = several & ~both_ways
    gv = np.ravel(np.broadcast_to(g.v, shape))
    ge = np.ravel(np.broadcast_to(g.e, shape))
    errs = [np.ravel(np.broadcast_to(local.e, shape)) for _, local in banded]
    paired = {}
    if regions is not None:
        centres = [np.ravel(np.broadcast_to(local.v, shape)) for _, local in banded]
        for u in np.flatnonzero(both_ways):
            changes = _region_changes(u, sides, centres, regions, gv[u])
            if changes:
                bound = sum(ge[u] * max(lo[u], hi[u]) + abs(gv[u]) * 2 * le[u] for (lo, hi), le in zip(sides, errs))
                paired[int(u)] = [(c, bound) for c in changes]
    together = joint.copy()
    together[list(paired)] = True
    for (arg, local), (lo, hi) in zip(banded, sides):  # the other entries: one unit per argument
        alone = Approx(local.v, local.e, np.where(together, 0.0, lo).reshape(shape),
                       np.where(together, 0.0, hi).reshape(shape))
        if alone.banded:
            _record_kinks(kinks, arg, g, alone)
    args = tuple(arg for arg, _ in banded)
    for u in np.flatnonzero(joint):
        moves = [gv[u] * hi[u] if hi[u] > 0 else -gv[u] * lo[u] for lo, hi in sides]
        bound = sum(ge[u] * max(lo[u], hi[u]) + abs(gv[u]) * 2 * le[u] for (lo, hi), le in zip(sides, errs))
        if any(moves):
            kinks.append((args, int(u), [(tuple(moves), bound)]))
    for u, changes in paired.items():
        kinks.append((args, u, changes))


# Note [Sides of one region]
# Where a node's derivatives with respect to several arguments are banded both ways at one entry --
# torch's convention lies between the sides, as maximum(a, b) at a == b gives each half the
# cotangent -- the sides are not free per argument: the valid gradients are the one-sided gradients
# of the regions that meet there, (1, 0) and (0, 1), and their convex combinations.  As one unit per
# argument the joint kink check also accepted (1, 1) and (0, 0): a backward sending the whole
# cotangent to both tied arguments, or to neither, passed (maximum, minimum, where(a > b, a, b),
# clamp with tensor bounds).  So the regions are found: every banded derivative is evaluated just off
# the kink, each argument moved up and then down alone (2^-20 of the entry's size, far past any
# rounding of it), and each argument's value there names the edge of its band it belongs to.  Each
# region is one change of one unit, all arguments moving together to that region's edges; the
# fit's capped simplex then accepts exactly the convex combinations.  The values themselves are the
# band's edges (evaluated at the point), the moved evaluation only pairs them.  An entry where no
# direction is defined keeps the units per argument (wider, never narrower).
def _region_changes(u: int, sides: list, centres: list, regions: list, g: float) -> list:
    """The distinct changes (one tuple over the banded arguments) of the regions at entry ``u``."""
    found = []
    for direction in regions:
        move = []
        for (lo, hi), c, at in zip(sides, centres, direction):
            x = at[u]
            if not np.isfinite(x):
                break
            edges = (-lo[u], 0.0, hi[u])
            move.append(min(edges, key=lambda d: abs(c[u] + d - x)))
        else:
            change = tuple(g * d for d in move)
            if any(change) and change not in found:
                found.append(change)
    return found


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
# entrywise band stays (sound, weaker); where ties would take the units past the sweeps' budget
# (Note [A budget of sweeps] in graph/kinkunits.py), the sweeps are run again with ties as bands, so
# the relu units keep their joint check, and the report says how many ties were banded.  A tie of
# indistinct entries needs neither (Note [Ties of indistinct entries] below).
MAX_TIE_MEMBERS = 8  # on a model, a larger tie keeps its band (unless its entries are indistinct)
MAX_SMALL_TIE = 1024  # on a small graph, ties up to this many entries are units


def tie_groups(tie: np.ndarray, axes: tuple) -> list:
    """The flat entries of each tie (a reduction's group over ``axes`` with more than one of ``tie``)."""
    order = [d for d in range(tie.ndim) if d not in axes] + list(axes)
    rows = int(np.prod([tie.shape[d] for d in axes], dtype=np.int64))
    ids = np.transpose(np.arange(tie.size).reshape(tie.shape), order).reshape(-1, rows)
    grouped = np.transpose(np.asarray(tie), order).reshape(-1, rows)
    return [ids[group][grouped[group]] for group in np.flatnonzero(grouped.sum(axis=1) > 1)]


def _record_ties(kinks: list, arg: Node, v: np.ndarray, gv: np.ndarray, ge: np.ndarray, tie: np.ndarray,
                 axes: tuple) -> None:
    for members in tie_groups(tie, axes):
        given, total = v.ravel()[members], float(gv.ravel()[members[0]])
        bound = np.full(len(members), float(ge.ravel()[members[0]]) + abs(total))
        changes = [(total * (np.arange(len(members)) == j) - given, bound) for j in range(len(members))]
        kinks.append((arg, members, changes))


# Note [Ties of indistinct entries]
# A tie matters only where its entries reach the differentiated leaves differently.  Under max
# pooling of a CNN over images with a zero background, every background window holds four copies
# of relu(bias): each has the same row of the Jacobian with respect to every differentiated leaf
# (one towards its channel's bias, zero towards the weights), so every way of sharing the cotangent
# among them -- the even split, one index, or any convex mix -- gives the same gradient, and only
# the total matters.  Such a tie is no choice at all: it needs neither a band nor a kink unit.  Its
# entries are recognised by forward mode: two tangent sweeps along random directions of the
# differentiated leaves (``graph/kinkunits.py``) give each entry two projections of its row, and a
# tie whose entries all have exactly the same projections, none of them banded (no kink upstream,
# whose side could tell them apart), takes the sweep's own split as exact.  Rows that differ give
# equal random projections with probability zero; where a difference hides below rounding, the
# sharing it could move is below rounding too.  Before this, a CNN over 28x28 images in batches of
# 4 had thousands of such ties, past the sweeps' budget (Note [A budget of sweeps] in
# graph/kinkunits.py): each tied entry kept its band [none, all], and a pooling backward giving
# every tied entry the whole cotangent passed.
_ROWS: contextvars.ContextVar = contextvars.ContextVar("symgrad_tie_rows", default=None)


@contextmanager
def tie_rows(rows: dict | None):
    """Within the block, the reverse sweeps know the projected rows ``rows`` (node -> array
    ``(directions, *node.shape)``, NaN where banded) of the inputs of the graph's max/min reductions."""
    token = _ROWS.set(rows or None)
    try:
        yield
    finally:
        _ROWS.reset(token)


def indistinct(node: Node, near: np.ndarray, axes: tuple) -> np.ndarray | None:
    """Per group of a max/min over ``axes`` of ``node`` (kept dims): whether every entry ``near``
    the extreme has the same projected rows (Note [Ties of indistinct entries]); None: not known."""
    rows = _ROWS.get()
    if rows is None or node not in rows:
        return None
    same = None
    for t in rows[node]:
        t = np.broadcast_to(t, near.shape)
        with np.errstate(invalid="ignore"):
            hi = np.max(np.where(near, t, -np.inf), axis=axes, keepdims=True)
            lo = np.min(np.where(near, t, np.inf), axis=axes, keepdims=True)
            eq = hi == lo  # NaN (a banded row) is never equal
        same = eq if same is None else same & eq
    return same
