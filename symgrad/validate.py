"""Checks of what the user hands to ``symgrad.check`` before anything runs.

Each refuses one kind of bad input with an ``InputError`` (or ``UnsupportedOp``) whose message
names the cause and the fix in one short paragraph: a callable that is not one, TorchScript and
``torch.compile`` wrappers, inputs that do not fit the function's parameters (too many, too few, a
dict whose names are not its parameters), names that would collide with element symbols, sparse,
non-finite and meta-device tensors, forward hooks the symbolic twin would not run, forwards that
return no single tensor, and keywords a ``via`` or backend would silently ignore.
"""

from __future__ import annotations

import functools
import inspect
from typing import Mapping

import numpy as np

from .errors import InputError, UnsupportedOp

__all__ = ["refuse_zero_products", "refuse_non_float_output", "check_callable", "arrange_inputs", "check_names", "check_wrt_type", "refuse_nonfinite", "refuse_nan",
           "refuse_hooks", "refuse_meta", "refuse_stateful", "refuse_non_tensor_value", "check_backend",
           "check_via_keywords",
           "recursion_guard", "BACKENDS"]

BACKENDS = ("auto", "symengine", "sympy")


def check_callable(fn, what: str = "fn", symbolic=None) -> None:
    """``fn`` must be a Python callable symgrad can trace: not a number, not TorchScript, not a
    ``torch.compile`` wrapper (whose Python forward fx cannot see), except a compiled function given a
    ``symbolic`` reference (then only torch runs it: its compiled derivatives are what is checked)."""
    if fn is None:
        return
    import torch

    if isinstance(fn, (torch.jit.ScriptModule, torch.jit.ScriptFunction)):
        raise UnsupportedOp(
            f"{what} is a TorchScript {type(fn).__name__} (torch.jit.script / trace): it no longer has the Python "
            "forward that symgrad traces into the op graph. Check the original nn.Module or function, before scripting; "
            "the derivatives TorchScript computes are the same autograd formulas.")
    if isinstance(fn, torch.nn.Module):
        what = "the model" if what == "fn" else what
        scripted = next((n for n, m in fn.named_modules() if isinstance(m, torch.jit.ScriptModule)), None)
        if scripted is not None:
            raise UnsupportedOp(
                f"{what} holds a TorchScript submodule ({scripted!r}, torch.jit.script / trace): it no longer has the "
                "Python forward that symgrad traces into the op graph. Check the model built from the original "
                "nn.Module, before scripting; the derivatives TorchScript computes are the same autograd formulas.")
        compiled = next((n for n, m in fn.named_modules() if n and hasattr(m, "_orig_mod")), None)
        if compiled is not None:
            raise UnsupportedOp(
                f"{what} holds a torch.compile'd submodule ({compiled!r}), whose forward symgrad's tracer cannot read. "
                f"Check the model with the original in its place (model.{compiled} = model.{compiled}._orig_mod), "
                "or check the compiled part as a function with symbolic= a reference forward in torch ops.")
    orig = getattr(fn, "_orig_mod", None) or getattr(fn, "_torchdynamo_orig_callable", None)
    if orig is not None and (symbolic is None or isinstance(fn, torch.nn.Module)):
        raise UnsupportedOp(
            f"{what} is wrapped by torch.compile ({type(fn).__name__}), whose forward symgrad's tracer cannot read. Check "
            f"the original: symgrad.check(model._orig_mod, ...) for a compiled module (or the function you passed "
            "to torch.compile), or pass symbolic= a reference forward in torch ops: torch then runs the compiled "
            "function, and its derivatives are checked against the reference's.")
    if not callable(fn):
        raise InputError(
            f"{what} is a {type(fn).__name__} ({str(fn)[:40]}), not a callable: pass the torch function or nn.Module "
            "to check, e.g. symgrad.check(lambda x: torch.tanh(x).sum(), (x,)), or fn=None with symbolic=...")


def _parameters(f) -> list | None:
    """``f``'s parameters, or None where it has no signature (a SymPy expression, a builtin)."""
    import sympy as sp

    if f is None or isinstance(f, sp.Basic) or not callable(f):
        return None
    try:
        return list(inspect.signature(f).parameters.values())
    except (TypeError, ValueError):
        return None


def _positional(f):
    """``(names, required, varargs)`` of ``f``'s positional parameters, or None without a signature."""
    params = _parameters(f)
    if params is None:
        return None
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                and p.default is p.empty]
    return names, required, any(p.kind == p.VAR_POSITIONAL for p in params)


def keyword_only(f) -> list[str]:
    """The names of ``f``'s keyword-only parameters (``forward(self, x, *, mask=None)``: mask)."""
    return [p.name for p in _parameters(f) or () if p.kind == p.KEYWORD_ONLY]


def _takes_keywords(f) -> bool:
    return any(p.kind == p.VAR_KEYWORD for p in _parameters(f) or ())


def _label(f) -> str:
    name = getattr(f, "__qualname__", None) or getattr(f, "__name__", None) or type(f).__name__
    return name.replace(".<locals>", "")


def arrange_inputs(fns, inputs, keywords: bool = False) -> dict | tuple:
    """``inputs`` fitted to the first of ``fns`` that has a signature: a dict reordered to its
    parameters' order (the function is called positionally, the SymPy expression matched by name),
    then its keyword-only parameters where ``keywords`` (a module's forward: the op graph passes them
    by name); too many or too few inputs, and dict names that are not its parameters, refused."""
    sig = next((s for s in map(_positional, fns) if s is not None), None)
    f = next((f for f in fns if _positional(f) is not None), None)
    if sig is None:
        return inputs
    names, required, varargs = sig
    if isinstance(inputs, Mapping):
        keys = list(inputs)
        keyword = keyword_only(f)
        by_keyword = [k for k in keyword if k in inputs]
        label = "fn" if _label(f).endswith("<lambda>") else _label(f)
        if by_keyword and not keywords:
            shown = ", ".join([*names, *by_keyword])
            raise InputError(f"{', '.join(map(repr, by_keyword))} {'is a keyword-only parameter' if len(by_keyword) == 1 else 'are keyword-only parameters'} "
                             f"of {label}, and symgrad calls a function with its inputs in order: wrap it, "
                             f"e.g. symgrad.check(lambda {shown}: {label}({', '.join([*names, *(f'{k}={k}' for k in by_keyword)])}), inputs)")
        if not names and not varargs and _takes_keywords(f):
            raise InputError(f"{label} takes its inputs as **kwargs, and symgrad calls a function with its inputs in "
                             f"order: wrap it, e.g. symgrad.check(lambda {', '.join(keys)}: {label}("
                             f"{', '.join(f'{k}={k}' for k in keys)}), inputs)")
        if varargs or not set(keys) & set(names):
            return inputs  # f(*args), or names unrelated to the parameters: the dict's order is the order
        unknown = [k for k in keys if k not in names and k not in by_keyword]
        if unknown:
            shown = ", ".join(names + (["*", *keyword] if keyword else []))
            raise InputError(f"inputs {', '.join(map(repr, unknown))} are not parameters of {_label(f)}"
                             f"({shown}): name every input as its parameter is named, or pass a tuple in the "
                             "parameters' order")
        missing = [n for n in required if n not in inputs]
        if missing:
            raise InputError(f"{_label(f)}({', '.join(names)}) needs {', '.join(map(repr, missing))}, which "
                             f"inputs does not give (it gives {', '.join(map(repr, keys))}); add "
                             f"{'it' if len(missing) == 1 else 'them'} to inputs")
        return {**{n: inputs[n] for n in names if n in inputs}, **{k: inputs[k] for k in by_keyword}}
    n = len(inputs)
    if not varargs and n > len(names):
        raise InputError(f"{n} inputs were given but {_label(f)}({', '.join(names)}) takes {len(names)}: pass "
                         "one tensor per parameter (a tensor it closes over need not be an input)")
    if n < len(required):
        raise InputError(f"{_label(f)}({', '.join(names)}) needs {len(required)} inputs but {n} were given: "
                         f"pass {', '.join(map(repr, required[n:]))} too")
    return inputs


def check_names(names) -> None:
    """Input and parameter names must not look like element names (``x[0]``): the elements of
    ``x`` are the symbols ``x[0]``, ``x[1]``, ... and the two would become one symbol."""
    for name in names:
        if not isinstance(name, str) or not name:
            raise InputError(f"input name {name!r} is not a non-empty string; name inputs with strings like 'x'")
        if any(c in name for c in "[]") or name != name.strip():
            raise InputError(f"input or parameter name {name!r} contains brackets or surrounding spaces, which "
                             "symgrad reserves for element names (the entries of 'x' are the symbols 'x[0]', "
                             "'x[1]', ...): two different things would become one symbol. Rename it, e.g. "
                             f"{name.replace('[', '_').replace(']', '').replace(' ', '')!r}")


def check_wrt_type(wrt) -> None:
    if wrt is None or isinstance(wrt, str):
        return
    if isinstance(wrt, (list, tuple, set, frozenset)) and all(isinstance(w, str) for w in wrt):
        return
    raise InputError(f"wrt={wrt!r} is a {type(wrt).__name__}; wrt names inputs (or parameters) by name: "
                     "wrt='x' or wrt=['x', 'W'] (leave it out to differentiate every input that requires grad)")


def _first_bad(tensors: Mapping[str, object], bad_of):
    """``(name, count, entry text, value)`` of the first tensor with entries ``bad_of`` marks, or None."""
    for name, t in tensors.items():
        if t is None or not hasattr(t, "is_floating_point") or not t.is_floating_point() or t.device.type == "meta":
            continue
        values = t.detach().double().cpu().numpy()
        bad = bad_of(values)
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            at = f"{name}[{', '.join(map(str, index))}]" if index else name
            return name, int(bad.sum()), at, float(values[index])
    return None


def refuse_nonfinite(tensors: Mapping[str, object], what: str = "input") -> None:
    """NaN or +-inf in a value the check evaluates at: refused, naming the first such entry."""
    found = _first_bad(tensors, lambda v: ~np.isfinite(v))
    if found:
        name, count, at, value = found
        raise InputError(f"{what} {name!r} holds {count} non-finite value(s) (first: {at} = {value}); "
                         "derivatives are checked at finite points only, and a NaN/inf would show as a "
                         "disagreement of the forwards. Pass finite values (for a mask, a large finite "
                         "number such as torch.finfo(dtype).min instead of -inf), or, for an inf, check "
                         "with engine='graph', which evaluates inf as torch does (NaN is refused there too).")


def refuse_nan(tensors: Mapping[str, object], what: str = "input") -> None:
    """NaN in a value the op graph evaluates at: no derivative exists there (an inf is a mask, and
    the graph evaluates it as torch does)."""
    found = _first_bad(tensors, np.isnan)
    if found:
        name, count, at, _ = found
        raise InputError(f"{what} {name!r} holds {count} NaN value(s) (first: {at}); a derivative at "
                         "NaN is not defined, so there is nothing to check there. Pass finite values (or "
                         "find where the NaN comes from: torch.autograd.set_detect_anomaly(True)).")


def refuse_hooks(model) -> None:
    """Forward (pre-)hooks change what the module computes, and the symbolic twin does not run them."""
    import torch.nn.modules.module as M

    if getattr(M, "_global_forward_hooks", None) or getattr(M, "_global_forward_pre_hooks", None):
        raise InputError("a global forward hook is registered (torch.nn.modules.module.register_module_forward_hook); "
                         "symgrad's exploded twin does not run hooks, so it would check another function. Check on "
                         "the op graph (engine='graph'), or remove the hook (handle.remove()) while checking.")
    for qual, mod in model.named_modules():
        if mod._forward_hooks or mod._forward_pre_hooks:
            where = f"module {qual!r} ({type(mod).__name__})" if qual else type(mod).__name__
            raise InputError(f"{where} has a forward hook or pre-hook; symgrad's exploded twin does not run hooks, "
                             "so it would check another function than torch runs. Check it on the op graph "
                             "(engine='graph', which runs hooks as torch does), or remove it while checking "
                             "(handle.remove()) if it is not part of the function.")


def refuse_stateful(model) -> None:
    """Training-mode dropout and batch norm change the forward from call to call: the exploded twin
    (one fixed expression per entry) cannot describe them; refuse them there."""
    import torch.nn as nn
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.dropout import _DropoutNd

    for name, m in model.named_modules():
        where = f"module {name!r} ({type(m).__name__})" if name else type(m).__name__
        if isinstance(m, (_DropoutNd, nn.AlphaDropout)) and m.training and m.p > 0:
            raise UnsupportedOp(f"{where} is in training mode: dropout makes the forward random, so no closed form "
                                "describes it. Call model.eval() before checking (dropout is then the identity).")
        if isinstance(m, _BatchNorm) and m.training:
            raise UnsupportedOp(f"{where} is in training mode: it normalises with batch statistics and updates its "
                                "running stats on every call. Call model.eval() before checking (it then uses the "
                                "running stats, which symgrad supports), or check it on the op graph "
                                "(engine='graph'), which restores the buffers.")


def refuse_meta(model) -> None:
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.device.type == "meta":
            raise InputError(f"the model's {name!r} is on the meta device: it has a shape but no values, so "
                             "there is nothing to evaluate. Give it real weights first, e.g. "
                             "model.to_empty(device='cpu') and then model.load_state_dict(...)")


def refuse_non_tensor_value(value, who: str) -> None:
    """``value`` (what a forward returned) must be one tensor; otherwise an ``InputError`` naming
    what it is and how to wrap it."""
    if isinstance(value, (tuple, list)):
        kind, fix = f"a {type(value).__name__} of {len(value)}", "return out[0] (the loss or logits) alone"
    elif isinstance(value, dict):
        kind, fix = f"a dict (keys {', '.join(map(repr, list(value)[:4]))})", "return one of its values"
    elif value is None:
        kind, fix = "None", "add the missing return statement"
    elif isinstance(value, (str, bytes, int, float, bool)):
        kind, fix = f"a {type(value).__name__} ({str(value)[:30]!r})", "return a tensor"
    elif hasattr(value, "shape") and hasattr(value, "dtype"):
        return
    else:
        kind, fix = f"a {type(value).__name__}", "return a tensor"
    raise InputError(f"{who} returns {kind}, not one tensor: symgrad differentiates a single tensor output. "
                     f"Fix: wrap it so that it returns one tensor, e.g. {fix}, as in "
                     "symgrad.check(lambda x: model(x)[0], ...) or a small nn.Module around the model.")


def check_backend(backend) -> None:
    if backend not in BACKENDS:
        raise InputError(f"backend={backend!r} is not a backend symgrad knows; choose one of {', '.join(BACKENDS)} "
                         "('auto' = symengine; 'sympy' cross-checks it with SymPy's diff)")


def check_via_keywords(via: str, quantity: str, v, tangents) -> None:
    """``v=`` and ``tangents=`` must be used by the ``via`` named."""
    if v is not None and quantity not in ("vjp",):
        raise InputError(f"v= (a cotangent) is given but via={via!r} computes a {quantity}, which does not use it: "
                         "drop v, or use via='backward' / 'functional.vjp' to check v-weighted gradients")
    if tangents is not None and quantity != "jvp":
        raise InputError(f"tangents= is given but via={via!r} computes a {quantity}, which does not use them: "
                         "drop tangents, or use via='func.jvp' / 'forward_ad' / 'functional.jvp'")


def refuse_non_float_output(out) -> None:
    """A bool or integer output (a comparison, an index, a count) has no derivative to check."""
    if not (out.is_floating_point() or out.is_complex()):
        raise InputError(f"the function returned a {str(out.dtype).replace('torch.', '')} tensor: it has no "
                         "derivative (a comparison, an index or a count is constant almost everywhere). Fix: check "
                         "the floating-point computation it is made from")


def refuse_zero_products(v, tangents) -> None:
    """A cotangent (or every tangent) of zeros checks nothing: every product is 0 whatever the
    backward (or jvp) computes, and a backward 50 % off passed."""
    import torch

    def zero(t) -> bool:
        return isinstance(t, torch.Tensor) and t.numel() > 0 and t.is_floating_point() and not bool(t.detach().ne(0).any())

    parts = list(v.values()) if isinstance(v, Mapping) else list(v) if isinstance(v, (list, tuple)) else [v]
    if parts and all(zero(t) for t in parts):
        raise InputError("v is all zeros: every vector-Jacobian product is then 0 whatever the backward computes, so "
                         "the check would prove nothing. Fix: pass a random cotangent, v=torch.randn_like(out)")
    given = list(tangents.values()) if isinstance(tangents, Mapping) else [tangents] if tangents is not None else []
    for what, tensors in (("v (the cotangent)", parts), ("a tangent", given)):
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.device.type != "meta" and \
                    not bool(torch.isfinite(t.detach()).all()):
                raise InputError(f"{what} holds NaN or inf: every product it enters is then NaN or inf whatever the "
                                 "derivative, so the check would prove nothing. Fix: pass finite values "
                                 "(torch.randn_like(...))")
    if given and all(zero(t) for t in given):
        raise InputError("every tangent is all zeros: every Jacobian-vector product is then 0 whatever the jvp computes. "
                         "Fix: pass random tangents (torch.randn_like(x) for each input)")


def recursion_guard(fn):
    """A RecursionError (a SymPy expression nested hundreds deep) as an error naming cause and fix."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RecursionError:
            import sys

            raise UnsupportedOp(
                f"the check hit Python's recursion limit ({sys.getrecursionlimit()}), most often because the symbolic "
                "forward is nested too deeply: SymPy and symengine walk an expression recursively, so a function "
                "applied hundreds of times in a row (sin(sin(...))) exceeds it. Fix: raise the limit before "
                "checking (sys.setrecursionlimit(20000)), or check a shallower composition.") from None

    return wrapper
