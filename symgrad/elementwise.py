"""The plain-function pipeline: build the symbolic forward, differentiate it in closed form, lower
the closed form to numpy, run torch autograd the way the user named (``via``), compare, report.

``check_plain`` is what ``symgrad.check`` runs for anything that is not an ``nn.Module`` (after its
argument checks), and what the module driver runs for a whole batch as one symbolic computation
(``symgrad.nn.check``).  Large inputs go to the op graph's tensor back end (Note [Memory guard]).
Torch code with no symbolic twin goes to the op graph: its tensor back end, or (``engine=
"elementwise"``) this pipeline with the forward exploded through the graph (Note [Exploded twin]).
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping

import numpy as np

from .autograd.forward import forward_once, grad_enabled
from .autograd.forward_mode import (NO_TANGENT_REASON, dropped_reason, first_forward_mode, no_tangent,
                                    run_recording_ops)
from .autograd.run import default_via, quantity_of, run_autograd, same_values
from .graph.refs import JACOBIAN_VIAS
from .compare.compare import compare, compare_all
from .differentiate.elementwise import differentiate
from .errors import InputError, ShapeMismatch, UnsupportedOp, exploded_memory_guard
from .inputs import check_options, fresh_name, lowest_precision, normalize_inputs
from .progress import stage
from .plain_refs import closed_form_references
from .report.report import Report, shorten
from .symbolic.forward import check_symbols, symbolic_inputs, symbolic_output
from .symbolic.tensor import SymTensor, symbols
from .validate import (check_backend, check_callable, check_via_keywords, check_wrt_type, recursion_guard,
                       refuse_non_float_output, refuse_nonfinite)

__all__ = ["check_plain"]


@exploded_memory_guard
@grad_enabled
@recursion_guard
def check_plain(fn: Callable | None, inputs, symbolic=None, *, wrt=None, via: str | None = None, v=None,
                tangents=None, engine: str = "auto", backend: str = "auto", rtol: float | None = None,
                atol: float | None = None, backward_calls: int = 1,
                symbols_map: Mapping[str, object] | None = None, title: str | None = None,
                memory_budget: int | None = None, loss=None, target=None) -> Report:
    """``symgrad.check`` for a function (not a module); the keywords are its own."""
    _check_keywords(fn, symbolic, wrt, backend, rtol, atol, backward_calls, loss, target, engine)
    asked_via = via
    if via is not None:  # tangents= with via='jacfwd' reached the op graph and died of a KeyError
        check_via_keywords(via, quantity_of(via, v is not None), v, tangents)
    stage("building the symbolic forward")
    named = _private(normalize_inputs(fn, symbolic, inputs, finite=False))
    if engine != "graph" and not _all_finite(named):  # Note [Non-finite inputs on auto]
        if engine == "auto" and fn is not None and symbolic is None and not (via or "").endswith("hessian"):
            engine = "graph"
        else:
            refuse_nonfinite(named)
    wrt_names = _choose_wrt(named, wrt)
    dtype = lowest_precision(named.values())
    dtype_name = str(dtype).replace("torch.", "")
    leaves = {n: t.detach().clone().requires_grad_(n in wrt_names) for n, t in named.items()}
    from .matrix.to_torch import standalone_reference, torch_reference

    as_torch = torch_reference(fn, symbolic, named, engine)  # Note [Matrix expressions into the op graph]
    graph_fn = fn
    if fn is None and as_torch is None:
        as_torch = graph_fn = standalone_reference(symbolic, named, engine)

    def on_graph(sym):
        from .graph import check_graph

        stage("op graph: trace, differentiate, compare")
        return check_graph(graph_fn, named, symbolic=sym, wrt=wrt_names, via=via, v=v, tangents=tangents,
                           backward_calls=backward_calls, rtol=rtol, atol=atol, title=title,
                           memory_budget=memory_budget)

    if _tensor_back_end(graph_fn, as_torch or symbolic, named, wrt_names, via, tangents, engine, memory_budget):
        return on_graph(as_torch or symbolic)
    sym_in = symbolic_inputs(named)
    routed = _symbolic_forward(fn, symbolic, named, sym_in, symbols_map, wrt_names, engine, memory_budget,
                               forward_ad=via in ("jacfwd", "func.jvp", "forward_ad") or (via is None and tangents is not None),
                               jacobian=via in JACOBIAN_VIAS or (via is None and v is None and tangents is None),
                               on_graph=on_graph, hessian=via in ("functional.hessian", "func.hessian"))
    if isinstance(routed, Report):
        return routed
    written = _written(named, leaves)
    if written and engine == "auto":
        return on_graph(None)  # Note [Inputs written in forward] in graph/check.py: each run gets a copy there
    if written:
        raise InputError(f"the function writes into its input {written!r} in place (an in-place op such as "
                         f"{written}.add_ or {written} += ...), so each run of it would see other values. Fix: "
                         "engine='graph' (or 'auto'), which gives every run its own copy, or an out-of-place op")
    out, twin_graph = routed
    from_sympy = symbolic is not None and not callable(symbolic)
    check_symbols(out, sym_in, wrt_names, from_sympy)

    out, out_t, autograd_fn = _torch_output(fn, out, sym_in, dtype, leaves)
    via, quantity, v, tangents, cot_sym, tan_sym, extra_args, extra_vals = _products(
        out, named, wrt_names, via, v, tangents, dtype, backward_calls)

    stage("differentiating in closed form")
    derivs = differentiate(out, {w: sym_in[w] for w in wrt_names}, quantity, cotangent=cot_sym,
                           tangents=tan_sym, backend=backend)
    derivs = _without_steps(derivs, twin_graph)

    stage("evaluating the closed form")
    torch_graph = None if twin_graph is not None or fn is None else functools.cache(lambda: _zeros_graph(fn, named))
    out_ref, refs, kink_conditions = closed_form_references(
        out, derivs, named, sym_in, extra_args, extra_vals, dtype, scale=backward_calls if via == "backward" else 1,
        symbolic=symbolic if from_sympy and quantity == "grad" else None, twin_graph=twin_graph,
        quantity=quantity, v=v, via=via, tangents=tangents if quantity == "jvp" else None, zeros_graph=torch_graph)
    tangents_t = {w: tangents[w] for w in wrt_names} if quantity == "jvp" else None
    autograd = dict(cotangent=v, tangents=tangents_t, backward_calls=backward_calls)
    stage(f"running autograd (via={via})")
    actual, dropped = (run_recording_ops(autograd_fn, leaves, wrt_names, via, **autograd) if quantity == "jvp"
                       else (run_autograd(autograd_fn, leaves, wrt_names, via, **autograd), []))

    stage("comparing")
    forward = compare(out_ref, out_t.detach().double().cpu().numpy(), dtype_name, quantity="forward",
                      rtol=rtol, atol=atol)
    if not forward.passed and symbolic is None and fn is not None and engine == "auto":
        return on_graph(None)  # its own twin disagrees: torch code the twin misread (torch.randn inside)
    if not forward.passed and torch_graph is not None and _widen_forward(torch_graph(), out_ref, dtype_name):
        forward = compare(out_ref, out_t.detach().double().cpu().numpy(), dtype_name, quantity="forward",
                          rtol=rtol, atol=atol)
    if not forward.passed:
        forward.note = ("the symbolic forward and the torch function disagree: the derivatives below are "
                        "derivatives of different functions. Fix the symbolic forward first.")
    records = [forward] + compare_all(refs, {ref.name: actual[k] for ref, k in zip(refs, derivs)}, dtype_name,
                                      quantity=quantity, rtol=rtol, atol=atol)
    meta = {"dtype": dtype_name, "via": via, "quantity": quantity, "engine": "elementwise"}
    if dropped or (quantity == "jvp" and no_tangent(actual["jvp"])):  # Note [A tangent torch drops]
        meta["jvp"] = dropped_reason(dropped) if dropped else NO_TANGENT_REASON
    if kink_conditions:
        meta["kink conditions"] = ", ".join(shorten(c, 40) for c in kink_conditions[:4])
    if asked_via is None and quantity == "jacobian" and fn is not None:
        records += _forward_mode_beside(meta, lambda how, t: check_plain(
            fn, inputs, symbolic, wrt=wrt_names, via=how, tangents=t, engine=engine, backend=backend, rtol=rtol,
            atol=atol, symbols_map=symbols_map, memory_budget=memory_budget), named, wrt_names,
            lambda how, t: run_autograd(autograd_fn, leaves, wrt_names, how, tangents=t))
    return Report(records, title=title or "symgrad check", meta=meta)


# Note [Forward mode beside the Jacobian]
# The op graph checks a tensor output's random VJPs and random JVPs; the exploded check of the same
# output (a small one, or one whose twin is an ``sg.*`` expression) checked the whole Jacobian by
# reverse mode alone, so a custom Function whose jvp was 1 % off passed with ``symbolic=sg.sin`` and
# failed with ``symbolic=torch.sin``.  The exploded check now also runs forward mode along one random
# tangent (torch.func.jvp, else dual tensors, as Note [A jvp that raises] in graph/check.py), and
# says why where it cannot.
def _forward_mode_beside(meta: dict, check_jvp, named: dict, wrt_names: list, torch_jvp) -> list:
    """The jvp records along one random tangent, or none with ``meta["jvp"]`` saying why.  torch's
    forward mode is tried first (``torch_jvp``, cheap), so a way it cannot run costs no exact jvp."""
    import torch

    gen = torch.Generator().manual_seed(1)
    t = {w: torch.randn(named[w].shape, generator=gen, dtype=torch.float64).to(named[w].dtype) for w in wrt_names}

    def run(how):
        torch_jvp(how, {w: v.clone() for w, v in t.items()})
        return check_jvp(how, {w: v.clone() for w, v in t.items()})

    got = first_forward_mode(run, meta, (UnsupportedOp, InputError, NotImplementedError))  # a twin it cannot run
    if got is None:
        return []
    how, report = got
    if report.meta.get("jvp"):  # torch drops the tangent through a custom op
        meta["jvp"] = f"not checked ({report.meta['jvp']})"
        return []
    meta["quantity"] += f" and jvp (a random tangent{', dual tensors' if how == 'forward_ad' else ''})"
    meta.update({k: v for k, v in report.meta.items() if k == "kink conditions" and k not in meta})
    return report.records[1:]


def _zeros_graph(fn, named: dict):
    """The torch code's op graph, traced where a symbolic twin was given beside it and the twin's
    closed form cancels an entry to 0: that entry is allowed what torch's computation sums there,
    not a share of the check's largest derivative (Note [Allowances of other entries] in
    compare/compare.py)."""
    from .graph.twin import graph_for_bounds

    return graph_for_bounds(fn, named)


def _widen_forward(graph, out_ref, dtype: str) -> bool:
    """A symbolic twin's forward row, failing, allowed torch's own rounding too: the op graph's bound
    of the torch code's forward (a twin leaving out a shift of 1000 has none of its rounding; Note
    [Bounds of two evaluation orders] in graph/twin.py).  Whether it was widened."""
    from .graph.twin import widen_forward

    return graph is not None and widen_forward(graph, out_ref, dtype)


def _private(named: dict) -> dict:
    """Copies of the inputs not differentiated: a forward that writes into one never reaches the
    user's tensor (Note [Inputs written in forward] in graph/check.py)."""
    import torch

    return {n: t.detach().clone() if isinstance(t, torch.Tensor) and not t.requires_grad else t
            for n, t in named.items()}


def _written(named: dict, leaves: dict) -> str | None:
    """The first input the symbolic forward's runs changed in place (``leaves``: copies from before)."""
    import torch

    for n, t in named.items():
        if isinstance(t, torch.Tensor) and not t.requires_grad and not bool(same_values(leaves[n].detach(), t).all()):
            return n
    return None


def _check_keywords(fn, symbolic, wrt, backend, rtol, atol, backward_calls, loss, target, engine) -> None:
    check_options(rtol, atol, backward_calls)
    check_callable(fn, symbolic=symbolic)
    check_wrt_type(wrt)
    check_backend(backend)
    if loss is not None or target is not None:
        raise InputError("loss=/target= apply to nn.Module checks; for a function, put the loss inside it")


def _without_steps(derivs: dict, twin_graph) -> dict:
    """floor, ceil, trunc of torch code have derivative 0, as their tensor rules."""
    if twin_graph is None:
        return derivs
    from .graph.explode import clean_derivative, has_steps

    if not has_steps(twin_graph):
        return derivs
    return {k: np.vectorize(clean_derivative, otypes=[object])(d) if d.size else d for k, d in derivs.items()}


def _symbolic_forward(fn, symbolic, named, sym_in, symbols_map, wrt_names, engine, budget, *, forward_ad: bool,
                      jacobian: bool, on_graph, hessian: bool = False):
    """(symbolic output, op graph of exploded torch code or None), or the op graph's report for torch
    code with no symbolic twin (Note [Exploded twin])."""
    twin_graph = None  # the op graph of torch code exploded here (Note [Exploded twin])
    try:
        out = symbolic_output(fn, symbolic, sym_in, symbols_map)
    except UnsupportedOp as err:
        # torch code (no symbolic twin written with sg.* or SymPy): read through the op graph, by its
        # tensor back end, or exploded into one expression per entry when asked (Note [Exploded twin])
        if fn is None or (symbolic is not None and not callable(symbolic)):
            raise
        if engine != "elementwise" and not hessian:  # a full Hessian: exploded, within the memory budget
            try:
                return on_graph(symbolic)
            except UnsupportedOp as graph_err:
                if symbolic is None:  # torch code: the graph's message names the op and the fix
                    raise
                raise UnsupportedOp(f"{err}\nTracing it into the op graph failed as well: {graph_err}") from graph_err
        from .graph.twin import explode_torch

        stage("exploding the forward through the op graph")
        out, twin_graph = explode_torch(symbolic if symbolic is not None else fn, named, budget=budget,
                                        n_wrt=sum(named[w].numel() for w in wrt_names), n_diff=None if jacobian else 1,
                                        forward_ad=forward_ad)
    n_jacobian = out.numel() * sum(named[w].numel() for w in wrt_names) if jacobian else 0
    if engine == "auto" and not hessian and fn is not None and n_jacobian > JACOBIAN_ENTRIES and \
            _traceable(fn, symbolic):
        return on_graph(symbolic)  # Note [Slow to explode]: a full Jacobian of many entries
    if twin_graph is None and symbolic is None and fn is not None:  # torch code that also ran on SymTensors
        from .graph.twin import graph_for_bounds

        twin_graph = graph_for_bounds(fn, named)
        n_wrt = sum(named[w].numel() for w in wrt_names)
        if engine == "auto" and not hessian and twin_graph is not None and _slow_to_explode(twin_graph, n_wrt, jacobian):
            return on_graph(None)  # Note [Slow to explode]
    return out, twin_graph


# Note [Slow to explode]
# Torch code that also runs on symbolic tensors (operators, ``x @ W``) is exploded when its inputs
# are few -- but a constant it closes over is not an input: ``x @ W`` with x of 8 x 128 entries and
# a captured 128 x 128 weight took 72 s exploded and 2.5 s on the op graph, every exploded entry
# reading W's 16,384 numbers.  So on ``engine='auto'`` the op graph traced for the bounds is sized
# before anything is differentiated (``explode_size.estimate``, which counts every node the output
# reads, constants included), and past ``EXPLODE_NODES`` derivative nodes the check goes to the
# tensor back end.  Measured: that check estimates 573 million; at 8 x 24 entries and a 24 x 24
# weight, 3.9 million, 0.7 s exploded and 0.01 s on the graph; the largest exploded checks of
# tests/test_check.py, test_corpus.py, test_shipped_bugs.py and test_special_functions.py estimate
# 40,000.
EXPLODE_NODES = 2_000_000
# The default check of a tensor output on the exploded engine is its whole Jacobian: an ``sg.tanh``
# twin of 1,024 entries made a million entries (43 s, 2.4 GB) where 1,025 went to the tensor back
# end's random products (the routing had sized one derivative row) in 2.4 s.  On ``engine='auto'``
# a Jacobian of more than JACOBIAN_ENTRIES entries goes to the tensor back end too.
JACOBIAN_ENTRIES = 2**17


def _slow_to_explode(graph, n_wrt: int, jacobian: bool) -> bool:
    from .graph.explode_size import estimate

    out = graph.outputs[0]
    return estimate(graph, out, n_wrt, out.size if jacobian else 1).derivative_nodes > EXPLODE_NODES


def _torch_output(fn, out: SymTensor, sym_in: dict, dtype, leaves: dict):
    """The torch forward run once: (symbolic output reshaped to torch's, torch's output, the function
    autograd differentiates)."""
    import torch

    torch_fn = fn if fn is not None else _lowered_forward(out, sym_in, dtype)
    out_t, autograd_fn = forward_once(torch_fn, leaves)
    if not isinstance(out_t, torch.Tensor):
        raise InputError(f"the torch function returned a {type(out_t).__name__}, not a tensor: symgrad differentiates "
                         "one tensor output. Fix: return one tensor (for a tuple or dict, check a wrapper such as "
                         "lambda x: fn(x)[0]; for None, add the missing return)")
    refuse_non_float_output(out_t)
    if tuple(out_t.shape) != out.shape and _same_but_unit_dims(tuple(out_t.shape), out.shape):
        out = out.reshape(tuple(out_t.shape))  # SymPy has no 1-d matrices: (n, 1) stands for (n,)
    if tuple(out_t.shape) != out.shape:
        raise ShapeMismatch(f"the torch function returns shape {tuple(out_t.shape)} but the symbolic forward returns "
                            f"{out.shape}; they must compute the same thing")
    return out, out_t, autograd_fn


def _products(out: SymTensor, named: dict, wrt_names: list, via, v, tangents, dtype, backward_calls: int):
    """The product autograd computes (``via``, its quantity) with the cotangent or tangents as symbols
    of the closed form: (via, quantity, v, tangents, cotangent symbols, tangent symbols, their symbols
    and values as extra arguments of the lowered function)."""
    import torch

    scalar = out.numel() == 1
    if via is None:
        via = default_via(scalar, v is not None)
    if backward_calls != 1 and via != "backward":
        raise InputError(f"backward_calls={backward_calls} accumulates .grad over repeated backward() calls; "
                         f"it needs via='backward' (a scalar output, or a cotangent v), not via={via!r}")
    quantity = quantity_of(via, v is not None)
    check_via_keywords(via, quantity, v, tangents)
    cot_sym = tan_sym = None
    extra_args, extra_vals = [], []
    if quantity == "vjp":
        if v is None:
            raise InputError(f"via={via!r} computes a vector-Jacobian product: pass the cotangent v (shape {out.shape})")
        v = torch.as_tensor(v, dtype=dtype)
        refuse_nonfinite({"v": v}, "cotangent")
        if tuple(v.shape) != out.shape:
            raise ShapeMismatch(f"v has shape {tuple(v.shape)}, the output has {out.shape}")
        cot_sym = symbols(fresh_name("v", named), out.shape)
        extra_args += list(cot_sym.data.ravel())
        extra_vals += list(v.detach().double().numpy().ravel())
    elif quantity == "grad" and not scalar:
        raise ShapeMismatch(f"via={via!r} differentiates a scalar, but the output has shape {out.shape}; "
                            "pass v=torch.ones_like(out) for backward(v), or use via='functional.jacobian'")
    if quantity in ("hessian",) and not scalar:
        raise ShapeMismatch(f"a Hessian needs a scalar output; the output has shape {out.shape}")
    if quantity == "jvp":
        if tangents is None:
            raise InputError(f"via={via!r} computes a Jacobian-vector product: pass tangents (one per input in wrt)")
        if isinstance(tangents, torch.Tensor):
            tangents = {wrt_names[0]: tangents} if len(wrt_names) == 1 else None
        if not isinstance(tangents, Mapping) or set(tangents) != set(wrt_names):
            raise InputError(f"tangents must map each of {wrt_names} to a tensor of its shape")
        tan_sym = {}
        for w in wrt_names:
            t = torch.as_tensor(tangents[w], dtype=dtype)
            if tuple(t.shape) != tuple(named[w].shape):
                raise ShapeMismatch(f"tangent for {w!r} has shape {tuple(t.shape)}, the input has {tuple(named[w].shape)}")
            refuse_nonfinite({w: t}, "tangent for")
            tangents[w] = t
            tan_sym[w] = symbols(fresh_name(f"t_{w}", named), tuple(t.shape))
            extra_args += list(tan_sym[w].data.ravel())
            extra_vals += list(t.detach().double().numpy().ravel())
    return via, quantity, v, tangents, cot_sym, tan_sym, extra_args, extra_vals


def _choose_wrt(named: dict, wrt) -> list[str]:
    if isinstance(wrt, str):
        wrt = [wrt]
    floating = [n for n, t in named.items() if t.is_floating_point()]
    if wrt is None:
        chosen = [n for n in floating if named[n].requires_grad] or floating
        if not chosen:
            raise InputError("no floating-point input to differentiate; pass float tensors or name them in wrt")
        return chosen
    wrt = list(wrt)
    if not wrt:
        raise InputError("wrt is empty: name at least one input to differentiate, or leave wrt=None for all of them")
    for w in wrt:
        if w not in named:
            raise InputError(f"wrt names {w!r}, which is not an input; the inputs are: {', '.join(named)}")
        if not named[w].is_floating_point():
            raise InputError(f"wrt names {w!r}, a {named[w].dtype} tensor; only floating-point inputs have derivatives")
    return wrt


# Note [Non-finite inputs on auto]
# The exploded back end evaluates closed forms at finite points only and refuses an inf or NaN input;
# the op graph evaluates them as torch does (a -inf attention mask, log_softmax with a -inf logit, an
# inf through exp(-x)) and reports NaN/inf on either side as such, never as a match.  With
# engine='auto' torch code (no symbolic= twin) with a non-finite input therefore goes to the op graph
# instead of being refused, in reverse and forward mode and for order=2; engine='elementwise', a
# symbolic= twin and full Hessians still refuse it, with a message naming engine='graph'.
def _all_finite(named) -> bool:
    return all(bool(np.isfinite(t.detach().double().cpu().numpy()).all()) for t in named.values()
               if t.is_floating_point())


def _traceable(fn, symbolic) -> bool:
    import sympy

    return fn is not None and (symbolic is None or callable(symbolic) and
                               not isinstance(symbolic, (sympy.Basic, sympy.MatrixBase, sympy.NDimArray)))


# Note [Half precision on the op graph]
# A float16 or bfloat16 check of torch code goes to the op graph with engine='auto', however small:
# there a backward, a jvp or a second derivative off by 1 % (2.6 units of bfloat16's roundoff, which
# no entry alone resolves) meets the scale test over all its entries (Note [Systematic scale] in
# graph/scale.py, Note [Scale of every product] in graph/rerun_scale.py), which the exploded back
# end does not run: a custom Function's jvp times 1.01 passed there in bfloat16.
def _half(named) -> bool:
    import torch

    return any(t.dtype in (torch.float16, torch.bfloat16) for t in named.values() if t.is_floating_point())


def _forward_mode(via, tangents) -> bool:
    return tangents is not None or (via or "").endswith(("jvp", "hessian")) or via in ("jacfwd", "forward_ad")


def _tensor_back_end(fn, symbolic, named, wrt, via, tangents, engine, budget) -> bool:
    """Whether the check goes to the op graph's tensor back end (Note [Memory guard])."""
    import sympy

    from .graph.budget import refuse_exploded, too_big_to_explode

    n_in = sum(t.numel() for t in named.values() if t.is_floating_point())
    n_wrt = sum(named[w].numel() for w in wrt)
    if engine == "graph":
        if fn is None or isinstance(symbolic, (sympy.Basic, sympy.MatrixBase, sympy.NDimArray)):
            raise InputError("engine='graph' traces torch code: pass the torch function (and, as symbolic=, a "
                             "reference forward in torch ops if you have one), not a SymPy expression")
        return True
    if engine == "auto" and _half(named) and _traceable(fn, symbolic):
        return True  # Note [Half precision on the op graph]
    if engine == "elementwise" or (_forward_mode(via, tangents) and not _traceable(fn, symbolic)):
        refuse_exploded(n_in, n_wrt, 1, False, budget)
        return False
    if not _traceable(fn, symbolic):
        refuse_exploded(n_in, n_wrt, 1, False, budget)
        return False
    return too_big_to_explode(n_in, n_wrt, 1, False, budget)


def _same_but_unit_dims(a: tuple, b: tuple) -> bool:
    return tuple(d for d in a if d != 1) == tuple(d for d in b if d != 1)


def _lowered_forward(out: SymTensor, sym_in: dict[str, SymTensor], dtype):
    """The symbolic forward as a torch function of the inputs (used when fn is None)."""
    from .lower.torch import to_torch

    names = list(sym_in)

    def forward(*tensors):
        env = {}
        for name, t in zip(names, tensors):
            st = sym_in[name]
            if t.is_floating_point():
                for index in np.ndindex(st.shape):
                    env[str(st.data[index])] = t[index] if index else t
        return to_torch(out.data, env, dtype)

    return forward
