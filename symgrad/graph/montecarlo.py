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
are used only where the worst-case bound cannot resolve the dtype's resolution (float32 and half,
a typical entry allowed more than ``WEAK`` of the relative error a seeded-bug check of the dtype
looks for, ``compare.RESOLUTION``), never for float64, and never for graphs
with linear-algebra nodes (their bounds are backward-error bounds, not per-operation roundings).
Kink bands are untouched, and so is the rounding allowance of every entry a kinked unit reaches
(``Reference.kink``): a unit within rounding of its kink (a relu pre-activation torch rounded to
the other side) responds to the moves with the graph's side's slope only, while torch's value
came from the other side's -- the worst-case bound, which charges both, stays there.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from ..compare.compare import EPS, RESOLUTION
from ..compare.half import HALF_DTYPES, rounding_ulps, subnormal_floor, value_roundings
from . import approx
from .approx import Approx
from .engine import backward, forward

__all__ = ["SAMPLES", "LAMBDA", "WEAK", "wanted", "spread", "scale_wanted", "systematic_scale", "apply_scale_test",
           "scale_lambda", "samples_for", "SCALE_SAMPLES"]

SAMPLES = 16
LAMBDA = 8.0
# the reruns pay where a typical entry's worst-case allowance is coarser than this share of the
# relative error a seeded-bug check of the dtype looks for (compare.RESOLUTION: 1e-3 in float32)
WEAK = 0.1
DELTA = 2.0**-30  # the size of a move, per unit of an operation's own bound (the response is linear)


KEY_BITS = 20  # leading mantissa bits that key a rounding's sign (Note [Correlated roundings])
_MANTISSA = np.uint64((1 << 52) - 1) ^ np.uint64((1 << (52 - KEY_BITS)) - 1)


def _keyed_signs(v: np.ndarray, salt: int) -> np.ndarray:
    """±1 per entry, the same for values whose leading KEY_BITS mantissa bits agree (times the
    value's own sign): a splitmix64 hash of those bits and the rerun's ``salt`` (computed in place:
    every rounding site of every rerun calls this on arrays of up to millions of entries)."""
    with np.errstate(over="ignore"):
        h = np.bitwise_and(v.view(np.uint64), _MANTISSA, out=np.empty(v.shape, np.uint64))
        h ^= np.uint64(salt)
        h += np.uint64(0x9E3779B97F4A7C15)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        t = np.right_shift(h, np.uint64(27), out=np.empty(v.shape, np.uint64))
        h ^= t
        h *= np.uint64(0x94D049BB133111EB)
        np.right_shift(h, np.uint64(31), out=t)
        h ^= t
    plus = np.right_shift(h, np.uint64(63), out=t).astype(bool)  # the hash's top bit set: +1
    plus ^= v < 0
    return np.where(plus, 1.0, -1.0)


@contextmanager
def perturbing(rng: np.random.Generator):
    signs: dict = {}

    def move(v, own, key=None):
        v = np.array(v, np.float64)
        own = np.broadcast_to(np.asarray(own, np.float64), v.shape)
        if key is not None:
            sign = signs.setdefault(key, float(rng.choice((-1.0, 1.0))))
        else:
            sign = _keyed_signs(v, int(rng.integers(0, 2**63)))  # v: a fresh contiguous copy
        step = DELTA * own * sign
        moved = v + step
        if np.isfinite(moved).all():  # then v and step are finite everywhere: nothing to keep
            return moved
        return np.where(np.isfinite(step) & np.isfinite(v), moved, v)

    previous, approx._PERTURB = approx._PERTURB, move
    try:
        yield
    finally:
        approx._PERTURB = previous


def wanted(graph, dtype: str, refs) -> bool:
    """Whether the reruns are worth their cost: a low-precision check some of whose gradients the
    worst-case bound leaves coarse, on a graph without linear-algebra nodes."""
    if dtype == "float64" or any(n.kind == "linalg" for n in graph.nodes):
        return False
    for ref in refs:
        value = np.abs(np.asarray(ref.value, np.float64))
        rounding = np.asarray(ref.rounding, np.float64) if ref.rounding is not None else None
        if rounding is None or value.size == 0:
            continue
        mask = value > 0
        coarse = WEAK * RESOLUTION.get(dtype, 1e-3) / (rounding_ulps(dtype) * EPS.get(dtype, 2.0**-23))
        if mask.any() and float(np.median(rounding[mask] / value[mask])) > coarse:
            return True
    return False


def spread(graph, ctx, out, seeds: list, live: list, base: list, samples: int = SAMPLES, seed: int = 0,
           keep: list | None = None) -> list:
    """The root-mean-square change (units of eps) of every leaf's cotangent under random roundings,
    per seed: ``[{leaf node: array}]`` shaped as ``base`` (the unperturbed sweeps).  ``keep``: a list
    that receives each rerun's changes, ``[{leaf node: array}]`` per seed (Note [Systematic scale])."""
    from ..compare.accuracy import reference_mode

    rng = np.random.default_rng(seed)
    total = [{node: 0.0 for node in live} for _ in seeds]
    # the reruns re-evaluate nothing over mpmath (Note [Certified pointwise values] in exact.py: an
    # exact value would throw the rerun's moves away); float64's own error is 2**-22 of a move
    token = reference_mode.set("float")
    try:
        return _spread(graph, ctx, out, seeds, live, base, samples, rng, total, keep)
    finally:
        reference_mode.reset(token)


def _spread(graph, ctx, out, seeds, live, base, samples, rng, total, keep) -> list:
    with np.errstate(all="ignore"), perturbing(rng):
        for _ in range(samples):
            values = forward(graph, ctx)
            run = []
            for k, s in enumerate(seeds):
                grads = backward(graph, values, {out: Approx(s)}, live, ctx)
                changes = {}
                for node in live:
                    g, g0 = grads.get(node), base[k].get(node)
                    if g is None or g0 is None:
                        continue
                    d = (np.broadcast_to(g.v, g0.shape) - g0.v) / DELTA
                    changes[node] = d
                    total[k][node] = total[k][node] + np.where(np.isfinite(d), d, np.inf) ** 2
                run.append(changes)
            if keep is not None:
                keep.append(run)
    return [{node: (None if base[k].get(node) is None else
                    np.broadcast_to(np.sqrt(total[k][node] / samples), base[k][node].shape))
             for node in live} for k in range(len(seeds))]


# Note [Systematic scale]
# A backward off by a factor, 1 + 1e-2 on every entry, is the commonest seeded bug, and in half
# precision one entry cannot see it: 1 % is 2.6 units of roundoff in bfloat16, and a correct
# entry may err by that much.  All entries together can.  The least-squares scale of autograd's
# error against the closed form g,
#     alpha = sum_i (autograd_i - g_i) g_i / sum_i g_i**2,
# is 1e-2 for the bug, while correct rounding, a sum of many independent zero-mean roundings
# weighted by w_i = g_i / sum g**2, gives an alpha whose spread is the entries' spread over
# sqrt(N).  That spread is measured as the entries' is (Note [Statistical allowance]): each of the
# SAMPLES reruns gives one draw of alpha, ``sum_i w_i d_i``, with every operation moved by its full
# bound (``rounding_ulps(dtype) * eps`` per unit, what the worst case charges a rounding) and a
# constant by its representation error with one sign per rerun, so the roundings every entry shares
# move alpha coherently.  Each entry's floor (``value_roundings`` roundings of its own value, the
# float16 subnormal spacing: roundings torch may do that the closed form does not count) adds one
# more independent term, the same for entries of equal value (the same value rounds the same way).
# alpha is allowed min(the worst case, sum_i |w_i| allowed_i; LAMBDA times its spread).  It is fitted
# over the entries off kinks (a kink's side is not a rounding) with a finite, non-zero closed form,
# and only in float16 and bfloat16 checks without rtol/atol, where the per-entry allowance is coarse
# against a 1 % bug, and where the kept reruns hold at most MAX_KEPT numbers (a large model's
# gradients are not kept 16 times over); a failure names the scale, its allowance and the entries.
#
# Correlated roundings: where an operation's result holds the same value at many entries (a mean's
# gradient, 1/n everywhere), torch rounds it the same way at each, so a rerun moves equal values
# (equal leading KEY_BITS mantissa bits, signs aside) of one operation by the same signed amount
# (``_keyed_signs``); distinct values and distinct operations move independently.  (Tying equal
# values across operations too was tried: the closed form then cancels roundings that torch, whose
# operations are not the closed form's one for one, does not, and LeNet-5 in float32 false-alarmed.)
# Measured with LAMBDA = 8: 0 false alarms over the half-precision op table (benchmarks/half_optable.py),
# the corpus and the seven model families in float16 and bfloat16 (README, "One scale for all entries").
#
# Note [Scale test's spread]
# Two things made the scale's allowance wider than its model asks, and a 1 % bug on a few dozen
# entries passed for them (bfloat16's sigmoid over 45 entries: allowed 2.4 %):
#
# * The floor was added to the reruns' spread as a term of its own, while an entry's allowance takes
#   the larger of the two (``value_roundings``: *at least* that many roundings of its own value, no
#   more).  The scale test now reads it the same way: an entry's floor adds only what it exceeds the
#   entry's own rerun spread by, ``sqrt(max(floor**2 - rms**2, 0))`` (still coherent over equal
#   values).  Where the counted roundings already spread an entry by a rounding and a half, the
#   floor adds nothing.
# * sigma is estimated from the reruns, so alpha / sigma_hat is heavier-tailed than alpha / sigma.
#   With Gaussian draws, sigma_hat**2 / sigma**2 ~ chi2_n / n, and Hoeffding's bound for alpha
#   (sub-Gaussian with parameter sigma) averaged over that law is exactly
#       P(|alpha| > lam * sigma_hat) <= 2 (1 + lam**2 / n) ** (-n / 2)
#   (the chi-square's moment generating function).  LAMBDA = 8 at n = SAMPLES = 16 gives 5.1e-6;
#   ``scale_lambda(n)`` keeps that probability for n reruns: 8 at 16, 6.29 at 32, 5.63 at 64.  So
#   where the test runs on a small graph (at most SCALE_WORK numbers per rerun, SCALE_NODES nodes) the
#   reruns are SCALE_SAMPLES = 64, and the scale is allowed 5.63 of its spread, not 8 (the per-entry
#   statistical allowance keeps LAMBDA: its estimate only gets better).
# Neither change looks at torch's numbers; both keep the model's false-alarm probability per record.
MIN_ENTRIES = 8
MAX_KEPT = 1 << 24  # numbers the kept reruns may hold (128 MB); past it the test does not run
SCALE_SAMPLES = 64
SCALE_WORK = 1 << 16  # numbers one rerun computes (every node, times the cotangents) below which reruns are cheap
SCALE_NODES = 100  # and nodes: a rerun costs per node too (an LSTM of small tensors took 4x as long with 64)


def scale_lambda(samples: int) -> float:
    """The scale's allowance in standard deviations for ``samples`` reruns: the same false-alarm
    probability as LAMBDA at SAMPLES (Note [Scale test's spread])."""
    tail = (1 + LAMBDA**2 / SAMPLES) ** (-SAMPLES / 2)
    return float(np.sqrt(samples * (tail ** (-2.0 / samples) - 1)))


def samples_for(graph, seeds: int, scaled: bool) -> int:
    """How many reruns: SCALE_SAMPLES where the scale test runs on a small graph, else SAMPLES."""
    work = seeds * sum(int(np.prod(n.shape)) for n in graph.nodes)
    return SCALE_SAMPLES if scaled and work <= SCALE_WORK and len(graph.nodes) <= SCALE_NODES else SAMPLES


def scale_wanted(graph, dtype: str, rtol, atol, kept: int = 0) -> bool:
    """Whether the systematic-scale test runs (Note [Systematic scale]); ``kept``: how many numbers
    the reruns' changes would hold."""
    return (dtype in HALF_DTYPES and rtol is None and atol is None and kept <= MAX_KEPT
            and not any(n.kind == "linalg" for n in graph.nodes))


def systematic_scale(rec, runs: list, dtype: str) -> tuple | None:
    """(alpha, its allowance, entries fitted) of a passing record, from the reruns' changes ``runs``
    (each shaped as ``rec.expected``, in units of the bound); None where it does not apply."""
    if not rec.passed or rec.expected is None or rec.actual is None or rec.allowed is None or not runs:
        return None
    g = np.asarray(rec.expected, np.float64)
    a = np.asarray(rec.actual, np.float64).reshape(g.shape)
    allowed = np.broadcast_to(np.asarray(rec.allowed, np.float64), g.shape)
    mask = np.isfinite(g) & np.isfinite(a) & (g != 0) & np.isfinite(allowed)
    if rec.kink_mask is not None:
        mask &= ~np.asarray(rec.kink_mask, bool).reshape(g.shape)
    n = int(mask.sum())
    if n < MIN_ENTRIES:
        return None
    gm = g[mask]
    w = gm / np.sum(gm * gm)
    alpha = float(np.sum(w * (a[mask] - gm)))
    worst = float(np.sum(np.abs(w) * allowed[mask]))
    unit = rounding_ulps(dtype) * EPS.get(dtype, 2.0**-52)
    with np.errstate(all="ignore"):
        draws = np.array([np.sum(w * np.asarray(r, np.float64).reshape(g.shape)[mask]) for r in runs])
    if not np.isfinite(draws).all():
        return None
    floor = value_roundings(dtype) * unit * np.abs(gm) + subnormal_floor(dtype)
    with np.errstate(all="ignore"):  # each entry's own spread (Note [Scale test's spread])
        own = unit * np.sqrt(np.mean([np.asarray(r, np.float64).reshape(g.shape)[mask] ** 2 for r in runs], axis=0))
    excess = np.sqrt(np.maximum(floor**2 - np.where(np.isfinite(own), own, 0.0) ** 2, 0.0))
    _, group = np.unique(np.abs(gm), return_inverse=True)
    coherent = np.bincount(group.ravel(), weights=np.abs(w) * excess)
    sigma = float(np.sqrt(unit**2 * np.mean(draws**2) + np.sum(coherent**2)))
    return alpha, min(worst, scale_lambda(len(runs)) * sigma), n


def apply_scale_test(rec, runs: list, dtype: str) -> None:
    """Fail ``rec`` where its systematic scale is beyond its allowance (Note [Systematic scale])."""
    got = systematic_scale(rec, runs, dtype)
    if got is None or abs(got[0]) <= got[1]:
        return
    alpha, allow, n = got
    rec.mismatched = n
    rec.note = (rec.note + " " if rec.note else "") + (
        f"Systematic scale: autograd's {rec.name} is {1 + alpha:.5g} times the closed form over its {n:,} "
        f"entries off kinks (least-squares scale, error {alpha:.3g}), where correct {dtype} rounding allows "
        f"{allow:.3g} ({scale_lambda(len(runs)):.3g} standard deviations of the scale over {len(runs)} random-rounding reruns, "
        "or the worst case; Note [Systematic scale]): every entry is within its own allowance, but together "
        "they are scaled.")
