"""Stage 3, lower: a SymPy scalar written out over matrix entries, as a few batched torch ops.

# Note [Entries written out]
SymPy writes an entry of a matrix product out as a sum at construction: ``(a.T * X * b)[0, 0]`` is
already ``sum_j (sum_i X[i, j] a[i, 0]) b[j, 0]`` before symgrad sees it.  Lowered one node at a time
(``symgrad.lower.torch.walker``) that is one torch op per term, n**2 of them, and the op graph traced
from it has as many nodes: at n = 60 the check took a minute.  The terms of such a sum share their
shape and differ only in which entries they read.  Here every subexpression gets a *template*: its
tree with each matrix entry replaced by the name of its matrix (the indices dropped); numbers,
symbols and function types stay.  Subexpressions with one template are evaluated together: each
entry position becomes one gather of the matrix at a vector of indices, each operation one batched
torch op over the vector, and a sum (or product) of k terms with a common template a reshape to
(members, k) and one reduction.  The example becomes a few gathers, two products and two sums, for
any n; the op graph differentiates the gathers (a scatter-add) like any indexing.

The arguments of a sum or a product are taken in the order of their templates, so that terms SymPy
printed as ``X[1, 0]*a[1, 0]`` and ``a[0, 0]*X[0, 0]`` line up.  Nodes outside the batched set (a
``Piecewise``, a matrix function inside the scalar) are lowered member by member through the walker
and stacked: slower, never different.
"""

from __future__ import annotations

from typing import Callable

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixElement

from .torch import SYMPY_TO_TORCH

__all__ = ["MANY_ENTRIES", "entry_count", "batched"]

MANY_ENTRIES = 64  # a scalar reading more matrix entries than this is lowered in batches


def entry_count(expr: sp.Basic) -> int:
    """How many distinct matrix entries (with integer indices) a SymPy scalar reads."""
    return sum(1 for e in expr.atoms(MatrixElement) if _fixed(e))


def _fixed(e) -> bool:
    return isinstance(e, MatrixElement) and e.i.is_Integer and e.j.is_Integer


class _Templates:
    """Template ids of subexpressions: equal ids, equal trees up to the indices of matrix entries."""

    def __init__(self):
        self.ids: dict = {}
        self.memo: dict = {}
        self.reads: dict = {}  # template id -> whether it reads a matrix entry

    def of(self, e) -> int:
        got = self.memo.get(e)
        if got is not None:
            return got
        if _fixed(e):
            key, reads = ("entry", e.parent), True
        elif not e.args:
            key, reads = ("atom", e), False
        else:
            kids = [self.of(a) for a in e.args]
            if e.is_Add or e.is_Mul:
                kids.sort()
            key, reads = (e.func, tuple(kids)), any(self.reads[k] for k in kids)
        tid = self.ids.setdefault(key, len(self.ids))
        self.reads[tid] = reads
        self.memo[e] = tid
        return tid


def batched(expr: sp.Basic, matrix: Callable, walk: Callable):
    """The torch value of the scalar ``expr``: ``matrix(M)`` gives the tensor of a matrix expression,
    ``walk(e)`` lowers one scalar node by node (the fallback, and the leaves without entries)."""
    import torch

    tpl = _Templates()

    def ev(members: list):
        e0 = members[0]
        g = len(members)
        if not tpl.reads[tpl.of(e0)]:  # one template and no entries: the members are one expression
            return walk(e0).reshape(()).expand(g)
        if _fixed(e0):
            rows = torch.tensor([int(m.i) for m in members])
            cols = torch.tensor([int(m.j) for m in members])
            return matrix(e0.parent)[rows, cols]
        if e0.is_Add or e0.is_Mul:
            return _reduce(members, e0.is_Add)
        if e0.is_Pow:
            base, ex = e0.args
            b = ev([m.args[0] for m in members])
            if ex.is_Number:
                return torch.sqrt(b) if ex == sp.S.Half else b ** float(ex)
            return b ** ev([m.args[1] for m in members])
        if type(e0) in SYMPY_TO_TORCH and not any(isinstance(a, sp.MatrixExpr) for a in e0.args) \
                and not isinstance(e0, sp.polygamma):
            return SYMPY_TO_TORCH[type(e0)](*(ev([m.args[k] for m in members]) for k in range(len(e0.args))))
        return torch.stack([walk(m).reshape(()) for m in members])

    def _reduce(members: list, add: bool):
        by_template: dict[int, list] = {}
        for m in members:
            for a in m.args:
                by_template.setdefault(tpl.of(a), []).append(a)
        total = None
        for tid in sorted(by_template):  # every member holds the same count k of each template
            terms = by_template[tid]
            k = len(terms) // len(members)
            vals = ev(terms).reshape(len(members), k)
            part = vals.sum(dim=1) if add else vals.prod(dim=1)
            total = part if total is None else (total + part if add else total * part)
        return total

    return ev([expr]).reshape(())
