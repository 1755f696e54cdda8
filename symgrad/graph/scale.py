"""The half-precision scale test: one least-squares scale of autograd's error over a record's
entries, against the spread of the random-rounding reruns (montecarlo.py).  See the Notes below."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from ..compare.compare import EPS
from ..compare.half import HALF_DTYPES, rounding_ulps, subnormal_floor, value_roundings
from .montecarlo import LAMBDA, SAMPLES

__all__ = ["scale_wanted", "systematic_scale", "apply_scale_test", "apply_joint_scale_test", "scale_lambda",
           "samples_for", "SCALE_SAMPLES", "MIN_ENTRIES", "MAX_KEPT"]

# Note [Systematic scale]
# A backward off by a factor, 1 + 1e-2 on every entry, is the commonest seeded bug, and in half
# precision one entry cannot see it: 1 % is 2.6 units of roundoff in bfloat16, and a correct
# entry may err by that much.  All entries together can.  A weighted least-squares scale of
# autograd's error against the closed form g,
#     alpha = sum_i w_i (autograd_i - g_i),   w_i = (g_i / s_i**2) / sum_j (g_j**2 / s_j**2),
# is 1e-2 for the bug, while correct rounding gives an alpha whose spread shrinks with the number
# of entries (Note [Weighted scale] for s_i).  That spread is measured as the entries' is (Note
# [Statistical allowance]): each of the SAMPLES reruns gives one draw of alpha, ``sum_i w_i d_i``,
# with every operation moved by its full bound (``rounding_ulps(dtype) * eps`` per unit, what the
# worst case charges a rounding), except the roundings every entry shares (Note [Coherent
# roundings]), which are charged their worst case.  Each entry's floor (``value_roundings``
# roundings of its own value, the float16 subnormal spacing: roundings torch may do that the closed
# form does not count) adds one more independent term, the same for entries of equal value (the
# same value rounds the same way).  alpha is allowed min(the worst case, sum_i |w_i| allowed_i;
# the coherent roundings' worst case plus LAMBDA times its spread).  It is fitted over the entries
# off kinks (a kink's side is not a rounding) with a finite, non-zero closed form, and only in
# float16 and bfloat16 checks without rtol/atol, where the per-entry allowance is coarse against a
# 1 % bug, and where the kept reruns hold at most MAX_KEPT numbers (a large model's gradients are
# not kept 16 times over); a failure names the scale, its allowance and the entries.
#
# Note [Weighted scale]
# Entries differ in how much correct rounding moves them: a sigmoid gradient computed from the
# rounded output errs by 2-50 % where x > 2.5 and by a rounding or two where x < 0.  An unweighted
# fit (every s_i alike) lets the noisy entries set alpha's spread; weighting each by the
# inverse of its own spread, s_i**2 = max(rms of the entry's rerun changes, its floor)**2, is the
# least-squares estimate with the smallest spread (Gauss-Markov), so the quiet entries decide.  The
# weights come from the reruns (the computation's structure), never from torch's numbers, and the
# spread of alpha is measured with the same weights, so the allowance stays what the model gives.
# Measured on the corpus in bfloat16 (seed 0, ``benchmarks/corpus.py``): a sigmoid gradient times
# 1.01 over 3 x 6 entries and three cotangents was allowed 1.7 % before, 0.71 % after.
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


def systematic_scale(rec, runs: list, dtype: str, constants: list | None = None) -> tuple | None:
    """(alpha, its allowance, entries fitted) of a passing record, from the reruns' changes ``runs``
    and each coherent site's own change ``constants`` (each shaped as ``rec.expected``, in units of the
    bound; Note [Coherent roundings]); None where it does not apply."""
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
    unit = rounding_ulps(dtype) * EPS.get(dtype, 2.0**-52)
    with np.errstate(all="ignore"):
        moves = np.array([np.asarray(r, np.float64).reshape(g.shape)[mask] for r in runs])
        fixed = np.array([np.asarray(c, np.float64).reshape(g.shape)[mask] for c in constants or ()]).reshape(-1, n)
    if not (np.isfinite(moves).all() and np.isfinite(fixed).all()):
        return None
    gm = g[mask]
    # each entry's own spread (Note [Scale test's spread]): the reruns', the constants' (one random
    # sign each), and the floor where it is larger
    own = unit * np.sqrt(np.mean(moves**2, axis=0) + np.sum(fixed**2, axis=0))
    floor = value_roundings(dtype) * unit * np.abs(gm) + subnormal_floor(dtype)
    excess = np.sqrt(np.maximum(floor**2 - own**2, 0.0))
    spread2 = np.maximum(own, floor) ** 2
    w = (gm / spread2) / np.sum(gm * gm / spread2)  # Note [Weighted scale]
    alpha = float(np.sum(w * (a[mask] - gm)))
    worst = float(np.sum(np.abs(w) * allowed[mask]))
    draws = unit * moves @ w
    _, group = np.unique(np.abs(gm), return_inverse=True)
    coherent = np.bincount(group.ravel(), weights=np.abs(w) * excess)
    sigma = float(np.sqrt(np.mean(draws**2) + np.sum(coherent**2)))
    shift = float(np.sum(np.abs(unit * fixed @ w)))  # the constants' worst case, not LAMBDA of it
    return alpha, min(worst, shift + scale_lambda(len(runs)) * sigma), n


def apply_scale_test(rec, runs: list, dtype: str, constants: list | None = None) -> None:
    """Fail ``rec`` where its systematic scale is beyond its allowance (Note [Systematic scale])."""
    got = systematic_scale(rec, runs, dtype, constants)
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


# Note [One scale over every gradient]
# A backward off by a factor is usually off by it for every input at once (a kernel's output scaled
# before it is split into its inputs' gradients), and the op table's modules have a few dozen
# entries per input: nn.Linear's x, weight and bias gradients are 24, 36 and 8 entries in bfloat16,
# each too few alone to resolve 1 % (allowed 1.2 to 1.8 %).  So after each record's own test, the
# records that passed it are fitted together with one scale, over all their entries (the reruns
# move every record at once, so the joint draws keep their correlations), with the same allowance.
# A failure fails each of those records and names the joint scale.  Two tests per check at the
# model's false-alarm probability each is at most twice it (5.1e-6 per test, Note [Scale test's
# spread]); a backward that scales one input alone is still the per-record test's to see.


def _flat(x, shape) -> np.ndarray:
    return np.broadcast_to(np.asarray(x, np.float64).reshape(shape) if np.size(x) == int(np.prod(shape)) else
                           np.asarray(x, np.float64), shape).ravel()


def apply_joint_scale_test(recs: list, runs: list, dtype: str, constants: list) -> None:
    """Note [One scale over every gradient]: one scale over the entries of every passing record."""
    pool = [(rec, run, const) for rec, run, const in zip(recs, runs, constants)
            if run and rec.passed and rec.expected is not None and rec.actual is not None and rec.allowed is not None]
    if len(pool) < 2 or len({len(run) for _, run, _ in pool}) != 1 or len({len(c or ()) for _, _, c in pool}) != 1:
        return
    shapes = [np.shape(rec.expected) for rec, _, _ in pool]

    def joined(get) -> np.ndarray:
        return np.concatenate([_flat(get(i), shape) for i, shape in enumerate(shapes)])

    joint = SimpleNamespace(
        passed=True, expected=joined(lambda i: pool[i][0].expected), actual=joined(lambda i: pool[i][0].actual),
        allowed=joined(lambda i: pool[i][0].allowed),
        kink_mask=joined(lambda i: np.zeros(shapes[i]) if pool[i][0].kink_mask is None else pool[i][0].kink_mask) > 0)
    moves = [joined(lambda i, k=k: pool[i][1][k]) for k in range(len(pool[0][1]))]
    fixed = [joined(lambda i, k=k: pool[i][2][k]) for k in range(len(pool[0][2] or ()))]
    got = systematic_scale(joint, moves, dtype, fixed)
    if got is None or abs(got[0]) <= got[1]:
        return
    alpha, allow, n = got
    names = ", ".join(rec.name for rec, _, _ in pool)
    for rec, _, _ in pool:
        rec.mismatched = max(1, int(np.size(rec.expected)))
        rec.note = (rec.note + " " if rec.note else "") + (
            f"Systematic scale over every gradient ({names}): autograd's values are {1 + alpha:.5g} times the "
            f"closed form over their {n:,} entries off kinks (least-squares scale, error {alpha:.3g}), where correct "
            f"{dtype} rounding allows {allow:.3g} (Note [One scale over every gradient]): each gradient alone is "
            "within its allowance, but together they are scaled.")
