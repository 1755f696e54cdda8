"""Linear-algebra handlers: each op as a ``linalg`` core node (``symgrad.graph.linalg``: inverse,
solve, det, log|det|, Cholesky, eigenvalues, singular values) with the ``select`` of the triangle
LAPACK reads and contractions around it (``cholesky_solve``, ``solve_triangular``)."""

from __future__ import annotations

import numpy as np

from ..errors import UnsupportedOp
from .aten import handles
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


def _unused_outputs(b, positions, what):
    used = {u.args[1] for u in b.fx_node.users if len(u.args) > 1 and isinstance(u.args[1], int) and u.users}
    if used & set(positions):
        raise UnsupportedOp(f"{b.fx_node.target}: the op graph has the {what} only (eigen- and singular vectors are "
                            "not defined on it yet); use torch.linalg.eigvalsh / svdvals, or pass symbolic=")


@handles("aten._linalg_eigh", "aten.linalg_eigh")
def _eigh(b, args, kwargs, val):
    _unused_outputs(b, (1,), "eigenvalues")
    uplo = args[1] if len(args) > 1 else kwargs.get("UPLO", "L")
    full = _mirror(b, args[0], uplo == "L")
    return _lin(b, "eigvalsh", [full], tuple(val[0].shape)), None


def _mirror(b, a, lower: bool):
    """The symmetric matrix LAPACK reads: one triangle of ``a`` mirrored (a ``select``)."""
    a = b.node_of(a)
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
    _unused_outputs(b, (0, 2), "singular values")
    return None, _lin(b, "svdvals", [args[0]], tuple(val[1].shape)), None


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
