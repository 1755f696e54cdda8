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
per operation, entry and rerun (a constant's representation error: one sign per rerun, shared by
its uses; ``approx.rounded``).  ``DELTA = 2**-30`` per unit of a bound is small enough that no
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
from ..compare.half import rounding_ulps
from . import approx
from .approx import Approx
from .engine import backward, forward

__all__ = ["SAMPLES", "LAMBDA", "WEAK", "wanted", "spread"]

SAMPLES = 16
LAMBDA = 8.0
# the reruns pay where a typical entry's worst-case allowance is coarser than this share of the
# relative error a seeded-bug check of the dtype looks for (compare.RESOLUTION: 1e-3 in float32)
WEAK = 0.1
DELTA = 2.0**-30  # the size of a move, per unit of an operation's own bound (the response is linear)


@contextmanager
def perturbing(rng: np.random.Generator):
    signs: dict = {}

    def move(v, own, key=None):
        v = np.asarray(v, np.float64)
        own = np.broadcast_to(np.asarray(own, np.float64), v.shape)
        if key is not None:
            sign = signs.setdefault(key, float(rng.choice((-1.0, 1.0))))
        else:
            sign = rng.choice((-1.0, 1.0), size=v.shape)
        step = DELTA * own * sign
        return np.where(np.isfinite(step) & np.isfinite(v), v + step, v)

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


def spread(graph, ctx, out, seeds: list, live: list, base: list, samples: int = SAMPLES, seed: int = 0) -> list:
    """The root-mean-square change (units of eps) of every leaf's cotangent under random roundings,
    per seed: ``[{leaf node: array}]`` shaped as ``base`` (the unperturbed sweeps)."""
    rng = np.random.default_rng(seed)
    total = [{node: 0.0 for node in live} for _ in seeds]
    with np.errstate(all="ignore"), perturbing(rng):
        for _ in range(samples):
            values = forward(graph, ctx)
            for k, s in enumerate(seeds):
                grads = backward(graph, values, {out: Approx(s)}, live, ctx)
                for node in live:
                    g, g0 = grads.get(node), base[k].get(node)
                    if g is None or g0 is None:
                        continue
                    d = (np.broadcast_to(g.v, g0.shape) - g0.v) / DELTA
                    total[k][node] = total[k][node] + np.where(np.isfinite(d), d, np.inf) ** 2
    return [{node: (None if base[k].get(node) is None else
                    np.broadcast_to(np.sqrt(total[k][node] / samples), base[k][node].shape))
             for node in live} for k in range(len(seeds))]
