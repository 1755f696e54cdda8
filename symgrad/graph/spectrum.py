"""What linalg.py and linalg_vectors.py share, below both: batched einsum specs, transposes, and
symmetric eigen- and singular decompositions with their rounding bounds (Note [Linalg rounding])."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .approx import Approx

__all__ = ["gamma", "_fro", "_spectrum", "_spec", "_t"]

_B = "abcdefgh"


def _spec(nb: int, core: str) -> str:
    """An einsum spec with ``nb`` batch letters in front of each operand's core letters."""
    ins, out = core.split("->")
    pre = _B[:nb]
    return ",".join(pre + s for s in ins.split(",")) + "->" + pre + out


def _t(a: Approx) -> Approx:
    return a.map(lambda t: np.swapaxes(t, -1, -2))


def gamma(n: int) -> float:
    """The backward-error constant of a dense factorisation of order ``n`` (Note [Linalg rounding])."""
    return 3.0 * n


def _fro(t: np.ndarray) -> np.ndarray:
    return np.sqrt(np.sum(t * t, axis=(-2, -1)))


def _spectrum(op: str, a: Approx) -> tuple:
    """(values, left vectors, right vectors) as Approx, bounded as Note [Linalg rounding] says."""
    n = min(a.shape[-2:])
    if op == "eigvalsh":
        lam, v = np.linalg.eigh(a.v)
        left = right = v
        others = lam
    else:
        left, lam, vh = np.linalg.svd(a.v, full_matrices=False)
        right = np.swapaxes(vh, -1, -2)
        others = np.concatenate([lam, np.zeros(lam.shape[:-1] + (1,))], axis=-1) if a.shape[-1] != a.shape[-2] else lam
    move = gamma(max(a.shape[-2:])) * _fro(np.abs(a.v)) + _fro(a.e)  # ‖δA‖_F, eps units
    values = Approx(lam, np.broadcast_to(move[..., None], lam.shape))
    if a.banded:
        width = np.broadcast_to(_fro(a.band())[..., None], lam.shape)
        values = Approx(lam, values.e, width, width)
    diff = np.abs(lam[..., :, None] - others[..., None, :])
    idx = np.arange(n)
    diff[..., idx, idx] = np.inf
    gap = diff.min(axis=-1)
    if np.any(gap == 0):
        raise InputError(f"{op}: repeated {'eigen' if op == 'eigvalsh' else 'singular '}values at these inputs: "
                         "their vectors, and so the derivative of the values' functions, are not unique; check at "
                         "inputs with distinct values")
    vec_e = (move[..., None] / gap)[..., None, :]
    return values, Approx(left, np.broadcast_to(vec_e, left.shape)), Approx(right, np.broadcast_to(vec_e, right.shape))
