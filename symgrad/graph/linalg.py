"""The ``linalg`` core node kind: inverse, solve, determinant and log-determinant of square
matrices (batched over leading axes), with their forward, reverse-mode (VJP) and forward-mode (JVP)
rules in Approx arithmetic; eigenvectors, singular vectors and QR are in ``linalg_vectors``.

# Note [Linalg rounding]
LU with partial pivoting is componentwise backward stable to first order: the computed result is
the exact one for ``A + δA`` with ``|δA| <= γ |A|``, ``γ = 3n`` roundings (Higham, "Accuracy and
Stability of Numerical Algorithms", Thm 9.3 and 14.4, taking the growth factor ``|L||U| ~ |A|``,
true for the diagonally dominant and well-conditioned matrices derivatives are checked at).  So:

* ``X = A⁻¹``:   ``e_X = |X| (γ |A| + e_A) |X|``;
* ``Y = A⁻¹B``:  ``e_Y = |A⁻¹| ((γ |A| + e_A) |Y| + e_B)``;
* ``d = det A``: ``e_d = |d| Σ |X_ji| (γ |A_ij| + e_A,ij)`` (``δd = d tr(X δA)``);
* ``log|det A|``: the same without ``|d|``, plus one rounding of the log;
* eigenvalues of a symmetric ``A`` and singular values move by at most ``‖δA‖₂ <= ‖δA‖_F`` (Weyl),
  with ``‖δA‖_F <= γ ‖A‖_F + ‖e_A‖_F`` for a backward-stable eigensolver or SVD; the vectors their
  reverse-mode rules use (``Ā = V diag(λ̄) Vᵀ``, ``Ā = U diag(σ̄) Vᵀ``) move by ``‖δA‖ / gap``
  (Davis-Kahan), the gap to the nearest other value (and to 0 for singular vectors);
* ``L = chol(A)``: ``A + δA = L Lᵀ`` with ``|δA| <= (n + 1) |L||Lᵀ|``, and ``δL = L Φ(L⁻¹ δA L⁻ᵀ)``
  (``Φ``: the lower triangle, diagonal halved), so ``e_L = |L| Φ(|L⁻¹| ((n+1)|L||Lᵀ| + e_A) |L⁻ᵀ|)``;
  its reverse rule is torch's ``Ā = sym(L⁻ᵀ Φ(Lᵀ L̄) L⁻¹)`` (``sym(X) = (X + Xᵀ)/2``: the input is
  symmetric).

The reverse- and forward-mode rules are products of these values (``Ā = -Xᵀ Ȳ Yᵀ`` for a solve, ``Ā = d̄ d Xᵀ``
for det) written with :func:`symgrad.graph.approx.einsum`, so their own rounding follows from the
values' bounds (Note [Approx arithmetic]).  Bands (kinks upstream) pass through to first order.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from . import linalg_vectors
from .spectrum import _spec, _spectrum, _t, gamma
from . import approx
from .approx import Approx, add, einsum, mul, scale

__all__ = ["OPS", "NOT_RERUN", "forward", "vjp", "jvp"]

OPS = ("inv", "solve", "det", "logabsdet", "eigvalsh", "svdvals", "cholesky") + linalg_vectors.OPS
def _inverse(a: Approx) -> np.ndarray:
    try:
        return _refined(a.v, np.linalg.inv(a.v))
    except np.linalg.LinAlgError as err:
        raise InputError("a matrix the op graph inverts (linalg inv/solve/det) is singular at these inputs: its "
                         "derivative does not exist there; check at inputs where it is invertible") from err


# Note [A refined inverse]
# The exact value a check compares with must be more accurate than the dtype checked.  LAPACK's
# float64 inverse errs by about cond(A) * eps in each entry (more than the |X| |A| |X| rounding bound
# charged for it in places: on a 3 x 3 matrix of condition 5, an entry 1.6e-16 off against 9e-17
# allowed, while torch's own was 2.5e-17 off: torch.linalg.inv failed).  One step of iterative
# refinement with the residual in numpy's extended precision, X + X (I - A X), leaves an error of
# about cond(A) * 2**-64 on top of the final rounding; past REFINE_WORK multiplications (a 512 x
# 512 matrix) the step is skipped.
REFINE_WORK = 2.0**28


def _refined(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    n = a.shape[-1]
    if np.finfo(np.longdouble).eps >= np.finfo(np.float64).eps or 2.0 * n**3 * max(1, a.size // (n * n)) > REFINE_WORK:
        return x  # no wider type here (or too large): LAPACK's own
    wide_a, wide_x = a.astype(np.longdouble), x.astype(np.longdouble)
    residual = np.eye(n, dtype=np.longdouble) - wide_a @ wide_x
    out = (wide_x + wide_x @ residual).astype(np.float64)
    return np.where(np.isfinite(out), out, x)


# Note [Determinant at a singular matrix]
# det is a polynomial: its derivative, the cofactor matrix cof(A) (= det(A) A⁻ᵀ where A is
# invertible), exists everywhere, and a det backward at a singular matrix is a classic place for a
# NaN (computed through the inverse).  Where A is singular the rules use cof(A) itself: cof_ij =
# (-1)^(i+j) det(A without row i and column j), each minor by LU.  The forward's bound is the same
# first-order one, Σ |cof_ij| (γ(n)|A_ij| + e_ij).  A cofactor's own bound is Hadamard's: changing
# row k of a minor by δ moves its determinant by at most |δ|₂ Π_{l≠k} |row_l|₂, so with row norms
# R_l of |A| and P_l of γ(n)|A| + e, cof_ij errs by at most Σ_{k≠i} P_k Π_{l≠i,k} R_l (loose, valid).
# Near a singular matrix the inverse path is exact in theory but not in floats: d and A⁻ᵀ are each
# far less accurate than their product, and the bound of d A⁻ᵀ let a backward off by 0.1 % pass at
# [[.1, .2, .3], [.4, .5, .6], [.7, .8, .9]]; so det reads cofactors for every matrix up to
# ``MAX_COFACTOR_N`` (minors cost n² determinants), beyond it the inverse as before (refusing a
# singular one).  inv, solve and log|det| have no derivative at a singular matrix and still refuse.
MAX_COFACTOR_N = 32


def _by_cofactors(a: np.ndarray) -> bool:
    """Whether det's rules read cofactors: every matrix up to ``MAX_COFACTOR_N`` (exact where the
    inverse is not: at and near a singular matrix, d A⁻ᵀ is a product of two inaccurate factors)."""
    return a.shape[-1] <= MAX_COFACTOR_N


def _cofactors(a: np.ndarray) -> np.ndarray:
    n = a.shape[-1]
    if n == 1:
        return np.ones_like(a)
    out = np.empty_like(a)
    for i in range(n):
        rows = [r for r in range(n) if r != i]
        for j in range(n):
            cols = [c for c in range(n) if c != j]
            out[..., i, j] = (-1) ** (i + j) * np.linalg.det(a[..., rows, :][..., cols])
    return out


def _cofactor_approx(a: Approx) -> Approx:
    n = a.shape[-1]
    rows = np.linalg.norm(np.abs(a.v), axis=-1)  # R_l
    pert = np.linalg.norm(_gamma(n) * np.abs(a.v) + a.e, axis=-1)  # P_l
    e = np.zeros(a.shape)
    for i in range(n):
        others = [k for k in range(n) if k != i]
        total = np.zeros(a.shape[:-2])
        for k in others:
            rest = [m for m in others if m != k]
            total = total + pert[..., k] * (np.prod(rows[..., rest], axis=-1) if rest else 1.0)
        e[..., i, :] = total[..., None]
    return Approx(_cofactors(a.v), e)


def _gamma(n: int) -> float:
    return gamma(n)


def _with_band(v, e, lo_hi_width):
    if lo_hi_width is None:
        return Approx(v, e)
    return Approx(v, e, lo_hi_width, lo_hi_width)


def _phi(t: np.ndarray) -> np.ndarray:
    low = np.tril(t)
    return low - 0.5 * np.tril(np.triu(low))


def _cholesky(a: Approx) -> Approx:
    try:
        low = np.linalg.cholesky(a.v)
    except np.linalg.LinAlgError as err:
        raise InputError("cholesky: the matrix is not positive definite at these inputs; check where it is") from err
    nb = len(a.shape) - 2
    li = np.abs(np.linalg.inv(low))
    al = np.abs(low)
    pert = (a.shape[-1] + 1) * np.einsum(_spec(nb, "ik,jk->ij"), al, al) + a.e
    inner = np.einsum(_spec(nb, "ij,jk,lk->il"), li, pert, li)
    e = np.einsum(_spec(nb, "ij,jk->ik"), al, _phi(inner))
    if not a.banded:
        return Approx(low, e)
    width = np.einsum(_spec(nb, "ij,jk->ik"), al, _phi(np.einsum(_spec(nb, "ij,jk,lk->il"), li, a.band(), li)))
    return Approx(low, e, width, width)


# Note [Linalg in the reruns]
# The statistical reruns (Note [Statistical allowance] in montecarlo.py) move every operation's
# result by its own rounding bound with a random sign; a factorisation's result is no sum of
# roundings of its own, but the exact result for a moved input (Note [Linalg rounding]).  So in a
# rerun a linear-algebra node is evaluated exactly at ``A + δA``, ``δA`` its backward error moved
# with a random sign per entry (``approx.rounded_input``: equal values share a sign, so a symmetric
# matrix stays symmetric; values a power of two apart do not, as the roundings of one operation's
# results do: with them a row twice another moved in proportion, a singular integer matrix stayed
# singular in every rerun, and torch's float32 det gradient there failed), ``γ |A|`` for LU,
# ``(n + 1) |L||Lᵀ|`` for Cholesky.  Without them the graphs holding such nodes kept the worst case, which compounds along
# a chain: a Kalman filter's 20 inverses were allowed 4e42 ulps, a GP's Cholesky 1e13, and seeded
# bugs of 1e-5 passed.  The reverse and forward rules move their matrix too (torch's backward
# factorises it again or reads its factors, with their own rounding): read unmoved, a determinant's
# cofactors did not spread at all, and torch's float32 det gradient of random 8 x 8 matrices failed.
# Outside the reruns ``rounded`` returns ``A`` itself.
# The spectral ops (eigenvalues, singular values, their vectors, QR) are not: near a repeated value
# the moves rotate the vectors by far more than first order, and the reruns' spread says nothing
# (eigvalsh at a numerically repeated eigenvalue failed torch's own gradient); graphs holding them
# keep the worst case (montecarlo.wanted, kink_caps: ``NOT_RERUN``).
NOT_RERUN = ("eigvalsh", "svdvals") + linalg_vectors.OPS


def _backward_error(op: str, a: Approx) -> Approx:
    if not approx.perturbing_now() or a.v.ndim < 2 or op in NOT_RERUN:
        return a
    if op == "cholesky":
        try:
            low = np.abs(np.linalg.cholesky(a.v))
        except np.linalg.LinAlgError:
            return a  # the forward says where it is not positive definite
        own = (a.shape[-1] + 1) * np.einsum(_spec(len(a.shape) - 2, "ik,jk->ij"), low, low)
    else:
        own = _gamma(a.shape[-1]) * np.abs(a.v)
    return Approx(approx.rounded_input(a.v, own), a.e, *((a.lo, a.hi) if a.banded else ()))


def forward(op: str, args: list, attrs: dict | None = None) -> Approx:
    return _evaluate(op, _moved(op, args), attrs)


def _moved(op: str, args: list) -> list:
    return [_backward_error(op, args[0])] + list(args[1:])  # Note [Linalg in the reruns]


def _evaluate(op: str, args: list, attrs: dict | None = None) -> Approx:
    a = args[0]
    if op in linalg_vectors.OPS:  # eigen-/singular vectors, QR (Note [Linalg vectors])
        return linalg_vectors.forward(op, args, attrs or {})
    if op in ("eigvalsh", "svdvals"):
        return _spectrum(op, a)[0]
    if op == "cholesky":
        return _cholesky(a)
    n = a.shape[-1]
    nb = len(a.shape) - 2
    if op == "det" and _by_cofactors(a.v):  # Note [Determinant at a singular matrix]
        cof = _cofactors(a.v)
        e = np.einsum(_spec(nb, "ij,ij->"), np.abs(cof), _gamma(n) * np.abs(a.v) + a.e)
        width = None if not a.banded else np.einsum(_spec(nb, "ij,ij->"), np.abs(cof), a.band())
        return _with_band(np.linalg.det(a.v), e, width)
    x = _inverse(a)
    ax, aa = np.abs(x), np.abs(a.v)
    pert = _gamma(n) * aa + a.e  # the backward error and the input's own error, in eps units
    band = a.band() if a.banded else None
    if op == "inv":
        mm = _spec(nb, "ij,jk,kl->il")
        e = np.einsum(mm, ax, pert, ax)
        width = None if band is None else np.einsum(mm, ax, band, ax)
        return _with_band(x, e, width)
    if op == "solve":
        b = args[1]
        y = np.linalg.solve(a.v, b.v)
        if x is not None and np.finfo(np.longdouble).eps < np.finfo(np.float64).eps:  # Note [A refined inverse]
            apply = np.matmul if b.v.ndim == a.v.ndim else (lambda m, v: np.einsum("...ij,...j->...i", m, v))
            wide_y = y.astype(np.longdouble)
            residual = b.v.astype(np.longdouble) - apply(a.v.astype(np.longdouble), wide_y)
            refined = (wide_y + apply(x, residual.astype(np.float64))).astype(np.float64)
            y = np.where(np.isfinite(refined), refined, y)
        core = "ij,jk->ik" if b.v.ndim == a.v.ndim else "ij,j->i"
        mm = _spec(nb, core)
        e = np.einsum(mm, ax, np.einsum(mm, pert, np.abs(y)) + b.e)
        width = None
        if band is not None or b.banded:
            width = np.einsum(mm, ax, np.einsum(mm, a.band(), np.abs(y)) + b.band())
        return _with_band(y, e, width)
    tr = _spec(nb, "ji,ij->")
    rel = np.einsum(tr, ax, pert)
    width = None if band is None else np.einsum(tr, ax, band)
    if op == "det":
        d = np.linalg.det(a.v)
        return _with_band(d, np.abs(d) * rel, None if width is None else np.abs(d) * width)
    if op == "logabsdet":
        v = np.linalg.slogdet(a.v)[1]
        return _with_band(v, rel + np.abs(v), width)
    raise ValueError(f"unknown linalg op {op!r}; known: {OPS}")


def vjp(op: str, args: list, out: Approx, g: Approx, needed: list, attrs: dict | None = None) -> list:
    """One cotangent per argument, from the forward's values (``out``) in Approx arithmetic."""
    args = _moved(op, args)  # torch's backward factorises A again, or reads its factors: its own rounding
    a = args[0]
    if op in linalg_vectors.OPS:
        return linalg_vectors.vjp(op, args, g, attrs or {}, inverse=lambda m: forward("inv", [m]))
    nb = len(a.shape) - 2
    if op in ("eigvalsh", "svdvals"):  # Ā = U diag(ḡ) Vᵀ
        _, left, right = _spectrum(op, a)
        return [einsum(_spec(nb, "ij,j,kj->ik"), left, g, right)]
    if op == "cholesky":  # Ā = sym(L⁻ᵀ Φ(Lᵀ L̄) L⁻¹)
        li = forward("inv", [out])
        m = einsum(_spec(nb, "ki,kj->ij"), out, g).map(_phi)
        ga = einsum(_spec(nb, "ki,kl,lj->ij"), li, m, li)
        return [scale(add(ga, _t(ga)), 0.5)]
    if op == "det" and _by_cofactors(a.v):  # Ā = ḡ cof(A), which exists at a singular A too
        return [mul(g.map(lambda t: t[..., None, None]), _cofactor_approx(a))]
    xi = _evaluate("inv", [a]) if op != "inv" else out
    if op == "inv":  # Ā = -Xᵀ G Xᵀ
        xt = _t(xi)
        return [scale(einsum(_spec(nb, "ij,jk,kl->il"), xt, g, xt), -1.0)]
    if op == "solve":  # B̄ = A⁻ᵀ G,  Ā = -B̄ Yᵀ
        b = args[1]
        vec = b.v.ndim != a.v.ndim
        gb = einsum(_spec(nb, "ji,j->i" if vec else "ji,jk->ik"), xi, g)
        ga = scale(einsum(_spec(nb, "i,j->ij" if vec else "ik,jk->ij"), gb, out), -1.0) if needed[0] else None
        return [ga, gb if needed[1] else None]
    xt = _t(xi)
    expand = (lambda t: t[..., None, None])
    if op == "det":  # Ā = ḡ d Xᵀ
        gd = mul(g, out)
        return [mul(gd.map(expand), xt)]
    if op == "logabsdet":  # Ā = ḡ Xᵀ
        return [mul(g.map(expand), xt)]
    raise ValueError(f"unknown linalg op {op!r}")


def jvp(op: str, args: list, tangents: list, attrs: dict | None = None) -> Approx | None:
    """Forward mode: the output's tangent from the arguments' (``None``: zero), in Approx arithmetic:
    ``dX = -X dA X``, ``dY = A⁻¹ (dB - dA Y)``, ``dd = d tr(X dA)``, ``d log|d| = tr(X dA)``,
    ``dλ_i = v_iᵀ dA v_i``, ``ds_i = u_iᵀ dA v_i``, ``dL = L Φ(L⁻¹ dA L⁻ᵀ)`` (Note [Linalg rounding]:
    their rounding follows from the values' bounds)."""
    args = _moved(op, args)  # Note [Linalg in the reruns]
    a = args[0]
    ta = tangents[0]
    nb = len(a.shape) - 2
    if op == "solve":
        return _jvp_solve(args, tangents, nb)
    if ta is None:
        return None
    if op in linalg_vectors.OPS:
        return linalg_vectors.jvp(op, args, ta, attrs or {}, inverse=lambda m: forward("inv", [m]))
    if op in ("eigvalsh", "svdvals"):
        _, left, right = _spectrum(op, a)
        return einsum(_spec(nb, "ki,kl,li->i"), left, ta, right)
    if op == "cholesky":
        low = _cholesky(a)
        li = forward("inv", [low])
        inner = einsum(_spec(nb, "ik,kl,jl->ij"), li, ta, li).map(_phi)
        return einsum(_spec(nb, "ik,kj->ij"), low, inner)
    if op == "det" and _by_cofactors(a.v):
        return einsum(_spec(nb, "ij,ij->"), _cofactor_approx(a), ta)
    x = _evaluate("inv", [a])
    if op == "inv":
        return scale(einsum(_spec(nb, "ik,kl,lj->ij"), x, ta, x), -1.0)
    trace = einsum(_spec(nb, "ij,ji->"), x, ta)
    if op == "det":
        return mul(_evaluate("det", [a]), trace)
    if op == "logabsdet":
        return trace
    raise ValueError(f"unknown linalg op {op!r}; known: {OPS}")


def _jvp_solve(args: list, tangents: list, nb: int) -> Approx | None:
    a, b = args
    ta, tb = tangents
    if ta is None and tb is None:
        return None
    vec = b.v.ndim != a.v.ndim
    rhs = tb
    if ta is not None:
        y = _evaluate("solve", args)
        moved = einsum(_spec(nb, "ij,j->i" if vec else "ij,jk->ik"), ta, y)
        rhs = scale(moved, -1.0) if tb is None else add(tb, moved, -1.0)
    return einsum(_spec(nb, "ij,j->i" if vec else "ij,jk->ik"), _evaluate("inv", [a]), rhs)
