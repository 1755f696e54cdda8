"""Kinked units of a network and the joint kink check's generators (matrix engine).

# Note [Joint kinks in the matrix engine]
A *unit* is one entry ``(i, j)`` of one derivative node ``f'(z)`` (``Elementwise`` of order >= 1
whose op has kinks) where ``z[i, j]`` sits on a kink point p, exactly or within
``KINK_C · eps(dtype) · scale`` (Note [Kink bands] in ``references.py``).  Torch may give such a
unit any of the values ``f'`` takes beside p or at p (the left and right one-sided slopes, the
value at p; a custom backward may also pick a subgradient between them): its *interval*
``[lo, hi]`` is the hull of those values and of the closed form's own value ``base``.

Every path from the loss to a leaf passes through an entry of ``z`` at most once, so a gradient
is affine in the values of all derivative nodes *of one argument* ``z`` jointly, and multilinear
across arguments.  Hence, with the other units at ``base``:

* a unit's effect on every gradient is ``(v - base) · d``, ``d`` the change per unit of value,
  found by one evaluation of the closed form with that entry replaced (the forward pass and every
  part of the backward that does not depend on the node are reused);
* each unit is one group of the joint fit (Note [Joint kink check] in
  ``symgrad/compare/kinks.py``) with the generators ``(lo - base) d`` and ``(hi - base) d``
  (those not zero): ``λ`` in ``[0, 1]`` moves the unit's value from ``base`` to either end;
* units are grouped by sample (the row of ``z``; the column when the samples are columns).
  Units of one sample on one argument add up exactly.  A sample whose units lie on several
  arguments (a relu kink feeding another relu kink) has cross terms: with at most
  ``MAX_KINK_COMBINATIONS`` vertices of its box ``∏ [lo_u, hi_u]`` the sample is one group whose
  generators are every vertex (exact: a multilinear map takes the box into the hull of its
  vertices' images); with more, its units keep their own groups and one more group holds the
  cross terms of the two extreme assignments (all units of the sample left, all right);
* finally the model is compared with the two whole-batch extremes (every unit left, every unit
  right), which ``references.py`` evaluates anyway for the rounding bounds: what the grouping
  misses there (samples that interact, in a model that mixes them) becomes one more group.

No effect is counted twice: a group holds alternatives (``Σ λ <= 1`` within it), and groups are
disjoint in the units they move, the cross-term groups holding only what the unit groups cannot
give.  So a backward that doubles one unit's contribution, or scales the whole gradient, is not
explained.  ``lower`` / ``upper`` are the entrywise hull of the model (``base`` plus, per group,
the most negative / positive generator or 0) and of the two extremes.

The work is bounded.  Beyond ``MAX_KINK_UNITS`` units or ``MAX_KINK_EVALUATIONS`` evaluations
nothing is evaluated unit by unit: ``lower`` / ``upper`` are the band of the two extremes only
(too narrow where units go different ways) and ``notes`` says so, gradient by gradient.  Within
them, the generators are kept for as many gradients as ``MAX_GENERATOR_ENTRIES``
(``symgrad.compare.kinks``) allows for all of them together, smallest first; the others get the
model's entrywise hull without the joint check, and a note.  An evaluation costs about one
backward pass over the batch (less: what does not depend on the unit's node is reused).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import sympy as sp
from sympy import MatrixSymbol

from symgrad.compare.kinks import MAX_GENERATOR_ENTRIES
from symgrad.matrix.evaluate import Evaluator, matrix_symbols
from symgrad.matrix.nodes import Elementwise, one_sided, scalar_function

__all__ = ["KinkAnalysis", "analyse", "MAX_KINK_UNITS", "MAX_KINK_EVALUATIONS", "MAX_KINK_COMBINATIONS",
           "MAX_GENERATOR_ENTRIES"]

MAX_KINK_UNITS = 256  # kinked units evaluated one by one
MAX_KINK_EVALUATIONS = 1024  # evaluations of the closed form for the generators, all together
MAX_KINK_COMBINATIONS = 64  # vertices of a sample whose kinked units lie in several layers
_NEGLIGIBLE = 1e-10  # a cross term this small, relative to the gradient's size, is left out


@dataclass(eq=False)
class _Unit:
    node: Elementwise
    index: tuple  # (i, j) in the node's matrix value
    base: float  # the closed form's value there
    left: float
    right: float
    lo: float  # the interval torch may pick from
    hi: float
    sample: object  # grouping key


@dataclass
class KinkAnalysis:
    """What ``analyse`` found: per gradient name, ``bands[name] = (lower, upper, kink)`` (matrix
    shaped, like the closed form's value) and ``generators[name]`` (a list of groups, each a list
    of matrix-shaped arrays; absent where no joint check is possible, and then ``notes[name]``
    says why), and the two whole-batch extreme evaluators (every unit left, every unit right)."""

    bands: dict = field(default_factory=dict)
    generators: dict = field(default_factory=dict)
    evaluators: list = field(default_factory=list)
    note: str = ""  # the first of ``notes``
    notes: dict = field(default_factory=dict)  # name -> why its kink check fell back to entrywise bands
    units: int = 0
    nodes: dict = field(default_factory=dict)  # kinked node -> (mask of its kinked entries, float64 value)


def _dependence(targets: frozenset, cot_defs: dict):
    """``dep(expr)``: whether ``expr`` depends on any node in ``targets`` (directly or through the
    cotangent definitions, which are in order: each refers only to earlier ones)."""
    memo: dict = {}
    dep_syms: set = set()

    def dep(e) -> bool:
        hit = memo.get(e)
        if hit is None:
            if e in targets:
                hit = True
            elif isinstance(e, MatrixSymbol):
                hit = e in dep_syms
            else:
                hit = any(dep(a) for a in e.args)
            memo[e] = hit
        return hit

    for s, expr in cot_defs.items():
        if dep(expr):
            dep_syms.add(s)
        memo[s] = s in dep_syms
    return dep


def analyse(grads: dict, net, cot_defs: dict, ev: Evaluator, dtype_eps: float, magnitude, *, kink_c: float,
            joint: bool = True) -> KinkAnalysis:
    """Kink bands and joint-check generators of ``grads`` (Note [Joint kinks in the matrix engine]).
    ``magnitude(expr)``: ``expr`` evaluated with absolute values (the scale of a pre-activation)."""
    out = KinkAnalysis()
    nodes = set()
    for e in [*grads.values(), *cot_defs.values()]:
        nodes |= {n for n in e.atoms(Elementwise) if n.order >= 1 and n.row.kinks}
    if not nodes:
        return out
    left, right, base_nodes, masks, values = {}, {}, {}, {}, {}
    for node in sorted(nodes, key=str):
        points = [p for p in node.row.kink_points(**node.params) if sp.sympify(p).is_finite]
        if not points:
            continue
        z = np.asarray(ev(node.arg), dtype=np.float64)
        tol = kink_c * dtype_eps * np.maximum(magnitude(node.arg), 1.0)
        base = np.array(np.broadcast_to(np.asarray(ev(node), dtype=np.float64), z.shape))
        lo, hi, hit = base.copy(), base.copy(), np.zeros(z.shape, bool)
        cand = {}
        for p in points:
            mask = np.abs(z - float(p)) <= tol
            if mask.any():
                vals = [one_sided(node.name, node.args[2], p, s, node.order) for s in (-1, 1, 0)]
                lo[mask], hi[mask] = vals[0], vals[1]
                hit |= mask
                cand[p] = (mask, vals)
        if hit.any():
            left[node], right[node], base_nodes[node], masks[node], values[node] = lo, hi, base, hit, cand
    if not left:
        return out
    out.nodes = {node: (masks[node], base_nodes[node]) for node in masks}
    forward = {s: ev.memo[s] for s in net.defs}
    # dimensions are bound from every symbol the side evaluations can meet, definitions included
    symbols = matrix_symbols(*grads.values(), *cot_defs.values(), *net.defs.values())
    out.evaluators = [Evaluator(ev.values, cot_defs, overrides={**forward, **side}, symbols=symbols)
                      for side in (left, right)]
    shapes = {name: np.shape(ev(g)) for name, g in grads.items()}
    main = {name: np.array(np.broadcast_to(np.asarray(ev(g), dtype=np.float64), shapes[name])) for name, g in grads.items()}
    extremes = {name: [np.broadcast_to(np.asarray(e(g), dtype=np.float64), shapes[name]) for e in out.evaluators]
                for name, g in grads.items()}
    n_units = int(sum(int(m.sum()) for m in masks.values()))
    out.units = n_units

    hull, why = None, ""
    if joint:
        if n_units > MAX_KINK_UNITS:
            why = f"{n_units} units sit on a kink, more than the {MAX_KINK_UNITS} it evaluates one by one"
        else:
            hull, why = _generators(grads, net, cot_defs, ev, symbols, shapes, main, extremes, left, right,
                                    base_nodes, masks, values)
    notes = {}
    for name in grads:
        a, b = extremes[name]
        m = main[name]
        lower, upper = np.minimum(m, np.minimum(a, b)), np.maximum(m, np.maximum(a, b))
        if hull is not None and name in hull.neg:
            lower, upper = np.minimum(lower, m + hull.neg[name]), np.maximum(upper, m + hull.pos[name])
        kink = lower != upper
        if kink.any():
            out.bands[name] = (lower, upper, kink)
            if hull is not None and name in hull.kept:
                out.generators[name] = hull.groups.get(name, [])
            elif hull is not None:
                notes[name] = (f"The kink check fell back to entrywise bands: the generators of the {hull.units} "
                               f"units on a kink would hold more than the {MAX_GENERATOR_ENTRIES:,} entries allowed "
                               f"for all gradients together; each entry of {name} on a kink was checked against the "
                               "band that every choice of side of those units gives it, not jointly (Note [Joint "
                               "kinks in the matrix engine]).")
            else:
                notes[name] = (f"The kink check fell back to entrywise bands: {why}; entries on a kink were "
                               "checked against the band of the all-left and all-right evaluations, not jointly "
                               "(Note [Joint kinks in the matrix engine]).")
    out.notes = notes
    out.note = next(iter(notes.values()), "")
    return out


def _sample_key(node, index, batch):
    rows, cols = node.arg.shape
    if batch is not None and cols == batch and rows != batch:
        return index[1]
    return index[0]


def _generators(grads, net, cot_defs, ev, symbols, shapes, main, extremes, left, right, base_nodes, masks, values):
    """``(_Hull, "")``, or ``(None, why)`` past a bound on the work."""
    batch = next((d for d in net.dims if getattr(d, "name", None) == "N"), None)
    units: list[_Unit] = []
    for node, hit in masks.items():
        base = base_nodes[node]
        for idx in zip(*np.nonzero(hit)):
            idx = tuple(int(k) for k in idx)
            vals = {float(base[idx])}
            for mask, cand in values[node].values():
                if mask[idx]:
                    vals.update(cand)
            lo, hi = min(vals), max(vals)
            if lo == hi:
                continue
            units.append(_Unit(node, idx, float(base[idx]), float(left[node][idx]), float(right[node][idx]), lo, hi,
                               _sample_key(node, idx, batch)))
    by_sample: dict = {}
    for u in units:
        by_sample.setdefault(u.sample, []).append(u)

    # dependence of every gradient on every kinked node, and what each evaluation may reuse
    node_list = list(masks)
    dep_names = {}
    for node in node_list:
        dep = _dependence(frozenset([node]), cot_defs)
        dep_names[node] = [name for name, g in grads.items() if dep(g)]

    # the plan: which evaluations, how many generators (a bound is checked before any is run)
    plan = []  # (kind, sample, units)
    n_eval = 0
    for key, us in by_sample.items():
        args = {u.node.arg for u in us}
        if len(args) == 1:
            plan.extend(("unit", key, [u]) for u in us)
            n_eval += len(us)
        else:
            vertices = int(np.prod([2 for _ in us], dtype=np.float64))
            if vertices <= MAX_KINK_COMBINATIONS:
                plan.append(("vertices", key, us))
                n_eval += vertices + 2
            else:
                plan.extend(("unit", key, [u]) for u in us)
                plan.append(("cross", key, us))
                n_eval += len(us) + 2
    if n_eval > MAX_KINK_EVALUATIONS:
        return None, (f"the {len(units)} units on a kink need {n_eval} evaluations of the closed form, more than "
                      f"the {MAX_KINK_EVALUATIONS} allowed")
    sizes = {name: int(np.prod(shapes[name])) if shapes[name] else 1 for name in grads}
    wanted = dict.fromkeys(grads, 0)  # generator entries each gradient would hold
    for kind, _, us in plan:
        if kind == "unit":
            width = sum(v != us[0].base for v in (us[0].lo, us[0].hi))
        elif kind == "vertices":
            width = 2 ** len(us) - all(u.base in (u.lo, u.hi) for u in us)
        else:
            width = 2
        for n in {n for u in us for n in dep_names[u.node]}:
            wanted[n] += width * sizes[n]
    kept, total = set(), 0
    for n in sorted(grads, key=lambda n: wanted[n]):  # the global cross terms, if any, on top
        need = wanted[n] + (2 * sizes[n] if wanted[n] else 0)
        if total + need <= MAX_GENERATOR_ENTRIES:
            kept.add(n)
            total += need
    hull = _Hull(kept, len(units))

    reuse: dict = {}

    def evaluate(assign: dict) -> dict:
        """``{name: gradient - main}`` with the units in ``assign`` (``{unit: value}``) at those
        values and every other unit at ``base``; only the gradients that depend on them."""
        nodes = frozenset(u.node for u in assign)
        if nodes not in reuse:
            dep = _dependence(nodes, cot_defs)
            reuse[nodes] = {k: v for k, v in ev.memo.items() if not dep(k)}
        over = dict(reuse[nodes])
        over.update(base_nodes)
        for u, v in assign.items():
            if over[u.node] is base_nodes[u.node]:
                over[u.node] = base_nodes[u.node].copy()
            over[u.node][u.index] = v
        e = Evaluator(ev.values, cot_defs, overrides=over, symbols=symbols)
        names = {n for node in nodes for n in dep_names[node]}
        return {n: np.broadcast_to(np.asarray(e(grads[n]), dtype=np.float64), shapes[n]) - main[n] for n in names}

    def add(acc: dict, c: float, d: dict, sized: bool = True) -> None:
        """``acc += c · d`` name by name (and, ``sized``, the terms' size into ``scale``)."""
        if c == 0:
            return
        for n, a in d.items():
            acc[n] = acc[n] + c * a if n in acc else c * a
            if sized:
                scale[n] += abs(c) * float(np.max(np.abs(a), initial=0.0))

    def small(d: dict) -> bool:
        return all(float(np.max(np.abs(a), initial=0.0)) <= _NEGLIGIBLE * scale[n] for n, a in d.items())

    # sizes the cross terms are judged against: the gradient, its extremes, and every term of the model
    scale = {n: float(np.max(np.abs(main[n]), initial=0.0))
             + sum(float(np.max(np.abs(x - main[n]), initial=0.0)) for x in extremes[n]) for n in grads}
    model = [{}, {}]  # per side: what the groups give at the whole-batch extreme
    crossed = {key for kind, key, _ in plan if kind == "cross"}
    sample_linear: dict = {}  # sample -> per side: its units' linear terms (for its cross terms)
    for kind, key, us in plan:
        if kind == "unit":
            (u,) = us
            v1 = u.hi if abs(u.hi - u.base) >= abs(u.lo - u.base) else u.lo
            d1 = evaluate({u: v1})
            hull.add([{n: ((v - u.base) / (v1 - u.base)) * a for n, a in d1.items()}
                      for v in (u.lo, u.hi) if v != u.base])
            for s, side in enumerate((u.left, u.right)):
                c = (side - u.base) / (v1 - u.base)
                add(model[s], c, d1)
                if key in crossed:
                    add(sample_linear.setdefault(key, [{}, {}])[s], c, d1, sized=False)
        elif kind == "vertices":
            done, gens = {}, []
            for vertex in itertools.product(*((u.lo, u.hi) for u in us)):
                assign = {u: v for u, v in zip(us, vertex) if v != u.base}
                if assign:
                    done[vertex] = evaluate(assign)
                    gens.append(done[vertex])
            hull.add(gens)
            for s, attr in enumerate(("left", "right")):
                vertex = tuple(getattr(u, attr) for u in us)
                if vertex not in done:
                    assign = {u: v for u, v in zip(us, vertex) if v != u.base}
                    done[vertex] = evaluate(assign) if assign else {}
                add(model[s], 1.0, done[vertex])
        else:  # "cross": what this sample's two extreme assignments have beyond its units' linear terms
            cross = []
            linear = sample_linear.pop(key, [{}, {}])
            for s, attr in enumerate(("left", "right")):
                assign = {u: getattr(u, attr) for u in us if getattr(u, attr) != u.base}
                if not assign:
                    continue
                whole = evaluate(assign)
                c = {n: whole.get(n, 0.0) - linear[s].get(n, 0.0) for n in set(whole) | set(linear[s])}
                for n, a in whole.items():
                    scale[n] += float(np.max(np.abs(a), initial=0.0))
                if not small(c):
                    cross.append(c)
                    add(model[s], 1.0, c)
            hull.add(cross)

    # the whole-batch extremes: what the grouping misses there (samples that interact) is one more group
    missed = []
    for s in range(2):
        miss = {n: (extremes[n][s] - main[n]) - model[s].get(n, 0.0) for n in grads}
        miss = {n: a for n, a in miss.items() if np.any(a != 0)}
        if not small(miss):
            missed.append(miss)
    hull.add(missed)
    return hull, ""


class _Hull:
    """The groups, kept for the gradients in ``kept``; for every gradient the entrywise hull of
    what they give (``neg`` / ``pos``: per entry, the sum over groups of the most negative /
    positive generator, or 0)."""

    def __init__(self, kept: set, units: int):
        self.kept, self.units = kept, units
        self.groups: dict = {}
        self.neg: dict = {}
        self.pos: dict = {}

    def add(self, candidates: list[dict]) -> None:
        for name, gens in _group(candidates).items():
            lo = np.minimum(0.0, np.minimum.reduce(gens) if len(gens) > 1 else gens[0])
            hi = np.maximum(0.0, np.maximum.reduce(gens) if len(gens) > 1 else gens[0])
            self.neg[name] = self.neg[name] + lo if name in self.neg else lo
            self.pos[name] = self.pos[name] + hi if name in self.pos else hi
            if name in self.kept:
                self.groups.setdefault(name, []).append(gens)


def _group(candidates: list[dict]) -> dict:
    """``{name: [generator, ...]}`` of one group, without generators that are zero everywhere."""
    out: dict = {}
    for d in candidates:
        for n, a in d.items():
            a = np.asarray(a, dtype=np.float64)
            if np.any(a != 0):
                out.setdefault(n, []).append(a)
    return out
