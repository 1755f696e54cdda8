"""The matrix-calculus engine: derivatives of matrix expressions in matrix notation.

Pipeline: ``nodes`` (symgrad's own matrix nodes) -> ``diff`` (reverse/forward rules) ->
``evaluate`` (numpy, shared subtrees once; float64, or the checked dtype), ``rounding`` (a per-entry
rounding-error bound) and ``printing`` (text, LaTeX); ``explode`` is the independent entrywise
cross-check; ``network`` / ``fx_rules`` import ``nn.Module``s and
``references`` produces the ``Reference`` records ``symgrad.check`` compares with autograd.
torch is imported only inside the functions that need it.
"""

from symgrad.matrix.diff import grad, hvp, jvp, vjp
from symgrad.matrix.errors import ClosedFormUnverified, CrossCheckError, UnsupportedOp
from symgrad.matrix.evaluate import Evaluator, evaluate
from symgrad.matrix.explode import CrossCheck, check_grad, check_hvp, check_jvp, explode, exploded_grad, random_values
from symgrad.matrix.fx_rules import from_module
from symgrad.matrix.network import Network
from symgrad.matrix.nodes import Elementwise, LogSoftmaxRows, SoftmaxRows, elementwise, frobenius_sq, hadamard, ones, sum_all
from symgrad.matrix.printing import to_latex, to_text
from symgrad.matrix.references import clear_caches, closed_forms, module_references, network_gradients, verify_network

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
    "ClosedFormUnverified",
    "UnsupportedOp",
    "Elementwise",
    "SoftmaxRows",
    "LogSoftmaxRows",
    "elementwise",
    "hadamard",
    "ones",
    "sum_all",
    "frobenius_sq",
    "Network",
    "from_module",
    "network_gradients",
    "closed_forms",
    "verify_network",
    "module_references",
    "clear_caches",
]
