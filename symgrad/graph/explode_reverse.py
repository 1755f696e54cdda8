"""Reverse mode over the exploded graph: exact derivative entries that share their adjoints.

# Note [Exploded reverse mode]
``symengine``'s ``diff`` of each output entry by each leaf symbol rebuilds the chain rule for every
symbol: the derivative of a small conv net's loss by its 204 parameters was 3.5 MB of generated
code, 22 s to lower.  Here the chain rule runs once, backwards over the exploded entries: every
entry ``e = f(a_1, ..., a_k)`` of a node passes ``adj(e) * df/da_i`` to each entry ``a_i`` it
reads, where ``df/da_i`` is symengine's derivative of the node's *local* scalar form (the
pointwise SymPy form, a product's other factors, the n-ary max's Piecewise) at those entries, and
an entry's adjoint is one ``Add`` of what it received.  Index moves (layout, select, the sums of a
reduction or a contraction) route adjoints by the same index arithmetic as their forward, applied
to arrays of entry numbers.  The result is the same exact expression per derivative entry, as a
DAG whose adjoints are shared, linear in the size of the exploded forward.  Nothing here reads the
tensor back end's rules (``rules.py``): it is an independent derivation, and the cross-check
(Note [Exploded cross-check]) still uses plain ``diff``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .explode import _form, cone, einsum_plan, extreme_columns, substitute
from .ir import Graph, Node

__all__ = ["gradient_entries"]


def gradient_entries(graph: Graph, built: dict, out: Node, seed: np.ndarray, wrt: list) -> dict:
    """``{leaf node: object array}``: d <seed, out> / d leaf, entry by entry (``seed``: an object
    array of the output's shape, numbers or cotangent symbols).  ``built``: ``explode_nodes``'."""
    import symengine as se

    wanted = set(wrt)
    live = set()
    for node in cone(graph, out):
        if node in wanted or (node.kind != "stop" and any(a in live for a in node.args)):
            live.add(node)
    pending: dict = {out: [(np.arange(out.size), np.asarray(seed, object).ravel())]}
    result: dict = {}
    for node in reversed(cone(graph, out)):
        parts = pending.pop(node, None)
        if parts is None or node not in live:
            continue
        adj = _collect(parts, node.size, se)
        if node.kind == "leaf":
            if node in wanted:
                result[node] = adj.reshape(node.shape)
            continue
        args = [built[a] for a in node.args]
        for i, a in enumerate(node.args):
            if a in live:
                idx, terms = _pullback(node, i, args, adj, built[node])
                if len(idx):
                    pending.setdefault(a, []).append((idx, terms))
    zero = se.Integer(0)
    for leaf in wrt:
        if leaf not in result:
            result[leaf] = np.full(leaf.shape, zero, object)
    return result


def _collect(parts: list, size: int, se) -> np.ndarray:
    """One Add per entry of the adjoint contributions ``(entry numbers, terms)``."""
    lists: list = [[] for _ in range(size)]
    for idx, terms in parts:
        for j, t in zip(idx.tolist(), terms):
            if t != 0:
                lists[j].append(t)
    out = np.empty(size, object)
    zero = se.Integer(0)
    for j, terms in enumerate(lists):
        out[j] = zero if not terms else terms[0] if len(terms) == 1 else se.Add(*terms)
    return out


def _numbers(shape: tuple) -> np.ndarray:
    size = int(np.prod(shape)) if shape else 1
    return np.arange(size).reshape(shape)


def _pullback(node: Node, i: int, args: list, adj: np.ndarray, value: np.ndarray) -> tuple:
    """(entry numbers of argument ``i``, the adjoint terms sent to them)."""
    kind = node.kind
    if kind == "pointwise":
        return _pointwise(node, i, args, adj)
    if kind == "contract":
        return _contract(node.attrs["spec"], i, args, adj)
    if kind == "reduce":
        return _reduce(node, args[0], adj)
    if kind == "layout":
        from .explode import _layout

        return np.asarray(_layout(node, _numbers(args[0].shape))).ravel(), adj
    if kind == "select":
        return _select(node, i, args, adj)
    raise ValueError(f"no exploded pullback for {kind} nodes")


def _pointwise(node: Node, i: int, args: list, adj: np.ndarray) -> tuple:
    form, syms = _form(node.attrs["expr"], len(args))
    partial = _partial(node.attrs["expr"], len(args), i)
    idx = np.broadcast_to(_numbers(args[i].shape), node.shape).ravel()
    if partial == 0:
        return idx[:0], adj[:0]
    flat = [np.broadcast_to(a, node.shape).ravel() for a in args]
    terms = np.empty(node.size, object)
    for j in range(node.size):
        terms[j] = 0 if adj[j] == 0 else adj[j] * substitute(partial, syms, [a[j] for a in flat])
    return idx, terms


@lru_cache(maxsize=2048)
def _partial(expr, k: int, i: int):
    from .explode import clean_derivative

    form, syms = _form(expr, k)
    return clean_derivative(form.diff(syms[i]))  # a step function's derivative: 0


def _contract(spec: str, i: int, args: list, adj: np.ndarray) -> tuple:
    full, n_out, numbers = einsum_plan(spec, [np.shape(a) for a in args])
    n_all = int(np.prod(full)) if full else 1
    terms = np.repeat(np.asarray(adj, object), n_all // max(n_out, 1))  # output letters come first
    for j, (a, at) in enumerate(zip(args, numbers)):
        if j != i:
            terms = terms * np.asarray(a, object).ravel()[np.ravel(at)]
    return np.ravel(numbers[i]), terms


@lru_cache(maxsize=1)
def _tag():
    """The symbol standing for a window's tag in the cached partials."""
    import symengine as se

    return se.Symbol("_rtag")


def _reduce(node: Node, a: np.ndarray, adj: np.ndarray) -> tuple:
    from ..lower.ties import window_tag

    axes = tuple(node.attrs["axes"])
    kept = [d for d in range(a.ndim) if d not in axes]
    order = kept + list(axes)
    idx = np.transpose(_numbers(a.shape), order).reshape(adj.size, -1)
    if node.attrs["op"] == "sum":
        return idx.ravel(), np.repeat(adj, idx.shape[1])
    rows = np.transpose(a, order).reshape(adj.size, -1)
    got_idx, got = [], []
    for r in range(idx.shape[0]):
        keep = extreme_columns(rows[r], node.attrs["op"])
        if adj[r] == 0 or not keep:
            continue
        partials, syms = _extreme_partials(node.attrs["op"], len(keep))
        env = dict(zip(syms, rows[r][keep]))
        if len(keep) > 2:  # this window's own conditions (Note [Each max its own conditions] in lower/ties.py)
            env[_tag()] = window_tag(rows[r][keep])
        got_idx += [idx[r, c] for c in keep]
        got += [adj[r] * p.xreplace(env) for p in partials]
    return np.asarray(got_idx, np.int64), np.asarray(got, object)


@lru_cache(maxsize=64)
def _extreme_partials(op: str, n: int) -> tuple:
    import symengine as se

    from ..lower.symengine_forms import extreme

    syms = tuple(se.Symbol(f"_r{c}") for c in range(n))
    form = extreme("Ge" if op == "max" else "Le")(*syms, tag=_tag() if n > 2 else None)
    return tuple(form.diff(s) for s in syms), syms


def _select(node: Node, i: int, args: list, adj: np.ndarray) -> tuple:
    src = node.attrs["idx"].ravel() - 1
    start = sum(np.size(a) for a in args[:i])
    mine = (src >= start) & (src < start + np.size(args[i]))
    return src[mine] - start, adj[mine]
