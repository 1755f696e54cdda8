"""Checking an ``nn.Module`` (or a plain function of tensors) imported through torch.fx.

``check_module(model, inputs, loss=..., target=...)`` turns the model into a function of
``(inputs..., parameters...)`` with ``torch.func.functional_call``; builds its symbolic twin with
the fx importer (parameters are symbols named after the module's parameters, ``layer1.weight[3, 2]``);
and differentiates the loss -- or, with no loss, the output: a gradient for a scalar, a Jacobian
otherwise -- with respect to every parameter (and every input with ``requires_grad``).

Engines: when the traced graph keeps samples apart (Note [Per-sample derivation]) the closed form
is derived for one symbolic sample and evaluated over the batch; otherwise the whole batch is
exploded through the plain-function pipeline (``symgrad.elementwise``).  ``engine='matrix'`` (or ``'auto'`` on models with a loss and more than
``MATRIX_THRESHOLD`` parameters) asks ``symgrad.matrix.module_references`` instead.
"""

from __future__ import annotations

from typing import Callable, Mapping

import warnings

import numpy as np

from ..autograd.run import default_via, quantity_of, run_autograd
from ..graph.budget import refuse_exploded, too_big_to_explode
from ..symbolic.numbers import refuse_string_attributes
from ..validate import (check_backend, check_callable, check_names, check_via_keywords, check_wrt_type,
                        refuse_hooks, refuse_meta, refuse_non_tensor_output, refuse_nonfinite)
from ..symbolic.tensor import as_symtensor, symbols
from ..autograd.forward import forward_once, grad_enabled
from ..elementwise import check_plain
from ..ops import float32_scoped
from ..inputs import fresh_name, lowest_precision, normalize_inputs
from ..compare.compare import compare, compare_all
from ..differentiate.batched import per_sample_references, row_symbols
from ..errors import InputError, ShapeMismatch, UnsupportedOp
from ..importer.batch import Mixing, Reduced
from ..importer.interpret import batch_axes, refuse_stateful, run_symbolic, trace
from ..progress import stage, with_progress
from ..report.report import Report, shorten

__all__ = ["check_module", "check_function", "resolve_loss", "MATRIX_THRESHOLD", "LOSSES", "ONEHOT_VIA"]

MATRIX_THRESHOLD = 1000  # the elementwise engine takes ~5 s at 1,000 parameters and ~20 s at 1,600
ONEHOT_VIA = "onehot-vjp"  # the Jacobian as N one-hot backward(v) calls (seed 004's answer)

LOSSES = {
    "mse": "mse_loss",
    "l1": "l1_loss",
    "bce": "binary_cross_entropy",
    "bce_with_logits": "binary_cross_entropy_with_logits",
    "cross_entropy": "cross_entropy",
}


def resolve_loss(loss) -> tuple[Callable | None, str]:
    """``(torch callable of (output, target), label)`` for a loss given as string, module or callable."""
    import torch.nn.functional as F

    if loss is None:
        return None, ""
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise InputError(f"loss={loss!r} is not a loss symgrad knows by name; use one of {', '.join(LOSSES)}, "
                             "an nn loss module, an F.* loss or a callable(output, target)")
        fn = getattr(F, LOSSES[loss])
        return fn, LOSSES[loss]
    if callable(loss):
        return loss, getattr(loss, "__name__", type(loss).__name__)
    raise InputError(f"loss must be a string, an nn loss module or a callable(output, target), not {type(loss).__name__}")


def _is_cross_entropy(loss_fn) -> bool:
    import torch.nn as nn
    import torch.nn.functional as F

    return loss_fn is F.cross_entropy or isinstance(loss_fn, nn.CrossEntropyLoss)


def _trace_loss(loss_fn):
    """The loss as an fx graph of (output, target): a module traced as root, a callable through a wrapper."""
    import torch.nn as nn

    if isinstance(loss_fn, nn.Module):
        return trace(loss_fn)

    def loss(output, target):
        return loss_fn(output, target)

    return trace(loss)


def _named_inputs(model, inputs, finite: bool = True) -> dict:
    """The model's inputs as ``{name: tensor}`` in the order of ``model.forward``'s parameters.

    A dict is matched to the parameters by name (``{"v": v, "u": u}`` for ``forward(u, v)`` is u, v);
    a single input may have any name; several inputs whose names are not the parameters' are refused.
    """
    import inspect

    named = normalize_inputs(model.forward, None, inputs, finite=finite)
    if not isinstance(inputs, Mapping) or len(named) < 2:
        return named
    try:
        signature = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return named
    if any(p.kind == p.VAR_POSITIONAL for p in signature):
        return named  # forward(*args): the dict's order is the only order there is
    params = [p.name for p in signature if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if set(named) <= set(params):
        return {p: named[p] for p in params if p in named}
    raise InputError(f"inputs {', '.join(named)} do not match {type(model).__name__}.forward's parameters "
                     f"({', '.join(params)}): name them as forward does, or pass a tuple in forward's order")


def _choose_wrt(named: dict, params: dict, wrt) -> list[str]:
    everything = {**named, **params}
    if wrt is None:
        chosen = [n for n, p in params.items() if p.requires_grad]
        chosen += [n for n, t in named.items() if t.is_floating_point() and t.requires_grad]
        if not chosen:
            raise InputError("nothing to differentiate: the model has no parameter with requires_grad and no input "
                             "requires grad; pass wrt=[names]")
        return chosen
    wrt = [wrt] if isinstance(wrt, str) else list(wrt)
    for w in wrt:
        if w not in everything:
            raise InputError(f"wrt names {w!r}, which is neither a parameter nor an input; parameters: "
                             f"{', '.join(params)}; inputs: {', '.join(named)}")
        if not everything[w].is_floating_point():
            raise InputError(f"wrt names {w!r}, a {everything[w].dtype} tensor; only floating tensors have derivatives")
    return wrt


@with_progress("symgrad check")
@grad_enabled
@float32_scoped
def check_module(model, inputs, *, symbolic=None, wrt=None, via=None, v=None, loss=None, target=None,
                 engine: str = "auto", backend: str = "auto", rtol=None, atol=None, title=None,
                 tangents=None, backward_calls: int = 1, quiet: bool | None = None) -> Report:
    """Check autograd's gradients of ``model`` (and of ``loss(model(*inputs), target)``) against the closed
    form.  The keywords are ``symgrad.check``'s; ``quiet=True`` never shows progress."""
    import torch

    check_callable(model, "the model")
    check_wrt_type(wrt)
    check_backend(backend)
    if via is not None:
        check_via_keywords(via, "jacobian" if via == ONEHOT_VIA else quantity_of(via, v is not None), v, tangents)
    refuse_string_attributes(model, loss)  # before torch or the importer reads them (never sympified)
    stage(f"tracing {type(model).__name__}")

    refuse_stateful(model)
    refuse_hooks(model)
    refuse_meta(model)
    named = _named_inputs(model, inputs, finite=engine != "graph")
    params = dict(model.named_parameters())
    check_names(params)
    if engine != "graph":  # the op graph evaluates inf and NaN; the exploded back end does not
        refuse_nonfinite(params, "parameter")
        if target is not None and hasattr(target, "is_floating_point"):
            refuse_nonfinite({"target": target}, "the loss's")
    clash = set(named) & set(params)
    if clash:
        raise InputError(f"input name(s) {', '.join(sorted(clash))} clash with parameter names; pass inputs as a dict with other names")
    loss_fn, loss_label = resolve_loss(loss)
    if loss_fn is not None and target is None:
        raise InputError("loss= needs target=: the tensor the loss compares the output with")
    if loss_fn is None and target is not None:
        raise InputError("target= is given without loss=; pass loss='mse' (or a loss module / callable)")
    wrt_names = _choose_wrt(named, params, wrt)
    everything = {**named, **params}
    param_dtypes = {p.dtype for p in params.values() if p.is_floating_point()}
    for name, t in named.items():
        if t.is_floating_point() and param_dtypes and t.dtype not in param_dtypes:
            raise InputError(f"input {name!r} is {t.dtype} but {type(model).__name__}'s parameters are "
                             f"{', '.join(sorted(map(str, param_dtypes)))}: convert one of them "
                             "(model.double() / model.float(), or x.to(dtype))")
    dtype = lowest_precision(everything.values())
    dtype_name = str(dtype).replace("torch.", "")
    title = title or f"symgrad check of {type(model).__name__}" + (f" with {loss_label}" if loss_label else "")

    input_names, param_names = list(named), list(params)

    def torch_fn(*tensors):
        ins = tensors[: len(input_names)]
        ps = dict(zip(param_names, tensors[len(input_names):]))
        out = torch.func.functional_call(model, ps, tuple(ins))
        return loss_fn(out, target) if loss_fn is not None else out

    n_params = sum(p.numel() for p in params.values())

    if engine not in ("auto", "elementwise", "matrix", "graph"):
        raise InputError(f"engine must be 'auto', 'elementwise', 'matrix' or 'graph', not {engine!r}")
    if _graph_route(engine, n_params, loss_fn, symbolic, via, tangents, backward_calls):
        from ..graph import check_graph

        return check_graph(model, named, symbolic=symbolic, wrt=wrt_names, via=via, v=v, loss=loss_fn,
                           target=target, backward_calls=backward_calls, rtol=rtol, atol=atol, title=title)
    leaves = {n: t.detach().clone().requires_grad_(n in wrt_names) for n, t in everything.items()}
    whole_batch = ""
    if backward_calls != 1 or tangents is not None:
        whole_batch = "backward_calls= and tangents= are checked on the whole batch"
        if engine == "matrix":
            raise InputError(f"engine='matrix' does not take backward_calls= or tangents= ({whole_batch}); "
                             "use engine='elementwise'")
    use_matrix = engine == "matrix" or (engine == "auto" and n_params > MATRIX_THRESHOLD and symbolic is None
                                        and loss_fn is not None)  # the matrix engine differentiates a scalar loss
    if use_matrix and not whole_batch:
        found = None
        stage("deriving matrix-calculus closed forms")
        if _matrix_via_supported(via, v, required=engine == "matrix"):
            found = _matrix_references(model, named, loss, target, wrt_names, dtype, required=engine == "matrix",
                                       warn=engine == "auto")
        if found is not None:
            forward, refs = found
            if forward is not None:  # the loss's shape, without one more torch forward
                out_shape = tuple(np.shape(forward.value))
            else:
                with torch.no_grad():
                    out_shape = tuple(torch_fn(*(t.detach() for t in leaves.values())).shape)
            via_m = via or default_via(True, v is not None)
            refs = _matrix_for_via(refs, via_m, v, out_shape)
            return _finish(refs, forward, torch_fn, leaves, wrt_names, via_m, v, dtype_name, rtol, atol, title,
                           {"engine": "matrix"})
        if engine == "auto" and symbolic is None and _matrix_via_supported(via, v, required=False):
            from ..graph import check_graph

            return check_graph(model, named, wrt=wrt_names, via=via, v=v, loss=loss_fn, target=target,
                               rtol=rtol, atol=atol, title=title)

    def fx_path() -> Report:
        stage("tracing with torch.fx")
        gm = trace(model)
        refuse_non_tensor_output(gm, f"{type(model).__name__}.forward")
        loss_gm = _trace_loss(loss_fn) if loss_fn is not None else None
        reason = "a symbolic= forward was given" if symbolic is not None else whole_batch
        plan = None
        if not reason:
            plan, reason = _plan(gm, loss_gm, named, target, via, v, tangents, loss_fn)
        if plan is not None:
            stage("differentiating one symbolic sample")
            try:
                forward, refs, kinks, meta = _per_sample(gm, loss_gm, plan, named, params, target, v, wrt_names, dtype, backend)
            except (ShapeMismatch, Mixing) as err:
                reason = f"the one-sample forward failed ({err})"
            else:
                meta["via"] = plan["via"]
                if loss_fn is not None and symbolic is None:
                    _attach_matrix_forms(refs, model, named, loss, target, wrt_names, dtype)
                if kinks:
                    meta["kink conditions"] = ", ".join(shorten(c, 40) for c in kinks[:4])
                return _finish(refs, forward, torch_fn, leaves, wrt_names, plan["via"], v, dtype_name, rtol, atol,
                               title, meta)
        n_in = sum(t.numel() for t in everything.values() if t.is_floating_point())
        n_wrt = sum(everything[w].numel() for w in wrt_names)
        if engine == "elementwise":
            refuse_exploded(n_in, n_wrt, 1, False)
        elif too_big_to_explode(n_in, n_wrt, 1, False):  # Note [Memory guard]: the op graph instead
            raise UnsupportedOp(f"the whole-batch exploded check would be too large ({n_in:,} input entries)")
        return _explode(gm, loss_gm, symbolic, torch_fn, leaves, named, params, target, wrt_names, via, v, tangents,
                        backend, rtol, atol, title, reason, backward_calls)

    try:
        return fx_path()
    except UnsupportedOp as err:
        # ops the fx importer has no rule for (convolutions, norms, attention): the op graph
        if engine != "auto" or (via or "").endswith("hessian") or tangents is not None or backward_calls != 1 \
                or (symbolic is not None and not callable(symbolic)):
            raise
        from ..graph import check_graph

        stage("op graph: trace, differentiate, compare")
        try:
            return check_graph(model, named, symbolic=symbolic, wrt=wrt_names, via=via, v=v, loss=loss_fn,
                               target=target, rtol=rtol, atol=atol, title=title)
        except UnsupportedOp as graph_err:
            raise UnsupportedOp(f"{err}\nTracing it into the op graph failed as well: {graph_err}") from graph_err


def _graph_route(engine, n_params, loss_fn, symbolic, via, tangents, backward_calls) -> bool:
    """The op graph's tensor back end takes a module when asked to, and under ``'auto'`` when the
    model is past the elementwise engine's size and no loss= hands it to the matrix engine: a loss
    computed inside ``forward``, or the output's Jacobian / vector-Jacobian products."""
    if engine == "graph":
        return True
    forward_mode = tangents is not None or (via or "").endswith(("jvp", "hessian")) or via in ("jacfwd", "forward_ad")
    return (engine == "auto" and n_params > MATRIX_THRESHOLD and loss_fn is None and not forward_mode
            and backward_calls == 1 and (symbolic is None or callable(symbolic)))


def _attach_matrix_forms(refs, model, named, loss, target, wrt, dtype) -> None:
    """Show the matrix engine's closed forms (``delta1.T*x``) where its values agree with ``refs``.

    Display only: the values compared stay the elementwise engine's.  A matrix form is attached
    only where it evaluates to the same gradient (to 1e-9 relative), so it was cross-checked
    against an independent derivation before it is shown.
    """
    try:
        found = _matrix_references(model, named, loss, target, wrt, dtype, required=False)
    except Exception:  # noqa: BLE001 - display only: a model the matrix engine misreads keeps its entrywise forms
        return
    by_name = {r.name: r for r in (found[1] if found is not None else [])}
    for ref in refs:
        m = by_name.get(ref.name)
        if m is None or not m.verified or not m.closed_form or np.shape(m.value) != np.shape(ref.value):
            continue
        scale = float(np.max(np.abs(ref.value))) if np.size(ref.value) else 0.0
        if np.allclose(m.value, ref.value, rtol=1e-9, atol=1e-9 * max(scale, 1e-300)):
            ref.closed_form, ref.closed_form_latex = m.closed_form, m.closed_form_latex
            ref.note = (ref.note + " " if ref.note else "") + "matrix form cross-checked against the elementwise derivative"


# vias whose result the matrix engine's gradient of a scalar loss is (possibly reshaped or scaled)
_MATRIX_QUANTITIES = ("grad", "vjp", "jacobian")


def _matrix_via_supported(via, v, *, required: bool) -> bool:
    """Whether the matrix engine can check ``via``: it has gradients of a scalar loss, which are
    what backward / autograd.grad / vjp / jacobian of a scalar compute, not a jvp or a Hessian.
    ``engine='matrix'`` raises for the others; ``'auto'`` warns and uses the elementwise engine."""
    if via is None:
        return True
    quantity = "jacobian" if via == ONEHOT_VIA else quantity_of(via, v is not None)
    if quantity in _MATRIX_QUANTITIES:
        return True
    message = (f"the matrix engine checks gradients of a scalar loss; via={via!r} computes a {quantity} "
               f"({'a directional derivative along tangents' if quantity == 'jvp' else 'second derivatives'}), "
               "which it does not derive")
    if required:
        raise UnsupportedOp(message + ". Use engine='elementwise' for this via.")
    warnings.warn(f"symgrad: {message}; falling back to the elementwise engine, whose cost grows with the number "
                  "of parameters", stacklevel=4)
    return False


def _matrix_for_via(refs, via, v, out_shape):
    """The gradients as the quantity ``via`` computes: ``backward(v)`` / vjp with a one-element
    cotangent ``v`` is ``v`` times the gradient; a Jacobian of the one-element output has the
    output's shape in front."""
    import torch

    scale = None
    if v is not None:
        vt = torch.as_tensor(v)
        if vt.numel() != 1:
            raise InputError(f"v has {vt.numel()} entries, but the matrix engine's output is a scalar loss")
        scale = float(vt.detach().double().reshape(()))
    quantity = "jacobian" if via == ONEHOT_VIA else quantity_of(via, v is not None)
    for ref in refs:
        shape = (tuple(out_shape) if quantity == "jacobian" else ()) + tuple(np.shape(ref.value))
        if scale is not None:
            ref.value = scale * ref.value
            if ref.value_lowp is not None:
                ref.value_lowp = scale * np.asarray(ref.value_lowp)
            if ref.rounding is not None:  # one more rounding: the scaling
                ref.rounding = abs(scale) * np.asarray(ref.rounding) + np.abs(ref.value)
            if ref.kink_rounding is not None:
                ref.kink_rounding = abs(scale) * np.asarray(ref.kink_rounding) + np.abs(ref.value)
            if ref.lower is not None:
                lo, hi = scale * ref.lower, scale * ref.upper
                ref.lower, ref.upper = np.minimum(lo, hi), np.maximum(lo, hi)
            if ref.kink_generators is not None:
                ref.kink_generators = scale * np.asarray(ref.kink_generators)
        for attr in ("value", "value_lowp", "rounding", "lower", "upper", "kink", "kink_rounding", "structural_zero"):
            a = getattr(ref, attr)
            if a is not None:
                setattr(ref, attr, np.asarray(a).reshape(shape))
        if ref.kink_generators is not None:
            g = np.asarray(ref.kink_generators)
            ref.kink_generators = g.reshape(g.shape[:2] + shape)
    return refs


def _matrix_references(model, named, loss, target, wrt, dtype, *, required: bool, warn: bool = False):
    """``(forward, refs)`` from the matrix engine, or None where it cannot be used (``required``:
    raise instead).  A closed form that failed its cross-check is never used (``ClosedFormUnverified``)."""
    try:
        from ..matrix import ClosedFormUnverified, module_references
    except ImportError as err:
        if required:
            raise UnsupportedOp(f"engine='matrix' needs symgrad.matrix.module_references, which is not available ({err})") from err
        return None
    try:
        return module_references(model, named, loss=loss, target=target, wrt=wrt, dtype=dtype, with_forward=True)
    except ClosedFormUnverified as err:
        if required:
            raise
        if warn:
            detail = str(err).splitlines()[1] if len(str(err).splitlines()) > 1 else ""
            warnings.warn("symgrad: the matrix engine's closed form for this model disagrees with the exact elementwise "
                          "derivative in its cross-check, an internal symgrad bug (please report it with the model); "
                          "falling back to the op graph's tensor back end" + (f" ({detail})" if detail else ""),
                          stacklevel=4)
        return None
    except (UnsupportedOp, NotImplementedError) as err:
        if required:
            hint = "" if "engine='elementwise'" in str(err) else ". Use engine='elementwise'"
            raise UnsupportedOp(f"the matrix engine cannot handle this model: {err}{hint}") from err
        if warn:
            warnings.warn(f"symgrad: the matrix engine cannot handle this model ({err}); falling back to the "
                          "op graph's tensor back end", stacklevel=4)
        return None


def _batch_size(named) -> int | None:
    for t in named.values():
        if t.dim() >= 1:
            return int(t.shape[0])
    return None


def _plan(gm, loss_gm, named, target, via, v, tangents, loss_fn):
    """How to derive once per sample, or ``(None, why not)``."""
    n = _batch_size(named)
    if n is None:
        return None, "no input has a batch dimension"
    infos = [0 if t.dim() >= 1 and t.shape[0] == n else None for t in named.values()]
    for (name, t), info in zip(named.items(), infos):
        if info == 0 and not t.is_floating_point():
            return None, f"input {name!r} is an integer tensor (it cannot be a symbol)"
    try:
        out, info = batch_axes(gm, list(named.values()), infos)
        if loss_gm is not None:
            t_info = 0 if target.dim() >= 1 and target.shape[0] == n else None
            if t_info == 0 and not target.is_floating_point() and not _is_cross_entropy(loss_fn):
                return None, "the target is an integer tensor and the loss is not cross-entropy"
            if not target.is_floating_point() and _is_cross_entropy(loss_fn):
                weight = getattr(loss_fn, "weight", None)
                ignore = getattr(loss_fn, "ignore_index", -100)
                if weight is not None or bool((target == ignore).any()):
                    return None, ("cross-entropy with class weights or ignored labels: the mean divides by a sum "
                                  "over the batch")
            out, info = batch_axes(loss_gm, [out, target], [info, t_info])
    except Mixing as err:
        return None, f"samples may mix: {err}"
    if not hasattr(out, "shape"):
        return None, "the output is not a single tensor"
    scalar = out.numel() == 1
    via = via or default_via(scalar, v is not None)
    if via == ONEHOT_VIA:
        quantity = "jacobian"
    else:
        quantity = quantity_of(via, v is not None)
    if isinstance(info, Reduced) and quantity == "grad":
        return {"n": n, "reduction": info.kind, "via": via, "vjp": False}, ""
    if info == 0 and out.dim() >= 1 and out.shape[0] == n:
        if quantity == "jacobian":
            return {"n": n, "reduction": None, "via": via, "vjp": False}, ""
        if quantity == "vjp" or (quantity == "grad" and scalar):
            return {"n": n, "reduction": "sum", "via": via, "vjp": quantity == "vjp"}, ""
    return None, f"quantity {quantity!r} of this output is derived for the whole batch"


def _per_sample(gm, loss_gm, plan, named, params, target, v, wrt, dtype, backend):
    import torch

    n = plan["n"]
    batched, unbatched, values = {}, {}, {}
    sym_args = []
    for name, t in named.items():
        if t.dim() >= 1 and t.shape[0] == n:
            batched[name] = row_symbols(name, tuple(t.shape[1:]))
            sym_args.append(batched[name])
        else:
            unbatched[name] = symbols(name, tuple(t.shape)) if t.is_floating_point() else as_symtensor(t)
            sym_args.append(unbatched[name])
        values[name] = t.detach().double().cpu().numpy()
    sym_params = {name: symbols(name, tuple(p.shape)) for name, p in params.items()}
    unbatched.update(sym_params)
    values.update({name: p.detach().double().cpu().numpy() for name, p in params.items()})
    out = run_symbolic(gm, sym_args, sym_params)
    out = as_symtensor(out)
    t_name = fresh_name("target", values)
    if loss_gm is not None:
        t = target
        if not t.is_floating_point():  # cross-entropy class indices: the same loss with one-hot probabilities
            t = torch.nn.functional.one_hot(t.long(), out.shape[-1])
        if t.dim() >= 1 and t.shape[0] == n:
            sym_t = row_symbols(t_name, tuple(t.shape[1:]))
            batched[t_name] = sym_t
        else:
            sym_t = as_symtensor(t)
        values[t_name] = t.detach().double().cpu().numpy()
        out = as_symtensor(run_symbolic(loss_gm, [out, sym_t]))
    if plan["vjp"] or (plan["reduction"] == "sum" and loss_gm is None):
        if plan["vjp"]:
            v_name = fresh_name("v", values)
            cot = row_symbols(v_name, tuple(out.shape[1:]))
            batched[v_name] = cot
            values[v_name] = torch.as_tensor(v).detach().double().cpu().numpy().reshape((n,) + out.shape[1:])
            out = (out * cot).sum()
        else:
            out = out.sum()
    forward, refs, kinks = per_sample_references(
        out, batched, unbatched, values, wrt, n=n, reduction=plan["reduction"],
        dtype_is_float32=dtype == torch.float32, kink_eps=float(torch.finfo(dtype).eps), backend=backend)
    if plan["vjp"]:
        forward = None  # the forward of a vjp is <v, out>, not the output autograd returns
    meta = {"engine": f"elementwise, per sample (derived once for one sample, evaluated for N = {n})"}
    return forward, refs, kinks, meta


def _finish(refs, forward, torch_fn, leaves, wrt, via, v, dtype_name, rtol, atol, title, meta) -> Report:
    scalar_guess = forward is not None and np.asarray(forward.value).size == 1
    via = via or default_via(scalar_guess, v is not None)
    out_t, autograd_fn = None, torch_fn
    if forward is not None:
        out_t, autograd_fn = forward_once(torch_fn, leaves)  # one forward for the value and autograd
        if forward.value.shape != tuple(out_t.shape) and forward.value.size == out_t.numel() == 1:
            forward.value = forward.value.reshape(tuple(out_t.shape))  # grad of a one-element output
            forward.value_lowp = np.asarray(forward.value_lowp).reshape(tuple(out_t.shape))
    stage(f"running autograd (via={via})")
    if via == ONEHOT_VIA:
        actual = _onehot_jacobian(autograd_fn, leaves, wrt)
        quantity = "jacobian"
    else:
        actual = run_autograd(autograd_fn, leaves, wrt, via, cotangent=v)
        quantity = quantity_of(via, v is not None)

    def judge() -> list:
        records = []
        if forward is not None:
            rec = compare(forward, out_t.detach().double().cpu().numpy(), dtype_name, quantity="forward",
                          rtol=rtol, atol=atol)
            if not rec.passed:
                rec.note = ("the symbolic twin and the torch model disagree on the forward: the derivatives below are "
                            "derivatives of different functions. This is an importer bug or an unsupported op.")
            records.append(rec)
        return records + compare_all(refs, actual, dtype_name, quantity=quantity, rtol=rtol, atol=atol)

    stage("comparing")
    records = judge()
    meta = {"dtype": dtype_name, "via": via, "quantity": quantity, **meta}
    return Report(records, title=title, meta=meta)


def _onehot_jacobian(torch_fn, leaves, wrt) -> dict:
    """The Jacobian built row by row from one-hot ``backward(v)`` calls, as seed 004's answer describes."""
    import torch

    out = torch_fn(*leaves.values())
    flat = out.reshape(-1)
    rows = {w: [] for w in wrt}
    for i in range(flat.numel()):
        onehot = torch.zeros_like(flat)
        onehot[i] = 1
        grads = torch.autograd.grad(out, [leaves[w] for w in wrt], grad_outputs=onehot.reshape(out.shape),
                                    retain_graph=True, allow_unused=True)
        for w, g in zip(wrt, grads):
            rows[w].append(torch.zeros_like(leaves[w]) if g is None else g)
    return {w: torch.stack(rows[w]).reshape(tuple(out.shape) + tuple(leaves[w].shape)) for w in wrt}


def _explode(gm, loss_gm, symbolic, torch_fn, leaves, named, params, target, wrt, via, v, tangents, backend,
             rtol, atol, title, reason, backward_calls: int = 1) -> Report:
    """The whole batch as one symbolic computation, through the plain-function pipeline."""
    names = list(leaves)
    k = len(named)

    def sym_fn(*tensors):
        ins = list(tensors[:k])
        ps = dict(zip(names[k:], tensors[k:]))
        if symbolic is not None:
            out = symbolic(ps, *ins) if not hasattr(symbolic, "symbolic_forward") else symbolic.symbolic_forward(*ins, params=ps)
        else:
            out = run_symbolic(gm, ins, ps)
        if loss_gm is not None:
            out = run_symbolic(loss_gm, [as_symtensor(out), as_symtensor(target.detach().cpu())])
        return as_symtensor(out)

    if via == ONEHOT_VIA:
        raise InputError(f"via={ONEHOT_VIA!r} needs the per-sample engine, which this model cannot use ({reason})")
    report = check_plain(torch_fn, leaves, symbolic=sym_fn, wrt=wrt, via=via, v=v, tangents=tangents,
                         backend=backend, rtol=rtol, atol=atol, title=title, backward_calls=backward_calls)
    report.meta["engine"] = "elementwise, whole batch" + (f" ({reason})" if reason else "")
    return report


@float32_scoped
def check_function(fn: Callable, inputs, **kwargs) -> Report:
    """``check_module`` for a plain function of tensors: traced with fx, no ``symbolic=`` needed.
    Called directly it is the torch.fx importer alone (``engine="elementwise"``); ``symgrad.check``
    passes its own engine, so that ``"auto"`` may go on to the op graph."""
    inputs = normalize_inputs(fn, None, inputs)
    kwargs.setdefault("title", f"symgrad check of {getattr(fn, '__name__', 'function')}")
    kwargs.setdefault("engine", "elementwise")
    if kwargs.get("wrt") is None:
        floats = [n for n, t in inputs.items() if t.is_floating_point()]
        kwargs["wrt"] = [n for n in floats if inputs[n].requires_grad] or floats
    return check_module(_TracedFunction(fn, list(inputs)), inputs, **kwargs)


def _TracedFunction(fn, names):
    """An ``nn.Module`` whose forward is ``fn`` with its positional parameters named ``names``."""
    import torch

    import keyword

    if not all(n.isidentifier() and not keyword.iskeyword(n) for n in names):
        raise InputError(f"check_function needs input names that are Python identifiers (not keywords), got {names}; "
                         "pass the inputs as a dict with other names")
    params = ", ".join(names)
    namespace = {"__symgrad_fn": fn}  # names no input can take (an input may be called fn or self)
    exec(f"def forward(__symgrad_self, {params}):\n    return __symgrad_fn({params})\n", namespace)  # fx placeholders
    cls = type(f"Traced_{getattr(fn, '__name__', 'function')}", (torch.nn.Module,), {"forward": namespace["forward"]})
    return cls()
