"""The certified reference and the conditioning of chosen closed-form entries (issue 11 items 1 and 3).

# Note [Certified reference]
The closed form is evaluated in numpy's extended precision (80-bit on x86-64, unit roundoff
``eps_hp`` = 2**-64) with a first-order running rounding bound (Note [Rounding bound] in
``codegen.py``): its error is at most ``REFERENCE_ULPS * eps_hp * rounding``.  Where the terms of
an entry cancel (sinc' = cos(x)/x - sin(x)/x**2 near 0 loses 2 log10(1/x) digits) that bound is
no longer small against one ulp of the checked dtype, and the fast value shares the weakness of a
naive backward: it cannot tell a cancelling implementation from an accurate one.  Those entries
(where the bound exceeds ``CERTIFY_FRACTION`` of an ulp; every entry with ``reference="mpmath"``)
are evaluated again over mpmath at ``EXACT_DPS`` decimal digits, from the same generated code with
every rational constant made exact, and the running bound of that evaluation is computed with it:
while it exceeds the fraction, the precision doubles (up to ``MAX_DPS``).  The result is the
reference used for every comparison, and the record states its accuracy.  In the ``auto`` mode only
the entries whose verdicts a value within the fast bound could change are re-evaluated (Note
[Certify what the verdicts depend on] in ``symgrad/compare/accuracy.py``).

# Note [Conditioning of an entry]
For an entry g of the derivative, evaluated at inputs a_j (the inputs, parameters, cotangent and
tangents: every number the computation is given), the relative condition number is
``cond = sum_j |a_j dg/da_j| / |g|``: a computation that is exact for inputs perturbed by a few
units of roundoff (backward stable) errs by about ``cond * u``.  ``sensitivity`` returns the
numerator: each dg/da_j is differentiated once more by symengine and evaluated over mpmath (the
partial derivatives themselves cancel where g does), only for the entries asked for.
"""

from __future__ import annotations


import mpmath as mp
import numpy as np

from .codegen import generate
from .runtime import CONSTANT_DIGITS
from .wide import RUNTIME_WIDE

__all__ = ["ExactEvaluator", "EXACT_DPS", "MAX_DPS", "CERTIFY_FRACTION", "REFERENCE_ULPS", "MAX_EXACT_ENTRIES",
           "hp_eps", "hp_name"]

EXACT_DPS = 40
MAX_DPS = 320
CERTIFY_FRACTION = 1.0 / 64  # an entry's reference is certified when its error bound is below this share of an ulp
REFERENCE_ULPS = 2.0  # the running bound counts roundings of size one unit; a factor two for the first-order terms
MAX_EXACT_ENTRIES = 4096  # entries per record re-evaluated over mpmath; beyond, the fast reference stays
MAX_SLOTS = 2048  # (closed form, sample) pairs one mpmath evaluation takes (a parameter summed over a batch: one per sample)
MAX_PARTS = 512  # partial derivatives one conditioning takes; beyond, the accuracy question is not answered
MAX_SENSITIVITY_SLOTS = 256  # (closed form, sample) pairs one conditioning takes
MAX_FREE = 64  # a closed form in more symbols than this is not differentiated again (a network's entry)
assert CONSTANT_DIGITS > MAX_DPS + 10  # Note [Constants in the reference] in runtime.py


def hp_eps() -> float:
    from .numpy import high_precision

    return float(np.finfo(high_precision()).eps)


def hp_name() -> str:
    from .numpy import high_precision

    return "80-bit extended" if high_precision() is not np.float64 else "float64"


class ExactEvaluator:
    """Raised-precision values and sensitivities of chosen entries of a list of closed forms.

    ``exprs``: the closed forms (symengine), one per slot; ``args``: their symbols; ``values``: one
    number per arg, or one array per arg over the samples of a batched evaluation.  A slot is
    ``(expression index, sample index or None)``.
    """

    def __init__(self, exprs: list, args: list, values: list):
        self.exprs, self.args = list(exprs), list(args)
        self.values = [np.asarray(v, np.float64) for v in values]

    def _inputs(self, samples: list):
        out = []
        for v in self.values:
            if v.ndim and samples[0] is not None:
                v = v[np.asarray(samples, dtype=int)]
            out.append(np.frompyfunc(mp.mpf, 1, 1)(v) if v.ndim else mp.mpf(float(v)))
        return out

    def _compile(self, exprs: list):
        from .numpy import _resolve_special, _shared_first
        from .symengine_forms import to_symengine

        se_exprs = _resolve_special([to_symengine(e) for e in exprs])
        names = {to_symengine(a): f"_A[{i}]" for i, a in enumerate(self.args)}
        source, _ = generate([], se_exprs, names, 0, shared=_shared_first(se_exprs))
        namespace = dict(RUNTIME_WIDE)  # its constants exact at the working precision (Note [Constants in the reference])
        exec(compile(source, "<symgrad.exact>", "exec"), namespace)  # noqa: S102 - our own code
        return namespace["_lowered"]

    def _run(self, fn, slots: list, dps: int, magnitudes: bool):
        from .numpy import _Context

        samples = sorted({s for _, s in slots}, key=lambda s: -1 if s is None else s)
        column = {s: k for k, s in enumerate(samples)}
        with mp.workdps(dps):
            values, mags, _ = fn(self._inputs(samples), _Context().rel, magnitudes, 0.0, 0.0)
            unit = mp.mpf(2) ** (1 - mp.mp.prec)  # machine epsilon of this precision
        return values, mags, column, unit

    def exact(self, slots: list, dtype_ulp) -> tuple[list, list, int] | None:
        """mpmath values of ``slots`` and their error bounds, to below ``CERTIFY_FRACTION`` of
        ``dtype_ulp(value)`` where ``MAX_DPS`` allows; None where the evaluation fails (a function
        mpmath lacks here, a value truly infinite).  Returns (values, bounds, digits used)."""
        ids = sorted({i for i, _ in slots})
        pos = {i: k for k, i in enumerate(ids)}
        if len(slots) > MAX_SLOTS:
            return None
        try:
            fn = self._compile([self.exprs[i] for i in ids])
        except Exception:  # noqa: BLE001 - a form the mpmath runtime cannot print: no certified value
            return None
        dps = EXACT_DPS
        while True:
            try:
                values, mags, column, unit = self._run(fn, slots, dps, True)
            except (ArithmeticError, ValueError, TypeError, AttributeError):
                return None
            got, bounds = [], []
            for i, s in slots:
                v, m = _pick(values[pos[i]], column[s]), _pick(mags[pos[i]], column[s])
                got.append(v)
                bounds.append(REFERENCE_ULPS * unit * abs(mp.mpf(m)) if _finite(m) else mp.inf)
            ok = all(b <= CERTIFY_FRACTION * dtype_ulp(_to_float(v)) for v, b in zip(got, bounds))
            if ok or dps >= MAX_DPS:
                return got, bounds, dps
            dps *= 2

    def conditionable(self, i: int) -> bool:
        """Whether the conditioning of closed form ``i`` is within the work limits (``MAX_FREE``
        symbols: a network's entries, in hundreds of symbols, are not differentiated again)."""
        from .symengine_forms import to_symengine

        if not hasattr(self, "_conditionable"):
            self._conditionable = {}
        if i not in self._conditionable:
            self._conditionable[i] = len(to_symengine(self.exprs[i]).free_symbols) <= MAX_FREE
        return self._conditionable[i]

    def _partials(self, i: int, se_args: list) -> list | None:
        """``a dg/da`` for each arg and saved value of closed form ``i``; None beyond the work limits."""
        from .special import resolve_all
        from .symengine_forms import to_symengine

        if not self.conditionable(i):
            return None
        g = resolve_all(to_symengine(self.exprs[i]))  # an OPAQUE function's derivative in closed form first
        free = g.free_symbols
        saved = _saved_terms(g)
        if saved is None:
            return None
        return [a * g.diff(a) for a in se_args if a in free] + saved

    def sensitivity(self, slots: list) -> np.ndarray:
        """``sum_j |a_j dg/da_j|`` for each slot, plus the same for the saved values of Note [Saved
        values] (Note [Conditioning of an entry]); NaN where it cannot be evaluated (a closed form
        beyond the work limits: only its own slots)."""
        from .symengine_forms import to_symengine

        ids = sorted({i for i, _ in slots})
        if len(slots) > MAX_SENSITIVITY_SLOTS:
            return np.full(len(slots), np.nan)
        se_args = [to_symengine(a) for a in self.args]
        parts, owner, skipped = [], [], set()
        for i in ids:
            terms = self._partials(i, se_args)
            if terms is None or len(parts) + len(terms) > MAX_PARTS or (len(parts) + len(terms)) * len(slots) > 50 * MAX_SLOTS:
                skipped.add(i)
                continue
            parts += terms
            owner += [i] * len(terms)
        out = np.zeros(len(slots))
        if parts:
            try:
                fn = self._compile(parts)
                values, _, column, _ = self._run(fn, slots, EXACT_DPS, False)
            except Exception:  # noqa: BLE001 - no conditioning known: the accuracy question stays unanswered
                return np.full(len(slots), np.nan)
        for n, (i, s) in enumerate(slots):
            if i in skipped:
                out[n] = np.nan
                continue
            total = mp.mpf(0)
            for k, owner_i in enumerate(owner):
                if owner_i != i:
                    continue
                d = _pick(values[k], column[s])
                total += abs(d) if _finite(d) else mp.inf
            out[n] = _to_float(total)
        return out


# Note [Saved values]
# torch's backward formulas reuse rounded values of the forward: tanh' = 1 - y**2 and sigmoid' =
# y (1 - y) from the saved output y, exp' = y, gelu' from 0.5 (1 + erf(x/sqrt 2)).  Where 1 - y
# cancels (tanh, sigmoid and gelu saturating), one rounding of y costs thousands of ulps of the
# derivative, and no backward built on the saved output can do better: that is the problem torch's
# backward solves, and its conditioning includes those values.  So every tanh(u), erf(u) and exp(u)
# in the closed form, and every logistic 1/(1 + exp(u)) (exp(u) = (1 - s)/s), counts as one more
# input rounded once: |t dg/dt| joins the sum.  sin, cos, log, sqrt, ... do not: a backward computes
# them from its inputs (the naive sinc' = (x cos x - sin x)/x**2 stays inaccurate, as it should).
# log_ndtr' is written from log_ndtr's result, which counts so too.
_SAVED = ("tanh", "erf")
# log_ndtr' from its result, a kernel of 3 ulps: counted four times (Note [log_ndtr as torch's
# kernel] in graph/functions_stats.py)
_SAVED_OPAQUE = {"log_ndtr": 4}


def _saved_terms(g) -> list | None:
    """``t dg/dt`` for each saved value t in ``g`` (Note [Saved values]), as expressions in the args."""
    import symengine as se

    found, seen, stack = [], set(), [g]
    while stack:
        e = stack.pop()
        if e in seen:
            continue
        seen.add(e)
        kind = type(e).__name__
        saved_opaque = kind == "FunctionSymbol" and e.get_name() in _SAVED_OPAQUE
        if kind in _SAVED or saved_opaque or (kind == "Pow" and e.args[0] == se.E):
            found.append(e)
        stack.extend(e.args)
    terms = []
    if len(found) > MAX_FREE:
        return None  # too many: the accuracy question is not answered
    for k, t in enumerate(found):
        tau = se.Symbol(f"_saved{k}")
        weight = _SAVED_OPAQUE.get(t.get_name(), 1) if type(t).__name__ == "FunctionSymbol" else 1
        terms.append(weight * t * g.subs({t: tau}).diff(tau).subs({tau: t}))
        if type(t).__name__ == "Pow":  # the logistic s = 1/(1 + exp(u)) as the saved value
            s = 1 / (1 + t)
            terms.append(s * g.subs({t: (1 - tau) / tau}).diff(tau).subs({tau: s}))
    return terms


def _pick(value, column: int):
    """One sample's entry of an evaluated value (an array over the samples, or one number for all)."""
    if isinstance(value, np.ndarray):
        return value[column] if value.ndim else value.item()  # a 0-d array: its one number
    return value


def _finite(v) -> bool:
    try:
        return bool(mp.isfinite(v))
    except (TypeError, ValueError):
        return bool(np.isfinite(float(v)))


def _to_float(v) -> float:
    try:
        if isinstance(v, mp.mpc):
            return float(v.real) if v.imag == 0 else float("nan")
        return float(v)
    except (TypeError, ValueError, OverflowError):
        return float("nan")
