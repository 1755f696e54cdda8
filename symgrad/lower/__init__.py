"""Stage 3, lower: closed forms to numpy (reference values) and plain SymPy forwards to torch."""

from .numpy import FUNCTIONS, Lowered, high_precision, lower
from .symengine_forms import to_symengine

__all__ = ["FUNCTIONS", "Lowered", "high_precision", "lower", "to_symengine"]
