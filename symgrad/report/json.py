"""Strict JSON: ``allow_nan=False``; NaN and infinities encoded as ``{"nonfinite": "nan" | "inf" | "-inf"}``.

Versioned (``schema_version``) and described by ``symgrad/report/schema.json`` (JSON Schema);
every record carries a machine-readable ``verdict_code`` (``common.VERDICT_CODES``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from .common import verdict_code

__all__ = ["SCHEMA_VERSION", "SCHEMA_PATH", "to_dict", "render", "encode", "schema"]

SCHEMA_VERSION = "1.0"
SCHEMA_PATH = Path(__file__).with_name("schema.json")
_SKIP = {"expected", "actual", "allowed", "kink_mask", "mismatch_mask", "closed_form_expr", "entry_form"}  # arrays and callables


def encode(value):
    """Any report value as strict JSON data."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        x = float(value)
        if math.isfinite(x):
            return x
        return {"nonfinite": "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")}
    if value is None or isinstance(value, str):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # a WorstEntry
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, np.ndarray) and value.size <= 64:
        return encode(value.tolist())
    return str(value)


def _record(r) -> dict:
    row = {}
    for f in dataclasses.fields(r):
        value = getattr(r, f.name)
        if f.name in _SKIP or isinstance(value, np.ndarray) or callable(value):
            continue  # per-entry arrays and callables stay in Python (the HTML's heatmaps use them)
        row[f.name] = encode(value)
    row["verdict"] = r.verdict
    row["verdict_code"] = verdict_code(r)
    row["passed"] = bool(r.passed)
    return row


def to_dict(report, top: bool = True) -> dict:
    from ..version import __version__

    out = {"schema_version": SCHEMA_VERSION, "symgrad_version": __version__} if top else {}
    out.update({"title": report.title, "passed": bool(report.passed),
                "verdict_code": "pass" if report.passed else "fail", "meta": encode(report.meta)})
    if report.parts:
        out["checks"] = [to_dict(p, top=False) for p in report.parts]
    else:
        out["rows"] = [_record(r) for r in report.records]
    return out


def render(report, **kwargs) -> str:
    kwargs.setdefault("indent", 2)
    kwargs["allow_nan"] = False
    return json.dumps(to_dict(report), **kwargs)


def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
