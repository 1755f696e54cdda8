"""The entries a mismatch message shows: their values, error and allowance (stage "compare")."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["WorstEntry", "WORST_SHOWN", "format_index", "joined"]

WORST_SHOWN = 3


def format_index(name: str, index: tuple) -> str:
    return f"{name}[{', '.join(map(str, index))}]" if index else name


@dataclass
class WorstEntry:
    """One compared entry as ``assert_close`` users read it: the values, the error, the allowance."""

    index: tuple
    actual: float
    expected: float
    error: float
    error_ulps: float
    allowed: float
    allowed_ulps: float
    condition: float | None = None  # set where ``allowed`` is the accuracy allowance (compare/accuracy.py)

    def line(self, name: str) -> str:
        what = "allowed" if self.condition is None else f"accurate to (condition number {self.condition:.3g})"
        return (f"  {format_index(name, self.index)}: autograd {self.actual:.17g}, exact {self.expected:.17g}, "
                f"error {self.error:.3g} ({self.error_ulps:.3g} ulps), {what} {self.allowed:.3g} ({self.allowed_ulps:.3g} ulps)")


def joined(note: str | None, more: str | None) -> str | None:
    """``note`` with ``more`` appended (a space between), either of them possibly empty."""
    if not more:
        return note
    return (note + " " if note else "") + more
