"""Stage 6, report: one ``Report`` rendered as text, GitHub markdown, a standalone HTML page or strict JSON."""

from .report import FORMATS, GradientMismatch, Report, combine, format_for, render_as, shorten

__all__ = ["GradientMismatch", "Report", "combine", "shorten", "FORMATS", "format_for", "render_as"]
