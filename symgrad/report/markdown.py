"""GitHub-flavoured markdown: a PR comment's worth.  Each closed form is shown once (in backticks, or
in a fenced block when it has several lines or is long); failure details in fenced blocks."""

from __future__ import annotations

from .common import closed_form_lines, detail_message, is_long, reference_line, shown_closed_forms
from .escape import escape_markdown, escape_text, markdown_code
from .text import table

__all__ = ["render"]


def _closed_forms(report) -> list[str]:
    lines = []
    for r, same_as in shown_closed_forms(report.records):
        label = f"- {markdown_code(r.name)} ({r.quantity}{', **unverified**' if not r.verified else ''})"
        if same_as is not None:
            lines.append(f"{label}: same as {markdown_code(same_as)}")
        elif is_long(r.closed_form):
            body = "\n".join(closed_form_lines(r.closed_form))
            lines += [f"{label}:", "", "  ````text", *[f"  {escape_text(x)}" for x in body.splitlines()], "  ````"]
        else:
            lines.append(f"{label}: {markdown_code(r.closed_form)}")
    return lines


def render(report, level: int = 2) -> str:
    head = "#" * level
    status = f"**{'PASS' if report.passed else 'FAIL'}** — {escape_markdown(report.summary())}"
    if report.parts:
        return f"{head} {escape_markdown(report.title)}\n\n{status}\n\n" + "\n".join(render(p, level + 1) for p in report.parts)
    parts = [f"{head} {escape_markdown(report.title)}", "", status, ""]
    parts += [f"- {escape_markdown(k)}: {escape_markdown(v)}" for k, v in report.meta.items()]
    parts += ["", table(report, "github", escape_markdown)]
    forms = _closed_forms(report)
    noteworthy = report.noteworthy()
    details = [f"````text\n{escape_text(detail_message(r))}\n````" for r in noteworthy]
    body = parts + _tail(report, head, forms, details)
    if len("\n".join(body)) > COMMENT_CHARS:  # a ResNet's 62 rows: 100 kB, past GitHub's 65,536
        failing = [f"````text\n{escape_text(detail_message(r))}\n````" for r in noteworthy if not r.passed]
        left = len(noteworthy) - len(failing)
        note = (f"The closed forms and the notes of {left} passing rows are left out to fit a comment "
                "(`to_text()`, `to_html()` and `to_json()` hold them).")
        body = parts + _tail(report, head, [], [note] + [d[:6000] for d in failing])
    return "\n".join(body) + "\n"


COMMENT_CHARS = 60_000  # under GitHub's 65,536 characters per comment


def _tail(report, head: str, forms: list[str], details: list[str]) -> list[str]:
    out = []
    if forms:
        out += ["", f"{head}# Closed forms", "", *forms]
    if reference_line(report.records):
        out += ["", escape_markdown(reference_line(report.records))]
    if details:
        out += ["", f"{head}# Details", "", *details]
    return out
