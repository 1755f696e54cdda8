"""Stage 6, report: records rendered as text, GitHub markdown, HTML and JSON (tabulate).

One row per differentiated input: name, shape, closed form (shortened), max abs error, max rel
error, worst index, verdict.  The full closed forms and the assert_close-style messages of failing
rows follow the table.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field

from tabulate import tabulate

from ..compare.compare import Record, format_index
from ..errors import SymgradError

__all__ = ["Report", "GradientMismatch", "shorten"]

COLUMNS = ["input", "quantity", "shape", "closed form", "max abs err", "max rel err", "worst index", "verdict"]


class GradientMismatch(AssertionError):
    """Raised by ``Report.raise_for_failure`` (and ``symgrad.assert_correct``)."""


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

    @property
    def failures(self) -> list[Record]:
        return [r for r in self.records if not r.passed]

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

    def _table(self, fmt: str) -> str:
        return tabulate([[row[c] for c in COLUMNS] for row in self.rows], headers=COLUMNS, tablefmt=fmt,
                        disable_numparse=True)

    def summary(self) -> str:
        n_fail = len(self.failures)
        status = "all derivatives match the closed form" if not n_fail else f"{n_fail} of {len(self.records)} rows FAIL"
        return f"{self.title}: {status}"

    def details(self) -> list[str]:
        """assert_close-style messages for every row that did not plainly pass, and kink notes."""
        return [r.message() for r in self.records if not r.passed or r.kinks or not r.verified or r.note or r.unresolved]

    def to_text(self) -> str:
        if self.parts:
            return "\n\n".join([self.summary()] + [p.to_text() for p in self.parts])
        parts = [self.summary(), "", self._table("simple")]
        if self.details():
            parts += ["", *self.details()]
        return "\n".join(parts)

    __str__ = to_text

    def to_markdown(self) -> str:
        if self.parts:
            head = f"## {self.title}\n\n**{'PASS' if self.passed else 'FAIL'}** — {self.summary()}\n\n"
            return head + "\n".join(p.to_markdown().replace("\n### ", "\n#### ").replace("## ", "### ", 1) for p in self.parts)
        parts = [f"## {self.title}", "", f"**{'PASS' if self.passed else 'FAIL'}** — {self.summary()}", ""]
        parts += [f"- {k}: {v}" for k, v in self.meta.items()]
        parts += ["", self._table("github"), "", "### Closed forms", ""]
        for r in self.records:
            if r.closed_form:
                parts.append(f"- `{r.name}`: `{r.closed_form}`" + (f" — $${r.closed_form_latex}$$" if r.closed_form_latex else ""))
        details = self.details()
        if details:
            parts += ["", "### Details", ""]
            parts += [f"```\n{d}\n```" for d in details]
        return "\n".join(parts) + "\n"

    def to_html(self) -> str:
        if self.parts:
            return (f"<section class='symgrad-report'><h2>{html.escape(self.title)}</h2>"
                    f"<p><b>{'PASS' if self.passed else 'FAIL'}</b></p>{''.join(p.to_html() for p in self.parts)}</section>")
        details = "".join(f"<pre>{html.escape(d)}</pre>" for d in self.details())
        return (f"<section class='symgrad-report'><h2>{html.escape(self.title)}</h2>"
                f"<p><b>{'PASS' if self.passed else 'FAIL'}</b> — {html.escape(self.summary())}</p>"
                f"{self._table('html')}{details}</section>")

    def to_dict(self) -> dict:
        if self.parts:
            return {"title": self.title, "passed": self.passed, "checks": [p.to_dict() for p in self.parts]}
        return {
            "title": self.title,
            "passed": self.passed,
            "meta": self.meta,
            "rows": [
                {
                    "name": r.name, "quantity": r.quantity, "shape": list(r.shape), "dtype": r.dtype,
                    "closed_form": r.closed_form, "closed_form_latex": r.closed_form_latex,
                    "verified": r.verified, "total": r.total, "mismatched": r.mismatched,
                    "max_abs": r.max_abs, "max_rel": r.max_rel, "abs_index": list(r.abs_index),
                    "rel_index": list(r.rel_index), "atol": r.atol, "rtol": r.rtol, "nonfinite": r.nonfinite,
                    "kinks": r.kinks, "kink_note": r.kink_note, "unresolved": r.unresolved, "note": r.note, "verdict": r.verdict,
                }
                for r in self.records
            ],
        }

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), indent=kwargs.pop("indent", 2), **kwargs)

    def raise_for_failure(self) -> "Report":
        """Raise ``GradientMismatch`` with every failing row's message; return self otherwise."""
        if not self.passed:
            raise GradientMismatch("\n\n".join([self.summary()] + [r.message() for r in self.failures]))
        return self

    def write(self, path) -> str:
        """Write the report; the format follows the suffix (.md, .html, .json, else text)."""
        from pathlib import Path

        path = Path(path)
        text = {".md": self.to_markdown, ".html": self.to_html, ".json": self.to_json}.get(path.suffix, self.to_text)()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return str(path)


def combine(reports: list[Report], title: str) -> Report:
    """One report from several checks (examples that run more than one); each renders as a section."""
    if not reports:
        raise SymgradError("combine() needs at least one report")
    records = [r for rep in reports for r in rep.records]
    return Report(records, title=title, parts=list(reports))
