"""softmax, log_softmax and logsumexp: defined by their forward, with the max shift detached.

# Note [Shift-invariant composites]
torch evaluates these with a shift by the row maximum ``m`` (``exp(x - m)``), which changes no value:
softmax(x - c) = softmax(x) for any c, and logsumexp(x) = c + logsumexp(x - c).  So the exact
derivative through ``m`` is zero, and ``m`` enters the op graph as a ``stop`` node: the derivative
is unchanged, ties in the maximum are no kinks (any choice gives the same value), and the
rounding bound does not charge a cotangent that torch's own backward never computes (the sum of
the row's terms routed to the argmax, which cancels exactly).

# Note [logsumexp' from its rounded output]
torch's logsumexp backward is g * exp(x - out), from its own rounded output out, whose absolute
error is |out| eps: every entry of the gradient inherits a relative error of |out| eps (2e-13 at
logits of 800 in float64).  The graph's derivative exp(x - m) / sum(exp(x - m)) never touches out,
and its bound allowed a few eps: torch's own logsumexp of logits near 300 failed on the op graph.
The output node is marked ``reuses_output``: its reverse and forward rules charge each local
derivative |out| roundings of its own size besides (graph/rules.py, ``_reused_output``).
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from .aten import computed_in_float32, handles
from .aten_scan import _ids, log_of


def _shifted(b, x, dim):
    x = b.node_of(x)
    dim = dim % len(x.shape) if x.shape else 0
    m = b.stop(b.reduce("max", x, (dim,), True))
    z = b.pointwise(lambda s, t: s - t, [x, m], x.shape)
    return x, dim, m, z


# Note [A half softmax in float32]
# torch's CPU softmax of a float16 or bfloat16 tensor computes in float32 and rounds its result
# once; its backward, ``y * (g - sum(g * y))``, computes in float32 from that rounded result y and
# rounds once (measured: no entry differs from those roundings).  Charged one half rounding per step
# of the decomposition, a bfloat16 attention was allowed most of each gradient entry and a softmax
# backward 2 % off passed.  So in a half check softmax's nodes are charged float32 roundings, a
# narrowing cast rounds its output, and its last node's local derivatives are charged one half
# rounding of their own size each (``output_rounded_in``; rules.py ``_reused_output``): the error of
# the rounded y torch's backward reads, which reaches every entry through sum(g * y); where y is
# below the half dtype's normal range, the rounding of its spacing.  torch's forward-mode formula,
# ``y * (t - sum(y * t))``, runs as half-precision aten ops: tangents keep half roundings per step.
@handles("aten._softmax", "aten.softmax.int")
def _softmax(b, args, kwargs, val):
    x, dim, _, z = _shifted(b, args[0], args[1])
    e = b.pointwise(sp.exp, [z], z.shape)
    total = b.reduce("sum", e, (dim,), True)
    y = b.pointwise(lambda s, t: s / t, [e, total], e.shape)
    return computed_in_float32(b, [z, e, total, y], y)


@handles("aten._log_softmax", "aten.log_softmax.int")
def _log_softmax(b, args, kwargs, val):
    x, dim, _, z = _shifted(b, args[0], args[1])
    total = b.reduce("sum", b.pointwise(sp.exp, [z], z.shape), (dim,), True)
    return b.pointwise(lambda s, t: s - sp.log(t), [z, total], z.shape)


@handles("aten.logsumexp")
def _logsumexp(b, args, kwargs, val):
    dims = args[1] if len(args) > 1 else kwargs.get("dim")
    keep = bool(args[2]) if len(args) > 2 else kwargs.get("keepdim", False)
    x = b.node_of(args[0])
    axes = tuple(d % len(x.shape) for d in (dims if isinstance(dims, (list, tuple)) else [dims])) if x.shape else ()
    m = b.reduce("max", x, axes, True)
    empty = _masked_rows(b, x, axes)
    unshifted = empty | _masked_rows(b, x, axes, np.inf, any_entry=True)
    if unshifted.any():  # Note [A masked row]: shift 0 (and for a masked row, sum + 1, output -inf)
        m = b.select([m], np.where(unshifted, 0, _ids(m)))
    m = b.stop(m)
    total = b.reduce("sum", b.pointwise(lambda s, t: sp.exp(s - t), [x, m], x.shape), axes, True)
    out = log_of(b, total, m, empty, reuse=True)  # Note [logsumexp' from its rounded output]
    return b.layout("reshape", out, tuple(val.shape)) if not keep else out


# Note [A masked row]
# logsumexp over a row of -inf alone (a fully masked attention row) is log 0 = -inf, as torch's is;
# but its shift, the row's maximum, was -inf too, and -inf - -inf = NaN made the reference NaN.  Such a
# row is shifted by 0, its sum gets 1 (log 1 = 0) and its output is a select's fill of -inf, which
# passes no cotangent back: the output does not move with any entry of the row, and torch's
# gradient there is 0 (Note [An empty prefix] in aten_scan.py, whose ``log_of`` builds it).  A row
# holding +inf is shifted by 0 as torch shifts it: its sum and output are +inf (inf - inf made the
# reference NaN).
def _masked_rows(b, x, axes, at: float = -np.inf, any_entry: bool = False) -> np.ndarray:
    """Rows (over ``axes``) whose entries are all ``at`` (or, with ``any_entry``, hold one)."""
    values = b.value_of(x).numpy()
    if not axes:
        return values == at
    return (np.any if any_entry else np.all)(values == at, axis=axes, keepdims=True)

