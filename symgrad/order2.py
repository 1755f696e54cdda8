"""``symgrad.check(..., order=2)``: torch's double backward against the exact second derivative.

The counterpart of ``torch.autograd.gradgradcheck`` with an exact reference: for ``f`` with inputs
``x`` (a tensor output gets a random cotangent ``v``, as first-order checks do), torch computes
``g = grad(f(x), x, v, create_graph=True)`` and then ``grad(g, x, w)`` for a few random directions
``w``; each entry is compared with the exact ``w^T d^2<v, f>/dx^2`` within its own rounding allowance.
Small plain functions go to the exploded back end (``symgrad.differentiate.second``: symengine
differentiates twice); modules, functions the symbolic forward cannot run, and large checks go to
the op graph (forward over reverse, Note [Hessian-vector rules] in ``symgrad/graph/hvp.py``).  A first
backward torch cannot differentiate fails with a note saying so (Note [Double backward] in
``symgrad/autograd/run.py``).
"""

from __future__ import annotations

import numpy as np

from .errors import UnsupportedOp, exploded_memory_guard
from .graph.order2 import DOUBLE_BACKWARD, annotate, check_order, directions_and_cotangent
from .progress import stage
from .reference import Reference
from .report.report import Report

__all__ = ["check_second_order", "EXPLODED_MAX_WRT"]

EXPLODED_MAX_WRT = 64  # 'auto' differentiates a Hessian entry by entry up to this many differentiated entries
DIRECTIONS = 3  # random directions w


def check_second_order(fn, inputs, symbolic, *, wrt, via, v, tangents, engine, backend, rtol, atol, symbols_map,
                       title, memory_budget, loss, target) -> Report:
    """See the module docstring; the keywords are ``symgrad.check``'s."""
    import torch

    from .elementwise import _all_finite as _finite, _choose_wrt
    from .validate import refuse_nonfinite
    from .inputs import normalize_inputs
    from .errors import InputError
    from .graph import check_graph
    from .graph.budget import refuse_exploded, too_big_to_explode

    check_order(2, via)
    if engine == "matrix":
        raise InputError("order=2 runs on the elementwise engine or the op graph (engine='auto', 'elementwise' or "
                         "'graph'), not engine='matrix'")
    if isinstance(fn, torch.nn.Module):
        if engine == "elementwise":
            raise InputError("order=2 checks an nn.Module on the op graph: use engine='auto' or 'graph'")
        named = normalize_inputs(fn, symbolic, inputs, finite=False)
        return check_graph(fn, named, symbolic=symbolic, wrt=wrt, v=v, tangents=tangents, loss=loss, target=target,
                           rtol=rtol, atol=atol, title=title, order=2, memory_budget=memory_budget)
    if loss is not None or target is not None:
        raise InputError("loss=/target= apply to nn.Module checks; for a function, put the loss inside it")
    named = normalize_inputs(fn, symbolic, inputs, finite=False)
    traceable_code = fn is not None and (symbolic is None or callable(symbolic))
    if engine == "auto" and traceable_code and not _finite(named):
        engine = "graph"  # Note [Non-finite inputs on auto] (elementwise.py): the op graph evaluates them
    if engine != "graph":
        refuse_nonfinite(named)
    wrt_names = _choose_wrt(named, wrt)
    graph_args = dict(symbolic=symbolic, wrt=wrt_names, v=v, tangents=tangents, rtol=rtol, atol=atol, title=title,
                      order=2, memory_budget=memory_budget)
    n_in = sum(t.numel() for t in named.values() if t.is_floating_point())
    n_wrt = sum(named[w].numel() for w in wrt_names)
    import sympy as sp

    traceable = fn is not None and not isinstance(symbolic, (sp.Basic, sp.MatrixBase, sp.NDimArray))
    if engine == "graph":
        if not traceable:
            raise InputError("engine='graph' traces torch code: pass the torch function, not a SymPy expression")
        return check_graph(fn, named, **graph_args)
    if engine == "elementwise" or not traceable:
        refuse_exploded(n_in, n_wrt, n_wrt, True, memory_budget)
    elif n_wrt > EXPLODED_MAX_WRT or too_big_to_explode(n_in, n_wrt, n_wrt, True, memory_budget):
        stage("op graph: trace, differentiate twice, compare")
        return check_graph(fn, named, **graph_args)
    try:
        return _exploded(fn, named, symbolic, wrt_names, v, tangents, backend, rtol, atol, symbols_map, title,
                         twin=engine == "elementwise")
    except UnsupportedOp:
        if engine != "auto" or not traceable:
            raise
        stage("op graph: trace, differentiate twice, compare")
        return check_graph(fn, named, **graph_args)


@exploded_memory_guard
def _exploded(fn, named, symbolic, wrt, v, tangents, backend, rtol, atol, symbols_map, title, twin=False) -> Report:
    """``twin``: torch code is exploded through its op graph (engine='elementwise'; under 'auto' it
    goes to the tensor back end instead, as at first order)."""
    import torch

    from .autograd.run import run_double_backward
    from .elementwise import _lowered_forward, _same_but_unit_dims
    from .inputs import fresh_name as _fresh
    from .inputs import lowest_precision
    from .symbolic.forward import check_symbols as _check_symbols
    from .symbolic.forward import symbolic_inputs
    from .symbolic.forward import symbolic_output as _symbolic_output
    from .compare.compare import compare, compare_all
    from .differentiate.elementwise import entry_form, structural_zeros
    from .differentiate.second import hvp_forms
    from .errors import InputError, ShapeMismatch
    from .graph.twin import exact_zeros
    from .lower.numpy import high_precision, lower
    from .symbolic.tensor import symbols

    stage("building the symbolic forward")
    dtype = lowest_precision(named.values())
    dtype_name = str(dtype).replace("torch.", "")
    sym_in = symbolic_inputs(named)
    try:
        out = _symbolic_output(fn, symbolic, sym_in, symbols_map)
    except UnsupportedOp:  # torch code: its op graph exploded into one expression per entry (Note [Exploded twin])
        if not twin or fn is None or (symbolic is not None and not callable(symbolic)):
            raise
        from .graph.twin import explode_torch

        out, _ = explode_torch(symbolic if symbolic is not None else fn, named, budget=None,
                               n_wrt=sum(named[w].numel() for w in wrt), n_diff=None)
    _check_symbols(out, sym_in, wrt, symbolic is not None and not callable(symbolic))
    torch_fn = fn if fn is not None else _lowered_forward(out, sym_in, dtype)
    leaves = {n: t.detach().clone().requires_grad_(n in wrt) for n, t in named.items()}
    with torch.no_grad():
        out_t = torch_fn(*(t.detach() for t in leaves.values()))
    if not isinstance(out_t, torch.Tensor):
        raise InputError(f"the torch function returned a {type(out_t).__name__}, not a tensor")
    if tuple(out_t.shape) != out.shape and _same_but_unit_dims(tuple(out_t.shape), out.shape):
        out = out.reshape(tuple(out_t.shape))
    if tuple(out_t.shape) != out.shape:
        raise ShapeMismatch(f"the torch function returns shape {tuple(out_t.shape)} but the symbolic forward returns "
                            f"{out.shape}; they must compute the same thing")
    given_v = v is not None
    v_t, dirs = directions_and_cotangent(out_t, leaves, wrt, v, tangents, DIRECTIONS, 0)
    cot_sym = None if v_t is None else symbols(_fresh("v", named), out.shape)
    w_sym = {w: symbols(_fresh(f"w_{w}", named), tuple(named[w].shape)) for w in wrt}
    stage("differentiating twice in closed form")
    extras: dict = {}
    forms = hvp_forms(out, {w: sym_in[w] for w in wrt}, cot_sym, w_sym, backend, extras)

    stage("evaluating the closed form")
    floats = [n for n in named if named[n].is_floating_point()]
    args = [s for n in floats for s in sym_in[n].data.ravel()]
    args += [] if cot_sym is None else list(cot_sym.data.ravel())
    args += [s for w in wrt for s in w_sym[w].data.ravel()]
    exprs = list(out.data.ravel()) + [e for w in wrt for e in forms[w].ravel()]
    exprs += [e for w in wrt for e in extras["grad"][w].ravel()] + list(extras["jw"].ravel())
    lowered = lower(exprs, args, forward=out.numel())
    base = [x for n in floats for x in named[n].detach().double().cpu().numpy().ravel()]
    base += [] if v_t is None else list(v_t.detach().double().cpu().numpy().ravel())
    evals = [lowered(base + [x for w in wrt for x in d[w].detach().double().cpu().numpy().ravel()],
                     dtype=high_precision(), kink_eps=float(torch.finfo(dtype).eps)) for d in dirs]
    refs = _references(evals, out.numel(), [(w, forms[w], tuple(named[w].shape)) for w in wrt], structural_zeros,
                       entry_form)
    start = out.numel() + sum(named[w].numel() for w in wrt)
    firsts = _references(evals[:1], start, [(w, extras["grad"][w], tuple(named[w].shape)) for w in wrt],
                         structural_zeros, entry_form, stacked=False)
    start += sum(named[w].numel() for w in wrt)
    jw_ref = _references(evals, start, [("grad_output", extras["jw"], out.shape)], structural_zeros, entry_form)
    if fn is not None and any(r.structural_zero is not None or exact_zeros(r).any() for r in refs + firsts + jw_ref):
        _bound_structural_zeros(fn, named, refs, firsts, jw_ref[0], v_t, dirs, wrt, dtype_name)

    stage("running torch's double backward")
    got: dict = {}
    actual, note = run_double_backward(torch_fn, leaves, wrt, v_t, dirs, got)
    out_ref = Reference("output", _floats(evals[0].values)[:out.numel()].reshape(out.shape),
                        closed_form="symbolic forward",
                        value_lowp=_floats(evals[0].values_lowp)[:out.numel()].reshape(out.shape), rounding=_floats(evals[0].magnitudes)[:out.numel()].reshape(out.shape))
    forward = compare(out_ref, out_t.detach().double().cpu().numpy(), dtype_name, quantity="forward", rtol=rtol, atol=atol)
    if not forward.passed:
        forward.note = ("the symbolic forward and the torch function disagree: the derivatives below are derivatives "
                        "of different functions. Fix the symbolic forward first.")
    records = compare_all(refs, actual, dtype_name, quantity="hvp", rtol=rtol, atol=atol)
    records += compare_all(firsts, got["grad"], dtype_name, quantity="vjp (create_graph)" if v_t is not None else
                           "grad (create_graph)", rtol=rtol, atol=atol)
    records += compare_all(jw_ref, {"grad_output": got["jw"]}, dtype_name, quantity="jvp", rtol=rtol, atol=atol)
    annotate(records, note)
    what = "the given direction w" if tangents is not None else f"{len(dirs)} random directions w"
    cot = "v = 1 (scalar output)" if v_t is None else ("the given cotangent v" if given_v else "a random cotangent v")
    meta = {"dtype": dtype_name, "via": DOUBLE_BACKWARD, "engine": "elementwise",
            "quantity": f"hvp: w^T d2<v, f>/dx2 ({what}, {cot}), with the first backward under create_graph=True "
                     "and its derivative in v (J w)"}
    return Report([forward] + records, title=title or "symgrad check", meta=meta)


def _bound_structural_zeros(fn, named, refs, firsts, jw_ref, v_t, dirs, wrt, dtype_name) -> None:
    """Torch's code traced to bound the entries the closed form cancels to 0 (Note [Allowances of
    other entries] in compare/compare.py); untraceable code keeps the share of the largest entry."""
    from .graph.order2 import bound_structural_zeros
    from .graph.twin import graph_for_bounds

    graph = graph_for_bounds(fn, named)
    if graph is not None:
        seed_v = None if v_t is None else v_t.detach().double().cpu().numpy()
        bound_structural_zeros(graph, refs, firsts, jw_ref, seed_v, dirs, wrt, dtype_name)


def _floats(vals) -> np.ndarray:
    return np.array([float(x) for x in vals], dtype=np.float64) if vals else np.zeros(0)


def _references(evals, start: int, parts: list, structural_zeros, entry_form, stacked: bool = True) -> list:
    """One reference per ``(name, forms, shape)`` in ``parts``, whose entries follow ``start`` in the
    evaluations: stacked over the directions, ``(k, *shape)``, or (``stacked=False``) the first's."""
    refs = []
    for w, form, shape in parts:
        n = int(np.prod(shape, dtype=np.int64))

        def part(field, ev):
            got = getattr(ev, field)
            return None if got is None else _floats(got)[start:start + n].reshape(shape)

        def over(field):
            return np.stack([part(field, ev) for ev in evals]) if stacked else part(field, evals[0])

        value, rounding = over("values"), over("magnitudes")
        lowp = [part("values_lowp", ev) for ev in evals]
        zero = structural_zeros(form)
        text, latex = entry_form(form)
        ref = Reference(w, value, f"{text}  (entry [{', '.join('0' for _ in shape)}]{', w = each direction' if stacked else ''})"
                        if shape else text, latex, rounding=rounding,
                        value_lowp=None if any(x is None for x in lowp) else over("values_lowp"),
                        structural_zero=None if zero is None else np.broadcast_to(zero, value.shape).copy())
        if all(ev.lower is not None for ev in evals):
            lo, up = over("lower"), over("upper")
            kink = (lo != up) | (lo != value) | (up != value)
            if kink.any():
                ref.lower, ref.upper, ref.kink = lo, up, kink
        refs.append(ref)
        start += n
    return refs
