"""Every linear rule is checked against its own forward before a result is trusted.

# Note [Adjoint cross-check]
For a node that is linear in each argument (``contract``: multilinear; ``select``, ``layout`` and a
``reduce`` sum: linear), the reverse-mode rule is right exactly when it is the adjoint of the
forward: ``<w, f(..., u_i, ...)> = <vjp_i(w), u_i>`` for all ``u_i`` and ``w``.  With small random
*integers* for ``u`` and ``w`` both sides are exact in float64 (every product and sum is an integer
far below 2**53), so the test has no tolerance at all: a wrong index, a missing transpose or a
dropped term shows up as an inequality.  The check runs at the node's own shapes, on the graph being
checked, through the same code (and the same BLAS or numpy route, Note [Fast contractions]) as the
real evaluation, and is remembered per node signature for the rest of the process.  Only values
are compared, so it computes no rounding bounds (``approx.values_only``).  Pointwise rules are
``sympy.diff`` of the node's form; ``max``/``min`` reductions route the cotangent to the extreme
(tested in ``tests/graph``).
"""

from __future__ import annotations

import hashlib

import numpy as np

from .approx import Approx, values_only
from .ir import Graph, Node
from .rules import forward, vjp
from .scalar import Ctx

__all__ = ["crosscheck", "CrossCheckFailure"]

_PASSED: set = set()
_MAX_ENTRIES = 50_000_000


class CrossCheckFailure(Exception):
    pass


def _signature(node: Node) -> str:
    h = hashlib.sha1()
    h.update(f"{node.kind}|{[a.shape for a in node.args]}|{node.shape}".encode())
    for k, v in sorted(node.attrs.items()):
        if k.startswith("_"):
            continue
        if isinstance(v, np.ndarray):
            h.update(v.tobytes())
        else:
            h.update(f"{k}={v!r}".encode())
    return h.hexdigest()


def _linear(node: Node) -> bool:
    return node.kind in ("contract", "select", "layout") or (node.kind == "reduce" and node.attrs["op"] == "sum")


def crosscheck(graph: Graph, rng: np.random.Generator | None = None) -> list:
    """The nodes whose rule failed the adjoint identity (empty: every linear rule holds)."""
    rng = rng or np.random.default_rng(0)
    ctx = Ctx()
    failed = []
    for node in graph.nodes:
        if not _linear(node) or node.size > _MAX_ENTRIES:
            continue
        key = _signature(node)
        if key in _PASSED:
            continue
        if _adjoint_holds(node, rng, ctx):
            _PASSED.add(key)
        else:
            failed.append(node)
    return failed


def _adjoint_holds(node: Node, rng, ctx: Ctx) -> bool:
    with values_only():  # the identity reads values only: no rounding bounds (Note [Fast contractions])
        return _identity(node, rng, ctx)


def _integers(rng, shape) -> np.ndarray:
    return rng.integers(-3, 4, size=shape, dtype=np.int8).astype(np.float64)


def _identity(node: Node, rng, ctx: Ctx) -> bool:
    us = [Approx(_integers(rng, a.shape)) for a in node.args]
    w = Approx(_integers(rng, node.shape))
    out = forward(node, us, ctx)
    out_v = out.v
    if node.kind == "select":  # affine: the fill (padding's value, -inf of max pooling) is its constant part
        out_v = np.where(node.attrs["idx"] > 0, out_v, 0.0)
    lhs = float(np.sum(w.v * out_v))
    grads = vjp(node, us, w, ctx, [True] * len(us))
    if node.kind == "contract":  # multilinear: the identity holds for each argument on its own
        return all(g is not None and float(np.sum(g.v * u.v)) == lhs for g, u in zip(grads, us))
    rhs = sum(float(np.sum(g.v * u.v)) for g, u in zip(grads, us) if g is not None)
    return rhs == lhs
