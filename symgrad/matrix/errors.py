"""Errors raised by the matrix-calculus engine.

``UnsupportedOp`` is the project-wide one (``symgrad.errors``); the fallback below keeps the
engine importable on its own.
"""

from __future__ import annotations

__all__ = ["UnsupportedOp", "CrossCheckError"]

try:  # the project-wide errors
    from symgrad.errors import SymgradError, UnsupportedOp  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the lead's progress

    class SymgradError(ValueError):
        """Base class of symgrad's errors."""

    class UnsupportedOp(SymgradError):
        """An op, node or loss the matrix engine has no rule for.

        The message names the op, where it was met (the fx node or the SymPy node) and what to do.
        """


class CrossCheckError(AssertionError):
    """The matrix-form derivative disagrees with the exact elementwise derivative."""
