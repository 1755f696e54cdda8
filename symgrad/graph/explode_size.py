"""The size of an exploded graph, estimated before anything is built (Note [Exploded back end],
Note [Memory guard] in ``budget.py``)."""

from __future__ import annotations

from dataclasses import dataclass

import math

import numpy as np
import sympy as sp

from ..errors import InputError
from .budget import BYTES_PER_NODE, memory_budget
from .ir import Graph, Node

__all__ = ["Estimate", "cone", "estimate", "refuse_if_too_big", "REVERSE_FACTOR"]

# Bytes of one reverse sweep, in BYTES_PER_NODE units per exploded forward node: the adjoint terms and
# local partials (a few per read) and, most of it, their lowering (cse, generated code, its compiled
# form).  Measured: an exploded route's peak RSS grew by 25, 126 and 500 MiB for tanh MLPs of 69, 394
# and 1,564 parameters (1,652, 8,102 and 31,322 forward nodes), 41 units per forward node with the
# forward's own one.
REVERSE_FACTOR = 40

@dataclass
class Estimate:
    """What exploding would build, before anything is built (Note [Memory guard] in budget.py)."""

    forward_nodes: int  # new expression nodes of the exploded forward (a DAG: shared entries count once)
    derivative_nodes: int  # the derivative entries times the expression size each one reads
    entries: int  # derivative entries

    @property
    def bytes(self) -> int:
        return BYTES_PER_NODE * (self.forward_nodes + self.derivative_nodes)


def cone(graph: Graph, out: Node) -> list:
    """The nodes ``out`` reads, in topological order."""
    need = {out}
    for node in reversed(graph.nodes):
        if node in need:
            need.update(node.args)
    return [n for n in graph.nodes if n in need]


def _own_nodes(node: Node) -> int:
    """New expression nodes per entry of ``node`` (its arguments' entries are shared, not copied)."""
    if node.kind == "pointwise":
        return sp.count_ops(node.attrs["expr"]) + 1
    if node.kind == "contract":
        ins, out = node.attrs["spec"].split("->")
        sizes: dict = {}
        for sub, a in zip(ins.split(","), node.args):
            for c, d in zip(sub, a.shape):
                sizes[c] = max(sizes.get(c, 1), d)
        summed = int(np.prod([sizes[c] for c in set(ins.replace(",", "")) - set(out)] or [1]))
        return summed * len(node.args)
    if node.kind == "reduce":
        group = node.args[0].size // max(node.size, 1)
        return group if node.attrs["op"] == "sum" else 3 * group * group
    if node.kind == "linalg":  # Note [Exploded linear algebra]: determinants of minors, n! terms each
        n = node.args[0].shape[-1]
        return n * n * math.factorial(n) * n
    return 1


def estimate(graph: Graph, out: Node, n_wrt: int, n_diff: int, sweeps: int = 0) -> Estimate:
    """``n_wrt`` symbols differentiated, ``n_diff`` expressions differentiated (1 for a gradient or
    one vjp, the output's entries for a Jacobian) by symengine's ``diff``; or, with ``sweeps``,
    that many reverse sweeps over the exploded entries (Note [Exploded reverse mode]), each of
    which builds about ``REVERSE_FACTOR`` adjoint nodes per forward node."""
    forward = 0
    reads: dict = {}  # node -> the expression size (tree, capped by the DAG) one entry reads
    for node in cone(graph, out):
        own = _own_nodes(node)
        forward += own * node.size
        fan = own if node.kind in ("contract", "reduce", "linalg") else 1
        reads[node] = min(own + fan * sum(reads.get(a, 1) for a in node.args), forward)
    if sweeps:
        return Estimate(forward, REVERSE_FACTOR * sweeps * forward, n_diff * n_wrt)
    per_entry = min(reads[out] * (out.size if n_diff == 1 else 1), forward)
    return Estimate(forward, 2 * n_diff * n_wrt * per_entry, n_diff * n_wrt)


def refuse_if_too_big(est: Estimate, budget: int | None = None) -> None:
    """InputError naming the size, the budget and the alternative, before anything is built."""
    have = memory_budget(budget)
    if est.bytes > have:
        raise InputError(
            f"the exploded back end would build about {est.bytes / 2**20:,.0f} MiB of exact expressions "
            f"({est.forward_nodes:,} forward nodes, {est.entries:,} derivative entries of about "
            f"{est.derivative_nodes // max(est.entries, 1):,} nodes each), more than the memory budget of "
            f"{have / 2**20:,.0f} MiB (memory_budget= or SYMGRAD_MEMORY_BUDGET changes it). Use the tensor back "
            "end (engine='graph'), whose cost is numpy's.")
