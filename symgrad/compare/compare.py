"""Stage 5, compare: autograd's numbers against the closed form, one record per input.

Comparison never raises: it builds :class:`Record` objects, and only the public entry point
(``symgrad.check`` / ``Report.raise_for_failure``) decides to raise.

# Note [Tolerances]
An entry passes when ``|actual - expected| <= allowed``, entry by entry, where ``allowed`` is

* ``ROUNDING_ULPS`` units of roundoff of the dtype autograd ran in times the entry's running
  rounding-error bound (``Reference.rounding``; Note [Rounding bound] in
  ``symgrad/lower/codegen.py``): what correct arithmetic in that dtype may get wrong in this entry.
  It is at least |expected| (torch computes even a derivative the algebra simplified to a constant,
  log(exp(x))' = 1, through rounded operations), and it is the size of the terms where they
  cancel, so an entry that is the small difference of large terms keeps those terms' error.  The
  bound is taken on the closed form as built (Note [Sums kept as built] in
  ``symgrad/lower/numpy.py``): a centred sum, ``sum(x - mean(x))``, keeps the size of the terms
  torch adds up.  Non-integer constants count as rounded to float32 in a float32 run, and the op
  table's float32 parameters (celu's alpha) in every run;
* plus ``NOISE_FACTOR`` times the entry's difference between the closed form evaluated in the
  checked dtype and in high precision: what correct arithmetic in that dtype got wrong here;
* plus the caller's ``rtol * |expected|`` and ``atol``, if given (they add to the bounds; they
  never replace them).  There is no fixed relative floor: a float64 backward computed in float32
  (3e-8 off) or off by a factor 1 + 1e-9 fails.

An entry whose closed form is identically 0 (``Reference.structural_zero``: the differentiation
cancelled what torch still computes, as the gradient of a softmax's shift) has no terms to bound:
it gets ``ROUNDING_ULPS`` units of roundoff of ``floor_scale``, the largest derivative of the whole
check, or, where torch's code was traced, the op graph's bound of what torch sums there instead
(Note [Bounds of two evaluation orders] in graph/twin.py; 0 where torch sums nothing).

# Note [Allowances of other entries]
An allowance taken from other entries lets a bug through where the entry is small beside them:
an exact 0 with no bound (cosh' at 0 beside cosh' at 100) was allowed a thousandth of an ulp of
its tensor's largest entry, 6.5e24, and a backward adding 0.5 there passed (a floor since removed:
the entry's own bound of 0 says torch computes exactly 0 there); a structural zero was allowed 4
ulps of the check's largest derivative, so a Jacobian's off-diagonal leak, an unused input's
gradient, a padding row's leak of 1e-3 passed beside an exp(10) (now the op graph's bound of what
torch sums there, where torch's code was traced: 0 for those three, and the size of the terms of a
softmax's shift, whose residue beat the share of a small check's largest derivative); at order 2
the same (``graph/order2.py: bound_structural_zeros``): a double backward leaking 1e-3 into the
Hessian-vector product of an input that enters linearly passed beside exp(10 x) in float32.

Entries where the allowance is as large as the value itself (float32 near saturation) cannot have
their sign checked; the record counts them (``unresolved``) and says so.

All of it comes from the closed form alone, never from the code under test (torch is never run
again to measure its own noise), so it cannot hide a bug in it; and it is per entry: a small
entry with a wrong sign fails even beside a large one.
A reference with no rounding bound at all (the matrix engine's ``NoBound``) is compared on the
tensor's scale instead: ``NO_BOUND_RTOL[dtype] * max|expected|`` plus the largest noise.

The expected values are evaluated in numpy's extended precision where the platform has it.
A record whose closed form failed its cross-check (``Reference.verified`` false) never passes.
"""

from __future__ import annotations

import numpy as np

from ..reference import Reference
from .half import ROUNDING_ULPS, rounding_ulps, subnormal_floor, value_roundings
from .accuracy import certify, depends_on_reference, judge_accuracy
from .kinks import fit_together, kink_verdict
from .record import Record
from .worst import WORST_SHOWN, WorstEntry, format_index, joined

__all__ = ["WorstEntry", "ulp", "compare", "compare_all", "DEFAULT_RTOL", "NO_BOUND_RTOL", "NOISE_FACTOR", "ROUNDING_ULPS", "EPS", "format_index"]

# No fixed relative floor (issue 13 item 2): the default rtol is 0 and every allowance comes from
# the rounding bound.  DEFAULT_RTOL is kept for callers that import it: all zeros.
DEFAULT_RTOL = {"float64": 0.0, "float32": 0.0, "float16": 0.0, "bfloat16": 0.0}
# Only for a reference with no rounding bound at all (the matrix engine's NoBound), on the tensor's scale.
NO_BOUND_RTOL = {"float64": 1e-7, "float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}
# The relative error a seeded-bug test uses per dtype (issue 13's property test): entries whose
# allowance is wider than this are named in the record's note.
RESOLUTION = {"float64": 1e-6, "float32": 1e-3, "float16": 1e-2, "bfloat16": 1e-1}
NOISE_FACTOR = 8.0
EPS = {"float64": 2.0**-52, "float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}


TINY = {"float64": float(np.finfo(np.float64).tiny), "float32": float(np.finfo(np.float32).tiny),
        "float16": float(np.finfo(np.float16).tiny), "bfloat16": float(np.finfo(np.float32).tiny)}


def ulp(values: np.ndarray, dtype: str) -> np.ndarray:
    """The unit in the last place of ``dtype`` at each of ``values`` (at its smallest normal for 0)."""
    eps = EPS.get(dtype, 2.0**-52)
    values = np.asarray(values, np.float64)
    size = np.abs(values) if np.isfinite(values).all() else np.abs(np.where(np.isfinite(values), values, 0.0))
    size = np.asarray(np.maximum(size, TINY.get(dtype, TINY["float64"])), np.float64)
    # 2**floor(log2 size): the exponent bits alone (size is a normal float64), as frexp gives it
    return eps * (size.view(np.int64) & np.int64(0x7FF0000000000000)).view(np.float64)


def _in_ulps(rec: Record, e, a, diff, allowed, judged_mask, dtype: str, point=None, point_ulps=None) -> None:
    """Record the errors in ulps of ``dtype`` and the worst entries (issue 11 item 2).  ``point``:
    the entry to report instead of the largest judged error (a failing kinked entry, or a NaN/inf
    on one side, whose error is ``point_ulps``), so the line never says 0 ulps beside a failure."""
    unit = ulp(e, dtype)
    every = judged_mask is True
    with np.errstate(all="ignore"):
        err_ulps = diff / unit if every else np.where(judged_mask, diff / unit, 0.0)
    i = np.unravel_index(int(np.argmax(err_ulps)), e.shape) if point is None else tuple(point)
    rec.max_ulps, rec.ulps_index = float(err_ulps[i] if point_ulps is None else point_ulps), tuple(int(k) for k in i)
    # the worst failing entries (error over allowance, inf for an allowance of 0), largest first,
    # ties in index order; computed on the failing entries alone: a full sort of a million passing
    # entries took longer than the whole comparison
    failing = np.flatnonzero((diff > allowed) if every else judged_mask & (diff > allowed))
    with np.errstate(all="ignore"):
        excess = diff.flat[failing] / allowed.flat[failing]
    order = failing[np.argsort(-excess, kind="stable")[:WORST_SHOWN]]
    with np.errstate(all="ignore"):  # an allowance of inf (NaN/inf on both sides) is inf ulps
        rec.allowed_ulps = float(allowed[i] / unit[i])
        rec.worst = [WorstEntry(tuple(int(k) for k in np.unravel_index(int(j), e.shape)), float(a.flat[j]),
                                float(e.flat[j]), float(diff.flat[j]), float(err_ulps.flat[j]), float(allowed.flat[j]),
                                float(allowed.flat[j] / unit.flat[j]))
                     for j in order]


# Note [Overflow is the right answer]
# exp(100) is 2.7e43, beyond float32's largest number (3.4e38): the correctly rounded float32 result
# is +inf, and a float32 forward or backward that returns it is right, not a NaN/inf failure.  The
# reference is float64, so it still holds the finite value.  An autograd +-inf of the same sign is
# accepted where the exact value, widened by its allowance, reaches the dtype's largest finite
# number; an inf where the exact value stays below it (an intermediate overflow) still fails.  Where
# the float64 reference is itself the same infinity, the exact value is evaluated over mpmath: an
# entry beyond float64's range too is accepted in every dtype (``_beyond_float64``); one whose
# exact value fits, or that mpmath cannot evaluate, stays "NaN/inf", which never passes.  A forward
# row's entries are written out exactly from the op graph or the symbolic forward for this
# (``Reference.exact_forward``): (x*x).sum() at x ~ 1e300 is 1.5e601, and both sides' +inf is right.
MAX_OVERFLOW_CHECKS = 256  # entries where both sides are the same infinity, evaluated over mpmath
MAX_FINITE = {"float32": 3.4028234663852886e38, "float16": 65504.0, "bfloat16": 3.3895313892515355e38}


def _overflowed(e: np.ndarray, a: np.ndarray, allowed, dtype: str) -> np.ndarray:
    """Entries where autograd's +-inf is ``e`` correctly rounded to ``dtype`` (the Note above)."""
    top = MAX_FINITE.get(dtype)
    if top is None or np.isfinite(a).all():
        return np.zeros(e.shape, bool)
    with np.errstate(all="ignore"):
        reach = np.abs(e) + np.where(np.isfinite(allowed), allowed, 0.0)
        return np.isinf(a) & np.isfinite(e) & (np.sign(a) == np.sign(e)) & (reach >= top)


def _infinite_side(ref, a: np.ndarray, kink: np.ndarray) -> np.ndarray:
    """Kinked entries where autograd's +-inf is exactly one of the one-sided derivatives there."""
    with np.errstate(invalid="ignore"):
        lower, upper = np.asarray(ref.lower, np.float64), np.asarray(ref.upper, np.float64)
        return kink & np.isinf(a) & ((a == lower) | (a == upper))


def _beyond_float64(ref, e: np.ndarray, a: np.ndarray, dtype: str) -> np.ndarray:
    """Entries where both sides are the same infinity and the exact value, evaluated over mpmath,
    is beyond float64's range too: rsqrt' at 1e-300 is -5e449 (the Note above)."""
    with np.errstate(invalid="ignore"):
        same = np.isinf(e) & np.isinf(a) & (np.sign(e) == np.sign(a))
    oracle = getattr(ref, "oracle", None) or getattr(ref, "exact_forward", None)
    if not same.any() or oracle is None or int(same.sum()) > MAX_OVERFLOW_CHECKS:
        return np.zeros(e.shape, bool)
    entries = [int(j) for j in np.flatnonzero(same)]
    try:
        got = oracle.exact(entries, lambda v: float(ulp(np.asarray(v), dtype)))
    except Exception:  # noqa: BLE001 - no mpmath value for these entries: they stay non-finite
        return np.zeros(e.shape, bool)
    if got is None:
        return np.zeros(e.shape, bool)
    values = np.asarray(got[0], np.float64)
    over = np.zeros(e.shape, bool)
    over.flat[entries] = np.isinf(values) & (np.sign(values) == np.sign(e.flat[entries]))
    return over


def _nonfinite_note(expected: np.ndarray, actual: np.ndarray, name: str) -> tuple[str, np.ndarray]:
    """Text describing NaN/inf on either side, and a mask of entries where the sides differ in kind."""
    bad_e, bad_a = ~np.isfinite(expected), ~np.isfinite(actual)
    if not (bad_e.any() or bad_a.any()):
        return "", np.zeros(expected.shape, bool)
    same = (np.isnan(expected) & np.isnan(actual)) | (np.isinf(expected) & np.isinf(actual) & (np.sign(expected) == np.sign(actual)))
    differ = (bad_e | bad_a) & ~same
    parts = []
    for label, mask in (("closed form", bad_e), ("autograd", bad_a)):
        if mask.any():
            first = tuple(int(i) for i in np.argwhere(mask)[0])
            parts.append(f"{label} has {int(mask.sum())} NaN/inf (first at {format_index(name, first)})")
    if same.any():
        parts.append(f"{int(same.sum())} of them identical on both sides, which proves nothing")
    return "Non-finite values: " + "; ".join(parts), differ


def compare(ref: Reference, actual, dtype: str, *, quantity: str = "grad", rtol: float | None = None,
            atol: float | None = None, index_name: str | None = None, floor_scale: float = 0.0) -> Record:
    """Compare autograd's ``actual`` with the closed form ``ref`` (see Note [Tolerances])."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(ref.value, dtype=np.float64)
    name = index_name or ref.name
    rec = Record(ref.name, quantity, tuple(e.shape), dtype, ref.closed_form, ref.closed_form_latex,
                 total=int(e.size), verified=ref.verified, note=ref.note, expected=e, actual=a)
    if a.shape != e.shape:
        rec.mismatched, rec.note = rec.total, f"shape mismatch: autograd gave {a.shape}, the closed form has {e.shape}"
        return rec
    rtol = 0.0 if rtol is None else rtol
    eps = EPS.get(dtype, 2.0**-52)

    def depends(bound):  # Note [Certify what the verdicts depend on] (accuracy.py)
        # the terms on the tensor's scale move by the largest bound of any entry, at most
        widest = float(np.max(np.where(np.isfinite(bound), bound, 0.0), initial=0.0))
        allowed = _allowance(ref, e, a, dtype, rtol, atol, floor_scale)[0] - ROUNDING_ULPS * eps * widest
        return depends_on_reference(ref, e, a, allowed, bound, dtype, ulp, eps, rtol, atol,
                                    allowance_slope=2.0 + NOISE_FACTOR + rtol)

    e, ref_bound, rec.reference = certify(ref, e, dtype, ulp, need=depends)  # Note [Certified reference] (lower/exact.py)
    rec.expected = e
    abs_e = np.abs(e)
    rec.nonfinite, differ = _nonfinite_note(e, a, name)
    finite = np.isfinite(e) & np.isfinite(a)
    all_finite = bool(finite.all())
    with np.errstate(all="ignore"):
        diff = np.abs(a - e) if all_finite else np.where(finite, np.abs(a - e), 0.0)
        rel = np.where((finite & (diff > 0)) if not all_finite else diff > 0, diff / abs_e, 0.0)
    allowed, rounding = _allowance(ref, e, a, dtype, rtol, atol, floor_scale)
    kink = np.zeros(e.shape, bool) if ref.kink is None else np.asarray(ref.kink, bool)
    rec.rtol = rtol
    rec.closed_form_expr, rec.entry_form = ref.closed_form_expr, ref.entry_form
    ok = diff <= allowed

    fit = band_tol = None
    if kink.any() and ref.lower is not None and ref.upper is not None:
        ok_kink, fit, band_tol, rec.kink_note = kink_verdict(ref, e, a, allowed, rounding, kink, finite, rtol,
                                                              dtype, eps, name, quantity == "forward")
        ok = np.where(kink, ok_kink, ok)
        rec.kinks = int(kink.sum())
        taken = _infinite_side(ref, a, kink)
        if taken.any():  # entr'(0) = +inf from the right: that side's value, not a NaN/inf failure
            rec.nonfinite, differ = _nonfinite_note(np.where(taken, 0.0, e), np.where(taken, 0.0, a), name)
        if ref.kink_generators is not None:  # for the fit over every input at once (compare_all)
            gens = np.asarray(ref.kink_generators, np.float64)
            rec.kink_parts = (np.where(finite, a - e, 0.0)[kink], band_tol[kink],
                              gens.reshape(gens.shape[:2] + (-1,))[:, :, kink.ravel()], kink)
    over = _overflowed(e, a, allowed, dtype) | _beyond_float64(ref, e, a, dtype)  # Note [Overflow is the right answer]
    if over.any():
        rec.nonfinite, differ = _nonfinite_note(np.where(over, 0.0, e), np.where(over, 0.0, a), name)
        ok |= over
        rec.note = joined(rec.note, _overflow_note(over, e, a, name, dtype))
    ok &= ~differ
    rec.allowed, rec.kink_mask, rec.mismatch_mask = allowed, kink, ~ok
    rec.mismatched = int((~ok).sum())
    any_kink = bool(kink.any())
    judged_mask = (finite & ~kink) if any_kink else (True if all_finite else finite)
    resolved = (e != 0) if judged_mask is True else judged_mask & (e != 0)
    rec.unresolved = int((resolved & (allowed >= abs_e)).sum())
    rec.note = joined(rec.note, _coarse_note(resolved, allowed, abs_e, name, dtype))

    if e.size:
        _worst_entries(rec, e, diff, rel, allowed, kink, ok, finite, differ, fit, band_tol, rtol)
        i = rec.rel_index
        rec.rel_allowed = float(allowed[i] / abs(e[i])) if np.isfinite(e[i]) and e[i] != 0 else float("inf")
        point = point_ulps = None
        if differ.any():
            point, point_ulps = rec.abs_index, float("inf")
        elif rec.mismatched and not (~ok & ~kink).any():  # only kinked entries failed: the one shown
            point = rec.abs_index
            with np.errstate(all="ignore"):
                point_ulps = float(diff[point] / ulp(e[point], dtype))
        _in_ulps(rec, e, a, diff, allowed, judged_mask, dtype, point, point_ulps)
        if not rec.mismatched and not differ.any():  # Note [Accurate, not only right] (accuracy.py)
            judge_accuracy(rec, ref, e, a, diff, ok, kink, finite, ref_bound, dtype, ulp, eps, rtol, atol)
    return rec


def _overflow_note(over, e, a, name, dtype: str) -> str:
    first = tuple(int(i) for i in np.argwhere(over)[0])
    exact = (f"exact value {float(e[first]):.6g}" if np.isfinite(e[first]) else
             f"exact value {'-' if e[first] < 0 else '+'}{np.finfo(np.float64).max:.6g} or more in size, by mpmath")
    top = MAX_FINITE.get(dtype, float(np.finfo(np.float64).max))
    return (f"{int(over.sum())} entries overflow {dtype} (e.g. {format_index(name, first)}: {exact}, beyond "
            f"{dtype}'s largest number {top:.6g}): autograd's {'-' if a[first] < 0 else '+'}inf there is the "
            "correctly rounded result.")


def _coarse_note(resolved, allowed, abs_e, name, dtype: str) -> str | None:
    """Entries resolved, but not to the relative size of error a property test would seed."""
    resolution = RESOLUTION.get(dtype, 1e-6)
    coarse = resolved & (allowed > resolution * abs_e) & (allowed < abs_e)
    if not coarse.any():
        return None
    first = tuple(int(i) for i in np.argwhere(coarse)[0])
    return (f"{int(coarse.sum())} entries are allowed more than {resolution:g} of their value (e.g. "
            f"{format_index(name, first)}: {float(allowed[first] / abs_e[first]):.2g}): their closed form is a small "
            f"difference of larger terms, and correct {dtype} arithmetic may err by that much there; a relative error "
            f"of {resolution:g} in them would pass" + (" (check in float64 to resolve them)." if dtype != "float64" else "."))


def _worst_entries(rec: Record, e, diff, rel, allowed, kink, ok, finite, differ, fit, band_tol, rtol: float) -> None:
    """The entries a report shows: the largest absolute and relative errors off the kinks, a one-sided
    NaN/inf before anything, or the worst unexplained kinked entry when only those failed."""
    any_kink = bool(kink.any())
    judged = np.where(kink, 0.0, diff) if any_kink else diff
    rel_judged = np.where(kink, 0.0, rel) if any_kink else rel
    i_abs = np.unravel_index(int(np.argmax(judged)), e.shape)
    i_rel = np.unravel_index(int(np.argmax(rel_judged)), e.shape)
    rec.max_abs, rec.abs_index = float(judged[i_abs]), tuple(int(i) for i in i_abs)
    rec.atol = float(allowed[i_abs] - rtol * abs(e[i_abs])) if finite[i_abs] else float(allowed[i_abs])
    rec.max_rel, rec.rel_index = float(rel_judged[i_rel]), tuple(int(i) for i in i_rel)
    if differ.any():  # a NaN/inf on one side only is the worst difference there is
        i = tuple(int(k) for k in np.argwhere(differ)[0])
        rec.abs_index = rec.rel_index = i
        rec.max_abs = rec.max_rel = float("inf")
        rec.atol = float(allowed[i] - rtol * abs(e[i])) if finite[i] else float(allowed[i])
    elif rec.mismatched and not (~ok & ~kink).any():  # only kink entries failed: point at one
        bad = ~ok
        if fit is not None and not fit.explained:
            off = np.zeros(e.shape)
            off[kink] = np.abs(fit.residual) / band_tol[kink]
            i = np.unravel_index(int(np.argmax(np.where(bad, off, -1.0))), e.shape)
        else:
            i = tuple(int(k) for k in np.argwhere(bad)[0])
        i = tuple(int(k) for k in i)
        rec.abs_index = rec.rel_index = i
        rec.max_abs = float(diff[i])
        rec.max_rel = float(rel[i])
        rec.atol = float(allowed[i] - rtol * abs(e[i]))


def _scale(e: np.ndarray, dtype: str = "float64") -> float:
    """The largest finite |entry| the dtype can hold (Note [Overflow is the right answer]; where every
    entry is finite -- the usual case -- the masking pass is skipped: a million entries cost a few
    milliseconds a pass)."""
    abs_e, fin_e = np.abs(e), np.isfinite(e)
    finite_e = abs_e if fin_e.all() else abs_e[fin_e]
    if dtype in MAX_FINITE and finite_e.size and finite_e.max() >= MAX_FINITE[dtype]:
        finite_e = finite_e[finite_e < MAX_FINITE[dtype]]
    return float(finite_e.max()) if finite_e.size else 0.0


def _allowance(ref: Reference, e: np.ndarray, a: np.ndarray, dtype: str, rtol: float, atol: float | None,
               floor_scale: float) -> tuple:
    """Each entry's allowance at the reference values ``e`` (Note [Tolerances]), and the per-entry
    rounding bound it counted (None for a reference without one)."""
    eps = EPS.get(dtype, 2.0**-52)
    scale = _scale(e, dtype)
    finite = np.isfinite(e) & np.isfinite(a)
    all_finite = bool(finite.all())
    with np.errstate(all="ignore"):
        noise = 0.0 if ref.value_lowp is None else np.abs(np.asarray(ref.value_lowp, np.float64) - e)
    if ref.value_lowp is not None:
        noise = np.where(np.isfinite(noise), noise, 0.0)
    abs_e_finite = np.abs(e) if all_finite else np.abs(np.where(finite, e, 0.0))
    allowed = rtol * abs_e_finite
    rounding = None
    if ref.rounding is not None:  # per entry: what correct arithmetic in this dtype may get wrong here
        rounding = np.asarray(ref.rounding, dtype=np.float64).reshape(e.shape)
        if not np.isfinite(rounding).all():
            rounding = np.where(np.isfinite(rounding), rounding, 0.0)
        # at least one rounding of the value itself: torch computes even a derivative the algebra
        # simplified to an exact constant (log(exp(x)) -> 1) through rounded operations
        rounding = np.maximum(rounding, _own_roundings(ref, dtype) * abs_e_finite)
        # each entry is judged by its own bound alone (Note [Allowances of other entries])
        allowed = allowed + rounding_ulps(dtype) * eps * rounding + NOISE_FACTOR * noise
        allowed = allowed + subnormal_floor(dtype, e, a)
    else:  # no per-entry bound: compare on the tensor's scale
        fallback = max(rtol, NO_BOUND_RTOL.get(dtype, 1e-7))
        allowed = allowed + max(fallback * scale, fallback * 1e-3) + NOISE_FACTOR * float(np.max(noise, initial=0.0))
    if ref.structural_zero is not None:
        share = ROUNDING_ULPS * eps * max(floor_scale, scale)
        if ref.structural_bound is not None:  # what torch sums there, where known (Note [Allowances of other entries])
            known = np.asarray(ref.structural_bound, np.float64).reshape(e.shape)
            share = np.where(np.isinf(known), share, rounding_ulps(dtype) * eps * np.where(np.isinf(known), 0.0, known))
        allowed = allowed + np.where(np.asarray(ref.structural_zero, bool).reshape(e.shape), share, 0.0)
    if atol is not None:  # the caller's own absolute tolerance, on top
        allowed = allowed + atol
    return allowed, rounding


def _own_roundings(ref, dtype: str) -> float:
    """Roundings of its own size every entry is allowed, in ``dtype``'s units: the stored tensor's
    dtype's where it is wider than the check's (a float32 model with a bfloat16 island: a float32
    gradient was allowed 1.5 bfloat16 roundings, 0.7 %, and a backward 1e-3 off in the float32 part
    passed)."""
    stored = getattr(ref, "stored_dtype", None)
    if stored not in EPS or dtype not in EPS or EPS[stored] >= EPS[dtype]:
        return value_roundings(dtype)
    return value_roundings(stored) * rounding_ulps(stored) * EPS[stored] / (rounding_ulps(dtype) * EPS[dtype])


NO_GRADIENT_NOTE = ("autograd gave no gradient (None: torch never reached this input, because it is unused or "
                    "detached); compared as zeros")


def compare_all(refs: list, actual: dict, dtype: str, *, quantity: str, rtol=None, atol=None) -> list[Record]:
    """One record per reference against ``actual[ref.name]`` (None: no gradient, compared as zeros),
    with the scale for identically zero entries taken over all of them."""
    scales = [float(np.max(np.abs(v[np.isfinite(v)]))) for v in (np.asarray(r.value, np.float64) for r in refs)
              if np.isfinite(v).any()]
    floor = max(scales, default=0.0)
    records = []
    for ref in refs:
        got = actual.get(ref.name)
        if got is None:
            rec = compare(ref, np.zeros(np.shape(ref.value)), dtype, quantity=quantity, rtol=rtol, atol=atol, floor_scale=floor)
            rec.note = (rec.note + " " if rec.note else "") + NO_GRADIENT_NOTE
        else:
            if str(getattr(got, "layout", "torch.strided")) != "torch.strided":
                got = got.to_dense()  # a sparse gradient (nn.Embedding(sparse=True)): its duplicates add up
            rec = compare(ref, got.detach().double().cpu().numpy(), dtype, quantity=quantity, rtol=rtol, atol=atol,
                          floor_scale=floor)
        records.append(rec)
    fit_together(records)
    return records
