"""The op table: one row per elementwise op, as data.

Each row says, for one op:

- ``sympy``: its SymPy form, a function of a scalar expression (and the op's parameters);
- ``torch``: the dotted name of the torch function that computes it, and how the row's
  parameters are passed to it;
- ``derivative``: d op(x)/dx as a SymPy expression, written by hand.  It is never trusted
  alone: ``tests/test_ops.py`` checks it against ``sympy.diff`` of the SymPy form and against
  torch autograd, on each op's domain and exactly on its kinks;
- ``domain``: the interval test inputs are drawn from;
- ``kinks``: the points where the derivative jumps, and what torch's backward returns there.

Everything else is built from the table: the symbolic tensor API (``symgrad.symbolic``), the
torch lowering of plain SymPy expressions, the matrix-calculus engine's elementwise rules and the
README's coverage table.  Adding an op is adding a row.

# Note [Kink conventions]
Where an op has a kink, the SymPy form is a ``Piecewise`` whose conditions put the kink point
itself on the branch that torch's backward uses there: relu is ``x if x > 0 else 0``, so its
derivative at 0 is 0, as ``torch.relu``'s is.  SymPy's own ``Heaviside(0)`` is 1/2 and
``Max(x, 0).diff(x)`` is ``Heaviside(x)``: we never build relu from ``Max``.  The comparison
stage flags inputs that sit on (or, in float32, within rounding of) a kink and reports both
one-sided derivatives there instead of calling a subgradient choice a bug; see Note [Kinks at
evaluation time] in ``symgrad/lower/numpy.py``.
"""

from __future__ import annotations

import functools
import importlib
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import sympy as sp

__all__ = ["Op", "OPS", "op", "register_op", "coverage_rows", "resolve_torch", "float32_scope", "float32_scoped",
           "float32_constants", "is_float32_constant", "note_float32_reciprocal", "note_float32_constants",
           "constant_key"]


@dataclass(frozen=True)
class Op:
    """One row of the op table (see the module docstring)."""

    name: str
    sympy: Callable[..., sp.Expr]
    torch: str
    derivative: Callable[..., sp.Expr]
    domain: tuple[float, float] = (-3.0, 3.0)
    params: dict[str, Any] = field(default_factory=dict)
    kinks: Callable[..., tuple] | None = None
    torch_kwargs: Callable[..., dict] | None = None
    module: str = ""
    doc: str = ""
    # parameters whose reciprocal torch's backward rounds to float32 even in float64 (celu's
    # 1/alpha): that reciprocal carries one float32 rounding in the rounding bound (Note [Float32 constants of a check])
    float32_reciprocals: tuple = ()

    def sym(self, x, **params):
        """The SymPy form at ``x`` with the row's default parameters filled in."""
        full = {**self.params, **params}
        for name in self.float32_reciprocals:
            note_float32_reciprocal(full[name])
        return self.sympy(x, **full)

    def diff(self, x, **params):
        """The hand-written derivative at ``x``."""
        full = {**self.params, **params}
        for name in self.float32_reciprocals:
            note_float32_reciprocal(full[name])
        return self.derivative(x, **full)

    def kink_points(self, **params) -> tuple:
        return self.kinks(**{**self.params, **params}) if self.kinks else ()

    def torch_fn(self, **params) -> Callable:
        """A callable ``tensor -> tensor`` computing this op in torch."""
        fn = resolve_torch(self.torch)
        full = {k: float(v) if isinstance(v, sp.Basic) else v for k, v in {**self.params, **params}.items()}
        kwargs = self.torch_kwargs(**full) if self.torch_kwargs else full
        return (lambda t: fn(t, **kwargs)) if kwargs else fn


# Note [Float32 constants of a check]
# A few torch kernels round a constant to float32 even in a float64 run (the reciprocals of
# Op.float32_reciprocals: celu's 1/alpha; hardsigmoid's 1/6, noted while tracing); the rounding
# bound gives each occurrence of such a constant, keyed by constant_key, one float32 rounding
# (codegen.py, graph/scalar.py, matrix/rounding.py).  Which constants those are is a fact about
# the function being checked, so the set belongs to one check: ``float32_scope()`` opens it for
# the length of a check (symgrad.check, check_module, check_graph; a check run inside another
# shares the outer one's set) and ``note_float32_reciprocal`` adds to it.  It used to be one set
# for the whole process: after a check of celu(alpha=0.3), every later float64 check holding the
# constant 1/0.3 got a float32-sized allowance, and a backward off by 1e-9 passed.  A note made
# outside any check is dropped (never a wider allowance for a later one); whatever caches a form
# across checks notes again when it is reused (symbolic/functional.py's templates, the op graph's
# cache, which restores ``graph.float32_constants``).
_FLOAT32_SCOPE: ContextVar["set | None"] = ContextVar("symgrad_float32_constants", default=None)


def float32_constants() -> frozenset:
    """The keys (``constant_key``) of the float32 constants noted by the running check (empty outside one)."""
    scope = _FLOAT32_SCOPE.get()
    return frozenset(scope) if scope else frozenset()


def is_float32_constant(value: float) -> bool:
    scope = _FLOAT32_SCOPE.get()
    return bool(scope) and constant_key(value) in scope


@contextmanager
def float32_scope():
    """The float32 constants of one check (Note [Float32 constants of a check]); nested: the outer one's."""
    if _FLOAT32_SCOPE.get() is not None:
        yield _FLOAT32_SCOPE.get()
        return
    token = _FLOAT32_SCOPE.set(set())
    try:
        yield _FLOAT32_SCOPE.get()
    finally:
        _FLOAT32_SCOPE.reset(token)


def float32_scoped(fn):
    """``fn`` run inside ``float32_scope()`` (a decorator for the public checks)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with float32_scope():
            return fn(*args, **kwargs)

    return wrapper


def note_float32_constants(keys) -> None:
    """Add keys (``constant_key`` values, e.g. a cached graph's) to the running check's set."""
    scope = _FLOAT32_SCOPE.get()
    if scope is not None:
        scope.update(keys)


def constant_key(value: float) -> float:
    """A float rounded to 12 significant digits: 1/0.3 computed either way finds the same key."""
    return float(f"{float(value):.12g}")


def note_float32_reciprocal(value) -> None:
    try:
        c = float(value)
    except (TypeError, ValueError):
        return
    if c != 0 and c == c and abs(c) != float("inf"):
        r = 1 / c
        # a reciprocal float32 holds exactly (celu's default alpha = 1: 1.0) rounds to nothing; noting
        # it would charge every later 1.0 a float32 rounding, in float64 checks too (a float64 backward
        # off by 1e-9 passed after one celu check)
        if float(np.float32(r)) != r:
            note_float32_constants((constant_key(r),))


def resolve_torch(dotted: str) -> Callable:
    """``"torch.nn.functional.celu"`` -> the function (torch imported only here)."""
    module, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _pw(*pieces):
    return sp.Piecewise(*pieces)


def _sigmoid(x):
    return 1 / (1 + sp.exp(-x))


def _gelu_tanh_inner(x):
    return sp.sqrt(2 / sp.pi) * (x + sp.Rational(44715, 1000000) * x**3)


_ROWS = [
    Op("exp", lambda x: sp.exp(x), "torch.exp", lambda x: sp.exp(x)),
    Op("log", lambda x: sp.log(x), "torch.log", lambda x: 1 / x, domain=(0.1, 5.0)),
    Op("sqrt", lambda x: sp.sqrt(x), "torch.sqrt", lambda x: 1 / (2 * sp.sqrt(x)), domain=(0.1, 5.0)),
    Op("sin", lambda x: sp.sin(x), "torch.sin", lambda x: sp.cos(x)),
    Op("cos", lambda x: sp.cos(x), "torch.cos", lambda x: -sp.sin(x)),
    Op("tanh", lambda x: sp.tanh(x), "torch.tanh", lambda x: 1 - sp.tanh(x) ** 2, module="torch.nn.Tanh"),
    Op("sigmoid", _sigmoid, "torch.sigmoid", lambda x: _sigmoid(x) * (1 - _sigmoid(x)), module="torch.nn.Sigmoid"),
    Op(
        "relu",
        lambda x: _pw((x, x > 0), (0, True)),
        "torch.relu",
        lambda x: _pw((1, x > 0), (0, True)),
        kinks=lambda: (0,),
        doc="torch's relu'(0) = 0",
        module="torch.nn.ReLU",
    ),
    Op(
        "leaky_relu",
        lambda x, negative_slope: _pw((x, x > 0), (negative_slope * x, True)),
        "torch.nn.functional.leaky_relu",
        lambda x, negative_slope: _pw((1, x > 0), (negative_slope, True)),
        params={"negative_slope": sp.Rational(1, 100)},
        kinks=lambda negative_slope: (0,),
        doc="slope at 0 is negative_slope, as torch's",
        module="torch.nn.LeakyReLU",
    ),
    Op(
        "abs",
        lambda x: _pw((x, x > 0), (0, sp.Eq(x, 0)), (-x, True)),
        "torch.abs",
        lambda x: _pw((1, x > 0), (0, sp.Eq(x, 0)), (-1, True)),
        kinks=lambda: (0,),
        doc="torch's abs'(0) = sign(0) = 0",
    ),
    Op(
        "softplus",
        lambda x, beta, threshold: _pw((x, beta * x > threshold), (sp.log(1 + sp.exp(beta * x)) / beta, True)),
        "torch.nn.functional.softplus",
        lambda x, beta, threshold: _pw((1, beta * x > threshold), (_sigmoid(beta * x), True)),
        params={"beta": 1, "threshold": 20},
        kinks=lambda beta, threshold: (sp.Rational(threshold) / beta,),
        doc="linear above threshold/beta, as torch's",
        module="torch.nn.Softplus",
    ),
    Op(
        "elu",
        lambda x, alpha: _pw((x, x > 0), (alpha * (sp.exp(x) - 1), True)),
        "torch.nn.functional.elu",
        lambda x, alpha: _pw((1, x > 0), (alpha * sp.exp(x), True)),
        params={"alpha": 1},
        kinks=lambda alpha: () if alpha == 1 else (0,),
        doc="elu'(0) = alpha, as torch's",
        module="torch.nn.ELU",
    ),
    Op(
        "celu",
        lambda x, alpha: _pw((x, x > 0), (alpha * (sp.exp(x / alpha) - 1), True)),
        "torch.nn.functional.celu",
        lambda x, alpha: _pw((1, x > 0), (sp.exp(x / alpha), True)),
        params={"alpha": 1},
        module="torch.nn.CELU",
        float32_reciprocals=("alpha",),  # torch's float64 celu' with alpha = 0.3 is off by 3.6e-7: 1/alpha in float32
    ),
    Op(
        "gelu",
        lambda x: x / 2 * (1 + sp.erf(x / sp.sqrt(2))),
        "torch.nn.functional.gelu",
        lambda x: (1 + sp.erf(x / sp.sqrt(2))) / 2 + x * sp.exp(-(x**2) / 2) / sp.sqrt(2 * sp.pi),
        module="torch.nn.GELU",
        doc="exact (erf) form; approximate='none'",
    ),
    Op(
        "gelu_tanh",
        lambda x: x / 2 * (1 + sp.tanh(_gelu_tanh_inner(x))),
        "torch.nn.functional.gelu",
        lambda x: (1 + sp.tanh(_gelu_tanh_inner(x))) / 2
        + x / 2 * (1 - sp.tanh(_gelu_tanh_inner(x)) ** 2) * sp.sqrt(2 / sp.pi) * (1 + 3 * sp.Rational(44715, 1000000) * x**2),
        torch_kwargs=lambda: {"approximate": "tanh"},
        doc="approximate='tanh'",
    ),
    Op(
        "hardtanh",
        lambda x, min_val, max_val: _pw((min_val, x <= min_val), (max_val, x >= max_val), (x, True)),
        "torch.nn.functional.hardtanh",
        lambda x, min_val, max_val: _pw((0, x <= min_val), (0, x >= max_val), (1, True)),
        params={"min_val": -1, "max_val": 1},
        kinks=lambda min_val, max_val: (min_val, max_val),
        doc="derivative 0 on both edges, as torch's",
        module="torch.nn.Hardtanh",
    ),
    Op(
        "clamp",
        lambda x, min, max: _pw((max, sp.Or(x > max, sp.Gt(min, max))), (min, x < min), (x, True)),
        "torch.clamp",
        lambda x, min, max: _pw((0, x < min), (0, x > max), (1, True)),
        params={"min": -1, "max": 1},
        kinks=lambda min, max: (min, max),
        doc="derivative 1 on both edges, as torch's",
    ),
]

OPS: dict[str, Op] = {row.name: row for row in _ROWS}


def op(name: str) -> Op:
    """The row named ``name``; a clear error for anything not in the table."""
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(
            f"symgrad has no op {name!r} in its op table (known: {', '.join(sorted(OPS))}). "
            "Add a row with symgrad.ops.register_op(Op(...))."
        ) from None


def register_op(row: Op, *, replace: bool = False) -> Op:
    """Add a row to the op table (user ops).  Returns the row."""
    if row.name in OPS and not replace:
        raise ValueError(f"op {row.name!r} is already in the op table; pass replace=True to override it")
    from .symbolic.numbers import number  # defaults are sympified: numbers only, never a string

    row.params = {k: number(v, f"op {row.name!r}'s default {k!r}") for k, v in row.params.items()}
    OPS[row.name] = row
    return row


def coverage_rows() -> list[dict[str, str]]:
    """The rows of the README's coverage table, generated from the op table."""
    x = sp.Symbol("x")
    rows = []
    for row in OPS.values():
        rows.append(
            {
                "op": row.name,
                "torch": row.torch,
                "SymPy form": sp.sstr(row.sym(x)),
                "derivative": sp.sstr(row.diff(x)),
                "domain": f"[{row.domain[0]}, {row.domain[1]}]",
                "kinks": ", ".join(map(str, row.kink_points())) or "-",
                "note": row.doc,
            }
        )
    return rows
