"""Stage 5, compare: records of how autograd's numbers differ from the closed form."""

from .compare import DEFAULT_RTOL, NOISE_FACTOR, compare, format_index
from .record import Record

__all__ = ["DEFAULT_RTOL", "NOISE_FACTOR", "Record", "compare", "format_index"]
