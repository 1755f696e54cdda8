"""Kinked units in the forward (tangent) sweeps: the joint kink check's generators for JVP records.

# Note [Forward kink units]
# A JVP's entries on a kink were judged each by its own band (the sides of every kinked unit it
# reaches), so a custom ``jvp`` taking relu'(0) = 1 for one use of a unit and 0 for another use of
# the same unit passed: each entry was a one-sided value, no one choice gave them all.  Reverse mode
# has had one choice per unit since Note [Kink units] (kinkunits.py); forward mode now has it too.
# A tangent sweep given a ``ForwardKinkLog`` takes the closed form's side at every pointwise kink
# (the band's centre) and records the unit: its node, argument and entry, the changes of its local
# derivative to the other sides (``-lo``, ``+hi``), and the argument's tangent there for each
# direction.  A unit's generator is the output tangent that one change makes: a tangent sweep seeded
# at the unit's node with its change times the tangent, one entry, zero elsewhere (one sweep per
# change serves every direction: the seed's size is a factor).  A node kinked in several arguments
# at one entry, each banded to one far edge (``where`` at its comparison's kink), is one unit moving
# them together (Note [One side per node] in kinklog.py), and units driven by one comparison share
# one change (Note [One step, one side]): a jvp giving logaddexp's max tangent alone at x == y passed
# forward_ad before.  Kinks the log cannot take as units -- an argument broadcast into the node, a
# tie of max/min, a linear-algebra node's band --
# leave the output banded, and then no generators are attached: the entrywise bands stay (sound,
# weaker), as past the budget of sweeps (Note [A budget of sweeps], kinkunits.py).  A Jacobian by
# columns (``jacfwd``) takes one set of units over every column of every input, so one choice per
# unit holds for all of them.
"""

from __future__ import annotations

import numpy as np

from ..compare.kinks import stack_generators
from .approx import Approx
from .engine import tangent, tangent_sweep
from .kinklog import _driven_groups
from .kinkunits import MAX_BUDGET_UNITS, MAX_KINK_UNITS, NUMBERS_PER_VISIT, SWEEP_VISITS, FIT_NUMBERS

__all__ = ["ForwardKinkLog", "forward_generators", "column_generators"]


class ForwardKinkLog:
    """The kinked units one tangent sweep met: ``units`` maps (node, argument, flat entry) to the
    changes of the local derivative there; ``tangents`` to the argument's tangent at the entry;
    ``unmodelled``: some kink could not be taken as a unit."""

    def __init__(self):
        self.units: dict = {}
        self.tangents: dict = {}
        self.drivers: dict = {}  # unit key -> the comparison entries that put it on its kink (Note [One step, one side])
        self.unmodelled = False
        self._pending: dict = {}  # entry -> [(argument, changes, tangent)] of the node being swept
        self._drivers: dict = {}  # entry -> driver of the node being swept, for record_paired

    def record(self, node, i: int, local: Approx, t: Approx, arg_shape: tuple) -> Approx:
        """``local`` (banded) at the closed form's side, its kinked entries kept for ``close``."""
        if tuple(arg_shape) != tuple(node.shape):
            self.unmodelled = True
            return local
        lo = np.ravel(np.broadcast_to(local.lo, node.shape))
        hi = np.ravel(np.broadcast_to(local.hi, node.shape))
        tv = np.ravel(np.broadcast_to(t.v, node.shape))
        for j in np.flatnonzero((lo > 0) | (hi > 0)):
            changes = [c for c in (-lo[j], hi[j]) if c != 0 and np.isfinite(c)]
            self._pending.setdefault(int(j), []).append((i, changes, float(tv[j])))
        return Approx(local.v, local.e)

    def pending(self) -> list:
        """The kinked entries of the node being swept, recorded since the last ``close``."""
        return list(self._pending)

    def close(self, node, drivers=None) -> None:
        """The node's kinked entries as units: one argument's alone, or several arguments banded each
        to one far edge moving together (Note [One side per node] in kinklog.py); ``drivers``: entry ->
        its comparison entries (Note [One step, one side])."""
        pending, self._pending = self._pending, {}
        self._drivers = drivers or {}  # for record_paired, which follows
        for j, found in pending.items():
            if len(found) == 1:
                i, changes, size = found[0]
                key = (node, i, j)
            elif all(len(changes) == 1 for _, changes, _ in found):
                key, changes, size = (node, -2, j), [tuple(c[0] for _, c, _ in found)], tuple(s for _, _, s in found)
            else:
                self.unmodelled = True  # two arguments' sides pair at one entry
                continue
            self.units[key], self.tangents[key] = changes, size
            if drivers and j in drivers:
                self.drivers[key] = drivers[j]

    def record_paired(self, node, entries: list, changes: list, sizes: list) -> None:
        """Entries whose banded arguments pair by region (Note [Paired sides in forward mode] in
        graph/rules.py): one unit each, its changes tuples over those arguments, its tangent theirs."""
        for j, found, size in zip(entries, changes, sizes):
            key = (node, -1, int(j))
            self.units[key] = list(found)
            self.tangents[key] = size
            if int(j) in self._drivers:
                self.drivers[key] = self._drivers[int(j)]


def _moved(change, size) -> float:
    """The output tangent's change at a unit: the local derivative's change times the argument's
    tangent, summed over the arguments of a paired unit."""
    return float(np.sum(np.multiply(change, size)))


def _banded(t: Approx | None) -> bool:
    return t is not None and t.banded and bool(np.any(t.lo > 0) or np.any(t.hi > 0))


def _affordable(st, units: list, full: tuple) -> bool:
    sweeps = sum(len(changes) for _, changes in units)
    if len(units) <= MAX_KINK_UNITS:
        return True
    if len(units) > MAX_BUDGET_UNITS or len(units) * 2 * int(np.prod(full)) > FIT_NUMBERS:
        return False
    numbers = sum(int(np.prod(n.shape, dtype=np.int64)) for n in st.graph.nodes)
    return sweeps * (len(st.graph.nodes) + numbers / NUMBERS_PER_VISIT) <= SWEEP_VISITS


def _collect(st, seeds_per_direction: list):
    """``(units, per_direction)``: every kinked unit the tangent sweeps along the directions meet,
    with its changes, and per direction the arguments' tangents at the units; None where some kink
    is no unit."""
    units: dict = {}
    drivers: dict = {}
    per_direction = []
    for seeds in seeds_per_direction:
        log = ForwardKinkLog()
        out = tangent(st.graph, st.values, seeds, st.out, st.ctx, kinks=log)
        if log.unmodelled or _banded(out):
            return None
        for key, changes in log.units.items():
            units.setdefault(key, changes)
        for key, driver in log.drivers.items():
            drivers.setdefault(key, driver)
        per_direction.append(log.tangents)
    return units, per_direction, drivers


def _reach(st, node, j: int) -> np.ndarray:
    """The output's tangent when the node's entry ``j`` moves by one (zero elsewhere)."""
    seed = np.zeros(node.shape)
    seed.flat[j] = 1.0
    out_shape = tuple(st.values[st.out].shape)
    swept = tangent_sweep(st.graph, st.values, {node: Approx(seed)}, st.ctx).get(st.out)
    return np.zeros(out_shape) if swept is None else np.broadcast_to(swept.v, out_shape)


def forward_generators(st, seeds_per_direction: list, full: tuple):
    """The joint kink check's generators ``(units, changes, *full)`` of the output tangents stacked
    over directions (``seeds_per_direction``: leaf node -> Approx tangent, one dict per direction;
    ``full``: the stacked record's shape), or None where some kink is no unit or past the budget
    (Note [Forward kink units])."""
    found = _collect(st, seeds_per_direction)
    if found is None or not found[0] or not _affordable(st, list(found[0].items()), full):
        return None
    units, per_direction, drivers = found
    groups = []
    for keys in _joined(units, drivers):  # Note [One step, one side]: one change for every unit driven alike
        reaches = {key: _reach(st, key[0], key[2]) for key in keys}
        gens = []
        for c in range(len(units[keys[0]])):
            per = [sum(_moved(units[k][c], d.get(k, 0.0)) * reaches[k] for k in keys) for d in per_direction]
            gens.append(np.stack(per).reshape(full))
        groups.append(gens)
    return stack_generators(groups, full)


def _joined(units: dict, drivers: dict) -> list:
    """Unit keys grouped by their driver (kinklog's rule): each alone, or the units of one comparison
    with one change each, together."""
    keys = list(units)
    index = {k: i for i, k in enumerate(keys)}
    grouped = _driven_groups({index[k]: d for k, d in drivers.items() if k in index})
    together = [[keys[i] for i in g] for g in grouped if len(g) > 1 and all(len(units[keys[i]]) == 1 for i in g)]
    taken = {k for g in together for k in g}
    return together + [[k] for k in keys if k not in taken]


def column_generators(st, nodes: dict, shapes: dict, out_shape: tuple) -> dict | None:
    """The same for a Jacobian by columns (``jacfwd``): per differentiated name, generators shaped
    ``out_shape + shapes[name]``, over one set of units for every name (one choice per unit holds
    for every input, Note [One choice for every input] in compare/kinks.py); None as above."""
    seeds, owner = [], []
    for name, node in nodes.items():
        if node is None:
            continue
        size = int(np.prod(shapes[name])) if shapes[name] else 1
        for j in range(size):
            seed = np.zeros(size)
            seed[j] = 1.0
            seeds.append({node: Approx(seed.reshape(node.shape))})
            owner.append(name)
    found = _collect(st, seeds)
    total = sum(int(np.prod(out_shape + tuple(shapes[n]))) for n in nodes)
    if found is None or not found[0] or not _affordable(st, list(found[0].items()), (total,)):
        return None
    units, per_direction, drivers = found
    out: dict = {name: [] for name in nodes}
    for keys in _joined(units, drivers):
        reaches = {k: np.ravel(_reach(st, k[0], k[2])) for k in keys}
        for name in nodes:
            mine = [d for d, o in zip(per_direction, owner) if o == name]
            width = len(mine) or (int(np.prod(shapes[name])) if shapes[name] else 1)
            full = tuple(out_shape) + tuple(shapes[name])
            out[name].append([sum(np.outer(reaches[k], [_moved(units[k][c], d.get(k, 0.0)) for d in mine] or
                                           [0.0] * width) for k in keys).reshape(full)
                              for c in range(len(units[keys[0]]))])
    return {name: stack_generators(groups, tuple(out_shape) + tuple(shapes[name])) for name, groups in out.items()}
