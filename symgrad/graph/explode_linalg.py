"""Exact scalar forms of small determinants, inverses and solves for the exploded back end."""

from __future__ import annotations

from itertools import permutations

import numpy as np

from .ir import Node

__all__ = ["LINALG", "MAX_LINALG_N", "det_form", "inverse_form", "linalg_entries"]

# Note [Exploded linear algebra]
# det, log|det|, inv and solve of matrices up to MAX_LINALG_N x MAX_LINALG_N are written out: det
# by Leibniz's formula (a polynomial of the entries), the inverse as adj(A) / det(A) with the adjugate's
# cofactors as determinants of minors -- never by elimination, whose pivots divide by entries that
# may be 0 in an invertible matrix ([[0, 1], [1, 0]]).  Larger ones (n! terms) stay refused, naming
# engine='graph'.
MAX_LINALG_N = 4
LINALG = ("det", "logabsdet", "inv", "solve")


def _parity(p: tuple) -> int:
    sign, seen = 1, list(p)
    for i in range(len(seen)):
        while seen[i] != i:
            j = seen[i]
            seen[i], seen[j] = seen[j], seen[i]
            sign = -sign
    return sign


def det_form(m: np.ndarray):
    """det of a square object array of entries, by Leibniz's formula (a polynomial, no division)."""
    import symengine as se

    n = m.shape[0]
    if n == 0:
        return se.Integer(1)
    return se.Add(*[_parity(p) * se.Mul(*[m[i, p[i]] for i in range(n)]) for p in permutations(range(n))])


def inverse_form(m: np.ndarray, det) -> np.ndarray:
    """The inverse of ``m`` as its adjugate over ``det`` (cofactors as determinants of minors)."""
    n = m.shape[0]
    out = np.empty((n, n), object)
    for i in range(n):
        for j in range(n):
            minor = np.delete(np.delete(m, j, axis=0), i, axis=1)
            out[i, j] = (-1) ** (i + j) * det_form(minor) / det
    return out


def linalg_entries(node: Node, args: list) -> np.ndarray:
    import symengine as se

    op, a = node.attrs["op"], args[0]
    out = np.empty(node.shape, object)
    for idx in np.ndindex(*a.shape[:-2]):
        m = np.asarray(a[idx], object)
        d = det_form(m)
        if op == "det":
            out[idx] = d
        elif op == "logabsdet":
            out[idx] = se.log(d * d) / 2  # log|d|, whose derivative d'/d symengine can take (not Abs's)
        elif op == "inv":
            out[idx] = inverse_form(m, d)
        else:  # solve: A X = B, B a vector or a matrix
            out[idx] = inverse_form(m, d) @ np.asarray(args[1][idx], object)
    return out
