"""The closed form of a gradient on the op graph, in index notation, for the reports.

A leaf's cotangent is the sum, over the nodes that use it, of each node's reverse-mode rule applied
to that node's cotangent ``δ[node]``: ``einsum('ni,nj->ij', δ[addmm], h)`` for a weight,
``δ[tanh] ⊙ (1 - tanh(s0)**2)`` for a pointwise use, ``scatter(δ[embedding])`` for a selection.
The text is derived from the same rules that compute the values (``symgrad.graph.rules``).
"""

from __future__ import annotations

import sympy as sp

from .ir import Graph, Node
from .rules import derivatives, symbols_for

__all__ = ["gradient_text"]


def _label(node: Node) -> str:
    return node.name or node.origin.split(".")[-2] if node.origin else node.name or node.kind


def _use(node: Node, i: int) -> str:
    d = f"δ[{_label(node)}]"
    if node.kind == "pointwise":
        local = derivatives(node.attrs["expr"], len(node.args))[i]
        names = {s: sp.Symbol(_label(a)) for s, a in zip(symbols_for(len(node.args)), node.args)}
        return f"{d} ⊙ ({sp.sstr(local.xreplace(names))})"
    if node.kind == "contract":
        ins, out = node.attrs["spec"].split("->")
        subs = ins.split(",")
        others = [s for j, s in enumerate(subs) if j != i]
        names = [_label(a) for j, a in enumerate(node.args) if j != i]
        return f"einsum('{','.join([out] + others)}->{subs[i]}', {', '.join([d] + names)})"
    if node.kind == "layout":
        op = node.attrs["op"]
        return {"reshape": f"reshape({d})", "permute": f"permute⁻¹({d})", "expand": f"sum over expanded axes({d})"}[op]
    if node.kind == "select":
        return f"scatter-add({d})"
    if node.kind == "reduce":
        return f"broadcast({d})" if node.attrs["op"] == "sum" else f"{d} at the {node.attrs['op']}"
    if node.kind == "linalg":
        return f"{node.attrs['op']}-vjp({d})"
    return f"0 ({node.kind})"


def _transparent(node: Node, i: int) -> bool:
    """A use whose rule only moves or scales the cotangent: printed through, not as ``δ[node]``."""
    if node.kind == "layout":
        return True
    if node.kind == "pointwise":
        local = derivatives(node.attrs["expr"], len(node.args))[i]
        return local.is_Number
    return False


def _expand(graph: Graph, node: Node, depth: int, limit: int) -> list:
    uses = [(n, i) for n in graph.nodes for i, a in enumerate(n.args) if a is node and n.kind != "stop"]
    parts = []
    for n, i in uses:
        if depth < 6 and _transparent(n, i):
            inner = _expand(graph, n, depth + 1, limit)
            if not inner and any(n is o for o in graph.outputs):  # the output itself: its cotangent
                inner = [f"δ[{_label(n)}]"]
            if not inner:
                continue
            body = " + ".join(inner)
            if n.kind == "layout":
                parts.append(_use(n, i).replace(f"δ[{_label(n)}]", body))
            else:
                local = derivatives(n.attrs["expr"], len(n.args))[i]
                parts.append(_summed(n, i, body if local == 1 else f"{sp.sstr(local)}·({body})"))
        else:
            parts.append(_summed(n, i, _use(n, i)) if n.kind == "pointwise" else _use(n, i))
    return parts[:limit] + ([f"… ({len(parts) - limit} more uses)"] if len(parts) > limit else [])


def _summed(node: Node, i: int, text: str) -> str:
    """A pointwise use that broadcast its argument: the adjoint sums over the broadcast axes."""
    return text if node.args[i].shape == node.shape else f"Σ_broadcast({text})"


def gradient_text(graph: Graph, leaf: Node, limit: int = 4) -> str:
    """``∂/∂leaf`` as the sum of its uses' rules, through layouts and constant scalings."""
    parts = _expand(graph, leaf, 0, limit)
    if not parts:
        return "0 (no path from it to the output)"
    return " + ".join(parts) + "   (δ[n]: the cotangent of node n; reverse mode over the op graph)"
