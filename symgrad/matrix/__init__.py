"""Matrix calculus of SymPy matrix expressions: derivatives in matrix notation (d(aᵀXb)/dX = a bᵀ).

The way in for a SymPy ``MatrixSymbol`` forward: ``nodes`` (symgrad's own matrix nodes) -> ``diff``
(reverse/forward rules) -> ``evaluate`` (numpy) and ``printing`` (text, LaTeX); ``explode`` is the
independent entrywise cross-check every form passes before it is shown (SymPy 1.14's own matrix
derivatives are wrong in places).  Modules are checked on the op graph (``symgrad.graph``).
"""

from symgrad.matrix.diff import grad, hvp, jvp, vjp
from symgrad.matrix.errors import CrossCheckError, UnsupportedOp
from symgrad.matrix.evaluate import Evaluator, evaluate
from symgrad.matrix.explode import CrossCheck, check_grad, check_hvp, check_jvp, explode, exploded_grad, random_values
from symgrad.matrix.nodes import Elementwise, LogSoftmaxRows, SoftmaxRows, elementwise, frobenius_sq, hadamard, ones, sum_all
from symgrad.matrix.printing import to_latex, to_text

__all__ = [
    "grad",
    "jvp",
    "vjp",
    "hvp",
    "evaluate",
    "Evaluator",
    "to_text",
    "to_latex",
    "explode",
    "exploded_grad",
    "check_grad",
    "check_jvp",
    "check_hvp",
    "random_values",
    "CrossCheck",
    "CrossCheckError",
    "UnsupportedOp",
    "Elementwise",
    "SoftmaxRows",
    "LogSoftmaxRows",
    "elementwise",
    "hadamard",
    "ones",
    "sum_all",
    "frobenius_sq",
]
