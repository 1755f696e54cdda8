"""Stage 3, lower: a plain SymPy forward to torch, so autograd can run on it.

SymPy 1.14's own torch printer fails on ``Heaviside`` and ``Max(1.0, x)`` and turns a ``Matrix``
into ``tensor([[...]])``, which drops the graph.  This lowering walks the expression tree instead,
with one table from SymPy node types to torch functions (``SYMPY_TO_TORCH``); symbols become
elements of the input tensors, so the result stays connected to them.  An expression that uses a
function outside the table raises ``UnsupportedOp`` naming it.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import sympy as sp

from ..errors import UnsupportedOp
from .ties import OWN

__all__ = ["SYMPY_TO_TORCH", "to_torch", "walker"]


def _torch():
    import torch

    return torch


def _heaviside(x, h=None):
    torch = _torch()
    half = 0.5 if h is None else h
    return torch.where(x > 0, torch.ones_like(x), torch.where(x == 0, torch.full_like(x, float(half)), torch.zeros_like(x)))


def _chain(fn_name: str):
    def apply(*args):
        torch = _torch()
        out = args[0]
        for a in args[1:]:
            out = getattr(torch, fn_name)(out, a)
        return out

    return apply


# SymPy node type -> torch function of the lowered arguments.
SYMPY_TO_TORCH: dict[type, Callable] = {
    sp.exp: lambda a: _torch().exp(a),
    sp.log: lambda a: _torch().log(a),
    sp.sin: lambda a: _torch().sin(a),
    sp.cos: lambda a: _torch().cos(a),
    sp.tan: lambda a: _torch().tan(a),
    sp.tanh: lambda a: _torch().tanh(a),
    sp.sinh: lambda a: _torch().sinh(a),
    sp.cosh: lambda a: _torch().cosh(a),
    sp.asin: lambda a: _torch().asin(a),
    sp.acos: lambda a: _torch().acos(a),
    sp.atan: lambda a: _torch().atan(a),
    sp.erf: lambda a: _torch().erf(a),
    sp.erfc: lambda a: _torch().erfc(a),
    sp.erfinv: lambda a: _torch().erfinv(a),
    sp.loggamma: lambda a: _torch().lgamma(a),
    sp.polygamma: lambda n, a: _torch().polygamma(int(n), a),  # n: an integer order, lowered to a 0-d tensor
    sp.atan2: lambda y, x: _torch().atan2(y, x),
    sp.Abs: lambda a: _torch().abs(a),
    sp.sign: lambda a: _torch().sign(a),
    sp.Heaviside: _heaviside,
    sp.Max: _chain("maximum"),
    sp.Min: _chain("minimum"),
    sp.And: _chain("logical_and"),
    sp.Or: _chain("logical_or"),
    sp.Not: lambda a: _torch().logical_not(a),
}

# functions symengine has no counterpart of come back from it as undefined functions of the same
# name (Note [Special functions on the exploded engine] in special.py): matched by that name
_BY_NAME: dict[str, Callable] = {
    "erfinv": lambda a: _torch().erfinv(a),
    "round_even": lambda a: _torch().round(a),  # half to even, symgrad.graph.functions.round_even
    "bessel_i0": lambda a: _torch().i0(a), "bessel_i1": lambda a: _torch().special.i1(a),
    "bessel_i0e": lambda a: _torch().special.i0e(a), "bessel_i1e": lambda a: _torch().special.i1e(a),
}


def walker(env: Mapping[str, object], dtype, fallback: Callable | None = None) -> Callable:
    """``expr -> torch value``: symbols by name from ``env`` (tensors of any shape broadcast), nodes
    by ``SYMPY_TO_TORCH``; ``fallback(e)`` takes what the table lacks (a matrix node inside a
    scalar, ``symgrad/matrix/to_torch.py``) before ``UnsupportedOp`` is raised."""
    torch = _torch()
    memo: dict = {}

    def walk(e):
        if e in memo:
            return memo[e]
        if e.is_Symbol:
            if e.name not in env:
                raise UnsupportedOp(f"symbol {e} in the symbolic forward is not an element of any input")
            r = env[e.name]
        elif e.is_Number or e is sp.pi or e is sp.E:
            r = torch.tensor(float(e), dtype=dtype)
        elif e.is_Add:
            r = walk(e.args[0])
            for a in e.args[1:]:
                r = r + walk(a)
        elif e.is_Mul:
            r = walk(e.args[0])
            for a in e.args[1:]:
                r = r * walk(a)
        elif e.is_Pow:
            base, ex = e.args
            r = torch.sqrt(walk(base)) if ex == sp.S.Half else walk(base) ** (float(ex) if ex.is_Number else walk(ex))
        elif isinstance(e, sp.Piecewise):
            r = walk(e.args[-1][0])
            for value, cond in reversed(e.args[:-1]):
                r = torch.where(walk(cond), walk(value), r)
        elif isinstance(e, sp.core.relational.Relational):
            ops = {"<": torch.lt, "<=": torch.le, ">": torch.gt, ">=": torch.ge, "==": torch.eq, "!=": torch.ne}
            r = ops[e.rel_op](walk(e.lhs), walk(e.rhs))
        elif e is sp.true or e is sp.false:
            r = torch.tensor(bool(e))
        elif (type(e) in SYMPY_TO_TORCH or e.func in SYMPY_TO_TORCH) and any(isinstance(a, sp.MatrixExpr) for a in e.args):
            raise UnsupportedOp(f"the symbolic forward applies {e.func.__name__} to a matrix ({sp.sstr(e)[:60]}): a "
                                f"function of a matrix (exp(Y) is the matrix exponential), not of its entries; for "
                                f"the entrywise function write Y.applyfunc({e.func.__name__})")
        elif type(e) in SYMPY_TO_TORCH or e.func in SYMPY_TO_TORCH:
            r = SYMPY_TO_TORCH[e.func](*(walk(a) for a in e.args))
        elif isinstance(e, sp.Function) and type(e).__name__ == OWN:  # Note [Each max its own conditions]
            r = walk(e.args[0])
        elif isinstance(e, sp.Function) and type(e).__name__ in _BY_NAME:
            r = _BY_NAME[type(e).__name__](*(walk(a) for a in e.args))
        elif fallback is not None and (isinstance(e, sp.MatrixExpr) or e.atoms(sp.MatrixSymbol)):
            r = fallback(e)
        else:
            raise UnsupportedOp(
                f"the symbolic forward uses {e.func.__name__} ({sp.sstr(e)[:60]}), which symgrad cannot lower to torch; "
                "pass your own torch function, or add the SymPy type to symgrad.lower.torch.SYMPY_TO_TORCH"
            )
        memo[e] = r
        return r

    return walk


def to_torch(exprs: np.ndarray, env: Mapping[sp.Symbol, object], dtype) -> object:
    """Evaluate an object array of SymPy expressions in torch.

    ``env`` maps each symbol's name to a 0-d torch tensor (an element of an input, still in the graph).
    """
    torch = _torch()
    walk = walker(env, dtype)
    flat = [walk(sp.sympify(e)) for e in exprs.ravel()]
    if not flat:
        return torch.zeros(exprs.shape, dtype=dtype)
    return torch.stack([f.to(dtype) for f in flat]).reshape(exprs.shape)
