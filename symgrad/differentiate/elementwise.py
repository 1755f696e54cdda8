"""Stage 2, differentiate: exact derivatives of exploded (elementwise) expressions.

Every output element is a SymPy expression in the input symbols; the derivatives here are plain
``d expr / d symbol``, which SymPy gets right for scalar functions (unlike its matrix calculus, see
``../shared/research``).  The differentiation runs in symengine, SymPy's C++ core: it is 100-200x
faster on Jacobians of networks (an [n, n, 1] tanh MLP at n=32: 0.6 s instead of > 120 s).  Results
are symengine expressions; ``sympy.sympify`` turns one into SymPy for printing.  ``backend="sympy"``
differentiates with SymPy instead, to cross-check the fast path.

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

from ..symbolic.tensor import SymTensor
from ..errors import ShapeMismatch
from ..lower.symengine_forms import to_symengine
from ..lower.ties import untag

__all__ = ["QUANTITIES", "differentiate", "diff_all", "entry_form", "structural_zeros", "LATEX_MAX_CHARS"]

LATEX_MAX_CHARS = 400  # SymPy's conversion and LaTeX printer are slow on big forms: text only above this
PRINT_MAX_NODES = 20_000  # larger closed forms are shown with common subexpressions named

QUANTITIES = ("grad", "vjp", "jacobian", "jvp", "hessian")


def diff_all(f, syms: list, backend: str = "auto") -> list:
    """``[df/ds for s in syms]`` as symengine expressions (``sympy.sympify`` converts one back).

    ``backend="sympy"`` differentiates with SymPy instead (slow; for cross-checking the fast path).
    """
    if backend == "sympy":
        # SymPy differentiates real symbols (Abs of a complex symbol has no plain derivative).
        f_sp = sp.sympify(f)
        real = {s: sp.Symbol(s.name, real=True) for s in f_sp.free_symbols}
        f_sp = f_sp.xreplace(real)
        back = {r: s for s, r in real.items()}
        return [to_symengine(sp.diff(f_sp, sp.Symbol(str(s), real=True)).xreplace(back)) for s in syms]
    sf = to_symengine(f)
    targets = [to_symengine(s) for s in syms]

    if type(sf).__name__ == "Add" and len(sf.args) > 8 and len(targets) > 1:
        # A sum differentiates term by term, and a term only by the symbols it holds: without
        # this split, the gradient of a sum of n terms in n symbols costs n^2.
        import symengine as se

        holding: dict = {}
        for term in sf.args:
            for s in term.free_symbols:
                holding.setdefault(s, []).append(term)
        return [se.Add(*holding.get(t, [])).diff(t) for t in targets]
    return [sf.diff(t) for t in targets]


def _scalar(out: SymTensor, quantity: str):
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
    The entries are symengine expressions; ``sympy.sympify(e)`` gives the SymPy form.
    ``cotangent``/``tangents`` are symbol tensors (named ``v[...]``, ``t_x[...]``) so that the
    closed form reads in terms of them; their values are bound when the forms are evaluated.
    """
    if quantity not in QUANTITIES:
        raise ValueError(f"unknown quantity {quantity!r}; expected one of {QUANTITIES}")
    result: dict = {}
    if quantity in ("grad", "vjp", "hessian"):
        if quantity == "vjp":
            if cotangent is None or cotangent.shape != out.shape:
                raise ShapeMismatch(f"vjp needs a cotangent of the output's shape {out.shape}")
            f = sum((to_symengine(c) * to_symengine(o) for c, o in zip(cotangent.data.ravel(), out.data.ravel())), 0)
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
            values.append(sum((g * to_symengine(t) for g, (_, t) in zip(grads, pairs)), 0))
        result["jvp"] = np.array(values, dtype=object).reshape(out.shape)
    return result


def entry_form(deriv: np.ndarray) -> tuple[str, str]:
    """The closed form of a derivative's first entry: text, and LaTeX when it is short."""
    if deriv.size == 0:
        return "", ""
    first = untag(deriv.ravel()[0])  # Note [Each max its own conditions] in lower/ties.py
    if _tree_size(first) > PRINT_MAX_NODES:
        # Printed as a tree, a DAG that shares subexpressions (nested relus) grows exponentially:
        # show it with its common subexpressions named instead.
        import symengine as se

        reps, (reduced,) = se.cse([first])
        return "; ".join([f"{k} = {v}" for k, v in reps] + [str(reduced)]), ""
    text = str(first)
    if len(text) > LATEX_MAX_CHARS:
        return text, ""
    shown = sp.sympify(first)
    if "Piecewise" in text and shown.count(sp.Piecewise) < text.count("Piecewise"):
        # symengine keeps Piecewise((0, 0 < x), (0, True)); SymPy folds equal branches: print its form
        text = str(shown)
    return text, sp.latex(shown)


def _tree_size(e, memo: dict | None = None) -> int:
    """The number of nodes of ``e`` printed as a tree (shared subexpressions counted each time)."""
    memo = {} if memo is None else memo
    stack = [(e, False)]
    while stack:
        node, done = stack.pop()
        if node in memo:
            continue
        args = getattr(node, "args", ())
        if done or not args:
            memo[node] = 1 + sum(memo[a] for a in args)
            continue
        stack.append((node, True))
        stack.extend((a, False) for a in args if a not in memo)
    return memo[e]


def structural_zeros(deriv: np.ndarray) -> np.ndarray | None:
    """Where the closed form is identically 0 (None if nowhere)."""
    if deriv.size == 0:
        return None
    zero = np.array([e == 0 for e in deriv.ravel()], dtype=bool).reshape(deriv.shape)
    return zero if zero.any() else None
