"""Checking an ``nn.Module``: the arguments, then the op graph.

``check_module(model, inputs, loss=..., target=...)`` checks the module's arguments (names, dtypes,
hooks, training-mode randomness, string attributes) and hands it to the op graph's tensor back end
(``symgrad.graph.check_graph``): a loss computed inside ``forward`` or given as ``loss=``, gradients,
vector-Jacobian products, Jacobians, forward mode, at any size.  The exploded back end (one exact
expression per entry, ``symgrad.elementwise``) takes a module when asked (``engine='elementwise'``),
for Hessians, and for a ``symbolic=`` twin written with ``sg.*``.
"""

from __future__ import annotations

from typing import Callable, Mapping

from ..autograd.forward import grad_enabled
from ..autograd.run import quantity_of
from ..elementwise import check_plain
from ..errors import InputError
from ..graph.budget import refuse_exploded, too_big_to_explode
from ..inputs import normalize_inputs
from ..progress import stage, with_progress
from ..report.report import Report
from ..symbolic.numbers import refuse_string_attributes
from ..symbolic.tensor import SymTensor, as_symtensor
from ..validate import (keyword_only, check_backend, check_callable, check_names, check_via_keywords, check_wrt_type,
                        refuse_hooks, refuse_meta, refuse_nonfinite, refuse_stateful)
from ..ops import float32_scoped

__all__ = ["check_module", "check_function", "resolve_loss", "LOSSES", "ONEHOT_VIA"]

ENGINES = ("auto", "elementwise", "matrix", "graph")  # "matrix": the op graph (the matrix engine's successor)
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
    if isinstance(loss, type):  # loss=nn.MSELoss: the class, called as loss(output, target), builds a module
        raise InputError(f"loss= got the class {loss.__name__}, not a loss: pass an instance, "
                         f"loss={loss.__name__}() (with its options, e.g. reduction=)")
    if callable(loss):
        return loss, getattr(loss, "__name__", type(loss).__name__)
    raise InputError(f"loss must be a string, an nn loss module or a callable(output, target), not {type(loss).__name__}")


def _named_inputs(model, inputs, finite: bool = True) -> dict:
    """The model's inputs as ``{name: tensor}`` in the order of ``model.forward``'s parameters.

    A dict is matched to the parameters by name (``{"v": v, "u": u}`` for ``forward(u, v)`` is u, v);
    a single input may have any name; several inputs whose names are not the parameters' are refused.
    """
    import inspect

    named = normalize_inputs(model.forward, None, inputs, finite=finite, keywords=True)
    if not isinstance(inputs, Mapping) or len(named) < 2:
        return named
    try:
        signature = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return named
    if any(p.kind == p.VAR_POSITIONAL for p in signature):
        return named  # forward(*args): the dict's order is the only order there is
    params = [p.name for p in signature if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
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
                 tangents=None, backward_calls: int = 1, quiet: bool | None = None,
                 memory_budget: int | None = None) -> Report:
    """Check autograd's gradients of ``model`` (and of ``loss(model(*inputs), target)``) against the closed
    form.  The keywords are ``symgrad.check``'s; ``quiet=True`` never shows progress."""
    import torch

    check_callable(model, "the model")
    check_wrt_type(wrt)
    check_backend(backend)
    if via is not None:
        check_via_keywords(via, quantity_of(via, v is not None), v, tangents)
    refuse_string_attributes(model, loss)  # before torch or the tracer reads them (never sympified)
    stage(f"tracing {type(model).__name__}")

    refuse_meta(model)
    named = _named_inputs(model, inputs, finite=False)  # the op graph evaluates inf and NaN; the exploded route refuses them
    params = dict(model.named_parameters())
    check_names(params)
    refuse_nonfinite(params, "parameter")  # a NaN weight is a broken model, not a point to check derivatives at
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
    title = title or f"symgrad check of {type(model).__name__}" + (f" with {loss_label}" if loss_label else "")

    input_names, param_names = list(named), list(params)

    def torch_fn(*tensors):
        ins = tensors[: len(input_names)]
        ps = dict(zip(param_names, tensors[len(input_names):]))
        out = torch.func.functional_call(model, ps, tuple(ins))
        return loss_fn(out, target) if loss_fn is not None else out

    if engine not in ENGINES:
        raise InputError(f"engine must be one of {', '.join(map(repr, ENGINES))}, not {engine!r}")
    n_in = sum(t.numel() for t in everything.values() if t.is_floating_point())
    n_wrt = sum(everything[w].numel() for w in wrt_names)
    by_keyword = [k for k in keyword_only(model.forward) if k in named]
    if by_keyword and engine == "elementwise":
        raise InputError(f"{', '.join(map(repr, by_keyword))}: keyword-only in {type(model).__name__}.forward, which "
                         "the op graph passes by name and the exploded back end does not: use engine='graph' (or 'auto')")
    if by_keyword or not _exploded_route(engine, symbolic, via, n_in, n_wrt):
        from ..graph import check_graph

        stage("op graph: trace, differentiate, compare")
        return check_graph(model, named, symbolic=symbolic, wrt=wrt_names, via=via, v=v, tangents=tangents,
                           loss=loss_fn, target=target, backward_calls=backward_calls, rtol=rtol, atol=atol,
                           title=title, memory_budget=memory_budget)
    refuse_hooks(model)  # the op graph runs hooks (weight_norm, spectral_norm, pruning) as torch does; the twin does not
    refuse_stateful(model)  # the op graph takes training-mode batch norm (restoring its buffers); the fx twin does not
    refuse_nonfinite(named, "input")
    if target is not None and hasattr(target, "is_floating_point"):
        refuse_nonfinite({"target": target}, "the loss's")
    if engine == "elementwise":
        refuse_exploded(n_in, n_wrt, 1, False, memory_budget)
    leaves = {n: t.detach().clone().requires_grad_(n in wrt_names) for n, t in everything.items()}
    reason = "a symbolic= forward was given" if symbolic is not None else f"engine={engine!r}"
    return _explode(model, loss_fn, symbolic, torch_fn, leaves, named, params, target, wrt_names, via, v, tangents,
                    backend, rtol, atol, title, reason, backward_calls)


def _exploded_route(engine, symbolic, via, n_in: int, n_wrt: int) -> bool:
    """Whether a module goes to the exploded back end (one exact expression per entry): when asked
    (``engine='elementwise'``), for second derivatives (``via='functional.hessian'``), or for a
    ``symbolic=`` twin written with ``sg.*`` that fits the memory budget.  Everything else is the op
    graph's tensor back end."""
    if engine == "elementwise":
        return True
    if engine in ("graph", "matrix"):
        return False
    if (via or "").endswith("hessian"):
        return True
    return symbolic is not None and not too_big_to_explode(n_in, n_wrt, 1, False)


def _explode(model, loss_fn, symbolic, torch_fn, leaves, named, params, target, wrt, via, v, tangents, backend,
             rtol, atol, title, reason, backward_calls: int = 1) -> Report:
    """The whole batch as one symbolic computation, through the plain-function pipeline: the
    ``symbolic=`` twin, or the module exploded through the op graph (Note [Exploded twin])."""
    from ..graph.refs import JACOBIAN_VIAS
    from ..graph.twin import exploded_output

    names = list(leaves)
    k = len(named)
    n_wrt = sum(leaves[w].numel() for w in wrt)
    jacobian = loss_fn is None and (via in JACOBIAN_VIAS or (via is None and v is None and tangents is None))

    def sym_fn(*tensors):
        if symbolic is None:  # a Jacobian (an output, no cotangent) is sized as one before it is built
            return exploded_output(torch_fn, leaves, n_wrt=n_wrt, n_diff=None if jacobian else 1)
        ins = list(tensors[:k])
        ps = dict(zip(names[k:], tensors[k:]))
        out = symbolic(ps, *ins) if not hasattr(symbolic, "symbolic_forward") else symbolic.symbolic_forward(*ins, params=ps)
        if loss_fn is None:
            return as_symtensor(out)
        import torch

        with torch.no_grad():  # the output's value, where the loss's graph is traced
            at = torch.func.functional_call(model, {n: leaves[n] for n in names[k:]}, tuple(leaves[n] for n in names[:k]))
        return _exploded_loss(as_symtensor(out), at.detach(), loss_fn, target)

    report = check_plain(torch_fn, leaves, symbolic=sym_fn, wrt=wrt, via=via, v=v, tangents=tangents,
                         backend=backend, rtol=rtol, atol=atol, title=title, backward_calls=backward_calls)
    report.meta["engine"] = "elementwise, whole batch" + (f" ({reason})" if reason else "")
    return report


def _exploded_loss(out: SymTensor, at, loss_fn, target) -> SymTensor:
    """``loss_fn(out, target)`` for a symbolic output: the loss exploded through the op graph at the
    output's value ``at`` (the target is data), its output symbols then replaced by ``out``'s entries."""
    import numpy as np

    from ..graph.twin import exploded_output
    from ..symbolic.tensor import symbols

    name = "__symgrad_output"
    loss = exploded_output(lambda o, t: loss_fn(o, t), {name: at, "__symgrad_target": target.detach()},
                           constants=("__symgrad_target",))
    swap = dict(zip(symbols(name, out.shape).data.ravel(), out.data.ravel()))
    data = np.empty(loss.data.shape, object)
    for j, e in enumerate(loss.data.ravel()):
        data.flat[j] = e.xreplace(swap) if hasattr(e, "xreplace") else e
    return as_symtensor(data)


@float32_scoped
def check_function(fn: Callable, inputs, **kwargs) -> Report:
    """``symgrad.check`` of a plain torch function on the exploded engine: one exact expression per
    entry, the forward read through the op graph (Note [Exploded twin]); ``engine="graph"`` takes
    the tensor back end instead.  The keywords are ``symgrad.check``'s."""
    if kwargs.get("engine", "auto") == "auto":
        kwargs["engine"] = "elementwise"
    kwargs.setdefault("title", f"symgrad check of {getattr(fn, '__name__', 'function')}")
    kwargs.pop("quiet", None)
    return check_plain(fn, inputs, **kwargs)
