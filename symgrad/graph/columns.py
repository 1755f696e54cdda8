"""The Jacobian by columns: one forward-mode sweep per differentiated input entry.

# Note [Jacobian by columns]
A Jacobian (``via="functional.jacobian"``, ``"jacrev"``, ``"jacfwd"``, ``"onehot-vjp"``) is built
by rows -- one reverse sweep per output entry -- or by columns -- one forward sweep per input
entry.  Both are exact and carry the same rounding bounds and kink bands; the check takes the
smaller count.  A weight Jacobian over a large batch (seed 004: 47 parameters, 2,000 outputs)
costs 47 tangent sweeps instead of 2,000 cotangent sweeps.  Kinked units widen the bands here
(forward mode has no joint kink check): sound, and coarser only where a unit sits on its kink.
"""

from __future__ import annotations

import numpy as np

from .approx import Approx
from .engine import tangent

__all__ = ["by_columns"]


def by_columns(graph, values: dict, out, ctx, nodes: dict, shapes: dict, out_shape: tuple) -> dict:
    """``{name: Approx}`` shaped ``out_shape + shapes[name]``: d out / d name, column by column
    (``nodes[name]``: the leaf node, or None where the output does not depend on it)."""
    result = {}
    m = int(np.prod(out_shape)) if out_shape else 1
    for name, node in nodes.items():
        shape = tuple(shapes[name])
        size = int(np.prod(shape)) if shape else 1
        v, e = np.zeros((size, m)), np.zeros((size, m))
        lo, hi = np.zeros((size, m)), np.zeros((size, m))
        if node is not None:
            for j in range(size):
                seed = np.zeros(size)
                seed[j] = 1.0
                t = tangent(graph, values, {node: Approx(seed.reshape(node.shape))}, out, ctx)
                if t is None:
                    continue
                v[j] = np.broadcast_to(t.v, out_shape).ravel()
                e[j] = np.broadcast_to(t.e, out_shape).ravel()
                t_lo, t_hi = t.sides()
                lo[j] = np.broadcast_to(t_lo, out_shape).ravel()
                hi[j] = np.broadcast_to(t_hi, out_shape).ravel()
        full = tuple(out_shape) + shape
        result[name] = Approx(*(a.T.reshape(full) for a in (v, e, lo, hi)))
    return result
