"""Issue 11 items 1-3: the certified reference each comparison uses, and the ``inaccurate`` verdict.

``certify`` replaces the fast reference by a raised-precision one where its rounding bound is not
small against an ulp of the checked dtype (Note [Certified reference] in ``symgrad/lower/exact.py``)
and says how accurate the reference is; ``judge_accuracy`` answers the second question, "is
autograd's derivative accurate?", after the first ("is it right?") has been answered.

# Note [Accurate, not only right]
"Right" (Note [Tolerances] in compare.py) allows what correct arithmetic *following the closed
form* may get wrong: where sinc' = cos(x)/x - sin(x)/x**2 cancels near 0, that is most of the
digits, and a naive backward computing that very form is right.  "Accurate" asks what the
*problem* allows: a backward-stable computation of an entry g errs by about cond * u, with
cond = sum_j |a_j dg/da_j| / |g| over every number the computation is given (inputs, parameters,
cotangent, tangents; Note [Conditioning of an entry]).  An entry is accurate when

    |autograd - exact| <= (cond + ACCURACY_ULPS) * eps * |g| + ACCURACY_ULPS * ulp(g)
                          + the reference's own error bound + the caller's rtol/atol.

``ACCURACY_ULPS`` = 8: torch's backward of a composition rounds once per op and per library call
(a library function errs by up to 1-2 ulps), and the chain rule multiplies a handful of such
factors, each carrying its rounding to the result unamplified; eight ulps cover four such steps of
two ulps each, and the ulp term keeps the underflow range (float32 entries near 1e-40) out of it.
Constants matter little here: the naive sinc at x = 1e-3 errs by ~1e6 ulps in float64.  An entry
within "right" but beyond "accurate" makes the record ``inaccurate`` (a warning; a failure with
``strict=True``).

A backward that reuses the forward's rounded output (torch's tanh' = 1 - y**2, sigmoid' =
y (1 - y)) inherits that output's rounding, amplified where 1 - y cancels: thousands of ulps at
|x| = 5 in float64.  Those values count as inputs of the problem (Note [Saved values] in
``symgrad/lower/exact.py``), so torch's own kernels are not ``inaccurate`` (measured over the op
table: README, "How symgrad decides"), while sin and cos, which a backward computes from x, do not
(the naive sinc stays ``inaccurate``).  The conditioning is computed only for entries whose error
exceeds ACCURACY_ULPS * eps * |g| (cond >= 0 makes every other entry accurate), at most
``MAX_CONDITIONED`` per record and within the work limits of ``symgrad/lower/exact.py`` (a network's
entries, in hundreds of symbols, are not differentiated again: the record's ``accuracy_note`` says
the question was not answered); entries on a kink, identically-zero entries and non-finite ones are
never judged, and neither are entries zero by cancellation (Note [Zero by cancellation]).  Covered: the exploded engine (every path: the direct one, per sample, whole batch),
and the op graph where the gradient is pointwise in x (Note [Pointwise gradients on the op graph]).

# Note [Certify what the verdicts depend on]
Re-evaluating an entry over mpmath costs printing, compiling and running its whole closed form over
mpmath numbers: a conv net's gradient entries each hold the whole forward, and certifying them
all took 9 of the 15 s of its check (benchmarks/bench_exploded.py).  Most of them cannot change
any verdict: the fast reference e errs by at most its bound b (80-bit floats: 2**-63 times the
running bound, tens of float64 ulps there, against allowances of 1e4-1e5 ulps).  So in the
``auto`` mode an entry whose bound is not small is re-evaluated only where its verdicts depend on it
(``depends_on_reference``, from the fast values):

* "right" holds for every exact value within b when diff + (1 + s) b <= allowed(e), diff =
  |autograd - e|; s (``allowance_slope``) bounds how far the allowance itself moves when e moves
  by b (NOISE_FACTOR for the noise term, 1 for the rounding and scale terms, the caller's rtol).
  Anything else -- a failing entry, or one within reach of its allowance -- is certified, so a
  failure is always shown and judged against the certified value.
* "accurate" holds for every exact value within b when diff + b <= ACCURACY_ULPS (eps |g| + ulp(g))
  + rtol |g| + atol at |g| = |e| - b (Note [Accurate, not only right]); such an entry is no
  suspect with any reference.  The others are certified, except where the entry's conditioning is
  beyond the work limits (``EntryOracle.conditionable``: a network's entries, in hundreds of
  symbols): there the accuracy question goes unanswered with any reference, and ``judge_accuracy``
  counts the entry as a suspect (its test is diff + its reference's bound > the floor, so an
  uncertified entry is never taken for accurate) and says so in ``accuracy_note``.
* ``reference="mpmath"`` certifies every entry, as asked; ``"float"`` none.

The record's reference sentence states the bounds that hold: of the certified entries and, apart,
of the others ("not re-evaluated over mpmath: the verdicts of all N entries hold within it").
"""

# Note [Zero by cancellation]
# The gradient of sum(layer_norm(x)) is exactly 0: the normalised entries always sum to 0.  SymPy
# does not simplify the closed form to 0, so the entry is not a structural zero; its certified
# value is a residue of the raised-precision evaluation (1e-300), and in ulps of that residue
# any float computation -- torch's own, by its terms of size 1 -- is 1e307 ulps off.  An entry
# whose exact value is below ``CANCELLED`` (2**-100) times the size of the terms it is summed from
# (the reference's running bound, in units of roundoff) is zero to every precision a float
# computation has: it is not judged for accuracy, as an identically-zero entry is not.  Whether it is
# *right* is still judged, against its rounding allowance.

from __future__ import annotations

import contextvars

import numpy as np

CANCELLED = 2.0**-100

__all__ = ["ForwardOracle", "nesting", "certify", "judge_accuracy", "REFERENCE_MODES", "reference_mode", "ACCURACY_ULPS", "MAX_CONDITIONED",
           "EntryOracle", "depends_on_reference", "apply_strict", "check_accuracy_options", "InaccurateDerivative"]

REFERENCE_MODES = ("auto", "mpmath", "float")
ACCURACY_ULPS = 8.0
MAX_CONDITIONED = 512
# the reference mode of the running check (symgrad.check's ``reference=``): set for the length of
# one check, read by ``certify`` on every path (exploded, per-sample, op graph)
reference_mode: contextvars.ContextVar[str] = contextvars.ContextVar("symgrad_reference_mode", default="auto")
# how many checks are running inside each other (a module's exploded whole-batch check calls check_plain):
# only the outermost one warns
nesting: contextvars.ContextVar[int] = contextvars.ContextVar("symgrad_check_nesting", default=0)


class InaccurateDerivative(UserWarning):
    """Warned by ``symgrad.check`` when a derivative is right but less accurate than it could be."""


def check_accuracy_options(reference, strict) -> None:
    from ..errors import InputError

    if reference not in REFERENCE_MODES:
        raise InputError(f"reference must be one of {REFERENCE_MODES}, not {reference!r}: 'auto' re-evaluates over "
                         "mpmath where the fast reference is not accurate enough, 'mpmath' always, 'float' never")
    if not isinstance(strict, bool):
        raise InputError(f"strict must be True or False, not {strict!r}")


def apply_strict(report, strict: bool, warn: bool = True):
    """Mark every record of ``report`` (and of its parts) strict or not; warn about inaccurate ones."""
    import logging
    import warnings

    for part in [report, *getattr(report, "parts", [])]:
        for r in part.records:
            r.strict = strict
    bad = [r for r in report.records if r.inaccurate and not r.mismatched]
    if bad and warn:
        text = "; ".join(f"{r.name}: {r.inaccurate} entries, {r.accuracy_ulps:.3g} ulps where "
                         f"{r.accuracy_allowed_ulps:.3g} are allowed" for r in bad[:4])
        message = (f"{report.title}: derivatives right but inaccurate (less accurate than the problem's "
                   f"conditioning allows): {text}" + ("" if strict else "; strict=True makes this a failure"))
        logging.getLogger("symgrad").info(message)  # warnings.warn shows it once; logging for whoever listens
        warnings.warn(message, InaccurateDerivative, stacklevel=_caller_level())
    return report


def _caller_level() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside symgrad (the user's call)."""
    import os
    import sys

    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame, level = sys._getframe(2), 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level


class ForwardOracle:
    """The exact values of a forward's entries, for Note [Overflow is the right answer] in compare.py:
    ``expressions()`` gives them as an object array of exact constants (built only when asked: a
    forward that overflows float64 on both sides), evaluated here over mpmath at 30 digits."""

    def __init__(self, expressions):
        self.expressions = expressions

    def exact(self, entries: list, dtype_ulp):
        flat = np.asarray(self.expressions(), object).ravel()
        return np.array([_over_mpmath(flat[j]) for j in entries]), None, 30


def _over_mpmath(expr) -> float:
    """An exact constant's value at 30 digits; the special functions symengine holds as undefined
    functions (the modified Bessel functions, erfinv) by their mpmath kernels (lower/special.py)."""
    import mpmath as mp
    import sympy as sp
    from sympy.core.function import AppliedUndef

    from ..lower.special import MPMATH

    def value(e):
        fn, _ = MPMATH[e.func.__name__]
        with mp.workdps(40):
            return sp.Float(mp.nstr(fn(*(mp.mpf(str(a.evalf(40))) for a in e.args)), 40), 40)

    expr = sp.sympify(expr)
    expr = expr.replace(lambda e: isinstance(e, AppliedUndef) and e.func.__name__ in MPMATH, value)
    return float(expr.evalf(30))


class EntryOracle:
    """Raised-precision values and sensitivities of a reference's entries (flat indices).

    ``slots(j)`` gives entry ``j`` as a list of ``(slot, coefficient)``: the entry is the sum of
    the coefficients times the slots' closed forms (one slot for a plain entry; one per sample for a
    parameter gradient summed over a batch).  ``evaluator``: ``symgrad.lower.exact.ExactEvaluator``.
    """

    def __init__(self, evaluator, slots):
        self.evaluator, self.slots = evaluator, slots

    def exact(self, entries: list, dtype_ulp):
        import mpmath as mp

        from ..lower.exact import _to_float

        plan = [self.slots(j) for j in entries]
        flat = sorted({s for p in plan for s, _ in p}, key=lambda s: (s[0], -1 if s[1] is None else s[1]))
        if not flat:
            return None
        got = self.evaluator.exact(flat, lambda v: dtype_ulp(v) / max(1, max(len(p) for p in plan)))
        if got is None:
            return None
        values, bounds, dps = got
        at = {s: k for k, s in enumerate(flat)}
        out_v, out_b = [], []
        for p in plan:
            total, bound = mp.mpf(0), mp.mpf(0)
            for s, c in p:
                total += c * values[at[s]]
                bound += abs(c) * bounds[at[s]]
            out_v.append(_to_float(total))
            out_b.append(_to_float(bound))  # of the exact value; it is then stored rounded to float64
        return np.array(out_v), np.array(out_b), dps

    def conditionable(self, entries: list) -> np.ndarray:
        """Whether each entry's conditioning is within the work limits (``sensitivity`` gives NaN else)."""
        check = getattr(self.evaluator, "conditionable", None)
        if check is None:
            return np.ones(len(entries), bool)
        return np.array([all(check(i) for (i, _), _ in self.slots(j)) for j in entries], bool)

    def sensitivity(self, entries: list) -> np.ndarray:
        plan = [self.slots(j) for j in entries]
        flat = sorted({s for p in plan for s, _ in p}, key=lambda s: (s[0], -1 if s[1] is None else s[1]))
        if not flat:
            return np.zeros(len(entries))
        sens = self.evaluator.sensitivity(flat)
        at = {s: k for k, s in enumerate(flat)}
        return np.array([sum(abs(c) * sens[at[s]] for s, c in p) for p in plan])


def _hp_bound(ref, e: np.ndarray) -> np.ndarray:
    """The fast reference's own error bound, entry by entry (Note [Certified reference])."""
    from ..lower.exact import REFERENCE_ULPS, hp_eps

    if ref.rounding is None:
        return np.full(e.shape, np.inf)
    rounding = np.abs(np.asarray(ref.rounding, np.float64).reshape(e.shape))
    return REFERENCE_ULPS * (ref.value_eps or hp_eps()) * np.where(np.isfinite(rounding), rounding, np.inf)


def certify(ref, e: np.ndarray, dtype: str, ulp, need=None) -> tuple[np.ndarray, np.ndarray, str]:
    """The reference values to compare with, their error bounds, and a sentence on their accuracy.

    ``need(bound)``: the entries whose verdicts depend on the reference, given the fast one's error
    bound (``depends_on_reference``); only those are re-evaluated over mpmath in the ``auto`` mode
    (Note [Certify what the verdicts depend on]).  None: every entry whose bound is not small."""
    from ..lower.exact import CERTIFY_FRACTION, MAX_EXACT_ENTRIES

    e = np.array(e, dtype=np.float64, copy=True)
    bound = _hp_bound(ref, e)
    mode = reference_mode.get()
    unit = ulp(e, dtype)
    finite = np.isfinite(e)
    want = finite & (bound > CERTIFY_FRACTION * unit) if mode == "auto" else finite & (mode == "mpmath")
    if ref.kink is not None:
        want &= ~np.asarray(ref.kink, bool)
    oracle = getattr(ref, "oracle", None)
    decided = np.zeros(e.shape, bool)
    if mode == "auto" and need is not None and oracle is not None and want.any():
        decided = want & ~np.asarray(need(bound), bool).reshape(e.shape)
        want &= ~decided
    n_want, done, dps = int(want.sum()), np.zeros(e.shape, bool), 0
    if n_want and oracle is not None and mode != "float" and n_want <= MAX_EXACT_ENTRIES:
        entries = [int(j) for j in np.flatnonzero(want)]
        got = oracle.exact(entries, lambda v: float(ulp(np.asarray(v), dtype)))
        if got is not None:
            values, bounds, dps = got
            ok = np.isfinite(values)
            idx = np.array(entries)[ok]
            e.flat[idx], bound.flat[idx] = values[ok], bounds[ok]
            done.flat[idx] = True
    # an exact 0's own ulp is the smallest subnormal: the sentence states such entries in ulps of the
    # record's largest entry (of 1 where every entry is 0), not as 1e307 ulps
    largest = float(np.max(np.abs(e[np.isfinite(e)]), initial=0.0))
    stated = np.where(e == 0, ulp(np.asarray(largest or 1.0), dtype), unit)
    return e, bound, _reference_text(ref, e, bound, stated, dtype, done, decided, n_want, dps, mode)


def _reference_text(ref, e, bound, unit, dtype: str, done, decided, n_want: int, dps: int, mode: str) -> str:
    """The sentence on the reference's accuracy (Note [Certified reference]); every bound it states
    holds for every entry it speaks of."""
    from ..lower.exact import hp_name

    with np.errstate(all="ignore"):
        in_ulps = np.where(np.isfinite(e), bound / unit, 0.0)
    worst = float(np.max(in_ulps, initial=0.0))
    n_done, n_decided = int(done.sum()), int(decided.sum())
    where = hp_name() if not ref.value_eps else "float64" if ref.value_eps == 2.0**-52 else f"eps {ref.value_eps:g}"
    fast = f"closed form in {where} floats" if ref.rounding is not None else "closed form in float64 (no bound)"
    text = (f"{fast}, mpmath {dps} digits for {n_done} of {e.size} entries" if n_done else fast)
    if n_done and n_decided:
        certified, others = float(np.max(in_ulps[done])), float(np.max(in_ulps[~done], initial=0.0))
        text += (f"; |error| <= {certified:.2g} ulp of {dtype} there, <= {others:.2g} ulp elsewhere "
                 f"({n_decided} entries whose verdicts hold for any value within their bound)")
    else:
        text += (f"; |error| <= {worst:.2g} ulp of {dtype}" if np.isfinite(worst) else "; error not bounded")
        if n_decided:
            text += f" (not re-evaluated over mpmath: the verdicts of all {n_decided} entries hold within it)"
    if n_done and dtype == "float64":
        text += " (then rounded to float64)"
    if n_want > n_done and mode != "float":
        text += (f" ({n_want - n_done} entries are not certified to 1/64 ulp: no raised-precision evaluation here; "
                 "their bound stands)")
    return text


def depends_on_reference(ref, e, a, allowed, bound, dtype: str, ulp, eps: float, rtol: float, atol: float | None,
                         allowance_slope: float) -> np.ndarray:
    """The entries whose verdicts a reference value anywhere within ``bound`` of ``e`` could change
    (Note [Certify what the verdicts depend on]); ``allowed``: the allowance computed at ``e``."""
    finite = np.isfinite(e) & np.isfinite(a)
    with np.errstate(all="ignore"):
        diff = np.where(finite, np.abs(a - e), np.inf)
        b = np.where(np.isfinite(bound), bound, np.inf)
        right = diff + (1.0 + allowance_slope) * b <= allowed
        low = np.where(finite, np.maximum(np.abs(e) - b, 0.0), 0.0)
        floor = ACCURACY_ULPS * (eps * low + ulp(low, dtype)) + rtol * low + (atol or 0.0)
        accurate = diff + b <= floor
    depends = ~(right & accurate)
    oracle = getattr(ref, "oracle", None)
    maybe = np.flatnonzero(right & ~accurate)  # only the accuracy question is open there
    if maybe.size and oracle is not None:
        can = oracle.conditionable([int(j) for j in maybe])
        depends.flat[maybe[~can]] = False  # no conditioning: unanswered with any reference (judge_accuracy says so)
    return depends


def judge_accuracy(rec, ref, e, a, diff, ok, kink, finite, ref_bound, dtype: str, ulp, eps: float,
                   rtol: float, atol: float | None):
    """Count the entries that are right but not accurate (Note [Accurate, not only right]), and
    fill the record's accuracy fields."""
    from .worst import WORST_SHOWN, WorstEntry

    judged = finite & ~kink & ok & (e != 0)
    if ref.structural_zero is not None:
        judged &= ~np.asarray(ref.structural_zero, bool).reshape(e.shape)
    if ref.rounding is not None:  # Note [Zero by cancellation]
        terms = np.abs(np.asarray(ref.rounding, np.float64).reshape(e.shape))
        judged &= ~(np.abs(e) <= CANCELLED * np.where(np.isfinite(terms), terms, 0.0))
    unit = ulp(e, dtype)
    own = ACCURACY_ULPS * (eps * np.abs(e) + unit) + rtol * np.abs(e) + (atol or 0.0)
    known = np.isfinite(ref_bound)
    floor = own + np.where(known, ref_bound, np.inf)
    # suspect: not shown accurate by this reference, whatever the exact value within its bound
    # (Note [Certify what the verdicts depend on]); an entry without a bound is not judged
    suspect = judged & known & (diff + np.where(known, ref_bound, 0.0) > own)
    oracle = getattr(ref, "oracle", None)
    if not suspect.any():
        return
    if oracle is None:
        rec.accuracy_note = "the conditioning of these entries is not known here: the accuracy question is not answered"
        return
    entries = [int(j) for j in np.flatnonzero(suspect)][:MAX_CONDITIONED]
    sens = oracle.sensitivity(entries)
    allowed = np.full(e.shape, np.inf)
    allowed.flat[entries] = floor.flat[entries] + eps * np.where(np.isnan(sens), np.inf, sens)
    bad = suspect & (diff > allowed)
    if len(entries) < int(suspect.sum()):
        rec.accuracy_note = f"conditioning computed for {len(entries)} of {int(suspect.sum())} suspect entries"
    if np.isnan(sens).any():
        rec.accuracy_note = (f"the conditioning of {int(np.isnan(sens).sum())} suspect entries was too large a "
                             "computation (or could not be evaluated): the accuracy question is not answered there")
    rec.inaccurate = int(bad.sum())
    if not rec.inaccurate:
        return
    with np.errstate(all="ignore"):
        excess = np.where(bad, diff / allowed, 0.0)
        cond = np.zeros(e.shape)
        cond.flat[entries] = sens / np.abs(e.flat[entries])
    i = np.unravel_index(int(np.argmax(excess)), e.shape)
    rec.accuracy_index = tuple(int(k) for k in i)
    rec.accuracy_ulps = float(diff[i] / unit[i])
    rec.accuracy_allowed_ulps = float(allowed[i] / unit[i])
    rec.condition = float(cond[i])
    order = np.argsort(-excess, axis=None, kind="stable")[:WORST_SHOWN]
    rec.worst = [WorstEntry(tuple(int(k) for k in np.unravel_index(int(j), e.shape)), float(a.flat[j]),
                            float(e.flat[j]), float(diff.flat[j]), float(diff.flat[j] / unit.flat[j]),
                            float(allowed.flat[j]), float(allowed.flat[j] / unit.flat[j]), float(cond.flat[j]))
                 for j in order if bad.flat[j]]
