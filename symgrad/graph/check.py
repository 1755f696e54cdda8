"""The tensor back end's check: trace, evaluate, differentiate, run autograd, compare.

``check_graph(fn, inputs, ...)`` serves modules (every parameter, and float inputs), plain torch
functions and custom ``autograd.Function``s alike.  The forward is traced once into the op graph
(``symgrad.graph.trace``); the closed-form derivative is reverse mode over the graph's core
nodes, evaluated with numpy at full size with a per-entry rounding bound and kink band (Note
[Approx arithmetic]); every linear rule is cross-checked first (Note [Adjoint cross-check]).

A scalar output is checked as a gradient.  A tensor output is checked through ``cotangents``
random cotangents (vector-Jacobian products, the exact counterpart of gradcheck's fast mode):
every entry of every product is compared with its own bound.  ``cotangents="full"`` checks the
whole Jacobian, one product per output entry.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..compare.compare import compare, compare_all
from ..errors import InputError, ShapeMismatch, UnsupportedOp
from ..reference import Reference
from ..report.report import Report
from .approx import Approx
from .crosscheck import crosscheck
from .engine import backward, forward
from .interpret import to_graph
from .scalar import Ctx
from .trace import trace_callable

__all__ = ["check_graph", "EPS"]

EPS = {"float64": 2.0**-52, "float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}


def _dtype_name(tensors) -> str:
    import torch

    floats = [t.dtype for t in tensors if t.is_floating_point()]
    worst = max(floats, key=lambda d: torch.finfo(d).eps) if floats else torch.float64
    return str(worst).replace("torch.", "")


def _leaves(model, inputs: Mapping, wrt):
    """(name, role, tensor) per traced argument: parameters (ties share one tensor), then inputs."""
    params = {}
    if model is not None:
        for name, p in model.named_parameters(remove_duplicate=False):
            params[name] = p
    names = list(params) + list(inputs)
    tensors = list(params.values()) + list(inputs.values())
    if wrt is None:
        chosen = [n for n, p in params.items() if p.requires_grad]
        chosen += [n for n, t in inputs.items() if t.is_floating_point() and (model is None or t.requires_grad)]
        if not chosen:
            chosen = [n for n, t in inputs.items() if t.is_floating_point()]
    else:
        chosen = [wrt] if isinstance(wrt, str) else list(wrt)
        for w in chosen:
            if w not in names:
                raise InputError(f"wrt names {w!r}, which is neither a parameter nor an input; known: {', '.join(names)}")
    roles = ["param"] * len(params) + ["input" if t.is_floating_point() else "const" for t in inputs.values()]
    return names, tensors, roles, chosen


def check_graph(fn, inputs: Mapping, *, wrt=None, loss=None, target=None, cotangents=3, seed: int = 0,
                rtol: float | None = None, atol: float | None = None, title: str | None = None) -> Report:
    import torch

    model = fn if isinstance(fn, torch.nn.Module) else None
    inputs = dict(inputs)
    names, tensors, roles, wrt_names = _leaves(model, inputs, wrt)
    n_params = len(names) - len(inputs)
    dtype = _dtype_name(tensors)
    ctx = Ctx(EPS.get(dtype, 2.0**-52), dtype)

    def run(*flat):
        if model is not None:
            params = dict(zip(names[:n_params], flat[:n_params]))
            out = torch.func.functional_call(model, params, tuple(flat[n_params:]), strict=False,
                                             tie_weights=True)
        else:
            out = fn(*flat)
        if loss is not None:
            out = loss(out, target)
        return out

    detached = [t.detach() for t in tensors]
    gm = trace_callable(run, tuple(detached))
    graph = to_graph(gm, _dedupe(list(zip(names, roles, detached))))
    if len(graph.outputs) != 1 or not hasattr(graph.outputs[0], "kind"):
        raise UnsupportedOp("the function must return one floating-point tensor that depends on its inputs "
                            f"(it returned {len(graph.outputs)} values); return the loss, or pass loss=")
    out_node = graph.outputs[0]
    failed = crosscheck(graph)
    values = forward(graph, ctx)
    out_val = values[out_node]

    # torch autograd, the way training code runs it
    leaves = [t.detach().clone().requires_grad_(n in wrt_names and t.is_floating_point())
              for n, t in zip(names, tensors)]
    with torch.enable_grad():
        out_t = run(*leaves)
    if not isinstance(out_t, torch.Tensor):
        raise InputError(f"the function returned a {type(out_t).__name__}, not a tensor")
    if tuple(out_t.shape) != out_val.shape:
        raise ShapeMismatch(f"torch's output has shape {tuple(out_t.shape)}, the op graph's {out_val.shape}")
    grad_leaves = [leaves[names.index(n)] for n in wrt_names]
    seeds, quantity = _cotangents(out_t, cotangents, seed)
    wrt_nodes = [graph.inputs[_leaf_name(graph, n, names, tensors)] for n in wrt_names]
    refs, actual = [], {}
    for k, v in enumerate(seeds):
        got = torch.autograd.grad(out_t, grad_leaves, v, retain_graph=k + 1 < len(seeds), allow_unused=True)
        seed_val = Approx(v.detach().double().cpu().numpy())
        grads = backward(graph, values, {out_node: seed_val}, wrt_nodes, ctx)
        for n, node, g_t in zip(wrt_names, wrt_nodes, got):
            label = n if len(seeds) == 1 else f"{n} (cotangent {k + 1})"
            refs.append(_reference(label, grads[node], tuple(tensors[names.index(n)].shape), failed))
            actual[label] = g_t
    forward_ref = Reference("output", out_val.v, "op graph forward", rounding=out_val.e,
                            verified=not failed)
    records = [compare(forward_ref, out_t.detach().double().cpu().numpy(), dtype, quantity="forward",
                       rtol=rtol, atol=atol)]
    records += compare_all(refs, actual, dtype, quantity=quantity, rtol=rtol, atol=atol)
    meta = {"dtype": dtype, "engine": "graph (tensor back end)", "quantity": quantity,
            "graph": ", ".join(f"{k} {v}" for k, v in graph.counts().items())}
    return Report(records, title=title or "symgrad check", meta=meta)


def _dedupe(leaves: list) -> list:
    """Tied parameters (one tensor under two names) become one leaf, named after its first name."""
    seen: dict = {}
    out = []
    for name, role, t in leaves:
        first = seen.setdefault(id(t), name)
        out.append((first, role, t))
    return out


def _leaf_name(graph, name, names, tensors) -> str:
    if name in graph.inputs:
        return name
    t = tensors[names.index(name)]
    for n, other in zip(names, tensors):
        if other is t and n in graph.inputs:
            return n
    raise InputError(f"{name!r} does not reach the output: it has no derivative to check")


def _cotangents(out_t, cotangents, seed: int):
    import torch

    if out_t.numel() == 1 and out_t.dim() == 0:
        return [torch.ones_like(out_t)], "grad"
    gen = torch.Generator().manual_seed(seed)
    if cotangents == "full":
        eye = torch.eye(out_t.numel(), dtype=out_t.dtype)
        return [row.reshape(out_t.shape) for row in eye], "jacobian (one vjp per output entry)"
    if not isinstance(cotangents, int) or cotangents < 1:
        raise InputError(f"cotangents must be a positive integer or 'full', not {cotangents!r}")
    vs = [torch.randn(out_t.shape, generator=gen, dtype=torch.float64).to(out_t.dtype) for _ in range(cotangents)]
    return vs, f"vjp ({cotangents} random cotangents)"


def _reference(label: str, g: Approx | None, shape: tuple, failed: list) -> Reference:
    if g is None:
        zero = np.zeros(shape)
        return Reference(label, zero, "0 (no path from it to the output)", rounding=zero, verified=not failed)
    v = g.v.reshape(shape)
    ref = Reference(label, v, "reverse mode over the op graph", rounding=np.asarray(g.e).reshape(shape),
                    verified=not failed)
    if failed:
        ref.note = ("the tensor rule of " + ", ".join(f"{n.kind} node {n.name or n.origin}" for n in failed[:3])
                    + " failed its adjoint cross-check (Note [Adjoint cross-check]): no verdict can be trusted")
    if g.b is not None:
        band = np.asarray(g.b).reshape(shape)
        ref.lower, ref.upper, ref.kink = v - band, v + band, band > 0
    return ref
