"""Errors raised by the matrix-calculus engine.

``UnsupportedOp`` is defined here until ``symgrad/errors.py`` exists; it is a ``ValueError`` so
that callers catching either keep working when the lead unifies the two.
"""

from __future__ import annotations

__all__ = ["UnsupportedOp", "CrossCheckError"]

try:  # the project-wide error, once it exists
    from symgrad.errors import UnsupportedOp  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the lead's progress

    class UnsupportedOp(ValueError):
        """An op, node or loss the matrix engine has no rule for.

        The message names the op, where it was met (the fx node or the SymPy node) and what to do.
        """


class CrossCheckError(AssertionError):
    """The matrix-form derivative disagrees with the exact elementwise derivative."""
