"""Numbers from user data and module attributes, checked before anything symbolic sees them.

``sympy.sympify`` (and ``S(...)``) of a string runs ``eval``: a string stored in a module's
attribute (``nn.LeakyReLU(negative_slope="__import__('os')...")``) or passed to one of symgrad's
functions would run as code.  Every place that turns a user's or a module's value into a SymPy or
symengine number goes through ``number`` here, which accepts numbers only and refuses anything
else (strings above all) with an ``InputError`` naming the value, its type and the fix.
``refuse_string_attributes(model)`` checks a whole model up front, so the error names the module
attribute before torch or the tracer trips over it.
"""

from __future__ import annotations

import numbers as _numbers
from fractions import Fraction

import numpy as np
import symengine as se
import sympy as sp

from ..errors import InputError, UnsupportedOp

__all__ = ["number", "refuse_string_attributes", "describe_value"]


def describe_value(value, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (a payload string can be long)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _refuse(value, what: str) -> InputError:
    return InputError(
        f"{what} is a {type(value).__name__} ({describe_value(value)}), not a number. symgrad accepts only "
        "numbers there (int, float, bool, a numpy scalar, a 0-d tensor, a Fraction or a SymPy number) and never "
        "parses strings (parsing would run them as code). Fix: set it to a number, e.g. 0.01."
    )


def number(value, what: str):
    """``value`` as something SymPy and symengine take without parsing: a Python number, a SymPy
    or symengine expression (not a string).  Anything else raises ``InputError`` naming ``what``."""
    if isinstance(value, (se.Basic, sp.Basic)):
        return value
    if isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, np.generic) and isinstance(value, (np.bool_, np.integer, np.floating)):
        return value.item()
    if isinstance(value, Fraction):
        return sp.Rational(value.numerator, value.denominator)
    if isinstance(value, _numbers.Real) and not isinstance(value, (str, bytes)):
        return float(value)  # Decimal and other registered reals
    if (type(value).__module__ or "").startswith("torch") and hasattr(value, "numel"):
        if value.numel() == 1 and not value.is_complex():
            return value.detach().cpu().reshape(()).item()
    is_complex = getattr(value, "is_complex", None)  # a torch tensor's method (SymPy's is a property)
    if isinstance(value, (complex, np.complexfloating)) or (callable(is_complex) and is_complex() is True):
        raise UnsupportedOp(COMPLEX)
    raise _refuse(value, what)


COMPLEX = ("the function computes with complex numbers (an FFT, torch.complex, a complex constant): symgrad "
           "checks real derivatives through real ops only. Fix: check the real parts of the computation on "
           "their own, or write the complex arithmetic on real and imaginary parts as real tensors (an FFT "
           "along n points as matmuls with the real matrices cos(2 pi j k / n) and -sin(2 pi j k / n))")


def _numeric_defaults(cls) -> dict:
    """``{name: default}`` of ``cls.__init__``'s parameters whose default is a number (or bool)."""
    import inspect

    try:
        params = inspect.signature(cls.__init__).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in params
            if isinstance(p.default, (bool, int, float)) and p.default is not None}


_STRING_OPTIONS = frozenset({"padding"})  # Conv*(padding="same"): a number by default, a word by choice


def refuse_string_attributes(*modules) -> None:
    """Refuse a module attribute that holds a string where the module's constructor takes a number (``LeakyReLU.negative_slope``, ``CrossEntropyLoss.label_smoothing``)."""
    import torch.nn as nn

    for model in modules:
        if not isinstance(model, nn.Module):
            continue
        for qual, mod in model.named_modules():
            for name in _numeric_defaults(type(mod)):
                if name not in vars(mod):
                    continue
                value = vars(mod)[name]
                if not isinstance(value, (str, bytes)) or name in _STRING_OPTIONS:
                    continue  # tuples (a conv's stride) and tensors are torch's business; strings never pass
                where = f"module {qual!r} ({type(mod).__name__})" if qual else type(mod).__name__
                number(value, f"{where}'s attribute {name!r}")
