"""Linear-algebra handlers: each op as a ``linalg`` core node (``symgrad.graph.linalg``: inverse,
solve, det, log|det|, Cholesky, eigenvalues, singular values; ``symgrad.graph.linalg_vectors``:
eigenvectors, singular vectors, QR) with the ``select`` of the triangle
LAPACK reads and contractions around it (``cholesky_solve``, ``solve_triangular``)."""

from __future__ import annotations

import numpy as np

from ..errors import UnsupportedOp
from .aten import handles
from .linalg_vectors import signs_like
from .trace import Builder


def _lin(b: Builder, op: str, nodes, shape):
    return b.add("linalg", [b.node_of(n) for n in nodes], shape, op=op)


def _info(val):
    """LAPACK's status: 0 (success; a singular matrix is refused when the node is evaluated)."""
    import torch

    return torch.zeros(tuple(val.shape), dtype=val.dtype)


@handles("aten.linalg_inv_ex")
def _inv(b, args, kwargs, val):
    return _lin(b, "inv", [args[0]], tuple(val[0].shape)), _info(val[1])


@handles("aten._linalg_solve_ex")
def _solve(b, args, kwargs, val):
    left = args[2] if len(args) > 2 else kwargs.get("left", True)
    if not left:
        raise UnsupportedOp("linalg.solve with left=False: transpose the system instead")
    a, rhs = b.node_of(args[0]), b.node_of(args[1])
    if len(rhs.shape) not in (len(a.shape), len(a.shape) - 1) or rhs.shape[:len(a.shape) - 2] != a.shape[:-2]:
        raise UnsupportedOp("linalg.solve with broadcast batch axes: expand the operands to one batch shape first")
    return _lin(b, "solve", [a, rhs], tuple(val[0].shape)), None, None, _info(val[3])


@handles("aten._linalg_det")
def _det(b, args, kwargs, val):
    return _lin(b, "det", [args[0]], tuple(val[0].shape)), None, None


@handles("aten._linalg_slogdet")
def _slogdet(b, args, kwargs, val):
    import torch

    with torch.no_grad():
        sign = torch.linalg.slogdet(b.value_of(b.node_of(args[0])))[0]
    return sign, _lin(b, "logabsdet", [args[0]], tuple(val[1].shape)), None, None


def _used(b, positions) -> bool:
    """Whether the traced code reads any of these outputs of the current (tuple-valued) fx node."""
    used = {u.args[1] for u in b.fx_node.users if len(u.args) > 1 and isinstance(u.args[1], int) and u.users}
    return bool(used & set(positions))


def _torch_factors(b, node, dtype, fn):
    """torch's own factorisation of a node's value in the checked dtype: only to pick the sign of each
    vector (a branch, Note [Linalg vectors]), never a value or an allowance."""
    import torch

    with torch.no_grad():
        return fn(b.value_of(node).to(dtype))


@handles("aten._linalg_eigh", "aten.linalg_eigh")
def _eigh(b, args, kwargs, val):
    uplo = args[1] if len(args) > 1 else kwargs.get("UPLO", "L")
    full = _mirror(b, args[0], uplo == "L")
    values = _lin(b, "eigvalsh", [full], tuple(val[0].shape))
    if not _used(b, (1,)):
        return values, None
    import torch

    theirs = _torch_factors(b, full, val[1].dtype, lambda t: torch.linalg.eigh(t)[1]).double().numpy()
    ours = np.linalg.eigh(b.value_of(full).numpy())[1]
    vectors = b.add("linalg", [full], tuple(val[1].shape), op="eigh_vectors", signs=signs_like(ours, theirs))
    return values, vectors


# Note [One triangle read]
# cholesky, eigh and eigvalsh read one triangle of their input (LAPACK's), and the op graph
# differentiates what they read: the other triangle's derivative is 0.  torch's backward returns the
# derivative for a symmetric perturbation instead, half to each triangle (its documented convention),
# so the two differ wherever the matrix given is itself an input.  Both are right for a symmetric
# input built symmetric ((A + A.mT) / 2, X X^T): there they agree.  The graph records the ops
# (``graph.one_triangle``) and a failing derivative row of such a check says so (graph/check.py).
def _mirror(b, a, lower: bool):
    """The symmetric matrix LAPACK reads: one triangle of ``a`` mirrored (a ``select``)."""
    a = b.node_of(a)
    op = str(getattr(b.fx_node, "target", "aten.linalg")).split(".")[1]
    op = op.lstrip("_").replace("linalg_", "linalg.").removesuffix("_ex")
    b.graph.one_triangle = sorted(set(getattr(b.graph, "one_triangle", ())) | {op})
    keep = np.tril(np.ones(a.shape[-2:])) if lower else np.triu(np.ones(a.shape[-2:]))
    idx = np.arange(1, a.size + 1).reshape(a.shape)
    return b.select([a], np.where(keep.astype(bool), idx, np.swapaxes(idx, -1, -2)))


@handles("aten.linalg_cholesky_ex")
def _chol(b, args, kwargs, val):
    upper = args[1] if len(args) > 1 else kwargs.get("upper", False)
    low = _lin(b, "cholesky", [_mirror(b, args[0], not upper)], tuple(val[0].shape))
    if upper:
        n = len(low.shape)
        low = b.layout("permute", low, tuple(range(n - 2)) + (n - 1, n - 2))
    return low, _info(val[1])


@handles("aten._linalg_svd", "aten.linalg_svd")
def _svd(b, args, kwargs, val):
    a = b.node_of(args[0])
    values = _lin(b, "svdvals", [a], tuple(val[1].shape))
    if not _used(b, (0, 2)):
        return None, values, None
    default = "_linalg_svd" not in str(b.fx_node.target)  # aten._linalg_svd's default is False, linalg_svd's True
    full = args[1] if len(args) > 1 else kwargs.get("full_matrices", default)
    return _svd_nodes(b, a, full, val[0].dtype, values)


def _svd_nodes(b, a, full, dtype, values):
    """(U, S, Vh) of node ``a`` as linalg nodes (thin; a wide matrix through its transpose)."""
    import torch

    m, n = a.shape[-2:]
    if full and m != n:
        raise UnsupportedOp("linalg.svd with full_matrices=True on a non-square matrix: the extra columns of U or Vh "
                            "are not unique (torch's backward ignores them); pass full_matrices=False")
    nd = len(a.shape)
    swap = tuple(range(nd - 2)) + (nd - 1, nd - 2)
    tall = a if m >= n else b.layout("permute", a, swap)
    left, _, right_h = np.linalg.svd(b.value_of(tall).numpy(), full_matrices=False)
    ours = left if m >= n else np.swapaxes(right_h, -1, -2)  # A's U either way
    theirs = _torch_factors(b, a, dtype, lambda t: torch.linalg.svd(t, full_matrices=False)[0])
    signs = signs_like(ours, theirs.double().numpy())
    k = min(m, n)
    u_t = b.add("linalg", [tall], tall.shape[:-1] + (k,), op="svd_u", signs=signs)
    v_t = b.add("linalg", [tall], tall.shape[:-2] + (tall.shape[-1], k), op="svd_v", signs=signs)
    u, v = (u_t, v_t) if m >= n else (v_t, u_t)
    return u, values, b.layout("permute", v, swap)


@handles("aten.linalg_pinv")
def _pinv(b, args, kwargs, val):
    """``A⁺ = V S⁻¹ Uᵀ`` at full rank (torch's rank cutoff keeps every singular value there)."""
    import torch

    a = b.node_of(args[0])
    atol = kwargs.get("atol", args[1] if len(args) > 1 else None)
    rtol = kwargs.get("rtol", args[2] if len(args) > 2 else None)
    if kwargs.get("hermitian", args[3] if len(args) > 3 else False):
        raise UnsupportedOp("linalg.pinv with hermitian=True: use hermitian=False (the same value at a symmetric input)")
    s = torch.linalg.svdvals(b.value_of(a))
    tol = [float(torch.as_tensor(t).max()) for t in (atol,) if t is not None]
    eps = torch.finfo(val.dtype).eps * max(a.shape[-2:]) if rtol is None and not tol else rtol
    if eps is not None:
        tol.append(float(torch.as_tensor(eps).max()) * float(s.max()))
    if float(s.min()) <= max(tol + [0.0]) * 4:
        raise UnsupportedOp("linalg.pinv at a rank-deficient matrix (or within rounding of torch's rank cutoff): "
                            "the op graph has the full-rank pseudo-inverse; check where the matrix has full rank")
    values = _lin(b, "svdvals", [a], tuple(s.shape))
    u, _, vh = _svd_nodes(b, a, False, val.dtype, values)
    inv_s = b.pointwise(lambda t: 1 / t, [values])
    pre = "abcdefgh"[:len(a.shape) - 2]
    return b.contract(f"{pre}ki,{pre}k,{pre}jk->{pre}ij", vh, inv_s, u)


@handles("aten.linalg_qr")
def _qr(b, args, kwargs, val):
    import torch

    a = b.node_of(args[0])
    mode = args[1] if len(args) > 1 else kwargs.get("mode", "reduced")
    m, n = a.shape[-2:]
    if m < n or (mode != "reduced" and m != n):
        raise UnsupportedOp(f"linalg.qr with mode={mode!r} on a {m}x{n} matrix: the op graph has the reduced QR of "
                            "a matrix with at least as many rows as columns (the other factors are not unique)")
    r_np = np.linalg.qr(b.value_of(a).numpy())[1]
    r_torch = _torch_factors(b, a, val[1].dtype, lambda t: torch.linalg.qr(t)[1]).double().numpy()
    signs = np.where(np.diagonal(r_np, axis1=-2, axis2=-1) * np.diagonal(r_torch, axis1=-2, axis2=-1) < 0, -1.0, 1.0)
    q = b.add("linalg", [a], tuple(val[0].shape), op="qr_q", signs=signs) if mode != "r" else None
    return q, b.add("linalg", [a], tuple(val[1].shape), op="qr_r", signs=signs)


def _triangle(b, a, lower: bool, unit: bool = False):
    """The triangle of ``a`` a triangular solve reads (a ``select``; a unit diagonal is a constant)."""
    import torch

    a = b.node_of(a)
    n = a.shape[-1]
    keep = np.tril(np.ones((n, n)), -1 if unit else 0) if lower else np.triu(np.ones((n, n)), 1 if unit else 0)
    idx = np.arange(1, a.size + 1).reshape(a.shape)
    tri = b.select([a], np.where(keep.astype(bool), idx, 0))
    if unit:
        tri = b.pointwise(lambda s, c: s + c, [tri, torch.eye(n, dtype=torch.float64)], tri.shape)
    return tri


@handles("aten.cholesky_solve")
def _cholesky_solve(b, args, kwargs, val):
    """``(L Lᵀ)⁻¹ B`` (``Uᵀ U`` with ``upper``): a contraction, then a solve."""
    rhs, factor = b.node_of(args[0]), args[1]
    upper = args[2] if len(args) > 2 else kwargs.get("upper", False)
    tri = _triangle(b, factor, not upper)
    nb = len(tri.shape) - 2
    pre = "abcdefgh"[:nb]
    spec = f"{pre}ik,{pre}jk->{pre}ij" if not upper else f"{pre}ki,{pre}kj->{pre}ij"
    return _lin(b, "solve", [b.contract(spec, tri, tri), rhs], tuple(val.shape))


@handles("aten.linalg_solve_triangular")
def _solve_triangular(b, args, kwargs, val):
    a, rhs = args[0], b.node_of(args[1])
    upper = args[2] if len(args) > 2 else kwargs["upper"]
    left = kwargs.get("left", args[3] if len(args) > 3 else True)
    unit = kwargs.get("unitriangular", args[4] if len(args) > 4 else False)
    if not left:
        raise UnsupportedOp("solve_triangular with left=False: transpose the system instead")
    return _lin(b, "solve", [_triangle(b, a, not upper, unit), rhs], tuple(val.shape))
