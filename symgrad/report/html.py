"""A standalone HTML page: styled for light and dark, closed forms as MathML (no JavaScript, works
offline), a heatmap per failing record showing where and by how many allowances autograd is off
(kinks marked), long closed forms folded in ``<details>``."""

from __future__ import annotations

import html
import math

import numpy as np

from ..compare.compare import format_index
from .common import (closed_form_lines, detail_message, entry_ratio, is_long, reference_line, shown_closed_forms,
                     verdict_code)
from .text import TABLE_COLUMNS

__all__ = ["render", "heatmap_svg", "mathml"]

MAX_CELLS = 48  # heatmap cells per side; larger tensors are shown block-wise (each block its worst entry)
FOLD_CHARS, FOLD_LINES = 800, 12  # closed forms above either are folded in <details>
CELL = 12  # smallest cell, in pixels; small grids get larger cells (up to 36) with the ratio written in

STYLE = """
:root { color-scheme: light dark; --bg: #ffffff; --fg: #1f2328; --muted: #59636e; --line: #d1d9e0;
  --head: #f6f8fa; --pass: #1a7f37; --fail: #cf222e; --warn: #9a6700; --code: #f6f8fa; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #0d1117; --fg: #e6edf3; --muted: #9198a1; --line: #3d444d; --head: #151b23;
    --pass: #3fb950; --fail: #f85149; --warn: #d29922; --code: #151b23; } }
body { background: var(--bg); color: var(--fg); font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif;
  max-width: 72rem; margin: 2rem auto; padding: 0 1rem; }
h1, h2, h3 { line-height: 1.25; } .muted { color: var(--muted); }
table { border-collapse: collapse; margin: 1rem 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: .3rem .6rem; text-align: left; vertical-align: top; }
th { background: var(--head); }
.verdict-pass, .verdict-pass_kink, .verdict-unresolved { color: var(--pass); font-weight: 600; }
.verdict-fail, .verdict-fail_nonfinite, .verdict-nonfinite, .verdict-unverified, .verdict-unknown {
  color: var(--fail); font-weight: 600; }
.verdict-inaccurate { color: var(--warn); font-weight: 600; }
.badge { display: inline-block; padding: .1rem .6rem; border-radius: 1rem; color: #fff; font-weight: 600; }
.badge.pass { background: var(--pass); } .badge.fail { background: var(--fail); }
pre, code { background: var(--code); font: 13px/1.4 ui-monospace, SFMono-Regular, Menlo, monospace; }
pre { padding: .6rem; overflow-x: auto; white-space: pre-wrap; border-radius: 6px; }
math { font-size: 1.15em; } .form { margin: .4rem 0 .3rem 1rem; overflow-x: auto; overflow-y: hidden; }
.closed-form { margin-bottom: .9rem; }
svg.heatmap { border: 1px solid var(--line); background: var(--head); }
svg.heatmap text { fill: var(--fg); font: 10px system-ui, sans-serif; }
section.check section.check { border-top: 2px solid var(--line); margin-top: 2rem; }
"""


def mathml(expr) -> str:
    """A SymPy expression as presentation MathML ('' if SymPy cannot print it)."""
    try:
        return f"<math>{_printer().doprint(expr)}</math>"
    except Exception:  # noqa: BLE001 - a printer failure falls back to the text form
        return ""


def _printer():
    """SymPy's presentation MathML printer, with Piecewise as a brace of cases (SymPy prints it as a call)."""
    from sympy import true
    from sympy.printing.mathml import MathMLPresentationPrinter

    class Printer(MathMLPresentationPrinter):
        def _text(self, tag: str, text: str):
            node = self.dom.createElement(tag)
            node.appendChild(self.dom.createTextNode(text))
            return node

        def _print_Piecewise(self, expr):
            row = self.dom.createElement("mrow")
            row.appendChild(self._text("mo", "{"))
            table = self.dom.createElement("mtable")
            for value, cond in expr.args:
                tr = self.dom.createElement("mtr")
                for content in (self._print(value), None):
                    td = self.dom.createElement("mtd")
                    if content is None:
                        td.appendChild(self._text("mtext", "otherwise" if cond == true else "if\u00a0"))
                        if cond != true:
                            td.appendChild(self._print(cond))
                    else:
                        td.appendChild(content)
                    tr.appendChild(td)
                table.appendChild(tr)
            row.appendChild(table)
            return row

    return Printer({})


def _closed_form(r) -> str:
    shown = mathml(r.closed_form_expr) if r.closed_form_expr is not None else ""
    text = r.closed_form
    if shown:
        return f'<div class="form">{shown}</div><div class="muted"><code>{html.escape(text)}</code></div>'
    lines = closed_form_lines(text)
    body = html.escape("\n".join(lines))
    if len(text) > FOLD_CHARS or len(lines) > FOLD_LINES:
        return (f"<details><summary>closed form ({len(lines)} lines, {len(text):,} characters; click to unfold)"
                f"</summary><pre>{body}</pre></details>")
    if is_long(text):
        return f"<pre>{body}</pre>"
    return f'<div class="form"><code>{body}</code></div>'


def _grid(values: np.ndarray) -> np.ndarray:
    """Any shape as a 2-d grid: scalars 1×1, vectors wrapped in rows, leading dims flattened."""
    if values.ndim == 0:
        return values.reshape(1, 1)
    if values.ndim == 1:
        n = values.size
        cols = min(n, MAX_CELLS)
        rows = math.ceil(n / cols)
        padded = np.full(rows * cols, np.nan)
        padded[:n] = values
        return padded.reshape(rows, cols)
    return values.reshape(-1, values.shape[-1])


def _pool(grid: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Downsample to at most MAX_CELLS per side, each block keeping its largest value."""
    by_r, by_c = math.ceil(grid.shape[0] / MAX_CELLS), math.ceil(grid.shape[1] / MAX_CELLS)
    if by_r == 1 and by_c == 1:
        return grid, 1, 1
    rows, cols = math.ceil(grid.shape[0] / by_r), math.ceil(grid.shape[1] / by_c)
    padded = np.full((rows * by_r, cols * by_c), np.nan)
    padded[: grid.shape[0], : grid.shape[1]] = grid
    blocks = padded.reshape(rows, by_r, cols, by_c)
    with np.errstate(all="ignore"):
        filled = np.where(np.isnan(blocks), -1.0, blocks).max(axis=(1, 3))
    return np.where(filled < 0, np.nan, filled), by_r, by_c


def _colour(ratio: float) -> str:
    """Within the allowance: shades of green; outside: orange to red by log10(ratio); NaN/inf: purple."""
    if math.isnan(ratio):
        return "transparent"
    if math.isinf(ratio):
        return "#8250df"
    if ratio <= 1.0:
        light = 85 - 35 * ratio
        return f"hsl(140, 55%, {light:.0f}%)"
    t = min(math.log10(ratio) / 6.0, 1.0)
    return f"hsl({35 - 35 * t:.0f}, 85%, {55 - 20 * t:.0f}%)"


def heatmap_svg(r) -> str:
    """An inline SVG: one cell per entry (or block), coloured by |error| / allowance; kinks ringed."""
    ratio = entry_ratio(r)
    if ratio is None or ratio.size == 0:
        return ""
    shape = ratio.shape
    grid, by_r, by_c = _pool(_grid(ratio.astype(np.float64)))
    kinks = None
    if r.kink_mask is not None and np.shape(r.kink_mask) == shape and np.any(r.kink_mask):
        kinks, _, _ = _pool(_grid(np.asarray(r.kink_mask, np.float64)))
    h, w = grid.shape
    cell = max(CELL, min(36, 480 // max(h, w)))
    cells = []
    for i in range(h):
        for j in range(w):
            value = grid[i, j]
            if math.isnan(value):
                continue
            where = _cell_label(r.name, shape, i, j, by_r, by_c)
            tip = f"{where}: {'NaN/inf on one side' if math.isinf(value) else f'{value:.3g} allowances'}"
            ring = ' stroke="#0969da" stroke-width="3"' if kinks is not None and kinks[i, j] > 0 else ""
            if ring:
                tip += " (kink)"
            cells.append(f'<rect x="{j * cell}" y="{i * cell}" width="{cell - 1}" height="{cell - 1}" '
                         f'fill="{_colour(float(value))}"{ring}><title>{html.escape(tip)}</title></rect>')
            if cell >= 28 and value > 1.0:
                label = "∞" if math.isinf(value) else f"{value:.0e}".replace("e+0", "e") if value >= 1e3 else f"{value:.0f}"
                cells.append(f'<text x="{j * cell + cell / 2 - 0.5:g}" y="{i * cell + cell / 2 + 3:g}" '
                             f'text-anchor="middle">{html.escape(label)}</text>')
    note = "" if by_r == by_c == 1 else f" (each cell: the worst of a {by_r}×{by_c} block)"
    legend = ("numbers: allowances off; green: within the allowance (darker is closer to it); orange to red: 1 to 10⁶ allowances off; "
              "purple: NaN/inf on one side only; blue frame: on a kink (judged against its one-sided band)" + note)
    return (f'<figure><svg class="heatmap" role="img" aria-label="error heatmap of {html.escape(r.name)}" '
            f'xmlns="http://www.w3.org/2000/svg" width="{w * cell}" height="{h * cell}" '
            f'viewBox="0 0 {w * cell} {h * cell}">{"".join(cells)}</svg>'
            f'<figcaption class="muted">|autograd − closed form| / allowance for {html.escape(r.name)} '
            f'(shape {"×".join(map(str, shape)) or "scalar"}): {legend}</figcaption></figure>')


def _cell_label(name, shape, i, j, by_r, by_c) -> str:
    if by_r != 1 or by_c != 1:
        return f"rows {i * by_r}–{(i + 1) * by_r - 1}, columns {j * by_c}–{(j + 1) * by_c - 1}"
    if len(shape) == 0:
        return name
    if len(shape) == 1:
        return format_index(name, (i * min(shape[0], MAX_CELLS) + j,))
    lead = np.unravel_index(i, shape[:-1]) if len(shape) > 2 else (i,)
    return format_index(name, tuple(int(k) for k in lead) + (j,))


def _table(report) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in TABLE_COLUMNS)
    body = []
    for row, r in zip(report.rows, report.records):
        cells = []
        for c in TABLE_COLUMNS:
            cls = f' class="verdict-{verdict_code(r)}"' if c == "verdict" else ""
            cells.append(f"<td{cls}>{html.escape(str(row[c]))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _section(report, level: int) -> str:
    h = f"h{min(level, 6)}"
    badge = f'<span class="badge {"pass" if report.passed else "fail"}">{"PASS" if report.passed else "FAIL"}</span>'
    out = [f'<section class="check"><{h}>{html.escape(report.title)}</{h}>',
           f"<p>{badge} {html.escape(report.summary())}</p>"]
    if report.parts:
        out += [_section(p, level + 1) for p in report.parts]
        return "".join(out) + "</section>"
    if report.meta:
        items = "".join(f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>" for k, v in report.meta.items())
        out.append(f'<ul class="muted">{items}</ul>')
    out.append(_table(report))
    forms = shown_closed_forms(report.records)
    if forms:
        out.append(f"<h{min(level + 1, 6)}>Closed forms</h{min(level + 1, 6)}>")
        for r, same_as in forms:
            label = f"<b>{html.escape(r.name)}</b> <span class='muted'>({html.escape(r.quantity)})</span>"
            body = f"same as <b>{html.escape(same_as)}</b>" if same_as is not None else _closed_form(r)
            out.append(f'<div class="closed-form">{label}{body}</div>')
    if reference_line(report.records):
        out.append(f'<p class="muted">{html.escape(reference_line(report.records))}</p>')
    noteworthy = report.noteworthy()
    if noteworthy:
        out.append(f"<h{min(level + 1, 6)}>Details</h{min(level + 1, 6)}>")
        for r in noteworthy:
            out.append(f"<pre>{html.escape(detail_message(r))}</pre>")
            if not r.passed:
                out.append(heatmap_svg(r))
    return "".join(out) + "</section>"


def render(report) -> str:
    title = html.escape(report.title)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<meta name=\"generator\" content=\"symgrad\"><title>{title}</title><style>{STYLE}</style></head>"
            f"<body><main class=\"symgrad-report\">{_section(report, 1)}</main></body></html>\n")
