"""Stage 2, differentiate: closed-form derivatives (elementwise engine; matrix engine in symgrad.matrix)."""

from .elementwise import QUANTITIES, diff_all, differentiate

__all__ = ["QUANTITIES", "diff_all", "differentiate"]
