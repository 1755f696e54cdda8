"""The op graph: the single intermediate form of a check.

A :class:`Graph` is a list of :class:`Node` in topological order.  Every node is one of a small,
closed set of core kinds; composite ops (softmax, layer_norm, convolution, every loss) are built
from them by their forward definition (``symgrad.graph.trace``), so derivatives, rounding bounds
and kink rules exist once per kind (``symgrad.graph.rules``):

==============  ==========================================================================
kind            meaning (attrs)
==============  ==========================================================================
``leaf``        an input, parameter or constant (``role``: input / param / const; ``value``)
``pointwise``   a SymPy form of scalar symbols ``s0, s1, ...`` applied with broadcasting
                (``expr``); its derivatives are ``sympy.diff`` of the form
``contract``    an einsum (``spec``): matmul, bmm, linear, the kernel side of a convolution
``reduce``      ``sum`` / ``max`` / ``min`` over ``axes`` (``keepdim``); ties of max/min are kinks
``layout``      reshape / permute / expand (``op``, ``arg``): a numpy view and its adjoint
``select``      out.flat[i] = concat(args).flat[idx[i] - 1], 0 where idx[i] = 0 (``idx``):
                slicing, gather, cat, pad, flip, roll, embedding, im2col patches, ... -- any
                op that only moves entries; its adjoint adds them back
``stop``        the value of its argument with no derivative (``detach``)
``linalg``      inverse, solve, det, log|det|, Cholesky, eigenvalues and -vectors, singular
                values and vectors, QR (``op``; ``symgrad.graph.linalg``, ``linalg_vectors``)
==============  ==========================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["Node", "Graph", "KINDS"]

KINDS = ("leaf", "pointwise", "contract", "reduce", "layout", "select", "stop", "linalg")


@dataclass(eq=False)
class Node:
    kind: str
    args: tuple = ()
    attrs: dict = field(default_factory=dict)
    shape: tuple = ()
    name: str = ""  # the torch name (parameter / input) or the fx node it came from
    origin: str = ""  # the torch op this node (or the composite it belongs to) came from

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown node kind {self.kind!r}; the core kinds are {KINDS}")
        self.shape = tuple(int(d) for d in self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)  # not np.prod: a thousand times per check, 10x slower on a tuple

    def __repr__(self) -> str:
        return f"Node({self.kind}, {self.name or self.origin}, shape={self.shape})"


@dataclass
class Graph:
    """Nodes in topological order, the named leaves and the output(s)."""

    nodes: list = field(default_factory=list)
    inputs: dict = field(default_factory=dict)  # name -> leaf node (inputs and parameters)
    outputs: list = field(default_factory=list)
    repeated: set = field(default_factory=set)  # nodes others were merged into (Note [One node per computation])

    def add(self, node: Node) -> Node:
        self.nodes.append(node)
        return node

    def counts(self) -> dict:
        out: dict = {}
        for n in self.nodes:
            out[n.kind] = out.get(n.kind, 0) + 1
        return out

    def origins(self) -> list:
        return sorted({n.origin for n in self.nodes if n.origin})

    def merge_repeats(self) -> int:
        """One node per computation (Note [One node per computation]): a node that repeats an earlier
        one -- same kind, same torch op, same arguments, same attributes -- is replaced by it.
        Returns how many were merged."""
        seen: dict = {}
        replaced: dict = {}
        kept = []
        for n in self.nodes:
            if replaced and any(a in replaced for a in n.args):
                n.args = tuple(replaced.get(a, a) for a in n.args)
            key = _repeat_key(n)
            if key is not None and key in seen:
                replaced[n] = seen[key]
                self.repeated.add(seen[key])
                continue
            if key is not None:
                seen[key] = n
            kept.append(n)
        if replaced:
            self.nodes = kept
            self.outputs = [replaced.get(o, o) for o in self.outputs]
        return len(replaced)


# Note [One node per computation]
# torch code often computes one thing twice: ``3 * relu(x) - relu(x)``, a mask built in two places,
# ``amax(x)`` for a shift and again for a score.  Traced as two nodes, each relu on its kink was a
# unit of its own, and the joint kink check let the two uses take different sides: a backward giving
# 3 at x = 0 (the sides of 2 relu(x) are 0 and 2) passed on the op graph, as did two uses of one tie
# sent to different entries.  One computation has one value and one side: torch's kernels decide a
# kink by the same rule wherever the same op meets the same numbers (Note [One choice at one point] in
# graph/kinklog.py).  So after tracing, a pointwise, reduce, layout or stop node repeating an earlier
# one -- the same torch op (its origin, so relu and clamp(min=0), whose conventions at 0 differ, stay
# apart), the same argument nodes, equal attributes -- is merged into it.  Nodes with array
# attributes (select's indices) are left as they are.  torch runs each repeat's backward on its own
# cotangent, rounding each product, where the merged node's rule runs once on their sum: with
# cotangents that nearly cancel (``cat([x + w, x + w])``, x bfloat16, w float32, each use's float32
# cotangent rounded to bfloat16) the sum's rounding is far smaller than theirs, and torch's own code
# failed.  A merged node (``Graph.repeated``) whose cotangent comes from several uses charges its
# arguments' cotangents the roundings its reverse rule makes on the sum of the uses' cotangent sizes,
# and a merged argument carries those sizes on (engine._per_use).
_MERGED_KINDS = ("pointwise", "reduce", "layout", "stop")


def _repeat_key(n: Node):
    if n.kind not in _MERGED_KINDS:
        return None
    try:
        attrs = tuple(sorted(n.attrs.items()))
        key = (n.kind, n.origin, tuple(id(a) for a in n.args), n.shape, attrs)
        hash(key)
    except TypeError:  # an unhashable attribute (an array): not merged
        return None
    return key
