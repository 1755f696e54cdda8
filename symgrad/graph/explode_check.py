"""A check on the exploded back end of the op graph: ``check_exploded``, ``check_graph``'s twin.

# Note [Exploded route]
The forward is traced into the op graph exactly as for the tensor back end (``check.py``), then
exploded (Note [Exploded back end]): every output entry is one exact symengine expression over
per-entry symbols of every float leaf.  The derivative asked for is taken by symengine entry by
entry (``symgrad.differentiate``: a gradient, one vjp with cotangent symbols ``v[...]`` whose values
are bound per cotangent, or the Jacobian), so each entry has a closed form the report prints, as
the elementwise engine's do.  The closed forms are evaluated by ``symgrad.lower``: in extended
precision, with the running rounding bound of Note [Rounding bound] in the checked dtype and
one-sided bands where a condition (a relu, a max) sits within rounding of its kink (Note [Kinks at
evaluation time]).  An entry's rounding allowance is the larger of that bound and the tensor back
end's for the same product: exploding folds exact constants together (attention's ``q * s`` and
``k * s`` become ``s**2 * q * k``), so the closed form's bound misses roundings torch's evaluation
makes, which the tensor back end's bound, following the graph's nodes, counts; each bounds a
legitimate evaluation order (Note [Bounds of two evaluation orders] in twin.py).  The kink band is
entrywise here (no joint kink check; ``symgrad.check(..., engine="elementwise")`` has one).  Forward mode and
Hessians are the tensor back end's business; the accuracy oracle (issue 11) is not attached.

Exploding costs entries times expression size: the size is estimated before anything is built and
a check beyond the memory budget is refused with the alternative (Note [Memory guard]).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..compare.compare import compare, compare_all
from ..errors import InputError, UnsupportedOp
from ..progress import stage
from ..reference import Reference
from ..report.report import Report

__all__ = ["check_exploded"]


def check_exploded(fn, inputs: Mapping, *, symbolic=None, wrt=None, via=None, v=None, tangents=None, loss=None,
                   target=None, cotangents=3, seed: int = 0, backward_calls: int = 1, rtol: float | None = None,
                   atol: float | None = None, title: str | None = None, memory_budget: int | None = None,
                   strict: bool = False) -> Report:
    """``check_graph``'s check on the exploded back end (Note [Exploded route]); the keywords are
    ``check_graph``'s, and ``memory_budget`` (bytes) that of Note [Memory guard]."""
    from ..compare.accuracy import apply_strict

    report = _check_exploded(fn, inputs, symbolic=symbolic, wrt=wrt, via=via, v=v, tangents=tangents, loss=loss,
                             target=target, cotangents=cotangents, seed=seed, backward_calls=backward_calls,
                             rtol=rtol, atol=atol, title=title, memory_budget=memory_budget)
    return apply_strict(report, strict)


def _check_exploded(fn, inputs: Mapping, *, symbolic, wrt, via, v, tangents, loss, target, cotangents, seed,
                    backward_calls, rtol, atol, title, memory_budget) -> Report:
    import torch

    from ..autograd.run import run_autograd
    from .check import EPS, _autograd, _dtype_name, _leaves, _plan
    from .explode import explode_nodes, output_node
    from .interpret import to_graph
    from .refs import JACOBIAN_VIAS
    from .trace import trace_callable
    from .twin import widen_to_tensor_bounds

    if tangents is not None or via in ("functional.jvp", "func.jvp", "forward_ad", "functional.hessian",
                                       "func.hessian", "jacfwd"):
        raise UnsupportedOp(f"the exploded back end checks reverse mode (gradients, vjps, Jacobians by jacrev), "
                            f"not via={via!r} or tangents=; use check_graph (the tensor back end) for forward mode")
    model = fn if isinstance(fn, torch.nn.Module) else None
    inputs = dict(inputs)
    names, tensors, roles, wrt_names = _leaves(model, inputs, wrt)
    dtype = _dtype_name(tensors)
    torch_fn = _runner(model, fn, names, len(names) - len(inputs), loss, target)
    leaves = {n: t.detach().clone().requires_grad_(n in wrt_names) for n, t in zip(names, tensors)}
    try:
        with torch.no_grad():
            out_t = torch_fn(*(t.detach() for t in leaves.values()))
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise InputError(f"the function raised on these inputs ({type(err).__name__}: {str(err)[:300]}); "
                         "symgrad checks derivatives where the forward runs: pass inputs it accepts") from err
    if not isinstance(out_t, torch.Tensor):
        raise InputError(f"the function returned a {type(out_t).__name__}, not a tensor")
    stage("op graph: tracing the forward into core ATen ops")
    reference_fn = _runner(model, symbolic if symbolic is not None else fn, names, len(names) - len(inputs), loss,
                           target)
    gm = trace_callable(reference_fn, tuple(t.detach() for t in tensors))
    graph = to_graph(gm, list(zip(names, roles, (t.detach() for t in tensors))))
    out = output_node(graph)
    seeds, label, how = _plan(out_t, via, v, cotangents, seed)
    jacobian = how in JACOBIAN_VIAS
    wrt_live = [n for n in wrt_names if n in graph.inputs]
    stage("exploded back end: one exact expression per entry")
    built, syms = explode_nodes(graph, out=out, n_wrt=sum(graph.inputs[n].size for n in wrt_live),
                                n_diff=out.size if jacobian else 1, budget=memory_budget,
                                sweeps=out.size if jacobian else 1)
    stage("exploded back end: differentiating and evaluating the closed forms")
    refs, out_ref, kinks = _references(graph, built, out, syms, wrt_names, wrt_live, seeds, how, v, dtype, EPS,
                                       backward_calls, {n: tuple(leaves[n].shape) for n in wrt_names})
    widen_to_tensor_bounds(graph, out, refs, out_ref, seeds, how, wrt_names, dtype,
                           backward_calls if how == "backward" else 1)
    stage(f"running autograd (via={how})")
    with torch.enable_grad():
        actual = _autograd(torch_fn, leaves, wrt_names, how, seeds, v, backward_calls, run_autograd)
    quantity = "grad" if len(seeds) == 1 and v is None and not jacobian else "vjp"
    records = [compare(out_ref, out_t.detach().double().cpu().numpy(), dtype, quantity="forward", rtol=rtol,
                       atol=atol)]
    records += compare_all(refs, actual, dtype, quantity=quantity, rtol=rtol, atol=atol)
    meta = {"dtype": dtype, "engine": "graph (exploded back end)", "quantity": label, "via": how,
            "graph": ", ".join(f"{k} {c}" for k, c in graph.counts().items())}
    if kinks:
        meta["kink conditions"] = ", ".join(kinks[:4])
    return Report(records, title=title or "symgrad check", meta=meta)


def _runner(model, forward_fn, names, n_params, loss, target):
    """The torch callable of the leaves, in ``names``' order (as ``check.py``'s)."""
    import torch

    def run(*flat):
        if model is not None and forward_fn is model:
            params = dict(zip(names[:n_params], flat[:n_params]))
            out = torch.func.functional_call(model, params, tuple(flat[n_params:]), strict=False)
        else:
            out = forward_fn(*flat[n_params:]) if model is not None else forward_fn(*flat)
        return loss(out, target) if loss is not None else out

    return run


def _derivatives(graph, built, out, syms, wrt_live, how, jacobian: bool):
    """(closed forms per name, cotangent symbols or None), by reverse mode over the exploded entries
    (Note [Exploded reverse mode])."""
    import symengine as se

    from ..inputs import fresh_name
    from ..symbolic.tensor import symbols
    from .explode_reverse import gradient_entries

    nodes = [graph.inputs[n] for n in wrt_live]
    cot = None
    if jacobian:
        rows = []
        for o in range(out.size):
            unit = np.full(out.size, se.Integer(0), object)
            unit[o] = se.Integer(1)
            rows.append(gradient_entries(graph, built, out, unit.reshape(out.shape), nodes))
        derivs = {n: np.stack([r[node] for r in rows]).reshape(out.shape + node.shape)
                  for n, node in zip(wrt_live, nodes)}
        return derivs, cot
    if out.size == 1 and how != "random-vjp":
        seed = np.full(out.shape, se.Integer(1), object)
    else:
        cot = symbols(fresh_name("v", graph.inputs), out.shape)  # not an input's own name
        seed = cot.data
    got = gradient_entries(graph, built, out, seed, nodes)
    return {n: got[node] for n, node in zip(wrt_live, nodes)}, cot


def _references(graph, built, out, syms, wrt_names, wrt_live, seeds, how, v, dtype, eps_table, backward_calls,
                shapes) -> tuple:
    from ..lower.numpy import high_precision, lower
    from .refs import JACOBIAN_VIAS

    jacobian = how in JACOBIAN_VIAS
    derivs, cot = _derivatives(graph, built, out, syms, wrt_live, how, jacobian)
    exprs = np.asarray(built[out], object).reshape(out.shape)
    flat = list(exprs.ravel()) + [e for n in wrt_live for e in derivs[n].ravel()]
    args = [s for arr in syms.values() for s in arr.ravel()]
    vals = [np.float64(x) for n in syms for x in np.ravel(graph.inputs[n].attrs["value"])]
    k = len(seeds) if cot is not None else 1
    if cot is not None:
        args += list(cot.data.ravel())
        vals += list(np.stack([np.ravel(s) for s in seeds], axis=1))  # one array over the cotangents per symbol
    hi = lower(flat, args, forward=exprs.size)(vals, dtype=high_precision(), kink_eps=eps_table.get(dtype, 2.0**-52))

    def columns(items):
        return np.stack([np.broadcast_to(np.asarray(x, np.float64), (k,)) for x in items], axis=1)  # (k, entries)

    main, low, mag = columns(hi.values), columns(hi.values_lowp), np.abs(columns(hi.magnitudes))
    lo = columns(hi.lower) if hi.lower is not None else None
    up = columns(hi.upper) if hi.upper is not None else None
    n_out = exprs.size
    out_ref = Reference("output", main[0, :n_out].reshape(exprs.shape), closed_form="exploded op graph forward",
                        value_lowp=low[0, :n_out].reshape(exprs.shape), rounding=mag[0, :n_out].reshape(exprs.shape))
    scale = backward_calls if how == "backward" else 1
    refs, start = [], n_out
    for name in wrt_names:
        d = derivs.get(name)
        full = _shape(d, shapes[name], exprs.shape, how, k, jacobian)
        if d is None:  # a leaf the graph does not read: the derivative is 0
            refs.append(Reference(name, np.zeros(full), "0 (no path from it to the output)", rounding=np.zeros(full)))
            continue
        part = slice(start, start + d.size)
        start += d.size
        refs.append(_reference(name, d, part, full, scale, main, low, mag, lo, up))
    return refs, out_ref, list(hi.kink_conditions or [])


def _shape(d, shape, out_shape, how, k, jacobian) -> tuple:
    if jacobian:
        return tuple(out_shape) + tuple(shape)
    return ((k,) if how == "random-vjp" else ()) + tuple(shape)


def _reference(name, d, part, full, scale, main, low, mag, lo, up) -> Reference:
    from ..differentiate.elementwise import entry_form, structural_zeros

    def take(arr):
        return scale * arr[:, part].reshape(full)

    text, latex = entry_form(d)
    if d.size > 1:
        text = f"{text}  (entry [{', '.join('0' for _ in d.shape)}])"
    if scale != 1:
        text, latex = f"{scale} * ({text})  [grad accumulated over {scale} backward calls]", ""
    zeros = structural_zeros(d)
    ref = Reference(name, take(main), text, latex, value_lowp=take(low), rounding=take(mag),
                    structural_zero=np.broadcast_to(zeros, full) if zeros is not None and zeros.shape == full else None)
    if lo is not None:
        lower, upper = take(lo), take(up)
        kink = (lower != upper) | (lower != ref.value) | (upper != ref.value)
        if kink.any():
            ref.lower, ref.upper, ref.kink = np.minimum(lower, ref.value), np.maximum(upper, ref.value), kink
    ref.closed_form_expr, ref.entry_form = _printable(d, latex)
    ref.note = "closed form: the exploded op graph differentiated entry by entry by symengine (Note [Exploded route])"
    return ref


def _printable(d: np.ndarray, latex: str):
    """The first entry as SymPy (for MathML, only where LaTeX was short enough) and any entry's text."""
    import sympy as sp

    from ..differentiate.elementwise import entry_form

    expr = sp.sympify(d.ravel()[0]) if latex and d.size else None

    def entry_text(index: tuple) -> str:
        index = tuple(index)[-d.ndim:] if d.ndim else ()  # a stacked (cotangent, *shape) index
        return entry_form(np.array([d[index]], dtype=object))[0]

    return expr, entry_text
