"""Stage 4, autograd: torch differentiation run the way the user names it."""

from .run import VIAS, default_via, quantity_of, run_autograd

__all__ = ["VIAS", "default_via", "quantity_of", "run_autograd"]
