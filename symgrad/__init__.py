"""symgrad: tells whether automatic derivatives are right.

The pipeline, one subpackage per stage::

    build -> differentiate -> lower -> autograd -> compare -> report

``symgrad.check(torch_fn, inputs, symbolic=sym_fn)`` runs it once and returns a ``Report``.
torch is imported only where it is needed.
"""

from .symbolic import SymTensor, as_symtensor, symbols
from .symbolic.functional import *  # noqa: F401,F403 - the symbolic tensor API (sg.tanh, sg.mse_loss, ...)
from .symbolic.functional import __all__ as _functional_all
from .check import assert_correct, check
from .compare import Record
from .compare.accuracy import InaccurateDerivative
from .errors import AutogradFailed, InputError, ShapeMismatch, SymgradError, UnsupportedOp
from .ops import OPS, Op, register_op
from .reference import Reference
from .report import GradientMismatch, Report

from .version import __version__

# Loaded on first use, so that `import symgrad` stays light (the op graph and nn need torch).
_LAZY = {
    "import_fn": ("symgrad.graph.twin", "import_fn"),
    "register": ("symgrad.graph.interpret", "register"),
    "check_function": ("symgrad.nn.check", "check_function"),
    "weight_jacobian": ("symgrad.nn", "weight_jacobian"),
    "nn": ("symgrad.nn", None),
    "matrix": ("symgrad.matrix", None),
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'symgrad' has no attribute {name!r}")
    import importlib

    module, attr = _LAZY[name]
    mod = importlib.import_module(module)
    return mod if attr is None else getattr(mod, attr)


__all__ = [
    "check",
    "assert_correct",
    "Report",
    "Record",
    "Reference",
    "SymTensor",
    "symbols",
    "as_symtensor",
    "OPS",
    "Op",
    "register_op",
    "SymgradError",
    "InputError",
    "ShapeMismatch",
    "UnsupportedOp",
    "AutogradFailed",
    "GradientMismatch",
    "InaccurateDerivative",
    "import_fn",
    "register",
    "check_function",
    "weight_jacobian",
    *[n for n in _functional_all if n not in ("METHODS", "is_torch", "apply_op")],
]
