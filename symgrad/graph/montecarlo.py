"""A statistical rounding allowance for entries the worst-case bound cannot resolve.

# Note [Statistical allowance]
The running bound of Note [Approx arithmetic] is a worst case: every rounding error is charged with
the sign that hurts most, and the errors of the forward values are carried into the backward
through the absolute values of every path.  For a deep float32 network the entries of a gradient
are sums of thousands of terms of both signs, and the bound compounds that triangle inequality
layer after layer: on LeNet-5 in float32 the first convolution's gradient is allowed about 170 % of
its size, while torch's actual error is about 3e-7 of it.  A seeded bug of any size passes there.

Rounding errors of distinct operations behave as independent, zero-mean random variables
(Higham & Mary, "A New Approach to Probabilistic Rounding Error Analysis", SIAM J. Sci. Comput.
2019).  To first order, an entry's error is ``E = Σ_k S_k δ_k``: ``δ_k`` the rounding of operation
``k`` (``|δ_k| <= eps * a_k``, ``a_k`` the operation's own bound, the same one the running bound
charges) and ``S_k`` the *signed* sensitivity of the entry to it, summed over every path, which the
worst-case bound replaces by the sum of absolute values.  With independent ``δ_k``, Hoeffding's
inequality gives ``P(|E| > λσ) <= 2 exp(-λ²/2)``, ``σ² = eps² Σ S_k² a_k²``.

``σ`` is measured, not bounded: the forward and every backward sweep are evaluated again
``SAMPLES`` times in float64 with every operation's result moved by ``±DELTA * a_k``, a random sign
per operation, entry and rerun (equal values of one operation share theirs, Note [Systematic
scale]; a constant's representation error: one sign per rerun, shared by its uses; ``approx.rounded``).  ``DELTA = 2**-30`` per unit of a bound is small enough that no
branch flips (kinks are the bands' business) and large enough against float64's own rounding;
the response is linear, so each rerun's change divided by ``DELTA`` is one draw of ``E / eps``
with the largest variance the model allows (every rounding at its full bound), and ``σ`` is their
root mean square.  An entry's allowance is the smaller of the worst-case bound and ``LAMBDA * σ``.
With ``SAMPLES = 16``, for an entry of many terms ``σ̂² / σ²`` is about χ²₁₆ / 16: it is below
1/4 with probability 1.1e-3, and then ``LAMBDA = 8`` still gives ``2 exp(-8)``, so a false alarm
has probability near 1e-6 per entry in the model (scipy.stats.chi2), before counting that the model
charges each rounding its full bound, 2-4 times a real rounding's size.  Measured: 0 false alarms
over the seven model families of tests/graph/test_models.py in float32, float16 and bfloat16
(benchmarks/model_zoo_low_precision.py).

Nothing here looks at torch's numbers: the moves come from the computation's structure (the same
operations and bounds as the worst-case bound).  What the model assumes, and where it could be
wrong: roundings that are *not* independent (the same value rounded the same way many times, such
as a sum of identical constants) add up coherently.  Such entries are rare and small; the checks
are used only where the worst-case bound cannot resolve the dtype's resolution (a typical entry
allowed more than ``WEAK`` of the relative error a seeded-bug check of the dtype looks for,
``compare.RESOLUTION``); a linear-algebra node, whose bound is a backward error, is evaluated at
its input moved by that error (Note [Linalg in the reruns] in linalg.py).  That includes float64: the worst case
compounds with depth there too (a 3-layer transformer encoder's input-projection gradient was
allowed 3.5e10 times its size, a 30-step log-domain Sinkhorn's 1e20, so a gradient with a flipped
sign passed), and the reruns run in float64 with moves of ``DELTA`` per unit of a bound, far
above float64's own rounding, whatever the checked dtype.
Kink bands are untouched, and so is the rounding allowance of every entry a kinked unit reaches
(``Reference.kink``): a unit within rounding of its kink (a relu pre-activation torch rounded to
the other side) responds to the moves with the graph's side's slope only, while torch's value
came from the other side's -- the worst-case bound, which charges both, stays there.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager

import numpy as np

from ..compare.compare import EPS, RESOLUTION
from ..compare.half import rounding_ulps
from ..progress import advance, stage
from . import approx
from .approx import Approx
from .engine import backward, forward

__all__ = ["SAMPLES", "LAMBDA", "WEAK", "wanted", "spread", "perturbing", "coherent_reruns", "kink_caps", "per_use_args"]

SAMPLES = 16
LAMBDA = 8.0
# the reruns pay where a typical entry's worst-case allowance is coarser than this share of the
# relative error a seeded-bug check of the dtype looks for (compare.RESOLUTION: 1e-3 in float32)
WEAK = 0.1
# in float64 the reruns pay only where a typical entry's worst case is past the seeded-bug resolution
# itself (1e-6): a float64 LeNet-5 (worst case 1.4e-7 on its first convolution) resolves its bugs
# without them, at a fifth of the time; stacked transformer blocks (3.5e10) do not
WEAK_FLOAT64 = 1.0
# Note [Float32's reruns at a hundredth]
# In float32 at WEAK (1.2e-4 of each entry, the median worst case) the reruns did not run on a
# LayerNorm's input gradient (8 x 32), allowed about 4e-5 of its size, about 230 times torch's actual
# error: the worst case charges log2 n roundings on the terms' sizes for every row sum of the backward
# and carries the row statistics' errors through absolute values.  A backward whose rstd dropped eps
# (5e-6 relative; a LayerNorm bug that shipped) passed, and so did a 1e-5 scale bug on half of twelve
# model families.  At a hundredth (1.2e-5) the reruns run there, allow about 25 times torch's error,
# and catch both; the float32 model families (161) and false-alarm sweep (134 ops) gave no false
# alarm with it.  Half precision keeps WEAK (its reruns already run, and its sweeps were measured so).
WEAK_FLOAT32 = 0.01
DELTA = 2.0**-30  # the size of a move, per unit of an operation's own bound (the response is linear)
# Note [Moves stay linear]
# A move of DELTA per unit of a bound is 2**-30 of a value whose bound is a few of its own units.  A
# folded float32 constant in a float64 check carries 2**31 units of its own size: moved by DELTA per
# unit it moved by itself, past the linear range (a tanh after it saturated), the reruns measured a
# spread 100 times too small, and torch's own float64 gradient through a float32 positional table
# failed.  So the move per unit is DELTA scaled down by the largest bound of a constant against the
# size of its values (the largest of them, not each: a weight near 0 has a bound many times its own
# size without being moved far), past LINEAR_RATIO units, so that every move stays below 2**-12 of
# that size, and never below FINEST_MOVE: a move under float64's own spacing rounds away, the reruns
# then saw no spread at all, and torch's own antialiased resize failed.
LINEAR_RATIO = 2.0**18
FINEST_MOVE = 2.0**-44
_MOVE: contextvars.ContextVar = contextvars.ContextVar("symgrad_move", default=DELTA)


def move_size() -> float:
    """The size of a move per unit of a bound in the reruns under way (Note [Moves stay linear])."""
    return _MOVE.get()


@contextmanager
def linear_moves(graph, ctx):
    """Within: moves sized for ``graph``'s constants (Note [Moves stay linear])."""
    worst = 0.0
    for node in graph.nodes:
        if node.kind != "leaf":
            continue
        worst = max(worst, float(node.attrs.get("error", 0.0)) * node.attrs.get("error_eps", ctx.eps) / ctx.eps)
        folded = node.attrs.get("error_abs")
        if folded is not None:
            values = np.abs(np.asarray(node.attrs["value"], np.float64))
            values = values[np.isfinite(values)]
            folded = np.asarray(folded, np.float64)
            folded = folded[np.isfinite(folded)]
            if values.size and folded.size and values.max() > 0:
                worst = max(worst, float(folded.max()) / (ctx.eps * float(values.max())))
    token = _MOVE.set(max(FINEST_MOVE, DELTA * LINEAR_RATIO / worst) if worst > LINEAR_RATIO else DELTA)
    try:
        yield
    finally:
        _MOVE.reset(token)


KEY_BITS = 20  # leading mantissa bits that key a rounding's sign (Note [Correlated roundings])
_MANTISSA = np.uint64((1 << 52) - 1) ^ np.uint64((1 << (52 - KEY_BITS)) - 1)
_MAGNITUDE = _MANTISSA | np.uint64(((1 << 11) - 1) << 52)  # the exponent too: values a power of two apart differ


def _keyed_signs(v: np.ndarray, salt: int, whole: bool = False) -> np.ndarray:
    """±1 per entry, the same for values whose leading KEY_BITS mantissa bits agree (times the
    value's own sign; ``whole``: and whose exponents agree): a splitmix64 hash of those bits and the
    rerun's ``salt`` (computed in place: every rounding site of every rerun calls this on arrays of
    up to millions of entries)."""
    with np.errstate(over="ignore"):
        h = np.bitwise_and(v.view(np.uint64), _MAGNITUDE if whole else _MANTISSA, out=np.empty(v.shape, np.uint64))
        h ^= np.uint64(salt)
        h += np.uint64(0x9E3779B97F4A7C15)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        t = np.right_shift(h, np.uint64(27), out=np.empty(v.shape, np.uint64))
        h ^= t
        h *= np.uint64(0x94D049BB133111EB)
        # splitmix64's last step, h ^= h >> 31, leaves the top bit alone: skipped
    plus = np.right_shift(h, np.uint64(63), out=t).astype(bool)  # the hash's top bit set: +1
    plus ^= v < 0
    out = plus.astype(np.float64)
    out *= 2.0
    out -= 1.0
    return out


@contextmanager
def perturbing(rng: np.random.Generator, coherent="random", seen: dict | None = None):
    """Every rounding site moves by a random-signed rounding while this holds.  ``coherent``: how a
    coherent site (a constant's representation error, shared by its uses, or any rounding of a single
    value that every entry it reaches shares; Note [Coherent roundings]) moves -- "random" (one sign
    per site and rerun; call ``reroll`` between reruns), "still" (not at all; the sites are recorded
    in ``seen``), "alone" (random signs, and no other site moves) or ("only", site): that site alone,
    by its own bound, and nothing else."""
    signs: dict = {}
    visits = [0]
    only = coherent[1] if isinstance(coherent, tuple) else None

    def move(v, own, key=None, whole=False):
        site = None
        if key is not None or np.size(v) == 1:
            site = key if key is not None else ("scalar", visits[0])
            visits[0] += key is None
        if site is None and (only is not None or coherent == "alone"):
            return v
        if site is not None and (coherent == "still" or (only is not None and site != only)):
            if coherent == "still" and seen is not None and np.any(np.asarray(own) != 0):
                seen.setdefault(site, True)
            return v
        v = np.array(v, np.float64)
        own = np.broadcast_to(np.asarray(own, np.float64), v.shape)
        if only is not None:
            sign = 1.0
        elif site is not None:
            sign = signs.setdefault(site, float(rng.choice((-1.0, 1.0))))
        else:
            sign = _keyed_signs(v, int(rng.integers(0, 2**63)), whole)  # v: a fresh contiguous copy
        step = _MOVE.get() * own * sign
        moved = v + step
        if np.isfinite(moved).all():  # then v and step are finite everywhere: nothing to keep
            return moved
        return np.where(np.isfinite(step) & np.isfinite(v), moved, v)

    def reroll():
        signs.clear()
        visits[0] = 0

    previous, approx._PERTURB = approx._PERTURB, move
    move.reroll = reroll
    try:
        yield move
    finally:
        approx._PERTURB = previous


def wanted(graph, dtype: str, refs) -> bool:
    """Whether the reruns are worth their cost: a check some of whose gradients the worst-case bound
    leaves coarse (linear-algebra nodes included but the spectral ones: Note [Linalg in the reruns])."""
    if _spectral(graph):
        return False
    for ref in refs:
        value = np.abs(np.asarray(ref.value, np.float64))
        rounding = np.asarray(ref.rounding, np.float64) if ref.rounding is not None else None
        if rounding is None or value.size == 0:
            continue
        mask = value > 0
        weak = {"float64": WEAK_FLOAT64, "float32": WEAK_FLOAT32}.get(dtype, WEAK)
        coarse = weak * RESOLUTION.get(dtype, 1e-3) / (rounding_ulps(dtype) * EPS.get(dtype, 2.0**-23))
        if mask.any() and float(np.median(rounding[mask] / value[mask])) > coarse:
            return True
    return False


def _spectral(graph) -> bool:
    """Whether the graph holds a linear-algebra node the reruns cannot move (linalg.NOT_RERUN)."""
    from .linalg import NOT_RERUN

    return any(n.kind == "linalg" and n.attrs.get("op") in NOT_RERUN for n in graph.nodes)


# Note [Statistical kinks]
# Whether a relu unit (any kink) could have been evaluated on its other side is decided by its
# argument's rounding bound: within KINK_ULPS * eps * e of the kink, it is a kinked unit.  The forward
# bound is a worst case too, and it compounds with depth like the backward's: on a ResNet-18-like
# model (17 convolutions, BatchNorm in eval mode, 32 x 32 inputs) its float64 forward was allowed
# 1e26 ulps, every relu unit and even the loss counted as within rounding of a kink, every entry of
# every gradient got a band, and a relu backward off by 1e-3 passed in float64 and float32.  Where
# the forward bound is coarse (a node's typical entry allowed more than COARSE_FORWARD_ULPS), the
# forward is rerun SAMPLES times with every rounding moved by its bound and a random sign (the
# model of Note [Statistical allowance]; nothing from torch's numbers), and each node's bound is
# capped at LAMBDA standard deviations of its moves (in the units the compare charges, as a
# gradient's statistical allowance) as the sweep goes, so the nodes after it read the capped bound
# (``engine.forward``'s ``caps``).  A unit beyond that is torch's on the graph's side with the
# probability the gradients' allowances already rest on; units within it stay kinked, judged as
# before.  Entries a kinked unit reaches (banded) keep their worst case: a rerun moves every rounding
# by a small step on the graph's side, so a relu output at 0 whose argument may be either side of
# it never moves, and a capped bound of 0 there failed a correct model whose units torch had
# rounded onto the kink (tests/test_regressions.py).  Linear-algebra nodes are evaluated at inputs
# moved by their backward error (Note [Linalg in the reruns] in linalg.py).
COARSE_FORWARD_ULPS = 64.0


def kink_caps(graph, ctx, values: dict, samples: int = SAMPLES, seed: int = 7) -> dict | None:
    """Per non-leaf node, LAMBDA standard deviations of its forward value's moves (units of eps)
    where the forward bound is coarse; None where it is not (Note [Statistical kinks])."""
    from ..compare.accuracy import reference_mode

    if _spectral(graph) or not _coarse_forward(graph, values):
        return None
    rng = np.random.default_rng(seed)
    total = {n: 0.0 for n in graph.nodes if n.kind != "leaf"}
    token = reference_mode.set("float")
    try:
        stage("op graph: random-rounding reruns of the forward (Note [Statistical kinks])")
        with np.errstate(all="ignore"), linear_moves(graph, ctx), perturbing(rng, "random") as move:
            for k in range(samples):
                advance(k, samples)
                move.reroll()
                # Note [Continuous kinks are roundings] (engine.py); each moved value is read once, as the
                # sweep makes it, so the rerun holds the live values only, not a second forward
                forward(graph, ctx, fold_moves=False, visit=_add_square(total, values))
    finally:
        reference_mode.reset(token)
    # the compare and the kink slack charge several units of eps per unit of a bound: LAMBDA sigma in all
    unit = rounding_ulps(ctx.dtype)
    for node, sq in total.items():  # in place: the caps take the squares' memory
        if isinstance(sq, np.ndarray) and sq.flags.writeable and sq.base is None:
            np.sqrt(np.divide(sq, samples, out=sq), out=sq)
            sq *= LAMBDA
            sq /= unit
        else:
            total[node] = LAMBDA * np.sqrt(sq / samples) / unit
    return total


def _add_square(total: dict, values: dict):
    """``visit`` for a rerun of the forward: each node's squared move (units of a move) into ``total``."""

    def add(node, moved):
        if node not in total:
            return
        d = _squared((moved.v - values[node].v) / _MOVE.get())
        sq = total[node]
        if isinstance(sq, np.ndarray) and sq.shape == d.shape:
            sq += d
        else:
            total[node] = sq + d

    return add


# Note [Moves too small to square]
# The reruns add up the squares of each entry's changes.  A change below 2**-511 squares to a
# subnormal or to 0 in float64: torch's float64 ``sigmoid(a) * b`` at a = -710, whose value
# 4.5e-309 torch loses whole (Note [A sigmoid below the normal range]), moved its product by 1e-289
# per rerun, the squares came out 0, the allowance was capped at 0 spreads, and the check failed.
# Where a change is too small to square, or not finite, its square is inf: the entry keeps its
# worst-case bound.
SMALLEST_SQUARED = 2.0**-511


def _squared(d) -> np.ndarray:
    """``d * d``; inf where ``d`` is not finite or is too small to square (Note [Moves too small to square])."""
    a = np.abs(d)
    square = a * a
    unresolved = ~np.isfinite(a) | ((a < SMALLEST_SQUARED) & (a > 0))
    return np.where(unresolved, np.inf, square) if unresolved.any() else square


def _coarse_forward(graph, values: dict) -> bool:
    for node in graph.nodes:
        if node.kind == "leaf":
            continue
        val = values[node]
        size = np.abs(val.v)
        mask = np.isfinite(size) & (size > 0) & np.isfinite(val.e)
        if mask.any() and float(np.median(val.e[mask] / size[mask])) > COARSE_FORWARD_ULPS:
            return True
    return False


def spread(graph, ctx, out, seeds: list, live: list, base: list, samples: int = SAMPLES, seed: int = 0,
           keep: list | None = None, constants: list | None = None, output: dict | None = None) -> list:
    """The root-mean-square change (units of eps) of every leaf's cotangent under random roundings,
    per seed: ``[{leaf node: array}]`` shaped as ``base`` (the unperturbed sweeps).  ``keep``: a list
    that receives each rerun's changes, ``[{leaf node: array}]`` per seed (Note [Systematic scale]);
    ``constants``: with ``keep``, a list that receives each coherent site's own change, the same way,
    and then the reruns in ``keep`` hold those sites still (Note [Coherent roundings]); ``output``:
    ``{"base": the unperturbed forward output}``, which receives ``"rms"``, the forward output's
    root-mean-square change (Note [Statistical forward])."""
    from ..compare.accuracy import reference_mode

    rng = np.random.default_rng(seed)
    total = [{node: 0.0 for node in live} for _ in seeds]
    if output is not None:
        total.append({out: 0.0, "base": output["base"]})  # the forward output's changes, after the seeds'
    # the reruns re-evaluate nothing over mpmath (Note [Certified pointwise values] in exact.py: an
    # exact value would throw the rerun's moves away); float64's own error is 2**-22 of a move
    token = reference_mode.set("float")
    per_use = (forward(graph, ctx), np.random.default_rng([seed, 1]))  # Note [Each use its own moves]
    try:
        with linear_moves(graph, ctx):
            split = keep is not None and constants is not None
            runs, fixed = coherent_reruns(
                rng, samples, lambda kind: _rerun(graph, ctx, out, seeds, live, base, total,
                                                  weight=float(samples) if kind == "only" else 1.0,
                                                  per_use=per_use if kind == "still" else None),
                _add_runs, split=split)
            if keep is not None:
                keep.extend(runs)
            if constants is not None:
                constants.extend(fixed)
            if output is not None:
                output["rms"] = np.sqrt(total.pop()[out] / samples)
            return [{node: (None if base[k].get(node) is None else
                            np.broadcast_to(np.sqrt(total[k][node] / samples), base[k][node].shape))
                     for node in live} for k in range(len(seeds))]
    finally:
        reference_mode.reset(token)


# Note [Each use its own moves]
# torch's backward formulas are not the op graph's reverse sweep term for term: they drop paths whose
# contribution is zero in exact arithmetic.  x.var()'s backward is 2 (x - m) / (n - 1) with torch's
# rounded mean m; the graph also differentiates through m, and that path, -2 Σ(x - m) / n, cancels
# the move of m exactly, so reruns in which every use of m moves together saw no sensitivity to m's
# rounding at all, while torch's result carries it: torch's own float32 var, layer_norm and
# group_norm backwards failed on rows with a mean of 100 (0.6 ulp of the mean's rounding times
# 2/(n-1), allowed a third of it).  So in a rerun each reverse rule reads the forward values' moves
# with a random sign of its own per argument whose cotangent it gives: base + s (moved - base).  A
# cancellation between uses then shows as the spread of uses that do not cancel (either sign is
# equally likely, so each path's moves count in the mean square as if alone), while one use's own
# moves keep their size.  The forward sweep and the roundings of the reverse rules are unchanged.
# Forward mode's reruns (Note [Statistical tangents]) read them so too, a rule's part per tangent
# argument (``engine._tangent_of``): torch's var jvp, 2 Σ t (x - m) / (n - 1), carries its mean's
# rounding times Σ t, which the graph's path through m cancelled (a float32 false alarm at mean 100).


def per_use_args(values: dict, base: dict, rng) -> callable:
    """``args(node, i)``: ``node``'s arguments as its rule for argument ``i`` reads them in a rerun,
    each moved from ``base`` with a sign of its own (Note [Each use its own moves])."""
    signs: dict = {}

    def args(node, i):
        s = signs.get((node, i))
        if s is None:
            s = signs[(node, i)] = float(rng.choice((-1.0, 1.0)))
        out = []
        for a in node.args:
            moved, still = values[a], base.get(a)
            if still is None or s == 1.0:
                out.append(moved)
                continue
            with np.errstate(invalid="ignore"):
                v = still.v + s * (moved.v - still.v)
            if not np.isfinite(v).all():  # an infinite value (a -inf mask) does not move: inf - inf is no move
                v = np.where(np.isfinite(v), v, moved.v)
            out.append(Approx(v, moved.e, moved.lo, moved.hi) if moved.banded else Approx(v, moved.e))
        return out

    return args


def _rerun(graph, ctx, out, seeds, live, base, total, weight: float = 1.0, per_use: tuple | None = None) -> list:
    """One perturbed forward and backward sweep: its changes per seed and leaf (units of a move),
    their squares added into ``total`` (times ``weight``); ``per_use``: (the unperturbed forward
    values, a generator): each reverse rule reads the forward moves with its own signs (Note [Each
    use its own moves]); None: every rule reads them as they are."""
    from . import engine

    values = forward(graph, ctx)
    saved = engine._RULE_ARGS
    if per_use is not None:
        engine._RULE_ARGS = per_use_args(values, *per_use)
    try:
        return _sweeps(graph, ctx, out, seeds, live, base, total, weight, values)
    finally:
        engine._RULE_ARGS = saved


def _sweeps(graph, ctx, out, seeds, live, base, total, weight, values) -> list:
    if len(total) > len(seeds):  # the forward output's change too (Note [Statistical forward])
        d = (values[out].v - total[-1]["base"]) / _MOVE.get()
        total[-1][out] = total[-1][out] + weight * _squared(d)
    run = []
    for k, s in enumerate(seeds):
        grads = backward(graph, values, {out: Approx(s)}, live, ctx)
        changes = {}
        for node in live:
            g, g0 = grads.get(node), base[k].get(node)
            if g is None or g0 is None:
                continue
            d = (np.broadcast_to(g.v, g0.shape) - g0.v) / _MOVE.get()
            changes[node] = d
            total[k][node] = total[k][node] + weight * _squared(d)
        run.append(changes)
    return run


def coherent_reruns(rng, samples: int, rerun, add, split: bool = True) -> tuple[list, list]:
    """Note [Coherent roundings]: ``samples`` reruns with every coherent site held still
    (``rerun("still")``), then one rerun per coherent site moving it alone (``rerun("only")``); past
    ``samples`` sites, ``samples`` reruns moving them all with random signs (``rerun("alone")``),
    added into the first ones by ``add(run, extra)`` (moves add up: the response is linear).
    ``split=False``: coherent sites move with random signs in the reruns themselves and no site runs
    alone.  Returns (the reruns, each site's own rerun)."""
    runs: list = []
    constants: list = []
    seen: dict = {}
    with np.errstate(all="ignore"), perturbing(rng, "still" if split else "random", seen) as move:
        for k in range(samples):
            advance(k, samples)
            move.reroll()
            runs.append(rerun("still"))
    if not split or not seen:
        return runs, constants
    if len(seen) <= samples:
        for k, key in enumerate(list(seen)):
            advance(samples + k, samples + len(seen))
            with np.errstate(all="ignore"), perturbing(rng, ("only", key)) as move:
                move.reroll()
                constants.append(rerun("only"))
        return runs, constants
    with np.errstate(all="ignore"), perturbing(rng, "alone") as move:
        for k, run in enumerate(runs):
            advance(samples + k, 2 * samples)
            move.reroll()
            runs[k] = add(run, rerun("alone"))
    return runs, constants


def _add_runs(run: list, extra: list) -> list:
    for mine, theirs in zip(run, extra):
        for node, d in theirs.items():
            mine[node] = mine[node] + d if node in mine else d
    return run


# Note [Coherent roundings]
# Hoeffding's bound behind LAMBDA (Note [Scale test's spread] in scale.py) is for a sum of many small
# independent terms.  A rounding that every entry shares -- a constant's representation error, or
# the rounding of any single value the entries all reach (``1/sqrt(pi)`` inside erf's derivative,
# a mean's ``1/n``) -- is one term that moves alpha by its full size at once: LAMBDA standard
# deviations of it charge it 5.6 to 8 times its size, while it can move alpha by at most its size.
# So the scale test (scale.py) splits the roundings in two: such coherent sites (a keyed constant, or a
# rounding site whose value is a single number) are held still in the kept reruns and moved one at
# a time, each by its own bound, in a sweep of its own (``coherent_reruns``); alpha is allowed the
# sum of their effects' sizes (their worst case, exact since the response is linear) plus LAMBDA
# standard deviations of the rest, which is P(|alpha| > allowance) <= P(|rest| > LAMBDA sigma).
# Each entry's own spread still counts every coherent site with a random sign (its mean square).
# Past ``samples`` coherent sites their sweeps would cost more than the reruns: then they move
# together with random signs, ``samples`` sweeps added into the reruns, as before.  erf's gradient
# times 1.01 over 54 entries in bfloat16 was allowed 2.7 % (the two roundings of ``1/sqrt(pi)``,
# 1 % of every entry, counted 5.63 times), now 1.8 %.


# Note [Correlated roundings]
# Where an operation's result holds the same value at many entries (a mean's
# gradient, 1/n everywhere), torch rounds it the same way at each, so a rerun moves equal values
# (equal leading KEY_BITS mantissa bits, signs aside) of one operation by the same signed amount
# (``_keyed_signs``); distinct values and distinct operations move independently.  (Tying equal
# values across operations too was tried: the closed form then cancels roundings that torch, whose
# operations are not the closed form's one for one, does not, and LeNet-5 in float32 false-alarmed.)
# Measured with LAMBDA = 8: 0 false alarms over the half-precision op table (benchmarks/half_optable.py),
# the corpus and the seven model families in float16 and bfloat16 (README, "One scale for all entries").
