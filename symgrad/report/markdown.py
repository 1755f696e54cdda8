"""GitHub-flavoured markdown: a PR comment's worth.  Each closed form is shown once (in backticks, or
in a fenced block when it has several lines or is long); failure details in fenced blocks."""

from __future__ import annotations

from .common import closed_form_lines, detail_message, is_long, shown_closed_forms
from .text import table

__all__ = ["render"]


def _closed_forms(report) -> list[str]:
    lines = []
    for r, same_as in shown_closed_forms(report.records):
        label = f"- `{r.name}` ({r.quantity}{', **unverified**' if not r.verified else ''})"
        if same_as is not None:
            lines.append(f"{label}: same as `{same_as}`")
        elif is_long(r.closed_form):
            body = "\n".join(closed_form_lines(r.closed_form))
            lines += [f"{label}:", "", "  ```text", *[f"  {x}" for x in body.splitlines()], "  ```"]
        else:
            tick = "``" if "`" in r.closed_form else "`"
            lines.append(f"{label}: {tick}{r.closed_form}{tick}")
    return lines


def render(report, level: int = 2) -> str:
    head = "#" * level
    status = f"**{'PASS' if report.passed else 'FAIL'}** — {report.summary()}"
    if report.parts:
        return f"{head} {report.title}\n\n{status}\n\n" + "\n".join(render(p, level + 1) for p in report.parts)
    parts = [f"{head} {report.title}", "", status, ""]
    parts += [f"- {k}: {v}" for k, v in report.meta.items()]
    parts += ["", table(report, "github")]
    forms = _closed_forms(report)
    if forms:
        parts += ["", f"{head}# Closed forms", "", *forms]
    details = [detail_message(r) for r in report.noteworthy()]
    if details:
        parts += ["", f"{head}# Details", ""]
        parts += [f"```text\n{d}\n```" for d in details]
    return "\n".join(parts) + "\n"
