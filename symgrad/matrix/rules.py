"""The derivative rules of the matrix engine, one small function per node type.

A rule is registered in ``VJP_RULES`` / ``JVP_RULES``:

- ``vjp(node, g, i)``: the cotangent of the ``i``-th child given the node's cotangent ``g``
  (``g`` has the node's shape; a scalar node gets a scalar ``g``);
- ``jvp(node, tangents)``: the node's tangent from its children's tangents (``None`` = zero).

Each rule's docstring states its identity.  Scalar glue (``log``, ``+``, ``*``, ``**`` of traces,
determinants and 1x1 entries) is differentiated by ``sympy.diff`` on dummies (``_vjp_scalar``,
``_jvp_scalar``), which is exact.  ``symgrad.matrix.diff`` walks an expression with these rules.
"""

from __future__ import annotations

import sympy as sp
from sympy import (
    Determinant,
    HadamardPower,
    HadamardProduct,
    Identity,
    Inverse,
    MatAdd,
    MatMul,
    OneMatrix,
    Trace,
    Transpose,
)

from sympy.matrices.expressions.matexpr import MatrixElement

from symgrad.matrix.errors import UnsupportedOp
from symgrad.matrix.nodes import Elementwise, LogSoftmaxRows, SoftmaxRows, hadamard, hpow, scale

__all__ = ["VJP_RULES", "JVP_RULES", "is_matrix"]

VJP_RULES: dict[type, callable] = {}
JVP_RULES: dict[type, callable] = {}


def is_matrix(e) -> bool:
    return getattr(e, "is_Matrix", False)


def _rule(table, *types):
    def register(fn):
        for t in types:
            table[t] = fn
        return fn

    return register


def _mul(factors):
    """Product of a list of scalars and matrices, canonicalised by SymPy (``*`` operator)."""
    out = factors[0]
    for f in factors[1:]:
        out = out * f
    return out


def _ones_col(n):
    return OneMatrix(n, 1)


def _rowsum_bcast(M):
    """``(M 1) 1ᵀ``: each row replaced by its sum, broadcast back to M's shape."""
    n = M.shape[1]
    return M * _ones_col(n) * _ones_col(n).T


# ---------------------------------------------------------------------------------------------
# reverse rules: vjp(node, g, i) -> cotangent of node.args[i]


@_rule(VJP_RULES, MatMul)
def _vjp_matmul(node, g, i):
    """d(c A₁…Aₙ): Āᵢ = c (A₁…Aᵢ₋₁)ᵀ G (Aᵢ₊₁…Aₙ)ᵀ; for a scalar factor c: c̄ = tr(Gᵀ · rest)."""
    args = node.args
    scalars = [a for k, a in enumerate(args) if not is_matrix(a) and k != i]
    coeff = sp.Mul(*scalars)
    if not is_matrix(args[i]):
        rest = _mul([coeff] + [a for a in args if is_matrix(a)])
        return Trace(g.T * rest)
    left = [a for a in args[:i] if is_matrix(a)]
    right = [a for a in args[i + 1 :] if is_matrix(a)]
    parts = []
    if left:
        parts.append(_mul(left).T)
    parts.append(g)
    if right:
        parts.append(_mul(right).T)
    return scale(coeff, _mul(parts))


def _scalar_of(m):
    """A 1x1 matrix expression as a scalar (``tr`` of a 1x1 is its entry)."""
    if isinstance(m, Trace):
        return m
    return Trace(m) if is_matrix(m) else m


@_rule(VJP_RULES, MatAdd)
def _vjp_matadd(node, g, i):
    """d(A + B) : Ā = G, B̄ = G."""
    return g


@_rule(VJP_RULES, Transpose)
def _vjp_transpose(node, g, i):
    """d(Aᵀ) : Ā = Gᵀ."""
    return g.T


@_rule(VJP_RULES, HadamardProduct)
def _vjp_hadamard(node, g, i):
    """d(A ⊙ B) : Ā = G ⊙ B."""
    return hadamard(g, *(a for k, a in enumerate(node.args) if k != i))


@_rule(VJP_RULES, HadamardPower)
def _vjp_hadamard_power(node, g, i):
    """d(A^{∘p}) : Ā = p G ⊙ A^{∘(p-1)}  (p constant)."""
    base, p = node.args
    return scale(p, hadamard(g, hpow(base, p - 1)))


@_rule(VJP_RULES, Inverse)
def _vjp_inverse(node, g, i):
    """d(A⁻¹) = -A⁻¹ dA A⁻¹ : Ā = -A⁻ᵀ G A⁻ᵀ."""
    inv_t = Inverse(node.arg).T
    return -(inv_t * g * inv_t)


@_rule(VJP_RULES, Trace)
def _vjp_trace(node, g, i):
    """d tr(A) = tr(dA) : Ā = g I."""
    return g * Identity(node.arg.shape[0])


@_rule(VJP_RULES, Determinant)
def _vjp_det(node, g, i):
    """d det(A) = det(A) tr(A⁻¹ dA) : Ā = g det(A) A⁻ᵀ  (Jacobi's formula)."""
    return g * Determinant(node.arg) * Inverse(node.arg).T


@_rule(VJP_RULES, MatrixElement)
def _vjp_element(node, g, i):
    """d M[0,0] of a 1x1 M : M̄ = g I₁."""
    if i != 0:
        return None
    if node.parent.shape != (1, 1):
        raise UnsupportedOp(f"derivative through the entry {node} of a non-1x1 matrix is not supported")
    return g * Identity(1)


@_rule(VJP_RULES, Elementwise)
def _vjp_elementwise(node, g, i):
    """d f(A) = f'(A) ⊙ dA : Ā = G ⊙ f'(A)."""
    return hadamard(g, node.derivative()) if i == 1 else None


@_rule(VJP_RULES, SoftmaxRows)
def _vjp_softmax(node, g, i):
    """S = softmax(Z) by rows : Z̄ = S ⊙ (G − ((G ⊙ S) 1) 1ᵀ)."""
    return hadamard(node, g - _rowsum_bcast(hadamard(g, node)))


@_rule(VJP_RULES, LogSoftmaxRows)
def _vjp_log_softmax(node, g, i):
    """L = Z − log(exp(Z) 1) 1ᵀ by rows : Z̄ = G − softmax(Z) ⊙ ((G 1) 1ᵀ)."""
    return g - hadamard(SoftmaxRows(node.arg), _rowsum_bcast(g))


def _vjp_scalar(node, g, i):
    """Scalar glue f(a₁, …, aₙ): āᵢ = g ∂f/∂aᵢ (exact, by sympy.diff on dummies)."""
    dummies = [sp.Dummy() for _ in node.args]
    d = node.func(*dummies).diff(dummies[i])
    return g * d.xreplace(dict(zip(dummies, node.args)))


# ---------------------------------------------------------------------------------------------
# forward rules: jvp(node, tangents) -> tangent of node (tangents[i] is None when zero)


def _present(node, tangents):
    return [(k, t) for k, t in enumerate(tangents) if t is not None]


def _sum(terms):
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    return out


@_rule(JVP_RULES, MatMul)
def _jvp_matmul(node, tangents):
    """d(A₁…Aₙ) = Σᵢ A₁…dAᵢ…Aₙ."""
    return _sum([_mul([t if k == i else a for k, a in enumerate(node.args)]) for i, t in _present(node, tangents)])


@_rule(JVP_RULES, MatAdd)
def _jvp_matadd(node, tangents):
    """d(A + B) = dA + dB."""
    return _sum([t for _, t in _present(node, tangents)])


@_rule(JVP_RULES, Transpose)
def _jvp_transpose(node, tangents):
    """d(Aᵀ) = (dA)ᵀ."""
    return tangents[0].T


@_rule(JVP_RULES, HadamardProduct)
def _jvp_hadamard(node, tangents):
    """d(A ⊙ B) = dA ⊙ B + A ⊙ dB."""
    return _sum([hadamard(t, *(a for k, a in enumerate(node.args) if k != i)) for i, t in _present(node, tangents)])


@_rule(JVP_RULES, HadamardPower)
def _jvp_hadamard_power(node, tangents):
    """d(A^{∘p}) = p A^{∘(p-1)} ⊙ dA."""
    base, p = node.args
    return scale(p, hadamard(hpow(base, p - 1), tangents[0]))


@_rule(JVP_RULES, Inverse)
def _jvp_inverse(node, tangents):
    """d(A⁻¹) = -A⁻¹ dA A⁻¹."""
    return -(node * tangents[0] * node)


@_rule(JVP_RULES, Trace)
def _jvp_trace(node, tangents):
    """d tr(A) = tr(dA)."""
    return Trace(tangents[0])


@_rule(JVP_RULES, Determinant)
def _jvp_det(node, tangents):
    """d det(A) = det(A) tr(A⁻¹ dA)."""
    return node * Trace(Inverse(node.arg) * tangents[0])


@_rule(JVP_RULES, MatrixElement)
def _jvp_element(node, tangents):
    """d M[i,j] = (dM)[i,j]."""
    return tangents[0][node.i, node.j]


@_rule(JVP_RULES, Elementwise)
def _jvp_elementwise(node, tangents):
    """d f(A) = f'(A) ⊙ dA."""
    return hadamard(node.derivative(), tangents[1])


@_rule(JVP_RULES, SoftmaxRows)
def _jvp_softmax(node, tangents):
    """d softmax(Z) = S ⊙ (dZ − ((S ⊙ dZ) 1) 1ᵀ)."""
    return hadamard(node, tangents[0] - _rowsum_bcast(hadamard(node, tangents[0])))


@_rule(JVP_RULES, LogSoftmaxRows)
def _jvp_log_softmax(node, tangents):
    """d log_softmax(Z) = dZ − ((softmax(Z) ⊙ dZ) 1) 1ᵀ."""
    return tangents[0] - _rowsum_bcast(hadamard(SoftmaxRows(node.arg), tangents[0]))


def _jvp_scalar(node, tangents):
    """d f(a₁, …, aₙ) = Σᵢ ∂f/∂aᵢ daᵢ."""
    dummies = [sp.Dummy() for _ in node.args]
    f = node.func(*dummies)
    back = dict(zip(dummies, node.args))
    return sp.Add(*(f.diff(dummies[i]).xreplace(back) * _scalar_of(t) for i, t in _present(node, tangents)))
