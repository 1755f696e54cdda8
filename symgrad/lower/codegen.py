"""Code generation for ``symgrad.lower.numpy``: symengine expressions to one Python function.

The expressions are emitted in single-assignment form: every node of
the expression DAG is computed once, into its own variable ``_vK``, from its arguments' variables.
A second block of lines computes each node's running rounding-error bound ``_eK`` the same way
(class ``_Emitter``, ``error``), so both blocks grow linearly with the DAG, however much it shares.
The functions the code calls are ``RUNTIME``: one numpy implementation per function name, and its
numbers are printed for each runtime's precision (``symgrad.lower.runtime``).

# Note [Rounding bound]
Wilkinson's forward analysis, in units of the unit roundoff: inputs and integers are exact (error
0); every operation adds its own rounding to its arguments' errors carried through the absolute
values of its partial derivatives:

    err(a + b) = err(a) + err(b) + |a + b|
    err(a_1 + ... + a_n) = sum err(a_i) + log2(n) sum |a_i|     (n > 2: the partial sums of a
                                                                 longer sum may exceed its result)
    err(a b) = |b| err(a) + |a| err(b) + |a b|
    err(f(a)) = |f'(a)| err(a) + |f(a)|

Cancellation is what this catches: a sum of large terms that is nearly zero keeps the large terms'
error.  A Piecewise has the error of the branch taken (that rounding may put torch on another
branch near a boundary is the kink machinery's business).  Constants that float32 cannot hold
exactly (0.3, 1/100) are rounded to float32 by torch in a float32 run: each carries ``_K |c|``
units, with ``_K`` given at evaluation time (0 in a float64 run, where torch's scalars are doubles).
A few kernels round a constant to float32 even in float64 (torch's float64 celu' with alpha = 0.3
is off by 3.6e-7, relative: its 1/alpha is rounded to float32); the op table names them
(``Op.float32_reciprocals``) and those constants carry ``_KF |c|`` units in every dtype.
Exponents that are numbers (x**2, sqrt), e and pi are exact, and so is scaling by a power of two
(-1 included: a - b rounds once).

# Note [Chained operations in half precision]
A product of k rounded factors counts one rounding, and a sum of n terms log2(n) on their sizes:
torch's a*b*c rounds twice, but in float32 and float64 the allowance's factor of 4 covers it.  In
float16 and bfloat16 each counted rounding is allowed little more than one (Note [Half-precision
allowance] in symgrad/compare/half.py), so there (``_M = 1``) a product counts k - 1 roundings
and a sum of three or four terms n - 1 (elementwise ``a + b + c`` is two rounded additions).  A
longer sum is a reduction, which torch accumulates in float32 (one rounding, far below the
log2(n) still counted).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import UnsupportedOp
from ..ops import is_float32_constant
from .logistic import LogisticTerms
from .runtime import FUNCTIONS, _constant, _literal
from .ties import is_own, untag
from .special import FLOAT64_ONLY, NUMPY as SPECIAL, OPAQUE, SIDES, derivative, own_rounding

__all__ = ["generate", "RELATIONS", "BOOLEANS"]


RELATIONS = {"StrictLessThan": "<", "LessThan": "<=", "Equality": "==", "Unequality": "!="}
BOOLEANS = ("BooleanTrue", "BooleanFalse")
_LONG = 32  # longer sums and products are one call: a chain of thousands of + overflows Python's compiler


def _joined(items: list[str], op: str) -> str:
    if len(items) == 1:
        return items[0]
    if len(items) <= _LONG:
        return "(" + f" {op} ".join(items) + ")"
    return ("_sum((" if op == "+" else "_prod((") + ", ".join(items) + ",))"


_TEXT_NODES = 200  # an expression printed in more nodes than this is named by its kind only


def _text(e) -> str:
    """``str(e)`` where it prints in at most ``_TEXT_NODES`` nodes; a larger expression (a network's
    pre-activation, a DAG whose tree is exponentially larger) by its kind, and a relation by its
    operands so: printing walks the tree, and the closed forms are printed as built (Note [Sums
    kept as built] in numpy.py), not through short cse temporaries."""
    count, stack = 0, [e]
    while stack:
        count += 1
        if count > _TEXT_NODES:
            kind = type(e).__name__
            if kind in RELATIONS:
                return f"{_text(e.args[0])} {RELATIONS[kind]} {_text(e.args[1])}"
            return f"({kind} of {len(e.args)} terms)"
        stack.extend(stack.pop().args)
    return str(untag(e))


def _power_of_two(e) -> bool:
    """A number whose product with anything is exact in binary floating point (2, 1/2, -1, 0.25)."""
    if not e.is_Number or getattr(e, "is_real", True) is False:
        return False
    try:
        c = abs(float(e))
    except (TypeError, ValueError):
        return False
    return c > 0 and math.isfinite(c) and math.frexp(c)[0] == 0.5



class _Emitter(LogisticTerms):
    """Emits the value and the error-bound lines of each DAG node once (see the module docstring)."""

    def __init__(self, names: dict):
        self.names = dict(names)  # input symbol or cse temporary -> variable (or literal) holding it
        self.inputs = set(names)
        self.value_lines: list[str] = []
        self.nodes: list = []  # (node, variable), in the order their values are computed
        self.errors: dict = {}  # node -> variable of its error bound ("0": exact)
        self.error_lines: list[str] = []
        self.rel_operands: list = []  # (lhs, rhs) of relational k
        self.rel_texts: list[str] = []
        self.aliases: dict = {}  # cse temporary -> the node it names
        self.rewritten: dict = {}  # node -> the node it is evaluated as (Note [Logistic terms])
        self.logistic: dict = {}  # u -> (s, 1 - s) symbols (Note [Logistic terms])
        self.sigmoids: set = set()  # the u of the sigmoids the forward computes
        self.synthetic: dict = {}  # those symbols -> how their error bound is made
        self.float64_kernels = False  # a scipy kernel (float64 only) is called (Note [Float64 kernels in the reference])

    # -- values ---------------------------------------------------------------------------------
    def value(self, e) -> str:
        hit = self.names.get(e)
        if hit is not None:
            return hit
        lit = _literal(e)
        if lit is not None:
            return lit
        if type(e).__name__ == "Symbol":
            raise UnsupportedOp(f"symbol {e} is not an input of the closed form")
        if is_own(e):  # the identity, inside a max's conditions (Note [Each max its own conditions] in ties.py)
            var = self.value(e.args[0])
            self.names[e] = var
            self.rewritten[e] = e.args[0]
            return var
        logistic = self._as_logistic(e)
        if logistic is not None:  # Note [Logistic terms]
            var = self.value(logistic)
            self.names[e] = var
            self.rewritten[e] = logistic
            return var
        code = _constant(e) or self._code(e)
        var = f"_v{len(self.nodes)}"
        self.value_lines.append(f"    {var} = {code}")
        self.nodes.append((e, var))
        self.names[e] = var
        return var

    def alias(self, symbol, e) -> None:
        """A cse temporary names the node ``e``."""
        self.names[symbol] = self.value(e)
        self.aliases[symbol] = e

    def _code(self, e) -> str:
        kind = type(e).__name__
        args = e.args
        if kind == "Add":
            return _joined([self.value(a) for a in args], "+")
        if kind == "Mul":
            return _joined([self.value(a) for a in args], "*")
        if kind == "Pow":
            base, ex = args
            if type(base).__name__ == "Exp1":
                return f"exp({self.value(ex)})"
            if type(ex).__name__ == "Half":
                return f"sqrt({self.value(base)})"
            if ex.is_Integer and int(ex) < 0:  # numpy refuses integer arrays to negative integer powers
                return f"({self.value(base)}**{float(int(ex))!r})"
            return f"({self.value(base)}**{self.value(ex)})"
        if kind == "Piecewise":
            pairs = [f"({self.value(args[i + 1])}, {self.value(args[i])})" for i in range(0, len(args), 2)]
            return f"_pw({', '.join(pairs)})"
        if kind in ("Equality", "Unequality") and any(type(a).__name__ in BOOLEANS for a in args):
            # cse hoists a condition into a temporary and tests Eq(temporary, True): plain logic.
            atom = next(a for a in args if type(a).__name__ in BOOLEANS)
            other = args[1] if atom is args[0] else args[0]
            negate = (type(atom).__name__ == "BooleanFalse") != (kind == "Unequality")
            return f"np.logical_not({self.value(other)})" if negate else self.value(other)
        if kind in RELATIONS:
            k = len(self.rel_operands)
            self.rel_operands.append((args[0], args[1]))
            self.rel_texts.append(_text(e))
            return f"_rel({k}, {RELATIONS[kind]!r}, {self.value(args[0])}, {self.value(args[1])})"
        if kind in ("And", "Or"):
            fn = "np.logical_and" if kind == "And" else "np.logical_or"
            out = self.value(args[0])
            for a in args[1:]:
                out = f"{fn}({out}, {self.value(a)})"
            return out
        if kind == "Not":
            return f"np.logical_not({self.value(args[0])})"
        name = e.get_name() if hasattr(e, "get_name") else kind
        if name in SIDES and len(args) == 1:  # Note [Jumps of the step functions] in special.py
            import symengine as se

            k = len(self.rel_operands)
            self.rel_operands.append((args[0], se.Integer(0)))
            self.rel_texts.append(f"{name}({args[0]}) at a jump")
            return f"_jump({k}, {name!r}, {self.value(args[0])}, _rel)"
        if name in FUNCTIONS:
            self.float64_kernels |= name in FLOAT64_ONLY
            return f"{name}({', '.join(self.value(a) for a in args)})"
        raise UnsupportedOp(
            f"the closed form uses {name}({', '.join(map(_text, args))[:60]}), which the exploded engine cannot evaluate "
            "with numpy (symgrad.lower.runtime.FUNCTIONS); for torch code, the op graph's tensor back end "
            "(engine='graph', or 'auto') evaluates it"
        )

    # -- error bounds (Note [Rounding bound]) ------------------------------------------------------
    def error_of(self, e) -> str:
        while e in self.aliases or e in self.rewritten:
            e = self.aliases[e] if e in self.aliases else self.rewritten[e]
        if e in self.inputs:
            return "0"
        if e in self.synthetic and e not in self.errors:
            raise KeyError(f"no error bound yet for {e}")  # pragma: no cover - emitted in order
        hit = self.errors.get(e)
        if hit is not None:
            return hit
        kind = type(e).__name__
        if kind in ("Exp1", "Pi", "Infty", "Infinity", "NegativeInfinity") or kind in BOOLEANS or (e.is_Number and e.is_Integer):
            return "0"
        if e.is_Number:
            c = float(e)
            if float(np.float32(c)) == c:  # 0.5, 0.25, 3.0: the same in float32, nothing to round
                return "0"
            if is_float32_constant(c):  # rounded to float32 by torch even in float64
                return f"(_KF*{abs(c)!r})"
            return f"(_K*{abs(c)!r})"
        raise KeyError(f"no error bound for {e}")  # pragma: no cover - nodes are emitted in order

    def _resolved(self, e):
        while e in self.aliases or e in self.rewritten:
            e = self.aliases[e] if e in self.aliases else self.rewritten[e]
        return e

    def holds_float32_constant(self, e) -> bool:
        """Whether ``e``'s DAG holds one of the op table's float32 constants (after emit_errors)."""
        return self._resolved(e) in self.float32_nodes

    def emit_errors(self) -> None:
        self.float32_nodes = set()
        for e, _ in self.nodes:  # in the order computed: arguments first
            for a in getattr(e, "args", ()):
                a = self._resolved(a)
                if a in self.float32_nodes or (getattr(a, "is_Number", False) and not a.is_Integer
                                               and getattr(a, "is_real", True) is not False
                                               and is_float32_constant(float(a))):
                    self.float32_nodes.add(e)
                    break
        for e, var in self.nodes:
            code = self._error_code(e, var)
            if code == "0":
                self.errors[e] = "0"
                continue
            name = "_e" + var[2:]
            self.error_lines.append(f"    {name} = {code}")
            self.errors[e] = name

    def _error_code(self, e, var: str) -> str:
        import symengine as se

        if e in self.synthetic:
            rule, arg = self.synthetic[e]
            if rule == "s":  # s = logistic(u): |s (1 - s)| err(u) + one rounding
                err = self.error_of(arg)
                own = f"_abs({var})"
                return own if err == "0" else f"(_abs({var} * (1 - {var}))*{err} + {own})"
            return f"({self.error_of(arg)} + _abs({var}))"  # 1 - s: one more rounding, s's error
        kind = type(e).__name__
        args = e.args
        if kind in RELATIONS or kind in BOOLEANS or kind in ("And", "Or", "Not", "Equality", "Unequality"):
            return "0"
        own = f"_abs({var})"
        if kind == "Add":
            errs = [err for err in (self.error_of(a) for a in args) if err != "0"]
            if len(args) == 2:  # one correctly rounded addition
                return _joined(errs + [own], "+")
            sizes = _joined([f"_abs({self.value(a)})" for a in args], "+")
            count = f"{math.log2(len(args))!r}"
            if len(args) <= 4:  # Note [Chained operations in half precision]
                count = f"({count} + _M*{len(args) - 1 - math.log2(len(args))!r})"
            return _joined(errs + [f"{count}*{sizes}"], "+")
        if kind == "Mul":
            terms = []
            vals = [self.value(a) for a in args]
            for i, a in enumerate(args):
                err = self.error_of(a)
                if err != "0":
                    others = [v for j, v in enumerate(vals) if j != i]
                    terms.append(f"_abs({_joined(others, '*')})*{err}")
            # scaling by a power of two (-1 included) is exact: a - b is a + (-1)*b, rounded once
            rounded = sum(1 for a in args if not _power_of_two(a))
            exact = rounded <= 1
            if rounded > 2:  # Note [Chained operations in half precision]: a b c rounds twice
                own = f"(1 + _M*{rounded - 2})*{own}"
            return _joined(terms if exact else terms + [own], "+") if terms or not exact else "0"
        if kind == "Piecewise":
            pairs = [f"({self.value(args[i + 1])}, {self.error_of(args[i])})" for i in range(0, len(args), 2)]
            if all(p.endswith(", 0)") for p in pairs):
                return "0"
            return f"_pw({', '.join(pairs)})"
        name = e.get_name() if hasattr(e, "get_name") else kind
        if name in ("Max", "Min", "Abs"):  # the result is one of the arguments (or its negation), exactly
            errs = [self.error_of(a) for a in args]
            errs = [err for err in errs if err != "0"]
            return "0" if not errs else errs[0] if len(errs) == 1 else f"np.fmax.reduce([{', '.join(errs)}])"
        if name in ("sign", "floor", "ceiling", "round_even"):  # piecewise constant: a jump is a kink, not a rounding
            return "0"
        # A function (Pow included): |partial| times each argument's error, plus one rounding.
        slot = se.Symbol("_error_slot")
        terms = []
        for i, a in enumerate(args):
            if (kind == "Pow" and i == 1 and a.is_Number) or (name == "polygamma" and i == 0):
                continue  # x**2, sqrt(x): the exponent is exact; polygamma's order too
            err = self.error_of(a)
            if err == "0":
                continue
            if name in OPAQUE:  # symengine leaves their derivatives unevaluated (special.py)
                partial = derivative(name, tuple(args), i)
            else:
                slot_args = list(args)
                slot_args[i] = slot
                partial = e.func(*slot_args).diff(slot).xreplace({slot: a})
            terms.append(f"_abs({_Inline(self)(partial)})*{err}")
        if name in SPECIAL:  # Note [Rounding of the special functions] in special.py
            own = own_rounding(name, tuple(args), var, _Inline(self))
        return _joined(terms + [own], "+")


class _Inline:
    """Prints a small expression (a partial derivative) inline, over the emitter's variables."""

    def __init__(self, emitter: _Emitter):
        self.em = emitter

    def __call__(self, e) -> str:
        hit = self.em.names.get(e)
        if hit is not None:
            return hit
        lit = _literal(e)
        if lit is not None:
            return lit
        kind = type(e).__name__
        args = e.args
        if kind == "Add":
            return _joined([self(a) for a in args], "+")
        if kind == "Mul":
            return _joined([self(a) for a in args], "*")
        if kind == "Pow":
            base, ex = args
            if type(base).__name__ == "Exp1":
                return f"exp({self(ex)})"
            if ex.is_Integer and int(ex) < 0:
                return f"({self(base)}**{float(int(ex))!r})"
            return f"({self(base)}**{self(ex)})"
        name = e.get_name() if hasattr(e, "get_name") else kind
        if name in FUNCTIONS:
            return f"{name}({', '.join(self(a) for a in args)})"
        # a partial that is itself not printable (Derivative, a kink): a node like any other
        return self.em.value(e)


def generate(reps: list, reduced: list, names: dict, forward: int = 0, calls: dict | None = None,
             shared: list = ()) -> tuple[str, list[str]]:
    """The source of ``_lowered(_A, _rel, _with_magnitudes, _K, _KF, _M)`` and the relationals' texts.

    ``_lowered`` returns ``(values, error bounds or None, gap error bounds or None)``: one value
    and bound per expression of ``reduced``, one gap bound per relational ``_rel(k, ...)``.
    The first ``forward`` of ``reduced`` are the forward computation (Note [Logistic terms]).
    ``reps``: (temporary, node) pairs naming nodes; ``shared``: nodes to emit first, children first
    (Note [Sums kept as built] in numpy.py).
    """
    em = _Emitter(names)
    em.aliases.update(reps)  # known before any value is written: the forward's sigmoids first
    em.sigmoid_arguments(reduced[:forward])
    for sym, value in reps:
        em.alias(sym, value)
    for node in shared:
        em.value(node)
    results = [em.value(r) for r in reduced]
    n_value_lines = len(em.value_lines)
    em.emit_errors()
    # torch compares a with b (or tests the sign of a computed a - b, which a correct rounding
    # never flips): only the operands' own errors can put it on the other side.
    gaps = [_joined([em.error_of(a), em.error_of(b)], "+") for a, b in em.rel_operands]
    # a closed form holding a float32 constant of torch's kernel (celu's 1/alpha) may have folded it
    # with another (alpha * (1/alpha) = 1.0): one float32 rounding of the whole value, relative
    result_errors = [em.error_of(r) + (f" + _KF*_abs({em.value(r)})" if em.holds_float32_constant(r) else "")
                     for r in reduced]
    # _Inline may have emitted value lines while the errors were written: they go before the errors
    extra = em.value_lines[n_value_lines:]
    lines = ["def _lowered(_A, _rel, _with_magnitudes, _K=0.0, _KF=0.0, _M=0.0):"]
    lines += em.value_lines[:n_value_lines]
    lines.append("    _values = [" + ", ".join(results) + "]")
    lines.append("    if not _with_magnitudes:")
    lines.append("        return _values, None, None")
    lines += extra
    lines += em.error_lines
    lines.append("    return _values, [" + ", ".join(result_errors) + "], [" + ", ".join(gaps) + "]")
    if calls is not None:
        calls["float64_kernels"] = em.float64_kernels
        calls["rel_operands"] = em.rel_operands  # (lhs, rhs) of condition k (Note [Ties on the exploded engine])
    return "\n".join(lines), em.rel_texts
