"""Eigenvectors, singular vectors and QR factors as ``linalg`` nodes: forward values with rounding
bounds, reverse-mode (VJP) and forward-mode (JVP) rules in Approx arithmetic.

# Note [Linalg vectors]
Each factor is a node of its own (``eigh_vectors``, ``svd_u``, ``svd_v``, ``qr_q``, ``qr_r``) whose
rules are the part of the factorisation's derivative that reaches it, so a function of several
factors gets the sum, as torch's joint backward does.  With ``A = V diag(λ) Vᵀ`` (symmetric, distinct
λ), ``A = U diag(s) Vᵀ`` (``m >= n``, thin, distinct nonzero s) and ``A = Q R`` (``m >= n``, reduced),
``E_ij = 1/(λ_j - λ_i)``, ``F_ij = 1/(s_j² - s_i²)`` (0 on the diagonal), ``P = Uᵀ dA V``,
``C = Qᵀ dA R⁻¹``, ``X = C - tril(C,-1) + tril(C,-1)ᵀ``:

* ``dV = V (E ∘ Vᵀ dA V)``,               ``Ā = V (E ∘ skew(Vᵀ V̄)) Vᵀ``;
* ``dU = U (F ∘ (P S + S Pᵀ)) + (dA V - U P) S⁻¹``,
  ``Ā = U (F ∘ (UᵀŪ - ŪᵀU)) S Vᵀ + (Ū - U UᵀŪ) S⁻¹ Vᵀ``;
* ``dV = V (F ∘ (S P + Pᵀ S)) + (dAᵀ U - V Pᵀ) S⁻¹``,
  ``Ā = U S (F ∘ (VᵀV̄ - V̄ᵀV)) Vᵀ + U S⁻¹ (V̄ - V VᵀV̄)ᵀ``;
* ``dR = X R``, ``dQ = dA R⁻¹ - Q X``;  ``Ā = (Q̄ + Q symu(W)) R⁻ᵀ`` with ``W = R̄ Rᵀ - Qᵀ Q̄`` and
  ``symu(W)`` the symmetric matrix of W's upper triangle (adjoint of the map ``dA -> (dQ, dR)``).

Vectors are defined up to sign (a joint sign for ``u_i, v_i``): the derivative is that of the branch
through the computed vectors, and a function of them has the same derivative on every branch only if
it is gauge invariant (``U diag(f(s)) Vᵀ``, ``U Uᵀ``, ``|U|``, vectors with a fixed sign convention).
The op graph takes the signs torch's own factorisation gives at the traced input (``attrs["signs"]``,
a choice of branch, never an allowance), so a function that is not invariant compares on the same
branch; where torch's run lands on the other sign, the forward row disagrees and the check FAILs
(never passes).

Rounding: the values move as Note [Linalg rounding] says (vectors by ``‖δA‖_F / gap``); a QR from
Householder reflections is the exact QR of ``A + δA`` with ``|δa_ij| <= γ ‖a_j‖₂`` (Higham Thm 19.4,
``γ = 3mn`` roundings), pushed through ``|C| <= |Qᵀ| |δA| |R⁻¹|`` as the tangent formulas above
(absolute values).  The rules' own rounding follows from Approx arithmetic.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .approx import Approx, add, einsum, mul, scale
from .spectrum import _spec, _t

__all__ = ["OPS", "forward", "vjp", "jvp", "reciprocal_gaps", "signs_like"]

OPS = ("eigh_vectors", "svd_u", "svd_v", "qr_q", "qr_r")
def _cols(a: Approx, signs) -> Approx:
    """Columns times ±1 (exact)."""
    s = _per_column(signs, a.shape)[..., None, :]
    return Approx(a.v * s, a.e) if not a.banded else Approx(a.v * s, a.e, a.lo, a.hi)


def _per_column(signs, shape) -> np.ndarray:
    return np.broadcast_to(np.asarray(signs, np.float64), tuple(shape[:-2]) + tuple(shape[-1:]))


def reciprocal_gaps(vals: Approx) -> Approx:
    """``G_ij = 1 / (vals_j - vals_i)`` off the diagonal, 0 on it, with its rounding bound."""
    v = vals.v
    diff = v[..., None, :] - v[..., :, None]
    n = v.shape[-1]
    eye = np.eye(n, dtype=bool)
    e_diff = vals.e[..., None, :] + vals.e[..., :, None] + np.abs(diff)
    safe = np.where(eye, 1.0, diff)
    g = np.where(eye, 0.0, 1.0 / safe)
    e = np.where(eye, 0.0, np.abs(g) * e_diff / np.abs(safe) + np.abs(g))
    if not vals.banded:
        return Approx(g, e)
    w = vals.band()
    width = np.where(eye, 0.0, np.abs(g) * (w[..., None, :] + w[..., :, None]) / np.abs(safe))
    return Approx(g, e, width, width)


def _recip(a: Approx) -> Approx:
    v = 1.0 / a.v
    e = a.e * v * v + np.abs(v)
    if not a.banded:
        return Approx(v, e)
    w = a.band() * v * v
    return Approx(v, e, w, w)


def signs_like(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """Per column: +1 or -1 to make ``ours`` point as ``theirs`` does (a branch, Note [Linalg vectors])."""
    dots = np.sum(ours * theirs, axis=-2)
    return np.where(dots < 0, -1.0, 1.0)


# ------------------------------------------------------------------------------------ factorisations

def _eigh(a: Approx, attrs: dict) -> tuple:
    from .spectrum import _spectrum

    lam, vec, _ = _spectrum("eigvalsh", a)
    return lam, _cols(vec, attrs.get("signs", 1.0))


def _svd(a: Approx, attrs: dict) -> tuple:
    from .spectrum import _spectrum

    s, u, v = _spectrum("svdvals", a)
    signs = attrs.get("signs", 1.0)
    return _cols(u, signs), s, _cols(v, signs)


def _qr(a: Approx, attrs: dict) -> tuple:
    q, r = np.linalg.qr(a.v)
    signs = _per_column(attrs.get("signs", 1.0), a.shape)
    q, r = q * signs[..., None, :], r * signs[..., :, None]
    if np.any(np.abs(np.diagonal(r, axis1=-2, axis2=-1)) == 0):
        raise InputError("qr: the matrix has dependent columns at these inputs (R is singular): its derivative "
                         "does not exist there; check at inputs with independent columns")
    m, n = a.shape[-2:]
    nb = len(a.shape) - 2
    col = np.sqrt(np.sum(a.v * a.v, axis=-2, keepdims=True))
    pert = 3.0 * m * n * np.broadcast_to(col, a.shape) + a.e
    e_q, e_r = _qr_spread(q, r, pert, nb)
    if not a.banded:
        return Approx(q, e_q), Approx(r, e_r)
    w_q, w_r = _qr_spread(q, r, a.band(), nb)
    return Approx(q, e_q, w_q, w_q), Approx(r, e_r, w_r, w_r)


def _qr_spread(q, r, pert, nb):
    """|dQ|, |dR| for an input perturbation bounded entrywise by ``pert`` (the tangent formulas)."""
    ri = np.abs(np.linalg.inv(r))
    c = np.einsum(_spec(nb, "ki,kl,lj->ij"), np.abs(q), pert, ri)
    low = np.tril(c, -1)
    x = c + low + np.swapaxes(low, -1, -2)
    e_r = np.einsum(_spec(nb, "ik,kj->ij"), x, np.abs(r))
    e_q = np.einsum(_spec(nb, "ik,kj->ij"), pert, ri) + np.einsum(_spec(nb, "ik,kj->ij"), np.abs(q), x)
    return e_q, e_r


def forward(op: str, args: list, attrs: dict) -> Approx:
    a = args[0]
    if op == "eigh_vectors":
        return _eigh(a, attrs)[1]
    if op in ("svd_u", "svd_v"):
        u, _, v = _svd(a, attrs)
        return u if op == "svd_u" else v
    if op in ("qr_q", "qr_r"):
        q, r = _qr(a, attrs)
        return q if op == "qr_q" else r
    raise ValueError(f"unknown linalg op {op!r}; known: {OPS}")


# --------------------------------------------------------------------------------------- reverse mode

def _skew(m: Approx, sign: float = -1.0) -> Approx:
    """``m - mᵀ`` (``sign=-1``) or ``m + mᵀ``."""
    return add(m, _t(m), sign)


def _symu(w: Approx) -> Approx:
    """The symmetric matrix of ``w``'s upper triangle (diagonal once)."""
    up = w.map(np.triu)
    strict = w.map(lambda t: np.swapaxes(np.triu(t, 1), -1, -2))
    return add(up, strict)


def vjp(op: str, args: list, g: Approx, attrs: dict, inverse=None) -> list:
    a = args[0]
    nb = len(a.shape) - 2
    if op == "eigh_vectors":
        lam, vec = _eigh(a, attrs)
        inner = scale(_skew(einsum(_spec(nb, "ki,kj->ij"), vec, g)), 0.5)
        return [einsum(_spec(nb, "ik,kl,jl->ij"), vec, mul(reciprocal_gaps(lam), inner), vec)]
    if op in ("svd_u", "svd_v"):
        u, s, v = _svd(a, attrs)
        f = reciprocal_gaps(mul(s, s))
        inv_s = _recip(s)
        if op == "svd_u":
            m = einsum(_spec(nb, "ki,kj->ij"), u, g)
            first = einsum(_spec(nb, "ik,kl,l,jl->ij"), u, mul(f, _skew(m)), s, v)
            rest = add(g, einsum(_spec(nb, "ik,kj->ij"), u, m), -1.0)
            return [add(first, einsum(_spec(nb, "il,l,jl->ij"), rest, inv_s, v))]
        m = einsum(_spec(nb, "ki,kj->ij"), v, g)
        first = einsum(_spec(nb, "ik,k,kl,jl->ij"), u, s, mul(f, _skew(m)), v)
        rest = add(g, einsum(_spec(nb, "ik,kj->ij"), v, m), -1.0)
        return [add(first, einsum(_spec(nb, "ik,k,jk->ij"), u, inv_s, rest))]
    if op in ("qr_q", "qr_r"):
        q, r = _qr(a, attrs)
        r_inv_t = _t(inverse(r))
        if op == "qr_q":
            w = scale(einsum(_spec(nb, "ki,kj->ij"), q, g), -1.0)
            inner = add(g, einsum(_spec(nb, "ik,kj->ij"), q, _symu(w)))
        else:
            inner = einsum(_spec(nb, "ik,kj->ij"), q, _symu(einsum(_spec(nb, "ik,jk->ij"), g, r)))
        return [einsum(_spec(nb, "ik,kj->ij"), inner, r_inv_t)]
    raise ValueError(f"unknown linalg op {op!r}")


# --------------------------------------------------------------------------------------- forward mode

def jvp(op: str, args: list, t: Approx, attrs: dict, inverse=None) -> Approx:
    """The tangent of the factor from the input's tangent ``t`` (Note [Linalg vectors])."""
    a = args[0]
    nb = len(a.shape) - 2
    if op == "eigh_vectors":
        lam, vec = _eigh(a, attrs)
        inner = einsum(_spec(nb, "ki,kl,lj->ij"), vec, t, vec)
        return einsum(_spec(nb, "ik,kj->ij"), vec, mul(reciprocal_gaps(lam), inner))
    if op in ("svd_u", "svd_v"):
        u, s, v = _svd(a, attrs)
        f = reciprocal_gaps(mul(s, s))
        p = einsum(_spec(nb, "ki,kl,lj->ij"), u, t, v)
        if op == "svd_u":
            ps = einsum(_spec(nb, "ij,j->ij"), p, s)  # P S (+ S Pᵀ, its transpose)
            first = einsum(_spec(nb, "ik,kj->ij"), u, mul(f, add(ps, _t(ps))))
            rest = add(einsum(_spec(nb, "ik,kj->ij"), t, v), einsum(_spec(nb, "ik,kj->ij"), u, p), -1.0)
        else:
            sp = einsum(_spec(nb, "i,ij->ij"), s, p)  # S P (+ Pᵀ S, its transpose)
            first = einsum(_spec(nb, "ik,kj->ij"), v, mul(f, add(sp, _t(sp))))
            rest = add(einsum(_spec(nb, "ki,kj->ij"), t, u), einsum(_spec(nb, "ik,jk->ij"), v, p), -1.0)
        return add(first, einsum(_spec(nb, "ij,j->ij"), rest, _recip(s)))
    if op in ("qr_q", "qr_r"):
        q, r = _qr(a, attrs)
        r_inv = inverse(r)
        c = einsum(_spec(nb, "ki,kl,lj->ij"), q, t, r_inv)
        low = c.map(lambda m: np.tril(m, -1))
        x = add(c, add(low, _t(low), -1.0), -1.0)
        if op == "qr_r":
            return einsum(_spec(nb, "ik,kj->ij"), x, r)
        return add(einsum(_spec(nb, "ik,kj->ij"), t, r_inv), einsum(_spec(nb, "ik,kj->ij"), q, x), -1.0)
    raise ValueError(f"unknown linalg op {op!r}")
