"""Derivatives at cone points: where the closed form is 0/0 but the function is not (stage "differentiate").

# Note [Cone points]
A norm at zero is the classic: ``||x||`` is finite and Lipschitz at ``x = 0``, but its derivative
``x / ||x||`` is 0/0 there, so the reverse sweep over the op graph gives NaN (``sqrt'(0) = inf``
times ``2x = 0``).  ``torch.dist(x, y)`` at ``x = y``, ``torch.cdist(x, x)`` (its diagonal), a
Frobenius norm of a zero matrix, ``F.normalize`` of a zero row go the same way.  Torch returns 0
there -- the subgradient of least norm -- after years of returning NaN; both are shipped
behaviours that a verifier must tell apart, so a NaN reference (no verdict possible) is not good
enough.

Where an entry of the reference is NaN while the forward is finite, the derivative's *limits* are
computed instead.  The whole op graph is evaluated again at ``x + t d`` for ``DIRECTIONS`` random
directions ``d`` and their opposites ``-d`` (every floating-point input and parameter moved
together) and two steps ``t``.  The opposites matter: the limits of a norm's derivative at 0 are
``d_i / ||d||``, and eight random ``d`` alone gave some entry eight limits of one sign in most
vectors of 8 or more entries, a band without 0 -- torch's own least-norm subgradient failed.  With
``-d`` the band of a positively homogeneous function's limits is symmetric about 0 where the
function is symmetric, as a norm is.
Along a ray into a cone point the derivative of a norm is constant (``d / ||d||``); at a
removable singularity every direction converges to the same number; at the edge of a domain
(``x ** y`` at ``x = 0`` by ``y``) only the directions where the closed form is defined count.  The entry's band is the
smallest interval holding every limit, widened by how much each direction's value still moved
between the two steps (a convergence estimate).  Autograd's value must lie in it, as at any kink
(``Reference.lower``/``upper``): 0 for a norm at zero passes, NaN fails, and so does a value
outside every limit (e.g. 1 for every entry of a norm of several entries at zero, whose limits
``d_i / ||d||`` stay inside ``[-0.99, 0.99]``).  The band is sampled, so it lies inside the range of
the entry's limits (a norm's are all of ``[-1, 1]``): torch's choice at a symmetric cone point, 0,
lies in it, but a subgradient near the range's edge (0.9 on one entry of a zero vector of 9) can
fall outside a sampled band and fail; a wrong value inside the band passes, as at a kink.

The steps are relative to each input's largest entry; an input of zeros (a zero-initialised
parameter) moves by ``ZERO_SIZE`` times them, inside the clamps such code puts around its cone
points: ``F.normalize(B) + vector_norm(B)`` at ``B = 0`` is ``B / 1e-12`` plus a norm, and moves of
2**-18 left normalize's clamp, so its limits were about 1/|t d| instead of torch's exact 1e12 -- a
false alarm, where each term alone passed.

Some NaNs survive any move of the inputs: ``cdist(x, x)`` has ``x_i - x_i = 0`` for every ``x``, so
its diagonal's ``sqrt`` sits at 0 wherever the inputs go, although the function (0 there) is
smooth.  For those entries every *use* of an input is moved independently: the graph gets one
copy of the leaf per consumer (``f(x) = F(x, x)``, evaluated at ``F(x + t d_1, x + t d_2)``), and the
leaf's derivative is the sum over its copies.  Where ``F`` is differentiable this is ``f``'s
derivative (the chain rule); at ``cdist``'s diagonal the copies' contributions cancel exactly to 0.
It is used only where the plain move left a NaN, because the sum of the copies' limits can be
wider than ``f``'s own.  An entry that is NaN in both stays NaN and fails, with the reason in the
report.  Bounds come from the closed form at the moved points, never from torch; their roundings
are charged on the values' sizes alone, with no floor below the dtype's normal range: a step of
2**-18 puts a float16 check's moved inputs among the subnormals, and the floor (Note [Rounding below
the normal range]) charged on a squared norm of 1e-10 let a norm's gradient at zero be anything (10
in every entry passed, its band widened by thousands).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..progress import stage
from .approx import Approx, scale_free
from .engine import backward, forward
from .ir import Graph, Node
from .refs import reference

__all__ = ["limit_bands", "tangent_bands", "basis", "along", "ALONG", "exploded_bands", "bands_from", "moved",
           "DIRECTIONS", "STEPS"]

DIRECTIONS = 8
STEPS = (2.0**-18, 2.0**-24)  # relative to each input's largest entry (ZERO_SIZE for an input of zeros)
ZERO_SIZE = 2.0**-30  # Note [Cone points]: inside the clamps of normalize (1e-12) and the like


def limit_bands(st, seeds, live, nodes, refs, how, out_shape, scale) -> None:
    """Replace NaN entries of ``refs`` (one per name in ``st.wrt``) by bands of the derivative's
    limits around the point (Note [Cone points]).  ``st``: the graph check's state."""
    todo = [i for i, r in enumerate(refs) if np.isnan(np.asarray(r.value, np.float64)).any()]
    if not todo or not np.all(np.isfinite(st.values[st.out].v)):
        return
    stage("op graph: derivative limits at a 0/0 point")
    rng = np.random.default_rng(0)
    sweep = (seeds, live, nodes, how, out_shape, scale)
    extra = []
    if how == "jacfwd":  # the Jacobian's columns are tangents too (Note [Moves along the tangent])
        columns = basis({n: np.shape(n.attrs["value"]) for n in dict.fromkeys(nodes) if n is not None})
        extra = along(columns, _size(live))
    plain = _sample(_reverse_at_moved(st, st.graph, {n: [n] for n in live}, *sweep), rng, extra)
    split = None
    for i in todo:
        ref = refs[i]
        nan = np.isnan(np.asarray(ref.value, np.float64))
        lo, hi, e = _band([s[i] for s in plain])
        still = nan & np.isnan(lo)
        how_found = "every input moved together"
        if still.any():
            if split is None:
                graph, copies = _split_uses(st.graph)
                split = _sample(_reverse_at_moved(st, graph, copies, *sweep), rng)
            lo2, hi2, e2 = _band([s[i] for s in split])
            lo, hi, e = np.where(still, lo2, lo), np.where(still, hi2, hi), np.where(still, e2, e)
            how_found += "; where that stayed 0/0, each use of an input moved on its own"
        _apply(ref, nan, lo, hi, e, how_found)


def tangent_bands(st, refs, sweep, tangents=()) -> None:
    """Note [Cone points] for forward mode over the op graph: ``sweep(values)`` gives, per
    reference, (values, roundings) from the graph's forward ``values`` at moved inputs;
    ``tangents``: the sweeps' tangents ({input node: array}), each also a direction of the moves
    (Note [Moves along the tangent])."""
    if not any(np.isnan(np.asarray(r.value, np.float64)).any() for r in refs):
        return
    if not np.all(np.isfinite(st.values[st.out].v)):
        return
    stage("op graph: tangent limits at a 0/0 point")
    movable = [n for n in st.graph.inputs.values() if _floating(n)]
    tangents = [{n: d for n, d in t.items() if n in movable} for t in tangents]
    bands_from(refs, _at_moved(movable, lambda: sweep(forward(st.graph, st.ctx))), along(tangents, _size(movable)))


# Note [Moves along the tangent]
# A jvp at a cone point is a directional derivative, and along its own tangent ``t`` the limit is
# the one-sided derivative itself: a norm's jvp at 0 has limits ``<d, t> / ||d||`` for the random
# directions ``d``, all short of ``||t||`` unless ``d`` is parallel to ``t``, so a custom jvp
# returning ``||t||`` -- exactly ``f'(0; t)`` -- was called a bug (0.93 ||t|| was the band's edge).
# Every tangent is therefore also a direction of the moves, both signs, at one scale for all
# inputs so that the move is along ``t`` itself.  Each adds one forward sweep of every tangent, so
# a Jacobian by columns (one tangent per input entry; ``jacfwd``, also where its rows are swept in
# reverse) gets these moves only up to ``ALONG`` columns; its band stays the random directions'
# beyond that.
ALONG = 16


def basis(shapes: dict) -> list:
    """A Jacobian's columns' tangents ({key: array}), one per entry of each ``shapes`` key's
    array, or none past ``ALONG`` of them."""
    if sum(int(np.prod(s, dtype=np.int64)) for s in shapes.values()) > ALONG:
        return []
    out = []
    for key, shape in shapes.items():
        for j in range(int(np.prod(shape, dtype=np.int64))):
            e = np.zeros(shape)
            e.flat[j] = 1.0
            out.append({key: e})
    return out


def along(tangents, size: float) -> list:
    """The tangents ({key: array}) as directions of the moves, each scaled so that its largest entry
    is ``size`` (the inputs' largest, ZERO_SIZE where all are 0); none past ``ALONG`` of them."""
    tangents = list(tangents)
    if len(tangents) > ALONG:
        return []
    out = []
    for t in tangents:
        t = {k: np.asarray(d, np.float64) for k, d in t.items()}
        top = max((float(np.max(np.abs(d), initial=0.0)) for d in t.values()), default=0.0)
        if top > 0:
            out.append({k: d * ((size or ZERO_SIZE) / top) for k, d in t.items()})
    return out


def _size(leaves: list) -> float:
    """The largest entry's size over the leaves' values."""
    return max((float(np.max(np.abs(np.asarray(n.attrs["value"], np.float64)), initial=0.0)) for n in leaves),
               default=0.0)


def exploded_bands(refs, lowered, sizes: list, values: list, n_moved: int, counts: list, scale, eps: float,
                   tangents=()) -> None:
    """Note [Cone points] on the exploded engine: ``lowered`` evaluates the forward and every
    derivative (``sizes`` entries each, the forward first) at ``values``, whose first ``n_moved``
    entries are the inputs (``counts`` per input) and the rest cotangents or tangents, kept;
    ``tangents``: directions to move along too ({input position: array}, Note [Moves along the tangent])."""
    from ..lower.numpy import high_precision

    offsets = np.cumsum([0] + list(sizes))

    def evaluate(move):
        base, start, parts = np.asarray(values[:n_moved], np.float64), 0, []
        for k, c in enumerate(counts):
            parts.append(move(base[start:start + c], k))
            start += c
        got = lowered(list(np.concatenate(parts + [np.zeros(0)])) + list(values[n_moved:]), dtype=high_precision(),
                      kink_eps=eps)
        flat = np.array([float(x) for x in got.values], np.float64)
        mags = np.array([float(x) for x in got.magnitudes], np.float64)
        pieces = [(offsets[i], offsets[i + 1], r.value.shape) for i, r in enumerate(refs, 1)]
        return ([scale * flat[a:b].reshape(shape) for a, b, shape in pieces],
                [scale * mags[a:b].reshape(shape) for a, b, shape in pieces])

    top = float(np.max(np.abs(np.asarray(values[:n_moved], np.float64)), initial=0.0))
    bands_from(refs, evaluate, along(tangents, top))


def bands_from(refs, evaluate, along=()) -> None:
    """Note [Cone points] for an engine that evaluates its closed forms directly: ``evaluate(move)``
    gives, per reference, (values, roundings) at the inputs moved by ``move(value array, key)``
    (``key``: the input's node or position); ``along``: further directions ({key: array})."""
    todo = [i for i, r in enumerate(refs) if np.isnan(np.asarray(r.value, np.float64)).any()]
    if not todo:
        return
    stage("derivative limits at a 0/0 point")
    samples = _sample(evaluate, np.random.default_rng(0), along)
    for i in todo:
        nan = np.isnan(np.asarray(refs[i].value, np.float64))
        lo, hi, e = _band([s[i] for s in samples])
        _apply(refs[i], nan, lo, hi, e, "every input moved together")


def _sample(evaluate, rng, along=()) -> list:
    """Per direction, per reference: (values at step 1, values at step 2, rounding at step 1), from
    ``evaluate(move)`` (per reference, (values, roundings) at the inputs moved by ``move``);
    ``DIRECTIONS`` random directions, then ``along`` ({key: direction}, Note [Moves along the tangent])."""
    def random_move(seed, t):
        gen = np.random.default_rng(seed)  # the same direction at both steps, one draw per input
        return lambda v, key=None: moved(v, gen, t)

    def fixed_move(d, t):
        return lambda v, key=None: np.asarray(v, np.float64) + t * d[key] if key in d else np.asarray(v, np.float64)

    makers = [lambda t, seed=int(rng.integers(2**31)): random_move(seed, t) for _ in range(DIRECTIONS)]
    makers += [lambda t, d=d: fixed_move(d, t) for d in along]
    samples = []
    for make in makers:
        for sign in (1.0, -1.0):  # each direction and its opposite (Note [Cone points])
            at = []
            for t in STEPS:
                with scale_free():  # the step is arbitrary: no underflow charges (approx.py)
                    at.append(evaluate(make(t * sign)))
            samples.append([(a, b, r) for (a, r), (b, _) in zip(zip(*at[0]), zip(*at[1]))])
    return samples


def _at_moved(leaves: list, run) -> Callable:
    """``evaluate(move)`` for :func:`_sample`: ``run()`` with the ``leaves``' values moved, restored after."""
    base = {n: np.asarray(n.attrs["value"], np.float64) for n in leaves}

    def evaluate(move):
        try:
            for n, v in base.items():
                n.attrs["value"] = move(v, n)
            return run()
        finally:
            for n, v in base.items():
                n.attrs["value"] = v

    return evaluate


def moved(v: np.ndarray, rng, t: float) -> np.ndarray:
    """``v + t * max|v| * d`` for a standard normal ``d`` drawn from ``rng`` (``max|v|`` = 1 for zeros)."""
    v = np.asarray(v, np.float64)
    size = float(np.max(np.abs(v))) if v.size and np.max(np.abs(v)) > 0 else ZERO_SIZE
    return v + t * size * rng.standard_normal(v.shape)


def _apply(ref, nan, lo, hi, e, how_found: str) -> None:
    fixed = nan & np.isfinite(lo) & np.isfinite(hi)
    value = np.array(ref.value, np.float64)
    value[fixed] = 0.5 * (lo[fixed] + hi[fixed])
    lower = np.array(ref.lower if ref.lower is not None else value, np.float64)
    upper = np.array(ref.upper if ref.upper is not None else value, np.float64)
    lower[fixed], upper[fixed] = lo[fixed], hi[fixed]
    kink = np.zeros(value.shape, bool) if ref.kink is None else np.array(ref.kink, bool)
    kink |= fixed
    rounding = np.array(np.broadcast_to(ref.rounding if ref.rounding is not None else 0.0, value.shape), np.float64)
    rounding[fixed] = e[fixed]
    ref.value, ref.lower, ref.upper, ref.kink, ref.rounding = value, lower, upper, kink, rounding
    ref.kink_generators = None  # these entries are judged by their band alone (Note [Joint kink check])
    first = tuple(int(j) for j in np.argwhere(nan)[0])
    left = int((nan & ~fixed).sum())
    text = (f"{int(nan.sum())} entries have a closed form that is 0/0 at this input (e.g. a norm at zero; first "
            f"{ref.name}{list(first)}): autograd's value is judged against the band of the derivative's limits "
            f"from {DIRECTIONS} random directions and their opposites ({how_found}; Note [Cone points])")
    if fixed.any():
        j = tuple(np.argwhere(fixed)[0])
        text += f", e.g. [{lower[j]:.6g}, {upper[j]:.6g}]"
    if left:
        text += f"; {left} stay 0/0 at every nearby point tried and cannot be judged"
    ref.note = (ref.note + " " if ref.note else "") + text + "."


def _band(samples: list) -> tuple:
    """Entrywise (lower, upper, rounding) over ``samples`` = [(step-1 values, step-2 values, e), ...]
    per direction, from the directions where both steps are finite (at the edge of a domain, as
    ``x log x`` at 0, only one side is defined: its limits are the one-sided derivative); NaN where
    fewer than two directions are."""
    firsts = np.stack([a for a, _, _ in samples])
    lasts = np.stack([b for _, b, _ in samples])
    valid = np.isfinite(firsts) & np.isfinite(lasts)
    with np.errstate(invalid="ignore"):
        drift = np.where(valid, np.abs(firsts - lasts), 0.0).max(axis=0)  # how far from converged
        lo = np.minimum(np.where(valid, firsts, np.inf).min(axis=0), np.where(valid, lasts, np.inf).min(axis=0))
        hi = np.maximum(np.where(valid, firsts, -np.inf).max(axis=0), np.where(valid, lasts, -np.inf).max(axis=0))
    e = np.stack([np.where(np.isfinite(r), r, 0.0) for _, _, r in samples]).max(axis=0)
    bad = valid.sum(axis=0) < 2
    return np.where(bad, np.nan, lo - drift), np.where(bad, np.nan, hi + drift), e


def _reverse_at_moved(st, graph: Graph, copies: dict, seeds, live, nodes, how, out_shape, scale):
    """``evaluate(move)`` for :func:`_sample`: the reverse sweeps of ``graph`` at moved leaves, as
    references.  ``copies``: original leaf -> its leaves in ``graph``."""
    flat = [c for cs in copies.values() for c in cs]
    movable = list(dict.fromkeys(flat + [n for n in graph.inputs.values() if n not in copies and _floating(n)]))
    out = graph.outputs[0] if graph is not st.graph else st.out

    def run():
        values = forward(graph, st.ctx)
        grads = [backward(graph, values, {out: Approx(s)}, flat, st.ctx) for s in seeds]
        return _references(st, grads, copies, live, nodes, how, out_shape, scale)

    return _at_moved(movable, run)


def _references(st, grads, copies, live, nodes, how, out_shape, scale) -> tuple:
    """(values, roundings) per name in ``st.wrt`` from per-seed sweeps, the copies of a leaf summed."""
    summed = []
    for g in grads:
        per_leaf = {}
        for leaf in live:
            parts = [g[c] for c in copies[leaf] if g.get(c) is not None]
            per_leaf[leaf] = None if not parts else Approx(sum(p.v for p in parts), sum(p.e for p in parts))
        summed.append(per_leaf)
    refs = [reference(n, [None if node is None else s[node] for s in summed], tuple(st.leaves[n].shape),
                      out_shape, how, scale, []) for n, node in zip(st.wrt, nodes)]
    return [np.asarray(r.value, np.float64) for r in refs], [np.asarray(r.rounding, np.float64) for r in refs]


def _floating(node: Node) -> bool:
    v = node.attrs.get("value")
    return v is not None and np.asarray(v).dtype.kind == "f"


def _split_uses(graph: Graph) -> tuple:
    """A copy of ``graph`` with one leaf per use of each input or parameter, and original leaf ->
    its copies (Note [Cone points])."""
    originals = {id(n) for n in graph.inputs.values() if _floating(n)}
    copies: dict = {n: [] for n in graph.inputs.values() if id(n) in originals}
    new = Graph()
    mapped: dict = {}
    for node in graph.nodes:
        if id(node) in originals:
            continue
        args = []
        for a in node.args:
            if id(a) in originals:
                leaf = new.add(Node("leaf", attrs=dict(a.attrs), shape=a.shape, name=a.name, origin=a.origin))
                copies[a].append(leaf)
                args.append(leaf)
            else:
                args.append(mapped.get(a, a))
        mapped[node] = new.add(Node(node.kind, tuple(args), node.attrs, node.shape, node.name, node.origin))
    new.outputs = [mapped.get(o, o) for o in graph.outputs if o is not None]
    for leaf, cs in copies.items():  # an input used nowhere keeps no copy; the output itself an input keeps one
        if not cs and any(o is leaf for o in graph.outputs):
            cs.append(leaf)
    return new, copies
