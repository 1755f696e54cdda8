"""One differentiated quantity's outcome: its counts, worst entries and notes, and its verdict.

``symgrad.compare.compare`` fills a :class:`Record` per quantity; the reports read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .worst import format_index

__all__ = ["Record"]


@dataclass
class Record:
    """The outcome of comparing one differentiated quantity."""

    name: str  # what was differentiated: "x", "layer1.weight", "d2/dx dy", "output"
    quantity: str  # grad, vjp, jacobian, jvp, hessian, forward
    shape: tuple
    dtype: str
    closed_form: str = ""
    closed_form_latex: str = ""
    total: int = 0
    mismatched: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    abs_index: tuple = ()
    rel_index: tuple = ()
    atol: float = 0.0
    rtol: float = 0.0  # the caller's rtol (0 unless given: the allowance is the rounding bound)
    rel_allowed: float = 0.0  # the allowance at rel_index, relative to the closed form there
    nonfinite: str = ""
    kinks: int = 0
    kink_note: str = ""
    unresolved: int = 0  # non-zero entries whose allowance is at least their size
    coarse: float = 0.0  # a typical entry's allowance relative to its size, where it is past the dtype's RESOLUTION
    verified: bool = True
    note: str = ""
    # errors in units in the last place of the checked dtype at the exact value (issue 11 item 2)
    max_ulps: float = 0.0  # the largest |autograd - exact| / ulp(exact), off kinks
    ulps_index: tuple = ()
    allowed_ulps: float = 0.0  # the allowance at ulps_index, in the same unit
    # WorstEntry, the most out of allowance first, with ulps (the reports list theirs: report/common.py)
    worst: list = field(default_factory=list, repr=False)
    # issue 11 items 1 and 3: the reference's own accuracy, and "is it accurate?" beside "is it right?"
    reference: str = ""  # e.g. "closed form in 80-bit extended floats; |error| <= 0.004 ulp of float64"
    inaccurate: int = 0  # entries right but less accurate than their conditioning allows (compare/accuracy.py)
    accuracy_index: tuple = ()  # the entry farthest beyond its accuracy allowance
    accuracy_ulps: float = 0.0  # its error, in ulps of the checked dtype
    accuracy_allowed_ulps: float = 0.0  # its accuracy allowance, (cond + 8) eps |g| + 8 ulp, in ulps
    condition: float = 0.0  # its condition number sum_j |a_j dg/da_j| / |g|
    accuracy_note: str = ""
    strict: bool = False  # symgrad.check(strict=True): an inaccurate record fails
    expected: np.ndarray | None = field(default=None, repr=False)
    actual: np.ndarray | None = field(default=None, repr=False)
    # for the reports only (heatmaps, worst entries): each entry's allowance and kink mask, the closed
    # form as a SymPy expression and a callable giving any entry's closed form text
    allowed: np.ndarray | None = field(default=None, repr=False)
    kink_mask: np.ndarray | None = field(default=None, repr=False)
    mismatch_mask: np.ndarray | None = field(default=None, repr=False)
    closed_form_expr: object = field(default=None, repr=False)
    entry_form: object = field(default=None, repr=False)

    @property
    def verdict(self) -> str:
        if not self.verified:
            return "FAIL (closed form unverified)"
        if self.nonfinite:
            return "FAIL (NaN/inf)" if self.mismatched else "NaN/inf"
        if self.mismatched:
            return "FAIL"
        if self.inaccurate:
            return "inaccurate"
        return "pass (kink)" if self.kinks else "pass"

    @property
    def passed(self) -> bool:
        verdict = self.verdict
        return verdict in ("pass", "pass (kink)") or (verdict == "inaccurate" and not self.strict)

    def message(self) -> str:
        """A mismatch message in the manner of ``torch.testing.assert_close``."""
        head = f"{self.quantity} of {self.name}" if self.quantity != "forward" else "forward output"
        lines = [f"{head}: {self.verdict}  (closed form: {self.closed_form or 'n/a'})"]
        share = 100.0 * self.mismatched / self.total if self.total else 0.0
        lines.append(f"Mismatched elements: {self.mismatched} / {self.total} ({share:.1f}%)")
        if self.kinks and self.kinks == self.total and not self.mismatched:
            lines.append("Every entry sits on a kink: the differences below are off the kinks (none), each entry is "
                         "judged against its band of one-sided values (see the kink note)")
        lines.append(
            f"Greatest absolute difference: {self.max_abs:.6g} at index {format_index(self.name, self.abs_index)} "
            f"(up to {self.atol:.3g} allowed)"
        )
        lines.append(
            f"Greatest relative difference: {self.max_rel:.6g} at index {format_index(self.name, self.rel_index)} "
            f"(up to {self.rel_allowed:.3g} allowed there)"
        )
        if self.total:
            lines.append(f"Greatest error in ulps of {self.dtype}: {self.max_ulps:.3g} at index "
                         f"{format_index(self.name, self.ulps_index)} (up to {self.allowed_ulps:.3g} allowed there)")
        if self.nonfinite:
            lines.append(self.nonfinite)
        if self.kink_note:
            lines.append(self.kink_note)
        if self.unresolved:
            lines.append(f"{self.unresolved} entries are no larger than what correct {self.dtype} arithmetic may get wrong "
                         "here (their allowance is at least their size): not even their sign is checked"
                         + ("; check in float64 to resolve them." if self.dtype != "float64" else "."))
        if self.note:
            lines.append(self.note)
        lines += self._accuracy_lines()
        return "\n".join(lines)

    def _accuracy_lines(self) -> list[str]:
        lines = [f"Reference: {self.reference}"] if self.reference and self.inaccurate else []
        if self.inaccurate:
            lines.append(
                f"Inaccurate: {self.inaccurate} of {self.total} entries are right (within what correct arithmetic "
                f"following the closed form may lose) but less accurate than the problem's conditioning allows: "
                f"{self.accuracy_ulps:.3g} ulps of {self.dtype} at {format_index(self.name, self.accuracy_index)}, where "
                f"condition number {self.condition:.3g} allows {self.accuracy_allowed_ulps:.3g} ulps"
                + (" (a failure: strict=True)." if self.strict else " (a warning; strict=True makes it a failure)."))
            lines += [w.line(self.name) for w in self.worst]
        if self.accuracy_note:
            lines.append(f"Accuracy: {self.accuracy_note}")
        return lines
