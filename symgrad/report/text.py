"""Plain-text rendering: summary, one table row per record, each closed form once, failure details.

Short enough to paste into a pull request or a terminal; ``Report.to_text`` and ``str(report)``.
"""

from __future__ import annotations

from tabulate import tabulate

from .common import closed_form_lines, detail_message, reference_line, shown_closed_forms

__all__ = ["render", "TABLE_COLUMNS"]

TABLE_COLUMNS = ["input", "quantity", "shape", "max abs err", "max rel err", "worst index", "verdict"]


def table(report, fmt: str, cell=str) -> str:
    """The verdict table; ``cell`` writes each cell (markdown escapes a name holding ``|`` or ``<``)."""
    return tabulate([[cell(row[c]) for c in TABLE_COLUMNS] for row in report.rows], headers=TABLE_COLUMNS,
                    tablefmt=fmt, disable_numparse=True)


def closed_forms(report) -> list[str]:
    lines = []
    for r, same_as in shown_closed_forms(report.records):
        label = f"  {r.name} ({r.quantity}{', unverified' if not r.verified else ''}): "
        if same_as is not None:
            lines.append(f"{label}same as {same_as}")
            continue
        form = closed_form_lines(r.closed_form)
        if len(form) == 1:
            lines.append(label + form[0])
        else:
            lines.append(label.rstrip())
            lines += [f"      {line}" for line in form]
    return ["Closed forms:", *lines] if lines else []


def render(report) -> str:
    if report.parts:
        return "\n\n".join([report.summary()] + [render(p) for p in report.parts])
    parts = [report.summary(), "", table(report, "simple")]
    checked = _checked(report.meta)
    if checked:
        parts += ["", checked]
    forms = closed_forms(report)
    if forms:
        parts += ["", *forms]
    if reference_line(report.records):
        parts += ["", reference_line(report.records)]
    details = [detail_message(r) for r in report.noteworthy()]
    if details:
        parts += ["", "\n\n".join(details)]
    return "\n".join(parts)


def _checked(meta: dict) -> str:
    """What was checked, in one line: the products (how many random cotangents / tangents), the dtype
    and the engine (the JSON, markdown and HTML reports list the whole meta)."""
    if not meta or "quantity" not in meta:
        return ""
    line = f"Checked: {meta['quantity']}"
    if meta.get("dtype"):
        line += f"; {meta['dtype']}"
    if meta.get("computes in"):
        line += f" (computes in {meta['computes in']})"
    if meta.get("engine"):
        line += f"; engine {meta['engine']}"
    if meta.get("jvp"):  # Note [A jvp that raises] in graph/check.py, [A tangent torch drops] in autograd/forward_mode.py
        line += f"\nForward mode: {meta['jvp']}"
    return line
