"""Closed forms in matrix notation for plain SymPy matrix expressions, shown only once verified.

When the symbolic forward is a SymPy matrix expression (``a.T*X*b``), the report should show
``a*b.T`` rather than the first entry of an exploded gradient.  SymPy 1.14's own matrix
derivatives are silently wrong in places (``log(det(X))`` -> 0), so the form comes from symgrad's
matrix-calculus engine (``symgrad.matrix``), and it is shown only after its values agree with the
exact elementwise derivative at the checked point; a disagreeing form is reported as such and never
shown as the truth.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

__all__ = ["matrix_closed_form", "AGREEMENT_RTOL"]

AGREEMENT_RTOL = 1e-9


def matrix_closed_form(expr, name: str, values: dict[str, np.ndarray], exact: np.ndarray):
    """``(text, latex, note)`` for d expr / d name in matrix notation, or None when not applicable.

    ``values`` maps every MatrixSymbol name to its value; ``exact`` is the elementwise derivative
    evaluated at the same point (the independent derivation it is checked against).
    """
    if not isinstance(expr, sp.MatrixExpr) and not (isinstance(expr, sp.Basic) and expr.atoms(sp.MatrixSymbol)):
        return None
    target = next((m for m in expr.atoms(sp.MatrixSymbol) if m.name == name), None)
    if target is None:
        return None
    try:
        from ..matrix import evaluate, grad, to_latex, to_text

        form = grad(expr, target)
        value = np.asarray(evaluate(form, values), dtype=np.float64)
    except Exception as err:  # the engine does not cover this expression: keep the entrywise form
        return None if isinstance(err, (NotImplementedError, KeyError)) else ("", "", f"matrix form unavailable ({type(err).__name__}: {err})")
    exact = np.asarray(exact, dtype=np.float64)
    value = value.reshape(exact.shape) if value.size == exact.size else value
    scale = float(np.max(np.abs(exact))) if exact.size else 0.0
    if value.shape == exact.shape and np.allclose(value, exact, rtol=AGREEMENT_RTOL, atol=AGREEMENT_RTOL * max(scale, 1e-300)):
        return to_text(form), to_latex(form), "matrix form cross-checked against the exact elementwise derivative"
    return "", "", (f"symgrad's matrix engine gave {to_text(form)}, which disagrees with the exact elementwise "
                    "derivative here; it is not shown as the closed form (please report it)")
