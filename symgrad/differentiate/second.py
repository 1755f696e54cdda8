"""Exact second derivatives of exploded expressions: the Hessian-vector products ``order=2`` checks.

torch's double backward ``grad(grad(f, x, v, create_graph=True), x, w)`` is ``H w`` with ``H`` the
Hessian of the scalar ``<v, F>``.  Here ``H`` is differentiated entry by entry (symengine, as the
first-order forms in ``elementwise.py``) and contracted with symbols ``w`` standing for the direction,
so one closed form serves every direction: its values are bound when it is evaluated.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..errors import ShapeMismatch
from ..lower.symengine_forms import to_symengine
from ..symbolic.tensor import SymTensor
from .elementwise import diff_all

__all__ = ["hvp_forms"]


def _no_deltas(e):
    """Dirac deltas (derivatives of sign, Heaviside, abs's kink) are 0 as torch takes them."""
    import symengine as se

    if "DiracDelta" not in str(e):
        return e
    import sympy as sp

    s = sp.sympify(e)
    return se.sympify(s.replace(lambda t: isinstance(t, sp.DiracDelta), lambda t: sp.S.Zero))


def hvp_forms(out: SymTensor, wrt: Mapping[str, SymTensor], cotangent: SymTensor | None,
              directions: Mapping[str, SymTensor], backend: str = "auto", extras: dict | None = None) -> dict:
    """``{name: object array of x.shape}``: ``sum_b H[name, b] w_b``, the Hessian of ``<v, out>`` (of
    ``out`` itself when it is a scalar and ``cotangent`` is None) times the direction symbols.
    ``extras``, when given, receives ``"grad"``: {name: the gradient of ``<v, out>``} and ``"jw"``:
    ``J w`` shaped as ``out``, the gradient's derivative in the cotangent along ``w`` (Note [Double
    backward] in symgrad/autograd/run.py)."""
    if cotangent is None:
        if out.numel() != 1:
            raise ShapeMismatch(f"a tensor output (shape {out.shape}) needs a cotangent v for its second derivative")
        f = to_symengine(out.data.ravel()[0])
    else:
        if cotangent.shape != out.shape:
            raise ShapeMismatch(f"the cotangent has shape {cotangent.shape}, the output {out.shape}")
        f = sum((to_symengine(c) * to_symengine(o) for c, o in zip(cotangent.data.ravel(), out.data.ravel())), 0)
    syms = [s for x in wrt.values() for s in x.data.ravel()]
    dirs = [to_symengine(t) for name in wrt for t in directions[name].data.ravel()]
    grads = diff_all(f, syms, backend)
    # (H w)_j = sum_i w_i d g_i / d x_j; H is symmetric, so d/dx_j of sum_i w_i g_i
    hw = [0] * len(syms)
    for w_i, g_i in zip(dirs, grads):
        if g_i == 0:
            continue
        for j, h in enumerate(diff_all(g_i, syms, backend)):
            if h != 0:
                hw[j] = hw[j] + w_i * _no_deltas(h)
    result, start = {}, 0
    if extras is not None:
        extras["grad"] = {}
    for name, x in wrt.items():
        n = x.numel()
        result[name] = np.array(hw[start:start + n], dtype=object).reshape(x.shape)
        if extras is not None:
            extras["grad"][name] = np.array(grads[start:start + n], dtype=object).reshape(x.shape)
        start += n
    if extras is not None:
        along = sum((w_i * g_i for w_i, g_i in zip(dirs, grads) if g_i != 0), 0)
        jw = [along] if cotangent is None else [
            along.diff(to_symengine(c)) if hasattr(along, "diff") else 0 for c in cotangent.data.ravel()]
        extras["jw"] = np.array(jw, dtype=object).reshape(out.shape)
    return result
