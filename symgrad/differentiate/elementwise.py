"""Stage 2, differentiate: exact derivatives of exploded (elementwise) expressions.

Every output element is a SymPy expression in the input symbols; the derivatives here are plain
``d expr / d symbol``, which SymPy gets right for scalar functions (unlike its matrix calculus, see
``../shared/research``).  The differentiation itself runs in symengine, SymPy's C++ core, when every
function in the expression is one symengine knows: it is 100-200x faster on Jacobians of networks
(an [n, n, 1] tanh MLP at n=32: 0.6 s instead of > 120 s).  Results come back as SymPy expressions,
which stay the reference for printing and lowering.  ``backend="sympy"`` forces SymPy throughout.

The quantities (what torch computes for each way of running autograd):

=========  =======================================  ===============================
quantity   closed form                              shape per input x
=========  =======================================  ===============================
grad       d f / d x           (f scalar)           x.shape
vjp        d <v, F> / d x      (v a cotangent)      x.shape
jacobian   d F / d x                                F.shape + x.shape
jvp        sum_x  d F / d x . t_x                   F.shape (one result)
hessian    d^2 f / d x d y     (f scalar)           x.shape + y.shape (per pair)
=========  =======================================  ===============================
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import sympy as sp

from ..build.tensor import SymTensor
from ..errors import ShapeMismatch

__all__ = ["QUANTITIES", "differentiate", "diff_all"]

QUANTITIES = ("grad", "vjp", "jacobian", "jvp", "hessian")


def _to_symengine(exprs):
    try:
        import symengine as se
    except ImportError:  # pragma: no cover - symengine is a dependency
        return None
    try:
        return [se.sympify(e) for e in exprs]
    except Exception:  # a function symengine has no counterpart for
        return None


def diff_all(f: sp.Expr, syms: list[sp.Symbol], backend: str = "auto") -> list[sp.Expr]:
    """``[df/ds for s in syms]``, through symengine where possible."""
    if backend != "sympy":
        converted = _to_symengine([f, *syms])
        if converted is not None:
            sf, *ssyms = converted
            try:
                return [sp.sympify(sf.diff(s)) for s in ssyms]
            except Exception:
                if backend == "symengine":
                    raise
        elif backend == "symengine":
            raise ValueError("backend='symengine' cannot represent this expression; use backend='sympy'")
    return [sp.diff(f, s) for s in syms]


def _restore(expr: sp.Expr, all_syms: Mapping[str, sp.Symbol]) -> sp.Expr:
    free = {s: all_syms[s.name] for s in expr.free_symbols if s.name in all_syms and s != all_syms[s.name]}
    return expr.xreplace(free) if free else expr


def _scalar(out: SymTensor, quantity: str) -> sp.Expr:
    if out.numel() != 1:
        raise ShapeMismatch(
            f"quantity {quantity!r} needs a scalar output, the symbolic forward returned shape {out.shape}; "
            "pass a cotangent v (vjp) or ask for the Jacobian"
        )
    return out.data.reshape(()).item()


def differentiate(
    out: SymTensor,
    wrt: Mapping[str, SymTensor],
    quantity: str,
    *,
    cotangent: SymTensor | None = None,
    tangents: Mapping[str, SymTensor] | None = None,
    backend: str = "auto",
) -> dict:
    """Closed-form derivatives as object arrays, keyed by input name.

    ``hessian`` is keyed by ``(name_a, name_b)`` pairs; ``jvp`` has the single key ``"jvp"``.
    ``cotangent``/``tangents`` are symbol tensors (named ``v[...]``, ``t_x[...]``) so that the
    closed form reads in terms of them; their values are bound when the forms are evaluated.
    """
    if quantity not in QUANTITIES:
        raise ValueError(f"unknown quantity {quantity!r}; expected one of {QUANTITIES}")
    # symengine drops SymPy's assumptions: results get the original symbols back by name.
    tensors = [out, *wrt.values(), *([cotangent] if cotangent is not None else []), *(tangents or {}).values()]
    all_syms = {s.name: s for t in tensors for e in t.data.ravel() for s in sp.sympify(e).free_symbols}
    result: dict = {}
    if quantity in ("grad", "vjp", "hessian"):
        if quantity == "vjp":
            if cotangent is None or cotangent.shape != out.shape:
                raise ShapeMismatch(f"vjp needs a cotangent of the output's shape {out.shape}")
            f = sp.Add(*(c * o for c, o in zip(cotangent.data.ravel(), out.data.ravel())))
        else:
            f = _scalar(out, quantity)
        for name, x in wrt.items():
            syms = list(x.data.ravel())
            grads = diff_all(f, syms, backend)
            if quantity != "hessian":
                result[name] = np.array(grads, dtype=object).reshape(x.shape)
                continue
            for name_b, y in wrt.items():
                ysyms = list(y.data.ravel())
                rows = [diff_all(g, ysyms, backend) for g in grads]
                result[(name, name_b)] = np.array(rows, dtype=object).reshape(x.shape + y.shape)
    elif quantity == "jacobian":
        outs = list(out.data.ravel())
        for name, x in wrt.items():
            syms = list(x.data.ravel())
            rows = [diff_all(o, syms, backend) for o in outs]
            result[name] = np.array(rows, dtype=object).reshape(out.shape + x.shape)
    else:  # jvp
        if tangents is None or set(tangents) != set(wrt):
            raise ShapeMismatch(f"jvp needs one tangent per differentiated input ({', '.join(wrt)})")
        pairs = [(s, t) for name, x in wrt.items() for s, t in zip(x.data.ravel(), tangents[name].data.ravel())]
        syms = [s for s, _ in pairs]
        values = []
        for o in out.data.ravel():
            grads = diff_all(o, syms, backend)
            values.append(sp.Add(*(g * t for g, (_, t) in zip(grads, pairs))))
        result["jvp"] = np.array(values, dtype=object).reshape(out.shape)
    return {k: np.vectorize(lambda e: _restore(sp.sympify(e), all_syms), otypes=[object])(v) if v.size else v
            for k, v in result.items()}
