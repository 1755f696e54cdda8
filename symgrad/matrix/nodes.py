"""Matrix-expression nodes of symgrad's own, and small constructors that keep trees readable.

SymPy's ``MatrixSymbol``, ``MatMul``, ``MatAdd``, ``Transpose``, ``HadamardProduct``,
``HadamardPower``, ``Inverse``, ``Trace``, ``Determinant``, ``OneMatrix``, ``Identity`` and
``ZeroMatrix`` are used as they are.  Three nodes are added:

- ``Elementwise(name, A, params, order)``: the op-table row ``OPS[name]`` (or its ``order``-th
  derivative) applied to every entry of ``A``.  SymPy's ``ElementwiseApplyFunction`` is not used:
  its ``diff`` is wrong and ``lambdify`` cannot print it (see
  /work/shared/research/sympy-matrix-calculus.md).
- ``SoftmaxRows(Z)`` and ``LogSoftmaxRows(Z)``: softmax / log-softmax of each row.

# Note [Derivative aliases]
The first derivative of a row is another node of the same kind with ``order + 1``.  Where that
derivative *is* another row (softplus with ``beta=1`` and no threshold is the sigmoid), the alias
is used so that prints read ``sigmoid(Z)``; ``tests/matrix/test_nodes.py`` proves each alias
symbolically.
"""

from __future__ import annotations

from functools import lru_cache

import sympy as sp
from sympy import HadamardPower, HadamardProduct, Identity, MatMul, MatrixExpr, OneMatrix, ZeroMatrix
from sympy.core.symbol import Str

from symgrad.ops import OPS

__all__ = [
    "Elementwise",
    "SoftmaxRows",
    "LogSoftmaxRows",
    "elementwise",
    "hadamard",
    "hpow",
    "ones",
    "sum_all",
    "frobenius_sq",
    "split_scalar",
    "scale",
    "scalar_function",
    "one_sided",
    "DERIVATIVE_ALIASES",
]


def _params_tuple(params: dict) -> sp.Tuple:
    from symgrad.symbolic.numbers import number  # never sympify a string (it would run as code)

    return sp.Tuple(*(sp.Tuple(Str(k), sp.sympify(number(v, f"parameter {k!r}"))) for k, v in sorted(params.items())))


class Elementwise(MatrixExpr):
    """``OPS[name]`` (its ``order``-th derivative when ``order > 0``) applied entrywise to ``arg``."""

    is_commutative = False

    def __new__(cls, name, arg, params=(), order=0):
        name = name if isinstance(name, Str) else Str(str(name))
        if str(name) not in OPS:
            from symgrad.matrix.errors import UnsupportedOp

            raise UnsupportedOp(f"op {str(name)!r} is not in symgrad.ops.OPS; add a row to use it elementwise")
        if isinstance(params, dict):
            params = _params_tuple(params)
        return super().__new__(cls, name, arg, sp.Tuple(*params), sp.Integer(order))

    @property
    def name(self) -> str:
        return str(self.args[0])

    @property
    def arg(self):
        return self.args[1]

    @property
    def params(self) -> dict:
        return {str(k): v for k, v in self.args[2]}

    @property
    def order(self) -> int:
        return int(self.args[3])

    @property
    def shape(self):
        return self.arg.shape

    @property
    def row(self):
        return OPS[self.name]

    def scalar(self, x):
        """The scalar function this node applies, at the SymPy scalar ``x``."""
        return scalar_function(self.name, self.args[2], self.order)(x)

    def _entry(self, i, j, **kwargs):
        return self.scalar(self.arg._entry(i, j, **kwargs))

    def _eval_transpose(self):
        return Elementwise(self.args[0], self.arg.T, self.args[2], self.order)

    def derivative(self) -> "Elementwise":
        """The node applying d/dx of this node's function (see Note [Derivative aliases])."""
        key = (self.name, self.order, tuple(sorted((k, sp.sympify(v)) for k, v in self.params.items())))
        alias = DERIVATIVE_ALIASES.get(key)
        if alias is not None:
            name, order = alias
            return Elementwise(name, self.arg, {}, order)
        return Elementwise(self.args[0], self.arg, self.args[2], self.order + 1)


@lru_cache(maxsize=None)
def scalar_function(name: str | Str, params: sp.Tuple, order: int):
    """``x -> f^(order)(x)`` for the row ``name`` with ``params`` (a Tuple of (Str, value) pairs)."""
    row = OPS[str(name)]
    kw = {str(k): v for k, v in params}
    if order == 0:
        return lambda x: row.sym(x, **kw)
    if order == 1:
        return lambda x: row.diff(x, **kw)
    t = sp.Dummy("t", real=True)
    higher = sp.diff(row.diff(t, **kw), t, order - 1)
    return lambda x: higher.xreplace({t: x})


# (name, order, params) of a derivative -> (row, order) it equals; proved in tests/matrix/test_nodes.py
DERIVATIVE_ALIASES: dict[tuple, tuple[str, int]] = {
    ("softplus", 0, (("beta", sp.Integer(1)), ("threshold", sp.oo))): ("sigmoid", 0),
}


class _Rowwise(MatrixExpr):
    """A row-wise function of one matrix argument, of the argument's shape."""

    is_commutative = False

    def __new__(cls, arg):
        return super().__new__(cls, arg)

    @property
    def arg(self):
        return self.args[0]

    @property
    def shape(self):
        return self.arg.shape


class SoftmaxRows(_Rowwise):
    """Row-wise softmax: ``S[i, j] = exp(Z[i, j]) / sum_k exp(Z[i, k])``."""

    def _entry(self, i, j, **kwargs):
        n = self.arg.shape[1]
        row = [sp.exp(self.arg._entry(i, k)) for k in range(n)]
        return row[j] / sp.Add(*row)


class LogSoftmaxRows(_Rowwise):
    """Row-wise log-softmax: ``L[i, j] = Z[i, j] - log(sum_k exp(Z[i, k]))``."""

    def _entry(self, i, j, **kwargs):
        n = self.arg.shape[1]
        return self.arg._entry(i, j) - sp.log(sp.Add(*(sp.exp(self.arg._entry(i, k)) for k in range(n))))


def elementwise(name: str, arg, **params) -> Elementwise:
    """``OPS[name]`` applied entrywise to ``arg``; parameters left out take the row's defaults."""
    full = {**OPS[name].params, **params} if name in OPS else params
    return Elementwise(name, arg, full, 0)


def ones(rows, cols=1) -> OneMatrix:
    """The all-ones matrix (``1`` in prints); ``ones(n)`` is the column vector of n ones."""
    return OneMatrix(rows, cols)


def sum_all(A):
    """``1ᵀ A 1``: the sum of all entries of ``A`` as a 1x1 matrix expression."""
    m, n = A.shape
    return ones(1, m) * A * ones(n, 1)


def frobenius_sq(A):
    """``‖A‖²_F = tr(Aᵀ A)``."""
    return sp.Trace(A.T * A)


def split_scalar(M):
    """``c * M'`` -> ``(c, M')`` with every scalar factor of a MatMul pulled into ``c``."""
    if isinstance(M, MatMul):
        scalars = [a for a in M.args if not getattr(a, "is_Matrix", False)]
        mats = [a for a in M.args if getattr(a, "is_Matrix", False)]
        if scalars:
            rest = mats[0] if len(mats) == 1 else MatMul(*mats)
            return sp.Mul(*scalars), rest
    return sp.Integer(1), M


def hadamard(*factors):
    """``A ⊙ B ⊙ …`` with ones dropped, zeros absorbing, nested products flattened and scalar
    coefficients pulled in front (``(2A) ⊙ B -> 2 (A ⊙ B)``)."""
    coeff, flat = sp.Integer(1), []
    for f in factors:
        c, f = split_scalar(f)
        coeff *= c
        if isinstance(f, HadamardProduct):
            flat.extend(f.args)
        elif isinstance(f, ZeroMatrix):
            return ZeroMatrix(*f.shape)
        elif not (isinstance(f, OneMatrix) or (isinstance(f, Identity) and f.shape == (1, 1))):
            flat.append(f)
    shape = factors[0].shape
    if not flat:
        body = OneMatrix(*shape)
    elif len(flat) == 1:
        body = flat[0]
    else:
        body = HadamardProduct(*flat)
    return scale(coeff, body)


def scale(c, M):
    """``c M`` kept as a product (SymPy's ``c * (A - B)`` would print as ``c A - c B``)."""
    c = sp.sympify(c)
    if c == 1:
        return M
    if c == 0:
        return ZeroMatrix(*M.shape)
    k, rest = split_scalar(M)
    if k != 1:
        c, M = c * k, rest
    return MatMul(c, *(M.args if isinstance(M, MatMul) else (M,)))


def hpow(A, p):
    """``A^{∘p}`` with ``p = 1`` -> ``A`` and ``p = 0`` -> ones."""
    p = sp.sympify(p)
    if p == 0:
        return OneMatrix(*A.shape)
    if p == 1:
        return A
    return HadamardPower(A, p)


@lru_cache(maxsize=None)
def one_sided(name: str, params, point, side: int, order: int = 1) -> float:
    """``f^(order)`` of row ``name`` at ``point`` from the ``side`` (-1 left, +1 right; 0: at the
    point itself): the value at ``point`` of the Piecewise branch active just beside it
    (``sympy.limit`` gets Piecewise one-sided limits wrong)."""
    x = sp.Symbol("x", real=True)
    d = scalar_function(name, params, order)(x)
    p = sp.Rational(point)
    near = p + side * sp.Rational(1, 10**30)
    if isinstance(d, sp.Piecewise):
        for e, c in d.args:
            if c.xreplace({x: near}) == sp.true:
                return float(e.xreplace({x: p}))
    return float(d.xreplace({x: p}))
