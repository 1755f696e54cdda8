"""Stage 3, lower: closed forms to numpy functions, with kinks made explicit.

``lower(exprs, args)`` turns a list of expressions (SymPy or symengine) into one Python function
over numpy values: each shared subexpression is computed once (Note [Sums kept as built]) and the
code is printed by ``codegen.generate``, one table entry per function (``runtime.FUNCTIONS``).  SymPy's ``lambdify`` does the
same job but took 13 s where this takes well under one on a small MLP's gradient (its printer and
cse are pure Python); SymPy stays the reference for *showing* closed forms.

# Note [Kinks at evaluation time]
Every relational in the expressions (the conditions of the op table's ``Piecewise`` forms:
``x > 0`` for relu, ``x <= min_val`` for hardtanh, ...) is printed as a call ``_rel(k, op, a, b)``
that records its *gap* ``a - b`` and can be forced.  ``Lowered.__call__`` evaluates everything twice,
in high precision and in the dtype torch ran in.  A condition is *on a kink* where its gap is zero
in high precision, or within rounding of zero in torch's dtype: no larger than ``KINK_ULPS`` units
of roundoff times the gap's running error bound (class ``_Magnitude``), or than ``KINK_NOISE``
times the difference between the two evaluations of the gap.  There, rounding in torch's dtype may
put torch on the other side.  For those, the expressions are evaluated again with the conditions
forced false and true (every combination when there are few, see ``Lowered._candidates``; with
many, Note [Ties on the exploded engine] in ties.py), giving the band ``[lower, upper]`` of
one-sided derivatives.  Entries whose band has width are the kink-affected ones.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import mpmath as mp
import numpy as np

from ..errors import UnsupportedOp
from .codegen import generate
from .runtime import FUNCTIONS, RUNTIME, RUNTIME_HIGH
from .special import resolve
from .symengine_forms import to_symengine
from .ties import any_tie, find_units, many_choices, positions, union
from .wide import RUNTIME_WIDE, WIDE_DPS, from_wide, overflowed, to_wide

__all__ = ["Lowered", "lower", "KINK_NOISE", "high_precision", "FUNCTIONS"]

KINK_NOISE = 16.0
KINK_ULPS = 8.0
MAX_KINK_COMBINATIONS_LOG2 = 6  # up to 2**6 forced evaluations for the kink band
MAX_FLIPS = 256  # beyond that many near-kink conditions, only the entrywise band is checked
# Non-integer constants reach torch's kernels as float32 in a float32 run, and the op table's
# float32 parameters (celu's alpha) even in a float64 run: one float32 rounding each, relative.
CONSTANT_REL = 2.0**-24


def _constant_units(kink_eps: float) -> tuple:
    """(_K, _KF, _M) of Note [Rounding bound] in codegen.py: units of roundoff of the checked dtype per
    unit of a constant float32 cannot hold, for every such constant (only where torch rounds its
    scalars to the checked dtype, i.e. below float64) and for the op table's float32 parameters;
    and 1 in half precision (Note [Chained operations in half precision])."""
    units = CONSTANT_REL / kink_eps
    return (units if kink_eps > 1e-10 else 0.0), units, (1.0 if kink_eps > 1e-4 else 0.0)


def high_precision():
    """The most precise float numpy has here (80-bit extended on x86-64, else float64)."""
    return np.longdouble if np.finfo(np.longdouble).eps < np.finfo(np.float64).eps else np.float64


# Note [Float64 kernels in the reference]
# scipy.special has no extended-precision kernels: in the high-precision evaluation its calls
# compute in float64.  A closed form calling lgamma, digamma, polygamma or erfinv is then no more
# accurate than float64, whatever its running bound says in units of the extended precision, so
# ``Lowered.value_eps`` says so (2**-52; None: numpy's extended precision), and the reference's
# accuracy is stated, and certified over mpmath where needed (in a float64 check: every entry), on
# that unit (Note [Certified reference] in exact.py; ``symgrad.compare.accuracy.certify``).
# erf and erfc (scipy too) are not counted yet: counting them certifies every entry of a float64
# GELU network over mpmath, 3x the time of the check (9.1 s against 2.9 s, 4-16-1 MLP, batch 8).


# Note [Sums kept as built]
# The closed forms are printed as built: every node is computed once, into its own variable, however
# many parents share it (the emitter looks nodes up by structural identity), and the nodes that
# several parents share are emitted first, children before parents (``_shared_first``), so that
# printing any one node recurses no deeper than to the shared nodes below it.  Nothing is
# rewritten.  symengine's ``cse``, used here before, also shared *parts* of sums: given
# x + y + z - (x + y + z), it named t = x + y + z and returned t - t, which is 0.  The closed form
# of a centred sum (``sum(x - mean(x))``, the weight gradient of a batch-centred input) is written
# as built, un-cancelled, and torch adds its terms up and gets their roundoff: the bound (Note
# [Rounding bound] in codegen.py) must see the terms as torch adds them.  Hiding every sum from cse
# inside an opaque function and unwrapping it after took two passes over the DAG, and cse itself
# (which also split products, x*y*z beside x*y*w into (x*y)*z) most of the rest: 3 of the 5 s CPU of
# the 204-parameter conv net's exploded check (benchmarks/bench_exploded.py).  tests/test_lowering.py
# compares the two on random closed forms: the same values, and bounds the true error stays below.


def _rebuild(e, args):
    import symengine as se

    kind = type(e).__name__
    if kind == "Piecewise":
        return se.Piecewise(*[(args[i], args[i + 1]) for i in range(0, len(args), 2)])
    builders = {"Add": se.Add, "Mul": se.Mul, "Pow": se.Pow, "And": se.And, "Or": se.Or, "Not": se.Not,
                "Xor": se.Xor, "StrictLessThan": se.Lt, "LessThan": se.Le, "Equality": se.Eq, "Unequality": se.Ne}
    if kind in builders:
        return builders[kind](*args)
    try:
        return e.func(*args)
    except Exception as err:  # noqa: BLE001 - named below
        raise UnsupportedOp(f"symgrad cannot rebuild the closed form's {kind} node ({err})") from err


def _transform(exprs: list, rule) -> list:
    """``exprs`` rebuilt bottom-up, ``rule(e, new_args)`` returning the replacement of a node (or None
    to rebuild it as it was); shared nodes are visited once."""
    memo: dict = {}
    changed: set = set()

    def visit(root):
        stack = [(root, False)]
        while stack:
            e, expanded = stack.pop()
            if e in memo:
                continue
            args = e.args
            if not args:
                memo[e] = e
            elif not expanded:
                stack.append((e, True))
                stack.extend((a, False) for a in args if a not in memo)
            else:
                new = [memo[a] for a in args]
                hit = rule(e, new)
                if hit is None and any(a in changed for a in args):
                    hit = _rebuild(e, new)
                if hit is None:
                    memo[e] = e
                else:
                    memo[e] = hit
                    changed.add(e)
        return memo[root]

    return [visit(e) for e in exprs]


def _resolve_special(exprs: list) -> list:
    """Derivatives of erfinv and round in closed form (special.py), where the closed forms hold any."""
    if not _holds_derivatives(exprs):
        return exprs
    return _transform(exprs, lambda e, new: resolve(e, new) if type(e).__name__ in ("Derivative", "Subs") else None)


def _holds_derivatives(exprs: list) -> bool:
    """Whether a Derivative or Subs node occurs: one walk over the DAG, each shared node once
    (symengine's ``atoms`` walks the tree, exponential in a deep network's closed form)."""
    seen: set = set()
    stack = list(exprs)
    while stack:
        e = stack.pop()
        if e in seen:
            continue
        seen.add(e)
        if type(e).__name__ in ("Derivative", "Subs"):
            return True
        stack.extend(e.args)
    return False


def _shared_first(exprs: list) -> list:
    """The nodes of ``exprs`` (not atoms) that more than one parent (or root) refers to, children
    before parents; one iterative walk over the DAG, each shared node expanded once."""
    count: dict = {}
    order: list = []
    stack = [(e, False) for e in reversed(exprs)]
    while stack:
        e, done = stack.pop()
        if done:
            order.append(e)
            continue
        seen = count.get(e)
        if seen is not None:
            count[e] = seen + 1
            continue
        args = e.args
        if not args:
            continue
        count[e] = 1
        stack.append((e, True))
        stack.extend((a, False) for a in reversed(args))
    return [e for e in order if count[e] > 1]


_COMPARE = {"<": np.less, "<=": np.less_equal, "==": np.equal, "!=": np.not_equal}


class _Context:
    """State the printed code's ``_rel`` calls share: recorded gaps and forced conditions."""

    def __init__(self, near=None, force=None):
        self.gaps: dict[int, np.ndarray] = {}
        self.truths: dict[int, np.ndarray] = {}
        self.near = near or {}
        self.force = force or {}  # condition k -> the truth value forced where it is near a kink

    def rel(self, k, op, a, b):
        truth = _COMPARE[op](a, b)
        self.gaps[k] = np.asarray(a - b)
        self.truths[k] = np.asarray(truth)
        if k in self.force:
            truth = np.where(self.near[k], self.force[k], truth)
        return truth


@dataclass
class Evaluation:
    values: list  # one numpy value per expression, in the high precision dtype asked for
    magnitudes: list | None = None  # rounding scale of each value (class _Magnitude), with kink_eps
    values_lowp: list | None = None  # the same in the checked dtype (when kink_eps is given)
    lower: list | None = None  # one-sided band where a condition sits on a kink, else None
    upper: list | None = None
    kink_conditions: list | None = None  # the relationals found on a kink, as text
    # Note [Joint kink check] (symgrad/compare/kinks.py): the forced evaluations, and how they group
    # into independent choices: (position in the evaluated arrays, or () for all of it; candidates).
    candidates: list | None = None
    kink_magnitudes: list | None = None  # the largest rounding bound over the candidates and the value
    kink_groups: list | None = None
    kink_joint: bool = True  # False: too many kinks to model; only the entrywise band is known


MAX_SOURCE_CHARS = 32 * 2**20  # generated source past this (3 GiB to compile) is refused: see check_plain


class Lowered:
    """Numpy evaluation of a fixed list of expressions (see Note [Kinks at evaluation time])."""

    def __init__(self, exprs: list, args: list, forward: int = 0):
        import symengine as se

        se_args = [to_symengine(a) for a in args]
        se_exprs = [to_symengine(e) for e in exprs]
        names = {a: f"_A[{i}]" for i, a in enumerate(se_args)}
        # the generated code's own variables are _v0, _e0, ...; inputs named x0, x1 are renamed all the same
        clash = {a: se.Symbol(f"_arg{i}") for i, a in enumerate(se_args) if re.fullmatch(r"x\d+", str(a))}
        if clash:
            se_exprs = [e.xreplace(clash) for e in se_exprs]
            names = {clash.get(a, a): n for a, n in names.items()}
        se_exprs = _resolve_special(se_exprs)
        calls: dict = {}
        self.source, self._rel_text = generate([], se_exprs, names, forward, calls, shared=_shared_first(se_exprs))
        self._tie_source, self._units = (se_exprs, calls["rel_operands"]), None  # Note [Ties on the exploded engine]
        # Note [Float64 kernels in the reference]
        self.value_eps = 2.0**-52 if calls.get("float64_kernels") and high_precision() is not np.float64 else None
        self.relationals = len(self._rel_text)
        if len(self.source) > MAX_SOURCE_CHARS:  # compiling takes ~100 bytes per character of source
            raise MemoryError(f"the generated evaluation code is {len(self.source) / 2**20:,.0f} MiB of source, "
                              f"about {100 * len(self.source) / 2**30:,.1f} GiB to compile")
        self._code = compile(self.source, "<symgrad.lower>", "exec")
        self._fn = self._compiled(RUNTIME)
        self._fn_high = self._compiled(RUNTIME_HIGH)  # Note [Constants in the reference] in runtime.py
        self._fn_wide = None  # Note [Wide evaluation], compiled when first needed
        self.n = len(se_exprs)

    def _compiled(self, runtime: dict):
        namespace = dict(runtime)
        exec(self._code, namespace)  # noqa: S102 - our own generated code
        return namespace["_lowered"]

    def _run(self, vals, ctx, magnitudes: bool = False, constants: tuple = (0.0, 0.0), wide: bool = False):
        if wide:  # Note [Wide evaluation]: mpmath numbers, then back to float64
            if self._fn_wide is None:
                self._fn_wide = self._compiled(RUNTIME_WIDE)
            with mp.workdps(WIDE_DPS):
                values, mags, gap_errors = self._fn_wide([to_wide(v) for v in vals], ctx.rel, magnitudes, *constants)
                values = [from_wide(v) for v in values]
                mags = None if mags is None else [from_wide(m) for m in mags]
                gap_errors = None if gap_errors is None else [from_wide(g) for g in gap_errors]
                ctx.gaps = {k: from_wide(g) for k, g in ctx.gaps.items()}
                ctx.truths = {k: np.asarray(t, bool) for k, t in ctx.truths.items()}
        else:
            with np.errstate(all="ignore"):
                high = bool(vals) and np.asarray(vals[0]).dtype == np.longdouble != np.float64
                fn = self._fn_high if high else self._fn
                values, mags, gap_errors = fn(vals, ctx.rel, magnitudes, *constants)
        return (values, mags, gap_errors) if magnitudes else values

    def _wide_or_none(self, vals, ctx, magnitudes: bool, constants: tuple):
        """The wide evaluation, or None where it fails: a value truly infinite (1/sqrt(0)) raises
        in mpmath, and numpy's inf is then the answer."""
        try:
            return self._run(vals, ctx, magnitudes=magnitudes, constants=constants, wide=True)
        except (ArithmeticError, ValueError, TypeError):
            return None

    def _candidates(self, vals, near: dict, truths: dict, constants: tuple,
                    wide: bool = False) -> tuple[list, list, list, bool]:
        """Forced evaluations at the near-kink conditions, grouped into independent choices.

        With few conditions, every combination: an entry can depend on several kinks pointing in
        different directions (relu(x) + relu(-x) at 0), and nested kinks do not add up.  Each
        position where any condition is near (a sample of a batched evaluation, or the whole of
        a scalar one) is then one choice among all combinations.  With many, each tie of a max/min
        is one choice among its members, and every other condition is flipped alone (``many_choices``).
        """
        keys = sorted(near)
        if len(keys) <= MAX_KINK_COMBINATIONS_LOG2:
            choices = [dict(zip(keys, bits)) for bits in itertools.product((False, True), repeat=len(keys))]
            groups = [(pos, list(range(len(choices)))) for pos in positions(union(near, keys))]
            joint = True
        else:  # Note [Ties on the exploded engine]
            if self._units is None and any_tie(self._tie_source[1], near):
                self._units = find_units(*self._tie_source)
            choices, groups, joint = many_choices(self._units or [], near, truths, MAX_FLIPS)
        candidates, bounds = [], []
        for force in choices:
            values, mags, _ = self._run(vals, _Context(near, force), magnitudes=True, constants=constants, wide=wide)
            candidates.append([np.asarray(v) for v in values])
            bounds.append([np.asarray(m, np.float64) for m in mags])
        return candidates, bounds, groups, joint

    def __call__(self, values: list, *, dtype=np.float64, kink_eps: float | None = None) -> Evaluation:
        """Evaluate at ``values`` (one number or array per arg) in ``dtype``.

        ``kink_eps``: the unit roundoff of the dtype torch ran in; given, the expressions are also
        evaluated in that dtype (``values_lowp``) and conditions on a kink get one-sided bands.
        """
        vals = [np.asarray(v, dtype=dtype) for v in values]
        ctx = _Context()
        if kink_eps is None:
            out = self._run(vals, ctx)
            if overflowed(vals, out):
                out = self._wide_or_none(vals, _Context(), False, (0.0, 0.0)) or out
            return Evaluation(out)
        constants = _constant_units(kink_eps)
        values_hi, magnitudes, gap_errors = self._run(vals, ctx, magnitudes=True, constants=constants)
        wide = False
        if overflowed(vals, values_hi):  # terms beyond the exponent range of numpy's floats (Note [Wide evaluation])
            wide_ctx = _Context()
            found = self._wide_or_none(vals, wide_ctx, True, constants)
            if found is not None:
                (values_hi, magnitudes, gap_errors), ctx, wide = found, wide_ctx, True
        out = Evaluation(values_hi, magnitudes)
        low = np.float32 if kink_eps > 1e-10 else np.float64
        low_ctx = _Context()
        out.values_lowp = self._run([np.asarray(v, dtype=low) for v in values], low_ctx)
        near = {}
        with np.errstate(invalid="ignore"):  # gaps to an infinite bound: inf - inf
            for k, gap in ctx.gaps.items():
                gap = np.asarray(gap, np.float64)
                lo_gap = low_ctx.gaps.get(k)
                noise = np.abs(np.asarray(lo_gap, np.float64) - gap) if lo_gap is not None else 0.0
                bound = np.abs(np.asarray(gap_errors[k], np.float64)) if k < len(gap_errors) else 0.0
                size = np.abs(gap)
                mask = (size == 0) | (size <= KINK_NOISE * noise) | (size <= KINK_ULPS * kink_eps * bound)
                if np.any(mask):
                    near[k] = mask
        if near:
            cands, bounds, out.kink_groups, out.kink_joint = self._candidates(vals, near, ctx.truths, constants, wide)
            out.candidates = [[np.asarray(v, np.float64) for v in c] for c in cands]
            # a forced branch has its own rounding (relu(z) = z on one side, exactly 0 on the other)
            out.kink_magnitudes = [np.fmax.reduce([np.abs(np.asarray(magnitudes[i], np.float64))]
                                                  + [np.abs(b[i]) for b in bounds]) for i in range(len(values_hi))]
            out.lower = [np.fmin.reduce([c[i] for c in out.candidates]) for i in range(len(values_hi))]
            out.upper = [np.fmax.reduce([c[i] for c in out.candidates]) for i in range(len(values_hi))]
            out.kink_conditions = [self._rel_text[k] for k in sorted(near) if k < len(self._rel_text)]
        return out


def lower(exprs: list, args: list, forward: int = 0) -> Lowered:
    """``forward``: how many of ``exprs``, first, are the forward computation (the rest derivatives)."""
    return Lowered(exprs, args, forward)
