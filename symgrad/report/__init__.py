"""Stage 6, report: records rendered with tabulate (text, markdown, HTML, JSON)."""

from .report import GradientMismatch, Report, combine, shorten

__all__ = ["GradientMismatch", "Report", "combine", "shorten"]
