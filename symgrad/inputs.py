"""Inputs as every driver takes them: named tensors, the dtype of the tolerances, fresh names.

Shared by the public driver (``symgrad.check``), the plain-function pipeline
(``symgrad.elementwise``) and the module driver (``symgrad.nn.check``), which all import it:
imports point downward (``tests/test_imports.py`` fails on an import cycle).
"""

from __future__ import annotations

import inspect
from typing import Mapping

import numpy as np
import sympy as sp

from .errors import InputError
from .validate import arrange_inputs, check_names, refuse_nonfinite

__all__ = ["normalize_inputs", "lowest_precision", "fresh_name", "check_options", "torch_bool", "input_names"]


def input_names(fn, symbolic, n: int) -> list[str]:
    for f in (fn, symbolic):
        if callable(f) and not isinstance(f, sp.Basic):
            try:
                params = [p for p in inspect.signature(f).parameters.values()
                          if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            except (TypeError, ValueError):
                continue
            if len(params) >= n:
                return [p.name for p in params[:n]]
    return [f"x{i}" for i in range(n)]

def normalize_inputs(fn, symbolic, inputs, *, finite: bool = True, keywords: bool = False) -> dict:
    """``inputs`` as an ordered ``{name: tensor}``; a clear error for anything that is not a tensor."""
    import torch

    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if not isinstance(inputs, (Mapping, list, tuple)):
        raise InputError(f"inputs must be a dict {{name: tensor}} or a tuple of tensors, not {type(inputs).__name__}; "
                         "e.g. symgrad.check(fn, (x,)) or symgrad.check(fn, {'x': x})")
    inputs = arrange_inputs((fn, symbolic), inputs, keywords)
    if isinstance(inputs, Mapping):
        named = dict(inputs)
    else:
        named = dict(zip(input_names(fn, symbolic, len(inputs)), inputs))
    check_names(named)
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise InputError(
                f"input {name!r} is a {type(t).__name__}, not a torch.Tensor; wrap it: torch.tensor(..., dtype=torch.float64)"
            )
        if t.layout != torch.strided:
            raise InputError(f"input {name!r} is a {t.layout} tensor; symgrad evaluates dense tensors: pass "
                             f"{name}.to_dense() (a sparse backward is then checked through its dense values)")
        if t.device.type == "meta":
            raise InputError(f"input {name!r} is on the meta device and has no values; give it real data (e.g. on the CPU)")
        if t.is_complex():
            raise InputError(f"input {name!r} is complex ({t.dtype}); symgrad checks real derivatives")
        if t.numel() == 0:
            others = [n for n, u in named.items() if n != name and isinstance(u, torch.Tensor) and u.numel()]
            fix = (f"to check the others ({', '.join(others)}), bind it as a constant, e.g. symgrad.check(lambda "
                   f"{', '.join(others)}: fn(...), ...) with {name} fixed inside" if others else "give it entries")
            raise InputError(f"input {name!r} is empty (shape {tuple(t.shape)}): it has no entries to differentiate, "
                             f"and symgrad refuses empty inputs. Fix: {fix}")
    if finite:  # the op graph evaluates inf and NaN (nan_to_num, -inf masks); the exploded back end does not
        refuse_nonfinite(named)
    return named

def check_options(rtol, atol, backward_calls) -> None:
    for label, value in (("rtol", rtol), ("atol", atol)):
        if value is not None and not (isinstance(value, (int, float)) and value >= 0 and np.isfinite(value)):
            raise InputError(f"{label} must be a finite number >= 0, not {value!r}")
    if not isinstance(backward_calls, int) or backward_calls < 1:
        raise InputError(f"backward_calls must be an integer >= 1, not {backward_calls!r}")

def lowest_precision(tensors):
    """The floating dtype with the largest roundoff among ``tensors``: the tolerances' dtype (a
    float32 input rounds whatever it touches, even in a float64 computation)."""
    import torch

    floats = [t.dtype for t in tensors if t.is_floating_point()]
    return max(floats, key=lambda d: torch.finfo(d).eps) if floats else torch.float64

def torch_bool():
    import torch

    return torch.bool

def fresh_name(name: str, taken) -> str:
    """``name``, or ``name_``, ``name__``, ... if an input already has it."""
    while name in taken:
        name += "_"
    return name
