"""What every renderer shares: verdict codes, closed forms split into lines, worst entries.

The renderers (``text``, ``markdown``, ``html``, ``json``) read the same records through these
helpers, so the formats cannot disagree about a verdict or an entry.
"""

from __future__ import annotations

import math

import numpy as np

from ..compare.compare import format_index
from ..compare.record import Record

__all__ = ["reference_line", "VERDICT_CODES", "verdict_code", "closed_form_lines", "is_long", "detail_message", "worst_entries", "distinct",
           "entry_ratio", "shown_closed_forms", "worst_lines", "worst_closed_form", "failure_message"]

# Machine-readable verdicts (the JSON's "verdict_code"; documented in schema.json)
VERDICT_CODES = {
    "pass": "every entry within its allowance",
    "pass_kink": "passed; some entries sit on a kink and autograd took a valid one-sided value",
    "unresolved": "passed, but some entries' allowance is at least their size: not even their sign was checked",
    "inaccurate": "the derivative is right but less accurate than the problem's conditioning allows",
    "fail": "some entries are outside their allowance: the derivative is wrong",
    "fail_nonfinite": "NaN/inf on one side only",
    "nonfinite": "NaN/inf identical on both sides, which proves nothing (not a pass)",
    "unverified": "the closed form failed its cross-check; the record never passes",
    "unknown": "a verdict this version of the report does not know",
}

LONG_CHARS = 160  # closed forms above this (or with several lines) go into fenced blocks / <details>


def verdict_code(r: Record) -> str:
    """The record's verdict as one of ``VERDICT_CODES``."""
    code = getattr(r, "verdict_code", None) or getattr(r, "code", None)
    if isinstance(code, str) and code in VERDICT_CODES:
        return code
    v = str(r.verdict).lower()
    if "unverified" in v:
        return "unverified"
    if "nan" in v:
        return "fail_nonfinite" if v.startswith("fail") else "nonfinite"
    if v.startswith("fail"):
        return "fail"
    if "inaccurate" in v:
        return "inaccurate"
    if v.startswith("pass"):
        if "kink" in v:
            return "pass_kink"
        return "unresolved" if r.unresolved else "pass"
    return "unknown"


def reference_line(records: list[Record]) -> str:
    """One line on the references' own accuracy (issue 11 item 1), empty when no record states it."""
    groups: dict[str, list[str]] = {}
    for r in records:
        if r.reference and r.quantity != "forward":
            groups.setdefault(r.reference, []).append(r.name)
    if not groups:
        return ""
    parts = [f"{_names(names)}: {text}" for text, names in groups.items()]
    shown = parts[:REFERENCE_GROUPS]
    if len(parts) > len(shown):  # a ResNet's 62 rows made one line of 11,000 characters
        rest = sum(len(names) for names in list(groups.values())[REFERENCE_GROUPS:])
        shown.append(f"and {rest} more rows (each record's own line is in the JSON report, 'reference')")
    return "Reference accuracy: " + "; ".join(shown)


REFERENCE_GROUPS = 6


def _names(names: list[str]) -> str:
    return ", ".join(names) if len(names) <= 4 else f"{', '.join(names[:3])} and {len(names) - 3} more"


def closed_form_lines(text: str) -> list[str]:
    """A closed form as lines: named common subexpressions (``x0 = ...; x1 = ...; result``) one a line."""
    if "\n" in text:
        return text.splitlines()
    parts = text.split("; ")
    if len(parts) > 1 and all(" = " in p for p in parts[:-1]):
        return parts
    return [text]


def is_long(text: str) -> bool:
    return len(closed_form_lines(text)) > 1 or len(text) > LONG_CHARS


def shown_closed_forms(records: list[Record]) -> list[tuple[Record, str | None]]:
    """The records whose closed form is worth showing, each with the name of an earlier record that
    has the very same form (shown once), or None."""
    seen: dict[str, str] = {}
    out = []
    for r in records:
        if r.quantity == "forward" or not r.closed_form:
            continue
        out.append((r, seen.get(r.closed_form)))
        seen.setdefault(r.closed_form, r.name)
    return out


def detail_message(r: Record) -> str:
    """``r.message()`` without the closed form, which the reports show once, elsewhere."""
    text = r.message()
    tail = f"  (closed form: {r.closed_form or 'n/a'})"
    head = text.split("\n", 1)[0]
    if tail.split("\n", 1)[0] in head:  # the form may span lines (a matrix form with its "where" lines)
        text = text.replace(tail, "", 1)
    lines = text.splitlines()
    if not r.passed:
        lines += worst_lines(r)
    return "\n".join(lines)


def distinct(a: float, e: float, digits: int = 6) -> tuple[str, str]:
    """``a`` and ``e`` printed with at least ``digits`` significant digits and as many more (up to
    17) as tell them apart: a float64 failure 1e-11 off printed both as 0.315808."""
    for p in range(digits, 18):
        sa, se = f"{a:.{p}g}", f"{e:.{p}g}"
        if sa != se or a == e or not (np.isfinite(a) and np.isfinite(e)):
            return sa, se
    return sa, se


def worst_lines(r: Record, k: int = 3) -> list[str]:
    """The worst entries with both values, and the closed form of the worst one (where known)."""
    worst = [w for w in worst_entries(r, k) if w["ratio"] > 1.0]
    if not worst:
        return []
    lines = ["Worst entries, farthest past their allowance (autograd | closed form | difference | allowed):"]
    for w in worst:
        sa, se = distinct(w["autograd"], w["closed_form"], 10)
        lines.append(f"  {w['index']}: {sa} | {se} | {w['difference']:.3g} | "
                     f"{w['allowed']:.3g}" + (" (on a kink)" if w["kink"] else ""))
    form = worst_closed_form(r, worst[0]["position"])
    if form:
        lines.append(f"Closed form of {worst[0]['index']}: {form}")
    return lines


def worst_closed_form(r: Record, position: tuple) -> str:
    if not callable(r.entry_form):
        return ""
    try:
        return str(r.entry_form(position))
    except Exception:  # noqa: BLE001 - the text is a courtesy; never let it hide the failure
        return ""


def entry_ratio(r: Record) -> np.ndarray | None:
    """|autograd - closed form| / allowance, entry by entry (inf where NaN/inf differ); None if the
    record kept no arrays."""
    if r.expected is None or r.actual is None or np.shape(r.expected) != np.shape(r.actual):
        return None
    e, a = np.asarray(r.expected, np.float64), np.asarray(r.actual, np.float64)
    allowed = r.allowed if r.allowed is not None else r.rtol * np.abs(e) + r.atol
    allowed = np.asarray(allowed, np.float64)
    with np.errstate(all="ignore"):
        diff = np.abs(a - e)
        ratio = np.where(allowed > 0, diff / allowed, np.where(diff > 0, np.inf, 0.0))
    same = (np.isnan(e) & np.isnan(a)) | (np.isinf(e) & (e == a))
    ratio = np.where(same, 0.0, ratio)
    ratio = np.where(np.isfinite(e) & np.isfinite(a), ratio, np.where(same, 0.0, np.inf))
    if r.kink_mask is not None and r.mismatch_mask is not None and np.shape(r.kink_mask) == ratio.shape:
        # a kink entry is judged against its one-sided band, not the allowance: in the band it counts
        # as within (0), outside it at least just outside (the compare stage decided which)
        kink, bad = np.asarray(r.kink_mask, bool), np.asarray(r.mismatch_mask, bool)
        ratio = np.where(kink, np.where(bad, np.maximum(ratio, np.nextafter(1.0, 2.0)), 0.0), ratio)
    return ratio


def worst_entries(r: Record, k: int = 5) -> list[dict]:
    """The ``k`` entries farthest outside their allowance: index, both values, difference, allowance."""
    ratio = entry_ratio(r)
    if ratio is None or ratio.size == 0:
        return []
    flat = ratio.ravel()
    order = np.argsort(-np.where(np.isnan(flat), np.inf, flat), kind="stable")[:k]
    e, a = np.asarray(r.expected, np.float64), np.asarray(r.actual, np.float64)
    allowed = None if r.allowed is None else np.asarray(r.allowed, np.float64)
    kink = None if r.kink_mask is None else np.asarray(r.kink_mask, bool)
    rows = []
    for i in order:
        idx = tuple(int(j) for j in np.unravel_index(int(i), ratio.shape))
        if flat[i] <= 1.0 and rows:
            break
        rows.append({
            "index": format_index(r.name, idx), "position": idx, "autograd": float(a[idx]),
            "closed_form": float(e[idx]), "difference": _difference(float(a[idx]), float(e[idx])),
            "allowed": float(allowed[idx]) if allowed is not None else float("nan"),
            "ratio": float(flat[i]), "kink": bool(kink[idx]) if kink is not None else False,
        })
    return rows


def _difference(a: float, e: float) -> float:
    """|a - e|, inf where the two differ in kind (a NaN or inf on one side), 0 where both are the same non-finite."""
    if math.isfinite(a) and math.isfinite(e):
        return abs(a - e)
    same = (math.isnan(a) and math.isnan(e)) or (math.isinf(a) and a == e)
    return 0.0 if same else float("inf")


def failure_message(report, path=None) -> str:
    """``assert_close``-style: per failing record its mismatch counts, worst entries with both values
    and the closed form of the worst entry; then where the HTML report is, if written."""
    parts = [report.summary()]
    for part in report.parts or [report]:
        for r in part.failures:
            parts.append(detail_message(r) + (f"\nClosed form (first entry): {r.closed_form}" if r.closed_form else ""))
    if path is not None:
        parts.append(f"HTML report: {path}")
    return "\n\n".join(parts)
