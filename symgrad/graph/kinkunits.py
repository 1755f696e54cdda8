"""Kinked units in the reverse sweeps: the joint kink check's generators, and the other side.

A relu unit within rounding of its kink could have been evaluated on either side; each such unit
is one choice for every entry it reaches (Note [Kink units]), and when those choices feed each
other the fit is repeated with every unit on its other side (Note [Other side everywhere]).
``st`` is ``graph/check.py``'s check state: the graph, its values, output node, context, leaves,
differentiated names and failed cross-checks.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .approx import Approx, accumulating
from .engine import backward, tangent_sweep
from .pointwise_oracle import attach_pointwise_oracles
from .printing import gradient_text
from .cones import limit_bands
from .refs import reference as _reference
from .ir import Node
from .kinklog import MAX_SMALL_TIE, MAX_TIE_MEMBERS, KinkLog, merge_driven, tie_rows

__all__ = ["sweep_references", "MAX_KINK_UNITS", "tie_members"]


# Note [Kink units]
# A pointwise op whose argument sits within rounding of a kink (relu at a pre-activation torch may
# round to either side) could have been evaluated on either side.  Widening every downstream entry by
# that unit's contribution (the band) is sound but weak: one ambiguous relu of a late layer would
# cover every gradient of the layers before it.  Instead each such unit is one *group* of the joint
# kink check (Note [Joint kink check] in symgrad/compare/kinks.py): one backward sweep per unit and
# side gives the change of every gradient entry if torch took that side, and autograd's value must
# be explained by one choice per unit for all entries at once.  Past ``MAX_KINK_UNITS`` units the
# sweeps cost too much and the bands are used (sound, weaker) -- unless the graph is small enough
# that more sweeps stay cheap (Note [A budget of sweeps]).
MAX_KINK_UNITS = 32
SWEEP_NUMBERS = 4_000_000  # the numbers the ties' sweeps may compute, at most MAX_KINK_UNITS of them

# Note [A budget of sweeps]
# A fixed cap on kinked units is the wrong measure: on a small CNN over zero-background images every
# background window of a max pooling is a tie (relu(bias) four times), a few hundred ties in all, and
# past 32 units each tied entry fell back to its band [none, all of the cotangent] -- so a pooling
# backward that sent the whole cotangent to every tied entry passed, four times the true gradient of
# the first bias.  What the units cost is their sweeps: one reverse sweep per change, each visiting
# every node (about 30 us of Python per node) and computing every number of the graph.  So past
# MAX_KINK_UNITS units the joint check still runs while
#     sweeps x (nodes + numbers / NUMBERS_PER_VISIT) <= SWEEP_VISITS
# and at most MAX_BUDGET_UNITS units, whose generators (units x changes per unit x entries of the
# largest differentiated tensor x seeds) hold at most FIT_NUMBERS numbers: the joint fit's
# iterations run over them, and a stack too large for the fit would leave the units unmodelled.
# That CNN (241 ties, 938 sweeps, 48 nodes, 22k numbers) takes 1.3 s.  Past the budget the bands
# stay, and the report says so.
SWEEP_VISITS = 200_000  # about 6 s of sweeps on this project's 2-core machine
NUMBERS_PER_VISIT = 2_000  # numbers one node visit's Python overhead is worth
MAX_BUDGET_UNITS = 2_048
FIT_NUMBERS = 4_000_000


def _within_budget(graph, units: list, live: list) -> bool:
    """Whether the joint kink check's sweeps over ``units`` (one KinkLog per seed) are affordable:
    up to MAX_KINK_UNITS always, past that within the budget (Note [A budget of sweeps])."""
    count = sum(len(u) for u in units)
    if count <= MAX_KINK_UNITS:
        return True
    if count > MAX_BUDGET_UNITS:
        return False
    width = max(len(changes) for u in units for _, _, changes in u)
    largest = max((int(np.prod(n.shape, dtype=np.int64)) for n in live), default=1)
    if count * width * largest * len(units) > FIT_NUMBERS:
        return False
    sweeps = sum(len(changes) for u in units for _, _, changes in u)
    numbers = sum(int(np.prod(n.shape, dtype=np.int64)) for n in graph.nodes)
    return sweeps * (len(graph.nodes) + numbers / NUMBERS_PER_VISIT) <= SWEEP_VISITS


def tie_members(graph, ties: int = MAX_KINK_UNITS) -> int:
    """The largest tie taken as a kink unit (Note [Ties as kink units] in kinklog.py): one reverse
    sweep per tied entry, ``ties`` ties at most, within SWEEP_NUMBERS numbers in all."""
    numbers = max(1, sum(int(np.prod(n.shape, dtype=np.int64)) for n in graph.nodes))
    return int(min(MAX_SMALL_TIE, max(MAX_TIE_MEMBERS, SWEEP_NUMBERS // (numbers * max(1, ties)))))


# Note [One large tie]
# The largest tie taken as a unit assumes MAX_KINK_UNITS of them share the sweeps' numbers, so on a
# 1,000-entry amax every entry tied (all ones, a zero-background image) was past it: each tied entry
# was judged by its band, none to all of the cotangent, and a backward giving every tied entry the
# whole cotangent (n times the true gradient) passed.  Where the sweeps met ties larger than that and
# few units in all, they are run again with the ties' share for the units actually met; the joint
# check takes the second sweeps when they stay within the budget (Note [A budget of sweeps]).
def _sweeps(st, seeds, live, flip: bool, ties: bool, members: int | None = None, pick: str | None = None) -> tuple:
    per_seed, units = [], []
    members = members or tie_members(st.graph)
    for s in seeds:
        found = KinkLog(flip=flip, ties=ties, members=members, pick=pick)
        per_seed.append(backward(st.graph, st.values, {st.out: Approx(s)}, live, st.ctx, kinks=found))
        merge_driven(found)  # Note [One step, one side] in kinklog.py
        units.append(found)
    return per_seed, units


def _is_tie(unit) -> bool:
    return isinstance(unit[1], np.ndarray)  # a tie of max/min: several entries at once


def _kink_generators(st, live: list, units: list, flip: bool = False, ties: bool = True,
                     members: int | None = None, pick: str | None = None) -> tuple | None:
    """``(generators, roundings)``: leaf node -> [[generator over the stacked seeds] per unit], and
    per leaf node the rounding bound (units of eps) the other sides add at most: each unit's
    largest generator bound, summed over units (their choices add up).  None: too many units."""
    if not _within_budget(st.graph, units, live):
        return None
    out: dict = {node: [] for node in live}
    extra: dict = {node: np.zeros((len(units),) + node.shape) for node in live}
    members = members or tie_members(st.graph)
    for unit in _across_seeds(units):  # Note [One choice for every cotangent]
        gens = {node: [np.zeros((len(units),) + node.shape) for _ in unit[0][3]] for node in live}
        for k, arg, entry, changes in unit:
            worst = {node: np.zeros(node.shape) for node in live}
            for j, (change, change_e) in enumerate(changes):
                log = dict(flip=flip, ties=ties, members=members, pick=pick)
                alone = _one_entry(arg, entry) and np.any(np.abs(change_e) * st.ctx.eps > SEED_ERROR * np.abs(change))
                swept = backward(st.graph, st.values, _seeds(arg, entry, change, 0.0 if alone else change_e),
                                 live, st.ctx, kinks=KinkLog(**log))
                seed_error = {}
                if alone:  # Note [A side's own error, carried linearly]
                    moved = backward(st.graph, st.values, _seeds(arg, entry, change_e, 0.0), live, st.ctx,
                                     kinks=KinkLog(**log))
                    seed_error = {n: np.abs(g.v) for n, g in moved.items() if g is not None}
                for node in live:
                    g = swept.get(node)
                    if g is not None:
                        gens[node][j][k] = np.broadcast_to(g.v, node.shape)
                        e = np.broadcast_to(g.e, node.shape) + seed_error.get(node, 0.0)
                        worst[node] = np.maximum(worst[node], e)
            for node in live:
                extra[node][k] += worst[node]
        for node in live:
            out[node].append(gens[node])
    return out, extra


# Note [One choice for every cotangent]
# A kinked unit met by the sweeps of several cotangents (three random ones, or every row of a
# Jacobian) is one choice for all of them: a backward is one linear map, the transpose of one
# one-sided Jacobian, whatever cotangent it is given, and torch's kernels take the same side at the
# same point each time.  As one unit per sweep, the joint kink check took a side per cotangent:
# ``stack([amax(x), 2 * amax(x)])``'s Jacobian with its first row sent to one tied entry and its
# second row to another passed, each row alone a valid choice.  So the units the sweeps record are
# matched across cotangents -- the same recording node, the same argument and entries, the same
# number of changes, which move the same sides since each change is the cotangent there times one
# jump -- and a matched unit has one weight per change over every sweep.  A unit a sweep did not
# meet (its cotangent was 0 there) adds nothing for it; a key a sweep records twice stays unmatched.
def _across_seeds(units: list) -> list:
    """The recorded units grouped across sweeps: per group, ``(sweep, arg, entry, changes)`` each."""
    groups: dict = {}
    repeated = set()
    for k, found in enumerate(units):
        owners = getattr(found, "owners", [])
        mine = set()
        for i, (arg, entry, changes) in enumerate(found):
            owner = owners[i] if i < len(owners) else None
            key = (id(owner) if owner is not None else ("unowned", k, i), _identity(arg), _identity(entry),
                   len(changes))
            if key in mine:
                repeated.add(key)
            mine.add(key)
            groups.setdefault(key, []).append((k, arg, entry, changes))
    out = []
    for key, members in groups.items():
        out.extend([[m] for m in members] if key in repeated else [members])
    return out


def _identity(x):
    if isinstance(x, tuple):
        return tuple(_identity(a) for a in x)
    if isinstance(x, Node):
        return id(x)
    return tuple(np.ravel(x).tolist()) if isinstance(x, (list, np.ndarray)) else int(x)


# Note [A side's own error, carried linearly]
# The other side of a unit is a cotangent at one entry, known to its rounding bound: acos' at a
# cosine clamped to 1 - 1e-6, where the cosine's own rounding moves acos' by most of its size.
# Carried through the rest of the sweep as a rounding bound, that error was multiplied by the
# magnitudes of every path (|J|), not by the paths' sum: where those cancel (a normalised vector
# moved along itself, the sample's cosine stationary at its maximum) the bound was 1e7 times what a
# value at that entry can change, 15 where the gradients were 1, and every entry of every parameter
# upstream -- all of them kinked through that one sample -- passed a gradient 5 % off, or negated.
# The sweep is linear in its seed, so an error d at one entry moves the result by exactly d J^T e_i:
# where the seed's own error is large (past SEED_ERROR of the change) and sits at one entry, the
# sweep runs without it, and once more with that error as its value, whose size is added.
SEED_ERROR = 2.0**-10


def _one_entry(arg, entry) -> bool:
    """Whether a unit's change seeds one entry of one node (its error then moves the sweep linearly)."""
    return isinstance(arg, Node) and np.size(entry) == 1


def _seeds(arg, entry, change, change_e) -> dict:
    """The cotangent seeds of one unit's change: one argument node, or several arguments of one
    node that move together (a tuple, Note [One side per node] in graph/kinklog.py; the bound is the
    unit's, charged once)."""
    nodes, changes = (arg, change) if isinstance(arg, tuple) else ((arg,), (change,))
    entries = entry if isinstance(entry, tuple) else (entry,) * len(nodes)  # one per node: Note [One step, one side]
    seeds: dict = {}
    for k, (node, at, c) in enumerate(zip(nodes, entries, changes)):
        v, e = seeds.get(node, (np.zeros(node.size), np.zeros(node.size)))
        v[at] += c
        if k == 0:
            e[at] += change_e
        seeds[node] = (v, e)
    return {node: Approx(v.reshape(node.shape), e.reshape(node.shape)) for node, (v, e) in seeds.items()}


# Note [Other side everywhere]
# The joint kink check fits autograd's value as the graph's side plus one change per kinked unit,
# each change taken alone.  When kinked units feed each other (a relu layer on its kink feeding
# another: a zero input with zero biases) the change of taking both other sides is not the sum of
# the single changes -- the path through both has a cross term -- so a custom backward that takes
# the other convention everywhere (``grad * (x >= 0)``, relu'(0) = 1) would be a false alarm.  When
# a check with kinked units fails, the sweeps are run again with every kinked unit on its other
# side, and the fit is repeated around that choice; when every record passes there, they pass (a
# record alone may not take its own side: a backward giving the cotangent both to x and to its bound
# at a tie of clamp(x, lo) is explained for x by one side and for lo by the other).  A mixed
# choice with cross terms (some units each way, several layers deep) is still beyond the fit.  A
# record passes on the other sides only if that choice leaves no more entries unresolved (allowed
# their own size) than its own did: at a cosine one ulp from 1, clamped before acos in float64, the
# unclamped side's bound (acos'' times the cosine's rounding, 1e23 ulps) let a backward 1 % off pass.

# Note [A tie's first entry]
# The sweeps take a tie of max/min at its even split (amax's convention), and the fit adds one
# change per tied group.  Ties that feed ties have cross terms, like kinked units that feed each
# other: max-pooling a flat region twice (``max_pool1d(max_pool1d(ones(4), 2), 2)``, or a binary
# image pooled before a conv, relu and another pool) gives torch's [1, 0, 0, 0] -- the first entry
# at both levels -- which is 0.25 each + the outer change + the inner change at the even split's
# cotangent + a cross term the fit lacks: torch's own saliency gradient failed.  So when a check
# with ties fails, the sweeps are run again with every tie's own share on its first entry (torch's
# max(dim), max pooling and argmax-based kernels), then on its last, the changes taken around that
# choice, and the fit repeated, as for Note [Other side everywhere]; it passes when every record
# passes there.  Each base is a valid side of every tie, so no value outside the convex
# combinations passes; a mixed choice (first in one pool, last in the next) is still beyond the fit.


def _tie_rows(st, live: list, directions: int = 2) -> dict:
    """Node -> ``(directions, *shape)``: random projections of the rows of each max/min
    reduction's input (Note [Ties of indistinct entries] in kinklog.py), NaN where banded."""
    inputs = {n.args[0] for n in st.graph.nodes if n.kind == "reduce" and n.attrs.get("op") in ("max", "min")}
    if not inputs or not live:
        return {}
    rng = np.random.default_rng(20261204)
    rows: dict = {n: [] for n in inputs}
    ctx = dataclasses.replace(st.ctx, backward_graph=True)  # stops that hold for reverse mode hold here too
    for _ in range(directions):
        tangents = {leaf: Approx(rng.standard_normal(leaf.shape)) for leaf in live}
        try:
            with accumulating(ctx.dtype, ctx.eps):
                known = tangent_sweep(st.graph, st.values, tangents, ctx)
        except Exception:  # noqa: BLE001 - the rows only sharpen ties: any node forward mode cannot
            return {}  # take leaves every tie its unit or band, as without them (sound)
        for n in inputs:
            t = known.get(n)
            if t is None:
                rows[n].append(np.zeros(n.shape))  # no path from a differentiated leaf: rows of zeros
            else:
                v = np.broadcast_to(t.v, n.shape).astype(np.float64)
                rows[n].append(np.where(np.broadcast_to(t.band(), n.shape) > 0, np.nan, v) if t.banded else v)
    return {n: np.stack(r) for n, r in rows.items()}


def sweep_references(st, seeds, live, nodes, how, out_shape, scale, *, flip: bool, pick: str | None = None):
    """``(refs, sweeps, kinked, logs)``: one reference per differentiated name with its kink generators
    and their rounding (Note [Kink units]), the reverse sweeps per seed, the kinked units met
    (0: none; 2: ties among them), and the sweeps' kink logs (their banded ties: Note [A tie's
    total]).  ``flip``: every kinked unit takes its other side (Note [Other side everywhere]);
    ``pick``: every tie its "first" or "last" entry (Note [A tie's first entry])."""
    with tie_rows(_tie_rows(st, live)):
        return _sweep_references(st, seeds, live, nodes, how, out_shape, scale, flip, pick)


def _sweep_references(st, seeds, live, nodes, how, out_shape, scale, flip, pick):
    per_seed, units = _sweeps(st, seeds, live, flip, ties=True, pick=pick)
    members = None
    met = max(len(u) for u in units) if units else 0
    if any(u.oversized for u in units) and met < MAX_KINK_UNITS:  # Note [One large tie]
        members = tie_members(st.graph, met + max(u.oversized for u in units))
        again = _sweeps(st, seeds, live, flip, ties=True, members=members, pick=pick)
        if _within_budget(st.graph, again[1], live):
            per_seed, units = again
        else:
            members = None
    banded_ties = 0
    if not _within_budget(st.graph, units, live) and any(_is_tie(k) for u in units for k in u):
        banded_ties = sum(1 for u in units for k in u if _is_tie(k))
        per_seed, units = _sweeps(st, seeds, live, flip, ties=False, pick=pick)  # Note [Ties as kink units]
    ties = any(_is_tie(k) for u in units for k in u)
    found_gens = _kink_generators(st, live, units, flip, ties, members, pick)
    if found_gens is None:  # too many kinked units for the joint check: every one widens the band
        per_seed = [backward(st.graph, st.values, {st.out: Approx(s)}, live, st.ctx) for s in seeds]
        generators, kink_e = {}, {}
    else:
        generators, kink_e = found_gens
    refs = [_reference(n, [None if node is None else g[node] for g in per_seed], tuple(st.leaves[n].shape),
                       out_shape, how, scale, st.failed, generators.get(node),
                       gradient_text(st.graph, node) if node is not None else "")
            for n, node in zip(st.wrt, nodes)]
    for ref, n in zip(refs, st.wrt):  # Note [Nodes computed in a wider dtype]: the leaf's own dtype
        ref.stored_dtype = str(st.leaves[n].dtype).replace("torch.", "")
    attach_pointwise_oracles(st.graph, refs, st.wrt, st.out, seeds, how, scale, st.leaves)
    if found_gens is None:
        for ref in refs:
            if ref.kink is not None:
                ref.note = (ref.note + " " if ref.note else "") + (
                    "Too many kinked units for the sweeps' budget (Note [A budget of sweeps]): the joint kink "
                    "check fell back to entrywise bands "
                    "(every choice of side per entry; sound, but a bug smaller than a unit's contribution passes).")
    elif banded_ties:
        for ref in refs:
            if ref.kink is not None:
                ref.note = (ref.note + " " if ref.note else "") + (
                    f"{banded_ties} ties of max/min were too many for the sweeps' budget (Note [A "
                    "budget of sweeps]): each tied entry was judged entry by entry, anywhere from none to all of "
                    "its cotangent, so a backward giving every tied entry the whole cotangent could pass.")
    for ref, node in zip(refs, nodes):  # the rounding of whichever side torch took
        if node is not None and node in kink_e and ref.kink_generators is not None and ref.rounding is not None:
            extra = _reference(ref.name, [Approx(e) for e in kink_e[node]], tuple(st.leaves[ref.name].shape),
                               out_shape, how, scale, []).value
            ref.kink_rounding = np.asarray(ref.rounding, np.float64) + np.abs(extra)
    limit_bands(st, seeds, live, nodes, refs, how, out_shape, scale)  # Note [Cone points]
    return refs, per_seed, 2 if ties else int(any(units)), units
