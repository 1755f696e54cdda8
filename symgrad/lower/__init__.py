"""Stage 3, lower: closed forms to numpy (reference values) and plain SymPy forwards to torch."""

from .numpy import Lowered, high_precision, lower, magnitude

__all__ = ["Lowered", "high_precision", "lower", "magnitude"]
