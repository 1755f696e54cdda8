"""The op graph's statistical allowances (Note [Statistical allowance] and Note [Systematic scale]
in montecarlo.py, Note [Statistical forward] below): the random-rounding reruns of a check's
sweeps, applied to its references, and the resolution note of a coarse record."""

from __future__ import annotations

import numpy as np

from ..compare.compare import EPS, RESOLUTION, compare
from ..compare.half import rounding_ulps
from ..progress import stage
from . import montecarlo
from . import scale as scale_test
from .approx import Approx
from .refs import State, reference as _reference

__all__ = ["statistical", "statistical_forward", "tighten", "note_resolution", "median"]


def statistical(st: State, seeds, live, per_seed, refs, nodes, out_shape, how, scale) -> tuple:
    """Note [Statistical allowance]: where the worst-case bound leaves a low-precision gradient
    coarse, each entry's rounding allowance becomes the smaller of it and LAMBDA standard deviations
    of random-rounding reruns (applied to ``refs``).  Returns, per reference, that statistical
    allowance (None where not used) and (the reruns' changes, each constant's change) stacked as the
    reference (for Note [Systematic scale]; (None, None) where it does not run)."""
    none = [None] * len(refs)
    tight = len(seeds) <= 64 and montecarlo.wanted(st.graph, st.dtype, refs)
    size = montecarlo.SAMPLES * len(seeds) * sum(int(np.prod(n.shape)) for n in live)
    scaled = len(seeds) <= 64 and scale_test.scale_wanted(st.graph, st.dtype, st.rtol, st.atol, size)
    if not (tight or scaled):
        return none, [(None, None)] * len(refs)
    stage("op graph: random-rounding reruns for the statistical allowance")
    kept: list | None = [] if scaled else None
    constants: list | None = [] if scaled else None  # Note [Coherent roundings]
    samples = scale_test.samples_for(st.graph, len(seeds), scaled)  # Note [Scale test's spread]
    output = {"base": np.asarray(st.values[st.out].v, np.float64)} if tight else None
    sigma = montecarlo.spread(st.graph, st.ctx, st.out, seeds, live, per_seed, samples=samples, keep=kept,
                              constants=constants, output=output)
    if output is not None:  # Note [Statistical forward]
        st.forward_spread = montecarlo.LAMBDA * output["rms"] / rounding_ulps(st.dtype)

    def stacked(ref, node, per_seed_arrays):
        return _reference(ref.name, [Approx(a[node]) if a.get(node) is not None else None for a in per_seed_arrays],
                          tuple(st.leaves[ref.name].shape), out_shape, how, scale, []).value

    stats, runs = [], []
    for ref, node in zip(refs, nodes):
        usable = node is not None and ref.rounding is not None
        runs.append(([stacked(ref, node, run) for run in kept], [stacked(ref, node, run) for run in constants])
                    if usable and kept else (None, None))
        if not usable or not tight:
            stats.append(None)
            continue
        # the compare charges rounding_ulps(dtype) units of eps per unit of the bound: LAMBDA sigma in all
        stats.append(montecarlo.LAMBDA * np.abs(stacked(ref, node, sigma)) / rounding_ulps(st.dtype))
        tighten(ref, stats[-1])
    return stats, runs


# Note [Statistical forward]
# The forward row has the worst-case bound of Note [Approx arithmetic] too, and on a deep float32
# network it outgrows the values (a 4-layer pre-norm transformer's loss was allowed about 1e14
# times itself): a forward that differs from the closed form passed there.  Where the reruns of
# Note [Statistical allowance] run, they move the forward output as well, so its allowance is the
# smaller of the worst case and LAMBDA standard deviations of those moves, as a gradient entry's is
# (entries a kink's band reaches keep the worst case).  The gradient rows were always checked
# against the same closed form; this makes the forward row mean something where they do.


def statistical_forward(st: State, ref, rec, out_t):
    """The forward record again, with the statistical allowance (Note [Statistical forward])."""
    if st.forward_spread is None or not rec.passed:
        return rec
    tighten(ref, np.broadcast_to(st.forward_spread, np.shape(ref.rounding)))
    if not ref.statistical:
        return rec
    again = compare(ref, out_t.detach().double().cpu().numpy(), st.dtype, quantity="forward", rtol=st.rtol,
                    atol=st.atol)
    again.note = (again.note + " " if again.note else "") + (
        f"Rounding allowance: {ref.statistical:,} entries use the statistical bound ({montecarlo.LAMBDA:g} standard "
        "deviations of random-rounding reruns), tighter than the worst case (Note [Statistical forward]).")
    return again


# Note [Kinked entries' rounding]
# On entries a kinked unit reaches, torch's value is the graph's side plus the changes of the sides
# it took (the joint kink check's generators), each computed with rounding: the graph side's
# rounding is what the reruns measure, and each change's is its own sweep's worst-case bound (the
# kink rounding).  Kept at the worst case there, as it was, every entry of a float32 DenseNet block
# with BatchNorm in training mode (six relu units within rounding of 0 reach them all) was allowed
# 1e8 ulps, 100 times its size, and a backward off by 1e-3 passed.  The graph side takes the
# statistical allowance there too, and a change's worst-case bound is scaled by the same ratio: its
# sweep runs through the same nodes' rules as the graph side's, from the unit to the leaves.
def tighten(ref, stat) -> None:
    """Each entry's rounding allowance: the smaller of the worst case and ``stat``; the kink
    rounding's part beyond it scaled by as much (Note [Kinked entries' rounding]).
    ``ref.statistical``: how many entries got tighter."""
    if stat is None or ref.rounding is None:
        return
    worst = np.asarray(ref.rounding, np.float64)
    tighter = np.isfinite(stat) & (stat < worst)
    ref.rounding = np.where(tighter, stat, worst)
    if ref.kink_rounding is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(tighter & (worst > 0), ref.rounding / worst, 1.0)
        extra = np.asarray(ref.kink_rounding, np.float64) - worst
        ref.kink_rounding = ref.rounding + extra * ratio
    ref.statistical = int(tighter.sum())


def note_resolution(rec, ref, dtype: str) -> None:
    """Say how small a relative error the check can see, where that is coarse: the worst-case bound
    of a deep float32 network (forward errors carried into the backward, kinked units within
    rounding of their kink) can allow a percent -- a bug below that passes unseen."""
    eps = EPS.get(dtype, 2.0**-52)
    value = np.abs(np.asarray(ref.value, np.float64))
    width = rounding_ulps(dtype) * eps * np.abs(np.asarray(ref.rounding, np.float64))
    mask = value > 0
    if ref.lower is not None:
        band = np.asarray(ref.upper, np.float64) - np.asarray(ref.lower, np.float64)
        width = width + band
        off = mask & ~(band > 0)  # entries on a kink are judged by their one-sided values (the joint kink
        mask = off if off.any() else mask  # check), not by a relative allowance: the others say the resolution
    if not mask.any():
        return
    typical = median(width[mask] / value[mask])
    if typical > min(1e4 * eps, RESOLUTION.get(dtype, 1.0)):  # half: past the 1 % (10 %) a bug check looks for
        advice = (" Check in float64 (model.double()) to resolve it." if dtype != "float64" else
                  " The entries are small differences of large terms here.")
        rec.coarse = float(typical)
        rec.note = (rec.note + " " if rec.note else "") + (
            f"Resolution: a typical entry here is allowed {typical:.2g} of its size (rounding bound and kink "
            f"bands of this {dtype} computation); a relative bug smaller than that passes unseen.{advice}")


def median(x: np.ndarray) -> float:
    """np.median by partition (np.median imports numpy.ma on first use: a first check paid it)."""
    if np.isnan(x).any():
        return float("nan")
    k = x.size // 2
    if x.size % 2:
        return float(np.partition(x, k)[k])
    part = np.partition(x, (k - 1, k))
    return float((part[k - 1] + part[k]) / 2)
