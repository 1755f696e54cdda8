"""Stage 3, lower: closed forms to numpy functions, with kinks made explicit.

``lower(exprs, args)`` turns a list of expressions (SymPy or symengine) into one Python function
over numpy values: common subexpressions are found by symengine's ``cse`` and the code is printed
by ``_Printer`` below, one table entry per function (``FUNCTIONS``).  SymPy's ``lambdify`` does the
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
forced false and true (every combination when there are few, see ``Lowered._bands``), giving the
band ``[lower, upper]`` of one-sided derivatives.  Entries whose band has width are the
kink-affected ones.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

import numpy as np
import sympy as sp

from ..errors import UnsupportedOp

__all__ = ["Lowered", "lower", "to_symengine", "KINK_NOISE", "high_precision", "FUNCTIONS"]

KINK_NOISE = 16.0
KINK_ULPS = 8.0
MAX_KINK_COMBINATIONS_LOG2 = 6  # up to 2**6 forced evaluations for the kink band
MAX_SINGLE_FLIPS = 32


def high_precision():
    """The most precise float numpy has here (80-bit extended on x86-64, else float64)."""
    return np.longdouble if np.finfo(np.longdouble).eps < np.finfo(np.float64).eps else np.float64


def _fold(binary):
    """A variadic function from a binary one: f(a, b, c) = binary(binary(a, b), c)."""

    def fold(*args):
        out = args[0]
        for a in args[1:]:
            out = binary(out, a)
        return out

    return fold


def _extreme(compare_name: str):
    """n-ary max ("Ge") or min ("Le"): sum_i a_i I_i / sum_i I_i, I_i = [a_i beats all others].

    A tie splits the derivative evenly among the tied arguments, as torch's max/min reductions
    and torch.maximum/minimum do.  Built in symengine: SymPy folds a Piecewise inside a condition
    into ``ITE`` terms that symengine cannot take.
    """

    def build(*args):
        import symengine as se

        if len(args) == 1:
            return args[0]
        compare = getattr(se, compare_name)
        wins = []
        for i, a in enumerate(args):
            conds = [compare(a, b) for j, b in enumerate(args) if j != i]
            wins.append(se.Piecewise((1, conds[0] if len(conds) == 1 else se.And(*conds)), (0, True)))
        return se.Add(*(a * w for a, w in zip(args, wins))) / se.Add(*wins)

    return build


def _abs(a):
    import symengine as se

    return se.Piecewise((a, se.Gt(a, 0)), (0, se.Eq(a, 0)), (-a, True))


def _sign(a):
    import symengine as se

    return se.Piecewise((1, se.Gt(a, 0)), (0, se.Eq(a, 0)), (-1, True))


def _heaviside(a, h=None):
    import symengine as se

    return se.Piecewise((1, se.Gt(a, 0)), (se.Rational(1, 2) if h is None else h, se.Eq(a, 0)), (0, True))


# SymPy's kink functions, rebuilt in symengine as Piecewise forms with torch's conventions (see Note
# [Kink conventions] in symgrad/ops.py): symengine leaves d Max/dx unevaluated, and SymPy's
# Heaviside(0) is 1/2.  The relationals then make kinks visible to the evaluation (Note [Kinks at
# evaluation time]).
_KINK_REWRITES = {
    sp.Max: _extreme("Ge"),
    sp.Min: _extreme("Le"),
    sp.Abs: _abs,
    sp.sign: _sign,
    sp.Heaviside: _heaviside,
}


def to_symengine(expr):
    """A SymPy (or symengine) expression as a symengine one; UnsupportedOp if it has no counterpart."""
    import symengine as se

    if isinstance(expr, se.Basic):
        return expr
    if isinstance(expr, sp.Basic) and expr.has(sp.Derivative):
        raise UnsupportedOp(f"the expression holds an unevaluated derivative ({sp.sstr(expr)[:80]}): "
                            "a function symgrad cannot differentiate")
    try:
        if not (isinstance(expr, sp.Basic) and expr.has(*_KINK_REWRITES)):
            return se.sympify(expr)
        # Swap each kink function for a placeholder (innermost first), then build its form in
        # symengine from its converted arguments and put it back.
        found: dict = {}

        def swap(e):
            slot = sp.Symbol(f"_kink_slot_{len(found)}")
            found[slot] = e
            return slot

        plain = expr.replace(lambda e: type(e) in _KINK_REWRITES, swap)
        built: dict = {}
        for slot, e in found.items():
            args = [se.sympify(a).xreplace(built) for a in e.args]
            built[se.Symbol(slot.name)] = _KINK_REWRITES[type(e)](*args)
        return se.sympify(plain).xreplace(built)
    except Exception as err:
        raise UnsupportedOp(
            f"symgrad's engine (symengine) has no counterpart for part of {sp.sstr(expr)[:80]!r} ({err}); "
            "use functions from symgrad's op table or common SymPy functions"
        ) from err


def _erf(x):
    try:
        from scipy.special import erf  # noqa: PLC0415 - optional, vectorised

        return erf(np.asarray(x, dtype=np.float64))
    except ImportError:
        return np.vectorize(math.erf, otypes=[np.float64])(x)


def _pw(*pairs):
    """Piecewise: the first branch whose condition holds (numpy.select with broadcasting)."""
    out = pairs[-1][1]
    for cond, value in reversed(pairs[:-1]):
        out = np.where(cond, value, out)
    out = np.asarray(out)
    return out.astype(np.float64) if out.dtype.kind in "biu" else out  # 0/1 indicators divide later


# symengine function name -> numpy implementation (the printed code calls these by name)
FUNCTIONS = {
    "sin": np.sin, "cos": np.cos, "tan": np.tan, "asin": np.arcsin, "acos": np.arccos, "atan": np.arctan,
    "sinh": np.sinh, "cosh": np.cosh, "tanh": np.tanh, "asinh": np.arcsinh, "acosh": np.arccosh,
    "atanh": np.arctanh, "log": np.log, "exp": np.exp, "sqrt": np.sqrt, "Abs": np.abs, "sign": np.sign,
    "erf": _erf, "Max": _fold(np.maximum), "Min": _fold(np.minimum), "floor": np.floor, "ceiling": np.ceil,
}

_RELATIONS = {"StrictLessThan": "<", "LessThan": "<=", "Equality": "==", "Unequality": "!="}
_BOOLEANS = ("BooleanTrue", "BooleanFalse")
_COMPARE = {"<": np.less, "<=": np.less_equal, "==": np.equal, "!=": np.not_equal}


class _Printer:
    """symengine expression -> Python source over numpy (see FUNCTIONS)."""

    def __init__(self, names: dict, mags: dict | None = None, hooks: bool = True):
        self.names = names  # symbol -> variable name
        self.mags = mags if mags is not None else {}  # temporary -> name of its magnitude
        self.hooks = hooks  # False: relationals print as plain comparisons (no _rel bookkeeping)
        self.n_rel = 0
        self.rel_operands: list = []  # (lhs, rhs) of relational k, for the bound on its gap

    def __call__(self, e) -> str:
        kind = type(e).__name__
        if e in self.names:
            return self.names[e]
        if kind == "Symbol":
            raise UnsupportedOp(f"symbol {e} is not an input of the closed form")
        if kind in ("Infty", "Infinity", "NegativeInfinity", "ComplexInfinity"):
            if kind == "ComplexInfinity":
                raise UnsupportedOp("the closed form holds complex infinity (zoo): a division by zero in the forward")
            return "(-_INF)" if str(e).startswith("-") else "_INF"
        if e.is_Number:
            if e.is_Integer:
                return f"({int(e)})"
            if e.is_Rational:  # Rational, Half
                p, q = e.get_num_den()
                return f"({int(p)}/{int(q)})"
            if e.is_real is False:
                raise UnsupportedOp(f"the closed form has the complex number {e}; symgrad checks real derivatives")
            return f"({float(e)!r})"
        if kind == "Exp1":
            return "_E"
        if kind == "Pi":
            return "_PI"
        if kind == "BooleanTrue":
            return "True"
        if kind == "BooleanFalse":
            return "False"
        args = e.args
        if kind == "Add":
            return "(" + " + ".join(self(a) for a in args) + ")"
        if kind == "Mul":
            return "(" + "*".join(self(a) for a in args) + ")"
        if kind == "Pow":
            base, ex = args
            if type(base).__name__ == "Exp1":
                return f"exp({self(ex)})"
            if type(ex).__name__ == "Half":
                return f"sqrt({self(base)})"
            if ex.is_Integer and int(ex) < 0:  # numpy refuses integer arrays to negative integer powers
                return f"({self(base)}**{float(int(ex))!r})"
            return f"({self(base)}**{self(ex)})"
        if kind == "Piecewise":
            pairs = [f"({self(args[i + 1])}, {self(args[i])})" for i in range(0, len(args), 2)]
            return f"_pw({', '.join(pairs)})"
        if kind in ("Equality", "Unequality") and any(type(a).__name__ in _BOOLEANS for a in args):
            # cse hoists a condition into a temporary and tests Eq(temporary, True): plain logic.
            atom = next(a for a in args if type(a).__name__ in _BOOLEANS)
            other = args[1] if atom is args[0] else args[0]
            negate = (type(atom).__name__ == "BooleanFalse") != (kind == "Unequality")
            return f"np.logical_not({self(other)})" if negate else self(other)
        if kind in _RELATIONS:
            if not self.hooks:
                return f"({self(args[0])} {_RELATIONS[kind]} {self(args[1])})"
            k = self.n_rel
            self.n_rel += 1
            self.rel_operands.append((args[0], args[1]))
            return f"_rel({k}, {_RELATIONS[kind]!r}, {self(args[0])}, {self(args[1])})"
        if kind in ("And", "Or"):
            fn = "np.logical_and" if kind == "And" else "np.logical_or"
            out = self(args[0])
            for a in args[1:]:
                out = f"{fn}({out}, {self(a)})"
            return out
        if kind == "Not":
            return f"np.logical_not({self(args[0])})"
        name = e.get_name() if hasattr(e, "get_name") else kind
        if name in FUNCTIONS:
            return f"{name}({', '.join(self(a) for a in args)})"
        raise UnsupportedOp(
            f"the closed form uses {name}({', '.join(map(str, args))[:60]}), which symgrad cannot evaluate with numpy; "
            "add it to symgrad.lower.numpy.FUNCTIONS"
        )


class _Magnitude:
    """A running rounding-error bound of an expression, as code, in units of the unit roundoff.

    Wilkinson's forward analysis: inputs and constants are exact (error 0); every operation adds its own
    rounding to the errors of its arguments carried through the operation's partial
    derivatives: err(a_1 + ... + a_n) = sum err(a_i) + log2(n) sum |a_i|, err(a b) = |b| err(a) + |a| err(b) + |a b|,
    err(f(a)) = |f'(a)| err(a) + |f(a)|.  Cancellation is what this catches: a sum of large terms
    that is nearly zero keeps the large terms' error.
    """

    def __init__(self, plain: _Printer):
        self.plain = plain  # prints values (no _rel hooks)

    def __call__(self, e) -> str:
        import symengine as se

        p = self.plain
        if e in p.mags:
            return p.mags[e]
        if e in p.names:  # an input: exact
            return "0"
        kind = type(e).__name__
        if e.is_Number or kind in ("Exp1", "Pi"):  # constants: taken as exact, as in torch
            return "0"
        args = e.args
        if kind == "Add":
            # Summation: each partial sum rounds, bounded by the terms' magnitudes (log2(n) for
            # pairwise summation); one rounding of the result would vanish exactly where the sum
            # cancels.
            errs = [err for err in (self(a) for a in args) if err != "0"]
            sizes = " + ".join(f"np.abs({p(a)})" for a in args)
            return "(" + " + ".join(errs + [f"{max(1.0, math.log2(len(args)))!r}*({sizes})"]) + ")"
        if kind == "Mul":
            terms = []
            for i, a in enumerate(args):
                err = self(a)
                if err != "0":
                    terms.append(f"np.abs({p(se.Mul(*(args[:i] + args[i + 1:])))})*{err}")
            return "(" + " + ".join(terms + [f"np.abs({p(e)})"]) + ")"
        if kind == "Piecewise":
            # The largest error of any branch, whichever is taken: rounding in a condition can
            # put torch on another branch (relu(z) at z ~ 0 is uncertain by z's own error).
            errs = [self(args[i]) for i in range(0, len(args), 2)]
            out = errs[0]
            for err in errs[1:]:
                out = out if err == "0" else err if out == "0" else f"np.fmax({out}, {err})"
            return out
        if kind in _RELATIONS or kind in _BOOLEANS or kind in ("And", "Or", "Not"):
            return "0"
        t = se.Symbol("_error_slot")
        terms = []
        for i, a in enumerate(args):
            err = self(a)
            if err == "0":
                continue
            slot_args = list(args)
            slot_args[i] = t
            partial = e.func(*slot_args).diff(t).xreplace({t: a})
            terms.append(f"np.abs({p(partial)})*{err}")
        return "(" + " + ".join(terms + [f"np.abs({p(e)})"]) + ")"


class _Context:
    """State the printed code's ``_rel`` calls share: recorded gaps and forced conditions."""

    def __init__(self, near=None, force=None):
        self.gaps: dict[int, np.ndarray] = {}
        self.near = near or {}
        self.force = force or {}  # condition k -> the truth value forced where it is near a kink

    def rel(self, k, op, a, b):
        truth = _COMPARE[op](a, b)
        self.gaps[k] = np.asarray(a - b)
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


class Lowered:
    """Numpy evaluation of a fixed list of expressions (see Note [Kinks at evaluation time])."""

    def __init__(self, exprs: list, args: list):
        import symengine as se

        se_args = [to_symengine(a) for a in args]
        se_exprs = [to_symengine(e) for e in exprs]
        names = {a: f"_A[{i}]" for i, a in enumerate(se_args)}
        # cse names its temporaries x0, x1, ...: keep them apart from inputs named so.
        clash = {a: se.Symbol(f"_arg{i}") for i, a in enumerate(se_args) if re.fullmatch(r"x\d+", str(a))}
        if clash:
            se_exprs = [e.xreplace(clash) for e in se_exprs]
            names = {clash.get(a, a): n for a, n in names.items()}
        reps, reduced = se.cse(se_exprs) if se_exprs else ([], [])
        mags: dict = {}
        printer = _Printer(names, mags)
        magnitude = _Magnitude(_Printer(names, mags, hooks=False))
        lines = ["def _lowered(_A, _rel, _with_magnitudes):"]
        mag_lines = []
        for i, (sym, value) in enumerate(reps):
            code = printer(value)
            mag_lines.append(f"    _m{i} = {magnitude(value)}")
            names[sym] = f"_t{i}"
            mags[sym] = f"_m{i}"
            lines.append(f"    _t{i} = {code}")
        lines.append("    _values = [" + ", ".join(printer(r) for r in reduced) + "]")
        lines.append("    if not _with_magnitudes:")
        lines.append("        return _values, None, None")
        lines += mag_lines
        plain = magnitude.plain
        # The rounding bound of each relational's gap a - b (see Note [Kinks at evaluation time]).
        gap_errors = [f"({magnitude(a)} + {magnitude(b)} + np.abs({plain(a)}) + np.abs({plain(b)}))"
                      for a, b in printer.rel_operands]
        lines.append("    return _values, [" + ", ".join(magnitude(r) for r in reduced) + "], ["
                     + ", ".join(gap_errors) + "]")
        self.source = "\n".join(lines)
        self.relationals = printer.n_rel
        self._rel_text = self._relational_texts(reps, reduced)
        namespace = {**FUNCTIONS, "np": np, "_pw": _pw, "_E": np.e, "_PI": np.pi, "_INF": np.inf}
        exec(compile(self.source, "<symgrad.lower>", "exec"), namespace)  # noqa: S102 - our own printed code
        self._fn = namespace["_lowered"]
        self.n = len(se_exprs)

    @staticmethod
    def _relational_texts(reps, reduced) -> list[str]:
        texts = []

        def walk(e):
            if type(e).__name__ in _RELATIONS and not any(type(a).__name__ in _BOOLEANS for a in e.args):
                texts.append(str(e))
            for a in e.args:
                walk(a)

        for _, v in reps:
            walk(v)
        for r in reduced:
            walk(r)
        return texts

    def _run(self, vals, ctx, magnitudes: bool = False):
        with np.errstate(all="ignore"):
            values, mags, gap_errors = self._fn(vals, ctx.rel, magnitudes)
        return (values, mags, gap_errors) if magnitudes else values

    def _bands(self, vals, near: dict) -> tuple[list, list]:
        """Elementwise min and max over evaluations with the near-kink conditions forced.

        Every combination when there are few (an entry can depend on several kinks pointing in
        different directions: relu(x) + relu(-x) at 0); otherwise all-false, all-true and each
        condition flipped alone against the others.
        """
        keys = sorted(near)
        if len(keys) <= MAX_KINK_COMBINATIONS_LOG2:
            choices = [dict(zip(keys, bits)) for bits in itertools.product((False, True), repeat=len(keys))]
        else:
            choices = [dict.fromkeys(keys, False), dict.fromkeys(keys, True)]
            for k in keys[:MAX_SINGLE_FLIPS]:
                choices += [{**dict.fromkeys(keys, True), k: False}, {**dict.fromkeys(keys, False), k: True}]
        lower = upper = None
        for force in choices:
            vals_k = [np.asarray(v, dtype=np.float64) for v in self._run(vals, _Context(near, force))]
            if lower is None:
                lower, upper = vals_k, [v.copy() for v in vals_k]
            else:
                lower = [np.fmin(a, b) for a, b in zip(lower, vals_k)]
                upper = [np.fmax(a, b) for a, b in zip(upper, vals_k)]
        return lower, upper

    def __call__(self, values: list, *, dtype=np.float64, kink_eps: float | None = None) -> Evaluation:
        """Evaluate at ``values`` (one number or array per arg) in ``dtype``.

        ``kink_eps``: the unit roundoff of the dtype torch ran in; given, the expressions are also
        evaluated in that dtype (``values_lowp``) and conditions on a kink get one-sided bands.
        """
        vals = [np.asarray(v, dtype=dtype) for v in values]
        ctx = _Context()
        if kink_eps is None:
            return Evaluation(self._run(vals, ctx))
        values_hi, magnitudes, gap_errors = self._run(vals, ctx, magnitudes=True)
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
            out.lower, out.upper = self._bands(vals, near)
            out.kink_conditions = [self._rel_text[k] for k in sorted(near) if k < len(self._rel_text)]
        return out


def lower(exprs: list, args: list) -> Lowered:
    return Lowered(exprs, args)
