"""The forced evaluations when many conditions sit on a kink: ties of max/min as units, the rest alone.

# Note [Ties on the exploded engine]
An n-ary max (min) is lowered as ``Σ a_i I_i / Σ I_i``, with ``I_i = [a_i beats every other
argument]``, one ``<=`` per ordered pair of arguments (``extreme`` in symengine_forms.py).  At a tie of k
arguments the k(k-1) conditions between tied arguments are on a kink.  Past
``MAX_KINK_COMBINATIONS_LOG2`` conditions ``Lowered._candidates`` flips conditions alone (as it still
does every other condition), and a flip only takes one member out of the tie: "member i wins, every
other member loses" -- the one-index subgradient torch's ``max(dim)`` takes -- was the sum of all
(k-1)^2 flips of the losers, at the corner of the fit's weights, so a one-index backward passed a
tie of 4 and was a false alarm at 9; past ``MAX_FLIPS`` conditions (a tie of 17) only the entrywise
band was left.

As on the op graph (Note [Ties as kink units] in symgrad/graph/rules.py), a tie is one unit whose
vertices are "member i takes everything": the evaluation with ``I_i``'s conditions forced true and,
for each other member j, ``I_j``'s condition against ``a_i`` forced false (only conditions on a kink
are ever forced).  The unit is one group of the joint kink check (Note [Joint kink check] in
symgrad/compare/kinks.py), which takes any convex combination of a group's vertices: the convex
hull of "member i takes everything", the set of valid subgradients.  The even split (torch's amax)
and one index pass; the whole cotangent to every tied entry, or half of it lost, fail.  It costs one
evaluation per tied member instead of one per condition.

The units are read off the closed forms, not told: a denominator ``Σ I_i`` -- an ``Add`` whose terms
are all indicators ``Piecewise((1, c), (0, True))``, ``c`` a ``<=`` or an ``And`` of them -- is one
max or min (its forward and every partial share it), and its conditions are numbered by their
operands (codegen's ``rel_operands``); the walk over the DAG is made only where a condition on a kink
has a twin comparing its operands the other way round (``any_tie``: a network's relu kinks have
none).  Every forced evaluation is a choice of sides of conditions on a kink, each of which torch
could have taken, so reading a structure wrongly costs strength, not soundness.  A unit is left to the single flips (as before) when a condition's number is ambiguous
(two relationals on the same operands), and when it shares a condition on a kink with another unit
(overlapping max-pooling windows, whose choices are not independent).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

__all__ = ["TieUnit", "any_tie", "find_units", "many_choices", "positions", "union", "OWN", "own", "is_own", "untag", "window_tag"]


# Note [Each max its own conditions]
# Overlapping max-pooling windows, or a sliding max, compare the same two entries in several
# windows.  Built as plain ``a <= b``, those comparisons were one condition shared by the windows,
# so forcing one window's vertex ("this entry takes everything") re-split its neighbours too, the
# units were left to single flips, and torch's own max pooling with stride 2 over a zero input
# (first index per window) was a false alarm on the exploded engine.  Each max/min of three or more
# arguments therefore compares ``_own(a, tag)`` with ``_own(b, tag)``: ``_own`` is the identity
# (the emitter evaluates it as its first argument, with that argument's rounding; it is never
# differentiated, since it stands inside conditions only), and the tag -- an integer hashed from the
# window's arguments -- makes each window's conditions its own.  Two maxes over the same arguments
# are the same max, with the same conditions; should two different windows' tags collide, they share
# conditions as before (weaker, never unsound).  Printed closed forms and kink notes drop ``_own``.
OWN = "_own"


def window_tag(args):
    """The tag of a max/min over ``args``: an integer hashed from them (Note [Each max its own conditions])."""
    import symengine as se

    return se.Integer(hash(tuple(args)) & 0x7FFFFFFF)


def own(a, tag):
    import symengine as se

    return se.Function(OWN)(a, tag)


def is_own(e) -> bool:
    return type(e).__name__ == "FunctionSymbol" and e.get_name() == OWN


def untag(e):
    """``e`` with every ``_own(a, tag)`` replaced by ``a`` (for printing)."""
    import symengine as se

    if not isinstance(e, se.Basic):
        return e
    tagged = [f for f in e.atoms(se.FunctionSymbol) if is_own(f)]
    while tagged:
        e = e.xreplace({f: f.args[0] for f in tagged})
        tagged = [f for f in e.atoms(se.FunctionSymbol) if is_own(f)]
    return e


@dataclass(frozen=True)
class TieUnit:
    keys: frozenset  # every condition of the max/min
    vertices: tuple  # per argument: (conditions forced true, conditions forced false) for "it wins"


def _indicator(e):
    """The ``<=`` conditions of ``Piecewise((1, c), (0, True))``, or None."""
    if type(e).__name__ != "Piecewise":
        return None
    args = e.args
    if len(args) != 4 or args[0] != 1 or args[2] != 0 or type(args[3]).__name__ != "BooleanTrue":
        return None
    parts = args[1].args if type(args[1]).__name__ == "And" else (args[1],)
    return parts if all(type(p).__name__ == "LessThan" for p in parts) else None


def _unit(terms, number: dict) -> TieUnit | None:
    """The unit of a denominator ``Σ I_i`` with these terms, or None (Note [Ties on the exploded engine])."""
    if len(terms) < 2:
        return None
    keyed = []
    for term in terms:
        parts = _indicator(term)
        if parts is None:
            return None
        ks = []
        for c in parts:
            hit = number.get((c.args[0], c.args[1]))
            if hit is None or len(hit) != 1:
                return None
            ks.append((hit[0], frozenset(c.args)))
        keyed.append(ks)
    vertices = []
    for i, mine in enumerate(keyed):
        against = {pair for _, pair in mine}
        win = frozenset(k for k, _ in mine)
        lose = frozenset(k for j, theirs in enumerate(keyed) if j != i for k, pair in theirs if pair in against)
        if win & lose:
            return None
        vertices.append((win, lose))
    return TieUnit(frozenset(k for ks in keyed for k, _ in ks), tuple(vertices))


def any_tie(rel_operands: list, near) -> bool:
    """Whether a condition on a kink compares two operands that another compares the other way
    round, as every tie of a max/min does: else there is no unit to look for in the closed forms."""
    pairs = {tuple(p) for p in rel_operands}
    return any((rel_operands[k][1], rel_operands[k][0]) in pairs for k in near if k < len(rel_operands))


def find_units(exprs: list, rel_operands: list) -> list[TieUnit]:
    """The max/min units of the closed forms ``exprs`` (symengine), each once; one walk over the
    DAG, each shared node once.  ``rel_operands``: (lhs, rhs) of condition k, k by k."""
    number: dict = {}
    for k, pair in enumerate(rel_operands):
        number.setdefault(tuple(pair), []).append(k)
    units: dict = {}
    seen: set = set()
    stack = list(exprs)
    while stack:
        e = stack.pop()
        if e in seen:
            continue
        seen.add(e)
        args = e.args
        if type(e).__name__ == "Add":
            unit = _unit(args, number)
            if unit is not None:
                units.setdefault(frozenset(unit.vertices), unit)
        stack.extend(args)
    return list(units.values())


def positions(mask) -> list:
    return [()] if np.ndim(mask) == 0 else [tuple(int(i) for i in p) for p in np.argwhere(mask)]


def union(near: dict, keys) -> np.ndarray:
    keys = list(keys)
    out = np.zeros(np.broadcast_shapes(*(np.shape(near[k]) for k in keys)), bool)
    for k in keys:
        out = out | near[k]
    return out


def _tie_forcings(units: list, near: dict, budget: int) -> list:
    """``[(conditions on a kink, [forced conditions per vertex])]`` of the units on a kink that
    share no such condition with another, within ``budget`` vertices in all."""
    live = [(u, u.keys & near.keys()) for u in units]
    live = [(u, ks) for u, ks in live if ks]
    count = Counter(k for _, ks in live for k in ks)
    out, used = [], 0
    for unit, ks in live:
        if any(count[k] > 1 for k in ks):
            continue
        forcings = []
        for win, lose in unit.vertices:
            force = {k: True for k in win if k in near}
            force.update({k: False for k in lose if k in near})
            if force:
                forcings.append(force)
        if forcings and used + len(forcings) <= budget:
            used += len(forcings)
            out.append((ks, forcings))
    return out


def many_choices(units: list, near: dict, truths: dict, max_flips: int) -> tuple[list, list, bool]:
    """``(choices, groups, joint)`` when too many conditions sit on a kink for every combination:
    each tie of a max/min is one group of its vertices (Note [Ties on the exploded engine]); every
    other condition is flipped alone against torch's convention, each (condition, position) its own
    choice: their effects are taken to add up, as they do for kinks in one layer.  Past ``max_flips``
    evaluations ``joint`` is False and the all-false and all-true evaluations are added for the
    entrywise band."""
    choices, groups, taken = [], [], set()
    for ks, forcings in _tie_forcings(units, near, max_flips):
        ids = list(range(len(choices), len(choices) + len(forcings)))
        choices += forcings
        taken |= ks
        groups += [(pos, ids) for pos in positions(union(near, ks))]
    rest = [k for k in sorted(near) if k not in taken]
    flipped = rest[:max(0, max_flips - len(choices))]
    for k in flipped:
        groups += [(pos, [len(choices)]) for pos in positions(near[k])]
        choices.append({k: np.logical_not(truths[k])})
    joint = len(flipped) == len(rest)
    if not joint:  # the entrywise band at least sees the extremes
        keys = sorted(near)
        choices += [dict.fromkeys(keys, False), dict.fromkeys(keys, True)]
    return choices, groups, joint
