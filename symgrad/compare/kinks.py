"""Is autograd's value at a kink one that a consistent choice of one-sided derivatives gives?

# Note [Joint kink check]
Where an input sits on a kink (Note [Kinks at evaluation time] in ``symgrad/lower/numpy.py``),
the closed form is evaluated again with the kinked conditions forced.  Each forced evaluation is
a *candidate*: the derivative torch would get if it took those sides.  Checking each entry against
the entrywise band ``[min, max]`` of the candidates is too weak: with one sample of a batch on a
relu kink, every entry of ``dL/dW`` gets a band as wide as that sample's contribution, and a
backward that scales the whole gradient by 1.3 lands inside every band.  But a choice of side is
made once per kinked unit, and it holds for every entry that unit touches.

So the candidates come as *generators* ``g = candidate - closed form``, in *groups*: a group is one
independent choice (a sample, a condition, a tie of a max/min -- Note [Ties on the exploded engine]
in symgrad/lower/ties.py -- or all conditions together when every combination was evaluated), and
within a group autograd may take any convex combination of its generators (a subgradient: torch's
abs'(0) = 0 lies between -1 and 1).  Autograd's value ``a`` is explained
when, for weights ``λ`` with ``λ ≥ 0`` and ``Σ_group λ ≤ 1``,

    |a - e - Σ λ_j g_j| <= allowed        entry by entry, on every kinked entry at once.

``fit`` looks for such ``λ``: a sweep over each group's vertices first (torch takes one side, so
the answer is usually a vertex), then a linear program and least squares (Note [Exact weights]),
then accelerated projected gradient on the weighted least squares problem.  A value no ``λ`` explains is a failure, whatever the entrywise bands say.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..reference import Reference
from .half import rounding_ulps
from .worst import format_index, joined

__all__ = ["KinkFit", "fit", "stack_generators", "kink_verdict", "kink_note", "fit_together", "MAX_GENERATOR_ENTRIES"]

MAX_GENERATOR_ENTRIES = 20_000_000  # groups x generators x kinked entries held at once
_ITERATIONS = 4000
_CHECK_EVERY = 20


@dataclass
class KinkFit:
    explained: bool
    residual: np.ndarray  # a - e - Σ λ g on the kinked entries, at the best weights found
    weights: np.ndarray  # (groups, generators)


def stack_generators(per_group: list[list[np.ndarray]], shape: tuple) -> np.ndarray | None:
    """``[[generator, ...] per group]`` as one zero-padded array ``(groups, generators, *shape)``;
    None when there is nothing to stack or it would hold more than ``MAX_GENERATOR_ENTRIES``."""
    per_group = [g for g in per_group if g]
    if not per_group:
        return None
    width = max(len(g) for g in per_group)
    size = int(np.prod(shape)) if shape else 1
    if len(per_group) * width * size > MAX_GENERATOR_ENTRIES:
        return None
    out = np.zeros((len(per_group), width) + tuple(shape))
    for gi, gens in enumerate(per_group):
        for j, g in enumerate(gens):
            out[gi, j] = np.asarray(g, np.float64).reshape(shape)
    return out


def _project(lam: np.ndarray) -> np.ndarray:
    """Each row onto {λ ≥ 0, Σ λ ≤ 1} (Euclidean projection, rows independently)."""
    out = np.maximum(lam, 0.0)
    over = out.sum(axis=1) > 1.0
    if over.any():
        rows = lam[over]
        # projection onto the simplex Σ = 1 (Held, Wolfe and Crowder's sort-based rule)
        u = -np.sort(-rows, axis=1)
        css = np.cumsum(u, axis=1) - 1.0
        k = np.arange(1, rows.shape[1] + 1)
        cond = u - css / k > 0
        rho = cond.shape[1] - 1 - np.argmax(cond[:, ::-1], axis=1)
        theta = css[np.arange(rows.shape[0]), rho] / (rho + 1)
        out[over] = np.maximum(rows - theta[:, None], 0.0)
    return out


def _worst(res: np.ndarray, tol: np.ndarray) -> float:
    return float(np.max(np.abs(res) / tol)) if res.size else 0.0


def _weighted(r, tol, G) -> tuple:
    """``(A, b, limit, unit)``: the generators and the residual divided by the tolerance, both scaled
    so that their largest entry is at most 1, the weighted residual's bound in that scale, and each
    entry's unit (weighted residual x unit = residual).  A tolerance of 1e-320 (an exactly-zero side)
    divides a generator of size 1 past float64's range."""
    size = max(float(np.max(np.abs(G), initial=0.0)), float(np.max(np.abs(r), initial=0.0)), np.finfo(np.float64).tiny)
    t = np.maximum(tol / size, np.finfo(np.float64).tiny)
    A, b = (G / size) / t, (r / size) / t
    top = max(float(np.max(np.abs(A), initial=0.0)), float(np.max(np.abs(b), initial=0.0)), 1.0)
    return A / top, b / top, 1.0 / top, top * t * size


def _separated(A: np.ndarray, b: np.ndarray, limit: float, *directions) -> bool:
    """Whether some direction ``y`` proves no weights exist: every choice moves ``<y, Σ λ A>`` by at
    most ``Σ_group max(0, max_j <y, A_gj>)``, and ``|b - Σ λ A| <= limit`` needs at least
    ``<y, b> - limit ||y||_1`` (a backward giving every one of 1,000 tied entries the whole cotangent
    ran the relaxation's 4,000 iterations for 12 s to say what this says at once)."""
    for y in (b,) + directions:
        reach = np.einsum("gjm,m->gj", A, y)
        most = float(np.sum(np.maximum(reach.max(axis=1), 0.0))) if reach.size else 0.0
        if float(y @ b) - limit * float(np.sum(np.abs(y))) > most * (1 + 1e-9) + 1e-300:
            return True
    return False


# Note [Exact weights]
# The vertex sweep settles the usual case (torch takes one side at every unit); the projected
# gradient iterations (FISTA) approach the rest, but only to a precision their iterations allow.
# torch's own L1 loss at residuals exactly 0 takes sign(0) = 0: where the closed form put a residual
# within rounding of 0 on a side, that is the middle of the unit (lambda = 1/2, never a vertex), and
# with six nearly collinear units (condition number about 120) and a float64 tolerance 1e-13 of their
# size the iterations stopped at their cap 1e-11 away -- a false alarm on 6 of 6 seeds of a small MLP
# with an L1 loss.  So weights are also solved for directly: on a problem of moderate size as the
# linear program min t subject to -t <= b - sum lambda A <= t (HiGHS through scipy.optimize.linprog),
# whose answer, a vertex of its polytope, uses few weights, but is exact only to the solver's
# tolerance (1e-9, far above a float64 limit); so it is then refined by least squares over the
# weights it left off zero, projected back onto the capped simplices.  Least squares over every
# weight, and over those the iterations left off zero, are tried as well.  Weights found any of these
# ways explain a value only when the residual recomputed here is within the limit: none can make a
# wrong value pass that no weights explain.
_LP_SIZE = 250_000  # weights x kinked entries solved as a linear program (about 2 s at this size)
_LSQ_SIZE = 2_000_000  # weights x kinked entries solved by least squares


def _linear_program(A: np.ndarray, b: np.ndarray):
    """The weights minimising the largest weighted residual (a linear program), or None where the
    program is too large or the solver gives no answer."""
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix, csr_matrix, hstack, vstack

    n_groups, n_gen, m = A.shape
    n = n_groups * n_gen
    if n * m > _LP_SIZE or not m:
        return None
    M = csr_matrix(A.reshape(n, m).T)  # m x n
    ones = csr_matrix(np.ones((m, 1)))
    rows = vstack([hstack([-M, -ones]), hstack([M, -ones])])
    groups = coo_matrix((np.ones(n), (np.repeat(np.arange(n_groups), n_gen), np.arange(n))), shape=(n_groups, n + 1))
    cost = np.zeros(n + 1)
    cost[-1] = 1.0
    try:
        out = linprog(cost, A_ub=vstack([rows, groups]).tocsr(), b_ub=np.concatenate([-b, b, np.ones(n_groups)]),
                      bounds=[(0, None)] * (n + 1), method="highs")
    except ValueError:
        return None
    if out.status != 0 or out.x is None:
        return None
    return _project(np.maximum(out.x[:n], 0.0).reshape(n_groups, n_gen))


def _polished(A: np.ndarray, b: np.ndarray, lam: np.ndarray):
    """Least squares over the weights ``lam`` leaves off zero, projected onto the capped simplices;
    None where there are none or the system is too large."""
    n_groups, n_gen, m = A.shape
    free = np.ravel(lam > 1e-12)
    if not free.any() or int(free.sum()) * m > _LSQ_SIZE:
        return None
    M = A.reshape(n_groups * n_gen, m).T[:, free]
    solved = np.linalg.lstsq(M, b, rcond=None)[0]
    out = np.zeros(n_groups * n_gen)
    out[free] = solved
    return _project(out.reshape(n_groups, n_gen))


def _explaining(A: np.ndarray, b: np.ndarray, limit: float, unit, *candidates) -> KinkFit | None:
    """The first of the candidate weights (None: no candidate) whose recomputed residual is within
    the limit, as an explained fit; None where none is."""
    for lam in candidates:
        if lam is not None:
            wr = b - np.einsum("gj,gjm->m", lam, A)
            if float(np.max(np.abs(wr))) <= limit:
                return KinkFit(True, wr * unit, lam)
    return None


def fit(r: np.ndarray, tol: np.ndarray, gens: np.ndarray) -> KinkFit:
    """Weights ``λ`` (shape ``gens.shape[:2]``) with ``|r - Σ λ g| <= tol``, if any are found.

    ``r``: ``a - e`` on the kinked entries, shape ``(m,)``; ``tol``: the allowed difference there
    (positive); ``gens``: ``(groups, generators, m)``, zero-padded where a group has fewer.
    """
    r = np.asarray(r, np.float64)
    tol = np.maximum(np.asarray(tol, np.float64), np.finfo(np.float64).tiny)
    G = np.asarray(gens, np.float64)
    if G.size and not np.isfinite(G).all():  # a candidate that could not be evaluated is no choice at all
        G = np.where(np.isfinite(G).all(axis=-1, keepdims=True), G, 0.0)
    n_groups, n_gen = G.shape[:2]
    lam = np.zeros((n_groups, n_gen))
    res = r.copy()
    if _worst(res, tol) <= 1.0 or G.size == 0:
        return KinkFit(_worst(res, tol) <= 1.0, res, lam)
    A, b, limit, unit = _weighted(r, tol, G)

    # 1. vertices: group by group, the one generator (or none) that best reduces the weighted
    #    residual, given the others; a few sweeps settle separable and nearly separable cases.
    norms = np.einsum("gjm,gjm->gj", A, A)
    wres = b.copy()
    for _ in range(4):
        changed = False
        for g in range(n_groups):
            current = lam[g] @ A[g]
            base = wres + current  # the residual with group g taken out
            cost = np.concatenate(([base @ base], ((base[None, :] - A[g]) ** 2).sum(axis=1)))
            cost[1:][norms[g] == 0] = np.inf
            best = int(np.argmin(cost))
            new = np.zeros(n_gen)
            if best:
                new[best - 1] = 1.0
            if not np.array_equal(new, lam[g]):
                changed = True
                lam[g] = new
                wres = base - new @ A[g]
        if np.max(np.abs(wres)) <= limit:
            return KinkFit(True, wres * unit, lam)
        if not changed:
            break

    if _separated(A, b, limit, wres):
        return KinkFit(False, wres * unit, lam)
    program = _linear_program(A, b)  # Note [Exact weights]
    found = _explaining(A, b, limit, unit, program, None if program is None else _polished(A, b, program),
                        _polished(A, b, np.ones_like(lam)))
    if found is not None:
        return found

    # 2. the convex relaxation: min ||b - Σ λ A||² over the capped simplices (FISTA).
    flat = A.reshape(n_groups * n_gen, -1)
    v = np.random.default_rng(0).standard_normal(flat.shape[0])
    for _ in range(30):  # power iteration for ||A||²
        w = flat.T @ v
        v = flat @ w
        nv = np.linalg.norm(v)
        if nv == 0:
            break
        v /= nv
    lip = 1.1 * float(np.linalg.norm(flat.T @ v)) ** 2 if nv else 1.0
    lip = max(lip, 1e-300)
    x = lam.copy()
    y, t = x.copy(), 1.0
    best_lam, best_worst = lam.copy(), float(np.max(np.abs(wres)))
    for it in range(1, _ITERATIONS + 1):
        resid = b - np.einsum("gj,gjm->m", y, A)
        grad = -np.einsum("gjm,m->gj", A, resid)
        x_new = _project(y - grad / lip)
        t_new = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        y = x_new + ((t - 1.0) / t_new) * (x_new - x)
        x, t = x_new, t_new
        if it % _CHECK_EVERY == 0:
            wr = b - np.einsum("gj,gjm->m", x, A)
            worst = float(np.max(np.abs(wr)))
            if worst < best_worst:
                best_lam, best_worst = x.copy(), worst
            if worst <= limit:
                return KinkFit(True, wr * unit, x)
    found = _explaining(A, b, limit, unit, _polished(A, b, best_lam))  # Note [Exact weights]
    if found is not None:
        return found
    wr = b - np.einsum("gj,gjm->m", best_lam, A)
    return KinkFit(False, wr * unit, best_lam)


def kink_verdict(ref: Reference, e, a, allowed, rounding, kink, finite, rtol: float, dtype: str, eps: float, name,
                 forward: bool = False):
    """Entries on a kink: inside the band of one-sided values (each edge with its own tolerance and
    the rounding of whichever side torch took), and explained by one choice of side per kinked unit
    (Note [Joint kink check]).  (ok at each kinked entry, the joint fit or None, band tolerance, note)."""
    lo = np.minimum(np.minimum(ref.lower, ref.upper), e)
    hi = np.maximum(np.maximum(ref.lower, ref.upper), e)
    if ref.kink_generators is not None:  # choices made independently add up: the band is their sum
        gens = np.asarray(ref.kink_generators, np.float64).reshape((-1,) + np.shape(ref.kink_generators)[1:2] + e.shape)
        with np.errstate(invalid="ignore"):
            lo = np.fmin(lo, e + np.sum(np.minimum(gens.min(axis=1), 0.0), axis=0))
            hi = np.fmax(hi, e + np.sum(np.maximum(gens.max(axis=1), 0.0), axis=0))
    band_tol = allowed + (rtol * np.maximum(np.abs(lo), np.abs(hi)) if rtol else 0.0)  # 0 * an infinite band is no NaN
    with np.errstate(invalid="ignore"):  # Note [A split is rounded too]
        width = hi - lo
    band_tol = band_tol + eps * np.where(np.isfinite(width), width, 0.0)
    if ref.kink_rounding is not None and ref.rounding is not None:
        extra = np.asarray(ref.kink_rounding, np.float64).reshape(e.shape) - rounding
        band_tol = band_tol + rounding_ulps(dtype) * eps * np.where(np.isfinite(extra) & (extra > 0), extra, 0.0)
    in_band = (a >= lo - band_tol) & (a <= hi + band_tol)
    ok_kink, found = in_band, None
    if ref.kink_generators is not None and in_band[kink].all():
        gens = np.asarray(ref.kink_generators, np.float64)
        gens = gens.reshape(gens.shape[:2] + (-1,))[:, :, kink.ravel()]
        found = fit(np.where(finite, a - e, 0.0)[kink], band_tol[kink], gens)
        if not found.explained:
            unexplained = np.zeros(e.shape, bool)
            unexplained[kink] = ~(np.abs(found.residual) <= band_tol[kink])  # a NaN residual explains nothing
            ok_kink = in_band & ~unexplained
    return ok_kink, found, band_tol, kink_note(name, kink, e, a, lo, hi, in_band, found, forward)


def kink_note(name, kink, e, a, lo, hi, in_band, found=None, forward: bool = False) -> str:
    first = tuple(int(i) for i in np.argwhere(kink)[0])
    side = "the closed form's (torch's convention)" if np.isclose(a[first], e[first], rtol=1e-6, atol=1e-12) else (
        "the lower one-sided value" if np.isclose(a[first], lo[first], rtol=1e-6, atol=1e-12) else
        "the upper one-sided value" if np.isclose(a[first], hi[first], rtol=1e-6, atol=1e-12) else
        "a value inside the band" if lo[first] <= a[first] <= hi[first] else
        "a value outside the one-sided values but within their rounding allowance" if in_band[first] else
        "a value OUTSIDE the one-sided band")
    outside = int((kink & ~in_band).sum())
    unbounded = kink & ~in_band & np.isneginf(lo) & np.isposinf(hi) & np.isnan(a)
    if unbounded.any():  # sqrt(|x|) at 0: no derivative to compare with
        where = format_index(name, tuple(int(i) for i in np.argwhere(unbounded)[0]))
        return (f"{int(unbounded.sum())} entries (e.g. {where}) sit where the derivative does not exist: its "
                "one-sided values are -inf and inf, and autograd gave NaN; nothing can be checked there, so "
                "the entry fails as undecided. Check at inputs off that point.")
    text = (f"{int(kink.sum())} entries sit on a kink (an input exactly at, or within rounding of, a point where the "
            f"derivative jumps): e.g. {format_index(name, first)} has one-sided "
            f"{'values (the kink moves a step function or a rounding)' if forward else 'derivatives'} {lo[first]:.6g} and "
            f"{hi[first]:.6g}; autograd gave {a[first]:.6g}, {side}.")
    if outside:
        text += f" {outside} of them lie outside their one-sided band: that is a bug, not a subgradient choice."
    elif found is not None and not found.explained:
        text += (" Each entry lies in its own band, but no one choice of side per kinked unit gives them all "
                 "(Note [Joint kink check]): the derivative is wrong, not a subgradient choice.")
    return text


# Note [A split is rounded too]
# A subgradient between the sides (torch.maximum's tie split evenly, a custom clamp giving a quarter
# of the cotangent to x and three quarters to its bound) is computed as w * g, one more rounding than
# either side: |a - Σ λ g| may be an ulp of the band.  Where the closed form's side is exactly 0 (the
# bound's derivative at a tie the graph gives to x) the entry's own allowance is 0, and without this
# ulp of the band's width even an exactly representable split had to be met to 1e-322.


# Note [One choice for every input]
# A kinked unit's side is one choice, and it holds for the derivative with respect to every input it
# reaches: torch.maximum(a, b) at a tie sends the cotangent to a, to b, or splits it, and what a gets
# b does not.  Fitted one input at a time, a backward that gives the whole cotangent to both (or to
# neither) is explained twice over, once per input, with the opposite choices.  So after the per-input
# verdicts, the kinked entries of every input are fitted together with one weight per generator
# (the generators of one check come from one set of units, in one order, for every input: the op
# graph's sweeps, or the exploded engine's kink groups); entries no common choice explains fail.
def fit_together(records: list) -> None:
    parts = [r for r in records if getattr(r, "kink_parts", None) is not None]
    if len(parts) < 2 or any(r.mismatched for r in parts):
        return
    if len({r.kink_parts[2].shape[:2] for r in parts}) != 1:
        return
    res = np.concatenate([r.kink_parts[0] for r in parts])
    tol = np.concatenate([r.kink_parts[1] for r in parts])
    found = fit(res, tol, np.concatenate([r.kink_parts[2] for r in parts], axis=2))
    if found.explained:
        return
    start = 0
    for r in parts:
        n = r.kink_parts[0].size
        bad = ~(np.abs(found.residual[start:start + n]) <= tol[start:start + n])  # NaN explains nothing
        start += n
        if not bad.any():
            continue
        mask = np.zeros(r.kink_parts[3].shape, bool)
        mask[r.kink_parts[3]] = bad
        r.mismatch_mask = mask if r.mismatch_mask is None else (np.asarray(r.mismatch_mask, bool) | mask)
        r.mismatched = int(r.mismatch_mask.sum())
        _point_at(r, np.argwhere(r.kink_parts[3])[bad], np.abs(found.residual[start - n:start])[bad],
                  tol[start - n:start][bad])
        r.kink_note = joined(r.kink_note, (
            f"{int(bad.sum())} kinked entries are explained input by input, but no one choice of side per "
            "kinked unit explains every input's together (Note [One choice for every input]): the derivative "
            "is wrong, not a subgradient choice."))


def _point_at(r, positions: np.ndarray, residual: np.ndarray, tol: np.ndarray) -> None:
    """The record's worst entry: the unexplained kinked entry farthest past its tolerance, with the
    joint fit's tolerance there as its allowance (the row's greatest difference had been measured off
    the kinks: 0 beside a FAIL)."""
    if not len(positions) or r.actual is None or r.expected is None:
        return
    with np.errstate(divide="ignore", invalid="ignore"):
        how_far = np.where(np.isfinite(residual), residual / tol, np.inf)
    k = int(np.argmax(how_far))
    i = tuple(int(j) for j in positions[k])
    a, e = float(np.asarray(r.actual)[i]), float(np.asarray(r.expected)[i])
    r.abs_index = r.rel_index = i
    r.max_abs, r.atol = abs(a - e), float(tol[k])
    r.max_rel = abs(a - e) / abs(e) if e else float("inf")
    r.rel_allowed = float(tol[k]) / abs(e) if e else float("inf")
