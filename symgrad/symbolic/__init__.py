"""Stage 1, build: the symbolic forward (``SymTensor`` and functions that work on both worlds)."""

from . import functional
from .tensor import SymTensor, as_symtensor, element_name, symbols

__all__ = ["SymTensor", "as_symtensor", "element_name", "symbols", "functional"]
