"""A per-entry running rounding-error bound of a matrix expression, in units of roundoff.

# Note [Rounding bound of a matrix expression]
``RoundingBound(ev, defs, eps)(expr)`` is an array ``R`` shaped like ``expr``'s value such that a
correct evaluation of ``expr`` in a dtype of unit roundoff ``u`` errs by at most (to first order)
``u * R`` on each entry.  It is the model of the elementwise engine (class ``_Magnitude`` in
``symgrad/lower/numpy.py``), Wilkinson's forward analysis, lifted to matrices: inputs, parameters
and constants are exact (error 0); every operation adds its own rounding, bounded by the size of
what it computes, to its arguments' errors carried through the absolute values of its partial
derivatives (``|.|`` is the entrywise absolute value, products of ``|.|`` are matrix products):

* ``A B`` (inner dimension k): ``|A| err(B) + err(A) |B| + r(k) |A||B|`` with ``r(k) = 1 + log2 k``
  (one rounding per product plus pairwise summation of k terms, as for scalars: ``err(a b)`` has
  ``|a b|`` and ``err(a_1 + … + a_k)`` has ``log2(k) Σ|a_i|``).  A product with the all-ones matrix
  is a sum (``r = log2 k``, at least 1) or, at k = 1, an exact broadcast (``r = 0``).  Chains
  ``A_1 … A_n`` are taken left to right with ``|A_1|…|A_i|`` standing for the partial product's
  absolute value (it is at least that), so the bound does not depend on the order torch uses;
* a scalar coefficient ``c M``: ``|c| err(M) + err(c) |M| + |c M|`` (no rounding for ``c = ±1``);
* ``A + B + …`` (n terms): ``Σ err + max(1, log2 n) Σ |term|``: the terms' size, not the
  result's, so a sum that cancels keeps its terms' error;
* ``A ⊙ B``: ``|A| ⊙ err(B) + err(A) ⊙ |B| + |A ⊙ B|``; ``A^{∘p}``: ``|p A^{∘(p-1)}| ⊙ err(A) + |A^{∘p}|``;
* ``f(A)`` entrywise: ``|f'(A)| ⊙ err(A)`` plus the rounding of evaluating f's own SymPy form at
  an exact argument (``_own_rounding``: the same rules on the scalar form, so ``tanh'(z) =
  1 - tanh(z)**2`` carries the size of ``1`` and ``tanh(z)**2`` where a unit saturates, as
  ``g * (1 - y*y)`` in torch's backward does).  Where ``A``'s rounding could put an entry on the
  other side of a kink of f (``|A - p| <= 4 u err(A)``), the larger one-sided slope is used; a
  jump of f itself there is the kink band's business (Note [Kink bands] in ``references.py``);
* transposes carry the error over; ``tr``, ``M[i, j]`` and scalar glue follow the scalar rules;
* a non-integer constant (``1/3``, leaky_relu's ``1/100``) carries ``K |c|`` units in a float32
  run, ``K = CONSTANT_REL / u`` (torch hands it to its kernels as float32), and none in a float64
  run; the op table's float32 reciprocals (celu's ``1/alpha``, ``Op.float32_reciprocals``) carry it
  in every dtype (torch's float64 celu' with alpha != 1 is off by ~1e-8 for that reason), as in the
  elementwise engine (``symgrad.lower.numpy.CONSTANT_REL``); integers, exponents that are
  numbers, e and pi are exact;
* softmax and log-softmax by rows, bounded conservatively.  With ``a = err(Z) + |Z| + m``,
  ``m = rowmax|Z|`` (the argument's error plus the rounding of ``Z - rowmax Z``; an error in the
  shift itself cancels), ``n`` the row length and ``λ = log Σ exp(Z - rowmax Z)``:
  ``err(softmax(Z)) = |S| ⊙ (a + rowmax(a) + 3 + log2 n)`` (each ``exp`` rounds, the row sum and
  the division round) and ``err(log_softmax(Z)) = a + rowmax(a) + |Z| + m + 2 λ + 2 + log2 n``
  (the row sum's relative error passes through ``log``, which rounds, and the final subtraction
  rounds on the size of its terms).  ``∂S_j/∂Z_k = S_j(δ_jk - S_k)`` bounds the propagated part by
  ``|S_j| (a_j + rowmax a)``; for log-softmax ``∂L_j/∂Z_k = δ_jk - S_k`` by ``a_j + rowmax a``.

The bound is first order and is a bound on correct arithmetic in any dtype: ``compare`` multiplies
it by the unit roundoff of the checked dtype.  For a float64 check the reference is itself float64
numpy, and its own error is covered by the same bound.  The cost is a small constant number of
matrix operations per operation of the expression (two or three products per product), shared
subtrees once.  Nodes without a rule (inverse, determinant, matrix powers) raise ``NoBound``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import sympy as sp
from sympy import (
    HadamardPower,
    HadamardProduct,
    Identity,
    MatAdd,
    MatMul,
    MatrixSymbol,
    OneMatrix,
    Trace,
    Transpose,
    ZeroMatrix,
)
from sympy.matrices.expressions.matexpr import MatrixElement

from symgrad.matrix.evaluate import numpy_modules
from symgrad.ops import OPS, is_float32_constant
from symgrad.matrix.nodes import Elementwise, LogSoftmaxRows, SoftmaxRows, one_sided, scalar_function

__all__ = ["RoundingBound", "NoBound", "KINK_ULPS", "prepare"]

KINK_ULPS = 4.0  # an argument within this many of its own rounding units of a kink may cross it
try:  # one float32 rounding of a non-integer constant, relative: the elementwise engine's model
    from symgrad.lower.numpy import CONSTANT_REL
except ImportError:  # pragma: no cover - depends on the elementwise engine's version
    CONSTANT_REL = 2.0**-24


class NoBound(Exception):
    """The expression holds a node the rounding model has no rule for."""


def _is_zero(x) -> bool:
    return isinstance(x, (int, float)) and x == 0


def _log2(n: int) -> float:
    return math.log2(n) if n > 1 else 0.0


# -- scalar forms: the rounding of evaluating f at an exact argument -------------------------------

# |.| as an undefined function (evaluated as numpy.abs): SymPy's Abs asks the assumption system
# about every argument, which made building these bounds cost more than the rest of a first call
_abs = sp.Function("sg_abs")
_K = sp.Symbol("sg_K")  # units per unit of a non-integer constant (CONSTANT_REL / u), given at evaluation


def _own_rounding(e, memo: dict):
    """A SymPy expression bounding, in units of roundoff, the rounding of evaluating the scalar
    expression ``e`` whose free symbol is exact (the rules of the module note, on scalars)."""
    hit = memo.get(e)
    if hit is not None:
        return hit
    if e.is_Number and not e.is_Integer:
        out = _K * _abs(e)
    elif e.is_Symbol or e.is_Number or e.is_NumberSymbol or not e.args:
        out = sp.Integer(0)
    elif isinstance(e, sp.Add):
        out = sp.Add(*(_own_rounding(a, memo) for a in e.args)) + max(1.0, math.log2(len(e.args))) * sp.Add(*(_abs(a) for a in e.args))
    elif isinstance(e, sp.Mul):
        coeff, rest = e.as_coeff_Mul()
        if coeff == -1:  # negation is exact
            out = _own_rounding(rest, memo)
        else:  # the product rule: Σ_i |Π_{j≠i} a_j| own(a_i) + |e|
            terms = [_abs(sp.Mul(*(e.args[:i] + e.args[i + 1:]))) * _own_rounding(a, memo) for i, a in enumerate(e.args)]
            out = sp.Add(*terms) + _abs(e)
    elif isinstance(e, sp.Pow):
        base, ex = e.args
        out = _abs(ex * base ** (ex - 1)) * _own_rounding(base, memo) + _abs(e)
        if not ex.is_Number:
            out += _abs(sp.log(base) * e) * _own_rounding(ex, memo)
    elif isinstance(e, sp.Piecewise):
        out = sp.Piecewise(*((_own_rounding(v, memo), c) for v, c in e.args))
    elif isinstance(e, sp.Function):
        dummies = [sp.Dummy() for _ in e.args]
        f = e.func(*dummies)
        terms = []
        for d, a in zip(dummies, e.args):
            inner = _own_rounding(a, memo)
            if inner != 0:
                terms.append(_abs(f.diff(d).xreplace(dict(zip(dummies, e.args)))) * inner)
        out = sp.Add(*terms) + _abs(e)
    else:
        raise NoBound(f"no rounding rule for the scalar form {type(e).__name__}: {e}")
    memo[e] = out
    return out


@lru_cache(maxsize=None)
def _error_fn(name, params, order):
    """``(z, K) -> (|f^(order+1)(z)|, own rounding of f^(order)(z))`` for the op row ``name``."""
    x = sp.Dummy("x", real=True)
    f = scalar_function(name, params, order)(x)
    slope = _abs(scalar_function(name, params, order + 1)(x))
    own = _own_rounding(f, {})
    return sp.lambdify((x, _K), [slope, own], [{"sg_abs": np.abs}, *numpy_modules(f, slope, own)])


@lru_cache(maxsize=None)
def _generic_partials(func, nargs):
    dummies = sp.symbols(f"a0:{nargs}", cls=sp.Dummy)
    f = func(*dummies)
    parts = [f.diff(d) for d in dummies]
    return sp.lambdify(dummies, parts, numpy_modules(f, *parts))


def prepare(*exprs) -> None:
    """Build (and cache) the per-op rounding rules ``exprs`` will need: symbolic work, done once
    per architecture with the rest of it rather than in the first evaluation."""
    for e in exprs:
        if isinstance(e, sp.Basic):
            for node in e.atoms(Elementwise):
                _error_fn(node.args[0], node.args[2], node.order)


# -- the matrix bound ----------------------------------------------------------------------------------


class RoundingBound:
    """Per-entry rounding-error bounds, in units of roundoff (Note [Rounding bound of a matrix
    expression]).  ``ev`` is the float64 ``Evaluator`` whose values the bound reads (its memo is
    shared), ``defs`` the definitions of named intermediates (``z1``, ``h1``, ``delta1`` …), ``eps``
    the unit roundoff of the checked dtype (used only to find arguments that may cross a kink)."""

    def __init__(self, ev, defs: dict, eps: float):
        self.ev = ev
        self.defs = defs
        self.eps = float(eps)
        # a non-integer constant reaches torch's kernels as float32 only in a float32 (or lower) run;
        # the op table's float32 parameters (celu's alpha) in every dtype (Note [Rounding bound] in
        # symgrad/lower/codegen.py)
        self.K_float32 = CONSTANT_REL / self.eps
        self.K = self.K_float32 if self.eps > 1e-10 else 0.0
        self.memo: dict = {}
        self.abs_memo: dict = {}
        self._quiet = False

    def value(self, e):
        return self.ev(e)

    def abs(self, e):
        hit = self.abs_memo.get(e)
        if hit is None:
            if isinstance(e, Transpose):  # |Aᵀ| = |A|ᵀ, without a second pass over A
                hit = self.abs(e.arg).T
            else:
                v = self.ev(e)
                hit = abs(v) if isinstance(v, (int, float)) else np.abs(v)
            self.abs_memo[e] = hit
        return hit

    def __call__(self, e):
        hit = self.memo.get(e)
        if hit is None:
            if self._quiet:
                hit = self._bound(e)
            else:  # one errstate for the whole recursion, not one per node
                self._quiet = True
                try:
                    with np.errstate(all="ignore"):
                        hit = self._bound(e)
                finally:
                    self._quiet = False
            self.memo[e] = hit
        return hit

    # -- rules -------------------------------------------------------------------------------
    def _bound(self, e):
        if isinstance(e, MatrixSymbol):
            return self(self.defs[e]) if e in self.defs else 0.0
        if isinstance(e, (Identity, ZeroMatrix, OneMatrix)):
            return 0.0
        if isinstance(e, MatMul):
            return self._matmul(e)
        if isinstance(e, MatAdd):
            return self._sum(e.args)
        if isinstance(e, Transpose):
            inner = self(e.arg)
            return inner if _is_zero(inner) else np.asarray(inner).T
        if isinstance(e, HadamardProduct):
            return self._product(e.args, e)
        if isinstance(e, HadamardPower):
            base, p = e.args
            pv = float(self.ev(p))
            err = self(base)
            own = self.abs(e)
            if _is_zero(err):
                return own
            return np.abs(pv * np.asarray(self.ev(base)) ** (pv - 1)) * err + own
        if isinstance(e, Elementwise):
            return self._elementwise(e)
        if isinstance(e, (SoftmaxRows, LogSoftmaxRows)):
            return self._softmax(e)
        if isinstance(e, Trace):
            err = self(e.arg)
            n = int(np.shape(self.ev(e.arg))[0])
            diag = float(np.trace(self.abs(e.arg)))
            return (0.0 if _is_zero(err) else float(np.trace(err))) + max(1.0, _log2(n)) * diag
        if isinstance(e, MatrixElement):
            err = self(e.parent)
            return 0.0 if _is_zero(err) else float(np.asarray(err)[int(e.i), int(e.j)])
        if getattr(e, "is_Matrix", False):
            raise NoBound(f"no rounding rule for {type(e).__name__}")
        # scalars
        if isinstance(e, sp.Number):
            if e.is_Integer:
                return 0.0
            c = float(e)
            return (self.K_float32 if is_float32_constant(c) else self.K) * abs(c)
        if isinstance(e, sp.Symbol) or e.is_number:
            return 0.0
        if isinstance(e, sp.Add):
            return self._sum(e.args)
        if isinstance(e, sp.Mul):
            coeff, rest = e.as_coeff_Mul()
            if coeff in (1, -1) and rest is not e:
                return self(rest)
            return self._product(e.args, e)
        if isinstance(e, sp.Pow):
            base, ex = e.args
            bv, xv = float(self.ev(base)), float(self.ev(ex))
            out = abs(float(self.ev(e)))
            eb, ex_err = self(base), self(ex)
            if not _is_zero(eb):
                out += abs(xv * bv ** (xv - 1)) * eb
            if not _is_zero(ex_err):
                out += abs(math.log(abs(bv)) * bv**xv) * ex_err if bv else 0.0
            return out
        if isinstance(e, sp.Expr) and e.args:
            args = [float(self.ev(a)) for a in e.args]
            parts = _generic_partials(e.func, len(e.args))(*args)
            out = abs(float(self.ev(e)))
            for p, a in zip(parts, e.args):
                err = self(a)
                if not _is_zero(err):
                    out += abs(float(p)) * err
            return out
        raise NoBound(f"no rounding rule for {type(e).__name__}: {e}")

    def _sum(self, terms):
        errs = [self(a) for a in terms]
        sizes = [self.abs(a) for a in terms]
        out = max(1.0, _log2(len(terms))) * _total(sizes)
        for err in errs:
            if not _is_zero(err):
                out = out + err
        return out

    def _product(self, factors, node):
        """Entrywise (Hadamard or scalar) product: Σ_i err_i Π_{j≠i} |f_j| + (n-1) |product|."""
        errs = [self(a) for a in factors]
        sizes = [self.abs(a) for a in factors]
        out = (len(factors) - 1) * self.abs(node)
        for i, err in enumerate(errs):
            if _is_zero(err):
                continue
            term = err
            for j, s in enumerate(sizes):
                if j != i:
                    term = term * s
            out = out + term
        return out

    def _matmul(self, e):
        coeff_args = [a for a in e.args if not getattr(a, "is_Matrix", False)]
        mats = [a for a in e.args if getattr(a, "is_Matrix", False) and not isinstance(a, Identity)]
        c_err = self._coeff_err(coeff_args)
        c = 1.0
        for a in coeff_args:
            c *= float(self.ev(a))
        if not mats:  # c I
            n = int(np.shape(self.ev(e))[0])
            return 0.0 if _is_zero(c_err) else c_err * np.eye(n)
        # c (M_1 … M_n), left to right; the last step folds the coefficient's rounding in:
        # |c| err(P) + err(c) |P| + |c| |P|  =  |c| (err(P) + (1 + err(c)/|c|) |P|)
        scaled = not (c in (1.0, -1.0) and _is_zero(c_err))
        extra = (1.0 + float(c_err) / abs(c)) if scaled and c != 0 else 0.0
        if scaled and c == 0:
            return 0.0
        acc_abs, acc_err = self.abs(mats[0]), self(mats[0])
        if len(mats) == 1:
            out = acc_err if not scaled else (acc_err + extra * acc_abs if not _is_zero(acc_err) else extra * acc_abs)
            return out if not scaled else abs(c) * out
        last = len(mats) - 1
        for step, (left, m) in enumerate(zip(mats, mats[1:]), start=1):
            m_abs, m_err = self.abs(m), self(m)
            k = int(np.shape(acc_abs)[1])
            ones = isinstance(left, OneMatrix) or isinstance(m, OneMatrix)
            r = (0.0 if k == 1 else max(1.0, _log2(k))) if ones else 1.0 + _log2(k)
            if step == last:  # acc_abs (r' |M| + err(M)) + err(acc) |M|, r' with the coefficient's share
                rr = r + extra
                if _is_zero(m_err):  # one product: (r' |acc| + err(acc)) |M|
                    left_ = rr * acc_abs if _is_zero(acc_err) else (acc_err if rr == 0 else acc_err + rr * acc_abs)
                    err = 0.0 if (_is_zero(acc_err) and rr == 0) else left_ @ m_abs
                else:
                    err = acc_abs @ (m_err if rr == 0 else m_err + rr * m_abs)
                    if not _is_zero(acc_err):
                        err = err + acc_err @ m_abs
                return abs(c) * err if scaled else err
            new_abs = acc_abs @ m_abs
            err = r * new_abs if r else 0.0
            if not _is_zero(m_err):
                err = err + acc_abs @ m_err
            if not _is_zero(acc_err):
                err = err + acc_err @ m_abs
            acc_abs, acc_err = new_abs, err
        raise AssertionError("unreachable")

    def _coeff_err(self, coeff_args):
        if not coeff_args:
            return 0.0
        if len(coeff_args) == 1:
            return self(coeff_args[0])
        return self(sp.Mul(*coeff_args))

    def _elementwise(self, e):
        z = np.asarray(self.ev(e.arg), dtype=np.float64)
        err = self(e.arg)
        rounded = bool(getattr(OPS.get(str(e.args[0])), "float32_reciprocals", ()))
        slope, own = _error_fn(e.args[0], e.args[2], e.order)(z, self.K_float32 if rounded else self.K)
        out = np.broadcast_to(np.abs(np.asarray(own, dtype=np.float64)), z.shape)
        if _is_zero(err):
            return np.array(out)
        slope = np.broadcast_to(np.asarray(slope, dtype=np.float64), z.shape)
        for p in _kink_points(e):
            near = np.abs(z - float(p)) <= KINK_ULPS * self.eps * err
            if near.any():
                side = max(abs(one_sided(e.args[0], e.args[2], p, s, e.order + 1)) for s in (-1, 1))
                slope = np.where(near, np.maximum(slope, side), slope)
        return out + slope * err

    def _softmax(self, e):
        z = np.asarray(self.ev(e.arg), dtype=np.float64)
        err = self(e.arg)
        n = z.shape[1]
        az = np.abs(z)
        m = az.max(axis=1, keepdims=True)
        a = az + m if _is_zero(err) else err + az + m
        ra = a.max(axis=1, keepdims=True)
        c = max(1.0, _log2(n))
        if isinstance(e, SoftmaxRows):
            return self.abs(e) * (a + ra + 3.0 + c)
        shifted = z - z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return a + ra + az + m + 2.0 * np.abs(lse) + 2.0 + c


def _kink_points(e) -> list:
    """The finite kink points of an elementwise node (softplus with threshold=oo has none)."""
    try:
        points = e.row.kink_points(**e.params)
    except (TypeError, ValueError):
        return []
    return [p for p in points if sp.sympify(p).is_finite]


def _total(sizes):
    out = sizes[0]
    for s in sizes[1:]:
        out = out + s
    return out
