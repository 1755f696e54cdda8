"""Stage 6, report: the ``Report`` object; one renderer per format over its records
(``text.py``, ``markdown.py``, ``html.py``, ``json.py``; what they share is in ``common.py``).

One row per differentiated input: name, shape, max abs error, max rel error, worst index, verdict;
then each closed form once, and the assert_close-style messages of the rows that did not plainly pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..compare.compare import format_index
from ..compare.record import Record
from ..errors import SymgradError
from .escape import escape_markdown, escape_text, markdown_code

__all__ = ["Report", "GradientMismatch", "shorten", "combine", "FORMATS", "format_for", "render_as",
           "escape_markdown", "markdown_code", "escape_text", "write_atomic"]

COLUMNS = ["input", "quantity", "shape", "closed form", "max abs err", "max rel err", "worst index", "verdict"]


class GradientMismatch(AssertionError):
    """Raised by ``Report.raise_for_failure`` (and ``symgrad.assert_correct``)."""


def _worst_failing(r: Record) -> str:
    """', worst <entry>: autograd a, closed form e (allowed d)' at the entry farthest past its allowance
    (``worst_entries``); the row's largest difference where the arrays are not kept."""
    from .common import distinct, worst_entries

    worst = worst_entries(r, 1)
    if not worst:
        return f", largest difference {r.max_abs:.3g} at {format_index(r.name, r.abs_index)} (allowed {r.atol:.3g})"
    w = worst[0]
    sa, se = distinct(w["autograd"], w["closed_form"])
    return (f", farthest past its allowance {w['index']}: autograd {sa}, closed form {se} "
            f"(difference {w['difference']:.3g}, allowed {w['allowed']:.3g})")


def shorten(text: str, width: int = 48) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass
class Report:
    """What ``symgrad.check`` returns: the records and their renderings."""

    records: list[Record]
    title: str = "symgrad check"
    meta: dict = field(default_factory=dict)
    parts: list["Report"] = field(default_factory=list)  # a combined report's checks, one section each

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.records)

    def __bool__(self) -> bool:
        """A report is true only when it passed: ``assert sg.check(...)`` fails on a failing check."""
        return self.passed

    def __repr__(self) -> str:
        """One line per row, the failing rows with their worst entry: what ``assert sg.check(...)``
        prints in pytest (str(report) and report.to_text() give the whole report)."""
        rows = []
        for r in self.records:
            row = f"{r.name} {r.quantity} {r.verdict}"
            if not r.passed:
                row += f": {r.mismatched}/{r.total} entries" + _worst_failing(r)
            rows.append(row)
        head = "passed" if self.passed else f"{len(self.failures)} of {len(self.records)} rows FAIL"
        return shorten(f"<symgrad Report {head}: " + "; ".join(rows) + ">", 600)

    @property
    def failures(self) -> list[Record]:
        return [r for r in self.records if not r.passed]

    @property
    def inaccurate(self) -> list[Record]:
        """The records whose derivative is right but less accurate than the problem's conditioning
        allows (verdict ``inaccurate``: a warning, a failure with ``strict=True``)."""
        return [r for r in self.records if r.verdict == "inaccurate"]

    def __getitem__(self, name: str) -> Record:
        for r in self.records:
            if r.name == name:
                return r
        raise KeyError(f"no record named {name!r}; records: {', '.join(r.name for r in self.records)}")

    @property
    def rows(self) -> list[dict]:
        rows = []
        for r in self.records:
            rows.append({
                "input": r.name,
                "quantity": r.quantity,
                "shape": "×".join(map(str, r.shape)) or "scalar",
                "closed form": shorten(r.closed_form) + ("" if r.verified else " (unverified)"),
                "max abs err": f"{r.max_abs:.3g}",
                "max rel err": f"{r.max_rel:.3g}",
                "worst index": format_index(r.name, r.abs_index) if r.total > 1 and (r.max_abs > 0 or r.mismatched) else "-",
                "verdict": r.verdict,
            })
        return rows

    def summary(self) -> str:
        n_fail = len(self.failures)
        status = "all derivatives match the closed form" if not n_fail else f"{n_fail} of {len(self.records)} rows FAIL"
        if self.inaccurate:
            status += f"; {len(self.inaccurate)} inaccurate"
        coarse = [r for r in self.records if r.passed and r.coarse]
        if coarse:  # Note [Statistical allowance]: a pass that says little
            status += (f"; {len(coarse)} coarse (a typical entry allowed up to {max(r.coarse for r in coarse):.2g} of its "
                       "size: see Resolution)")
        return f"{self.title}: {status}"

    def noteworthy(self) -> list[Record]:
        """The records that did not plainly pass, or carry a kink, a note or unresolved entries."""
        return [r for r in self.records if not r.passed or r.kinks or not r.verified or r.note or r.unresolved
                or r.inaccurate or r.accuracy_note]

    def details(self) -> list[str]:
        """assert_close-style messages for every row that did not plainly pass, and kink notes."""
        return [r.message() for r in self.noteworthy()]

    def to_text(self) -> str:
        from .text import render

        return render(self)

    __str__ = to_text

    def to_markdown(self) -> str:
        from .markdown import render

        return render(self)

    def to_html(self) -> str:
        """A standalone page (light and dark, MathML closed forms, heatmaps of failing entries)."""
        from .html import render

        return render(self)

    def to_dict(self) -> dict:
        """The JSON document as Python data (strict: non-finite numbers as {"nonfinite": ...})."""
        from .json import to_dict

        return to_dict(self)

    def to_json(self, **kwargs) -> str:
        """Strict JSON (``allow_nan=False``), versioned, described by ``symgrad/report/schema.json``."""
        from .json import render

        return render(self, **kwargs)

    def raise_for_failure(self) -> "Report":
        """Raise ``GradientMismatch`` with every failing row's message; return self otherwise."""
        if not self.passed:
            from .common import failure_message

            raise GradientMismatch(failure_message(self))
        return self

    def write(self, path) -> str:
        """Write the report; the format follows the suffix (``FORMATS``: .txt, .md, .html, .json).
        Any other suffix (``.pdf`` included) raises ``SymgradError``."""
        from pathlib import Path

        path = Path(path)
        fmt = format_for(path)
        text = render_as(self, fmt)
        write_atomic(path, escape_text(text) if fmt == "text" else text)
        return str(path)


# suffix -> format; a PDF is not produced (symgrad has no PDF renderer): it is refused, not faked
FORMATS = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown", ".html": "html",
           ".htm": "html", ".json": "json"}


def format_for(path) -> str:
    """The format a path's suffix names; ``SymgradError`` for any other suffix."""
    from pathlib import Path

    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        known = ", ".join(FORMATS)
        extra = " symgrad does not produce PDF; write .html and print it from a browser." if suffix == ".pdf" else ""
        raise SymgradError(f"cannot write a report to {str(path)!r}: the suffix {suffix or '(none)'!r} names no "
                           f"report format. Use one of {known}.{extra}")
    return FORMATS[suffix]


def render_as(report: Report, fmt: str) -> str:
    """``report`` rendered in ``fmt`` ("text", "markdown", "html" or "json")."""
    renderers = {"text": report.to_text, "markdown": report.to_markdown, "html": report.to_html, "json": report.to_json}
    if fmt not in renderers:
        raise SymgradError(f"unknown report format {fmt!r}; formats: {', '.join(renderers)}")
    return renderers[fmt]()


def write_atomic(path, text: str) -> None:
    """Write ``text`` to a temporary file in ``path``'s directory, then rename it over ``path``:
    a reader never sees half a report, and a symlink at ``path`` is replaced, not followed."""
    import os
    import tempfile
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def combine(reports: list[Report], title: str) -> Report:
    """One report from several checks (examples that run more than one); each renders as a section."""
    if not reports:
        raise SymgradError("combine() needs at least one report")
    records = [r for rep in reports for r in rep.records]
    return Report(records, title=title, parts=list(reports))
