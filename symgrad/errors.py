"""symgrad's exceptions.  Every message names the cause and the fix."""

__all__ = ["SymgradError", "ShapeMismatch", "UnsupportedOp", "InputError", "AutogradFailed"]


class SymgradError(ValueError):
    """Base class: something about the user's input makes the check impossible."""


class InputError(SymgradError, TypeError):
    """An input is of the wrong kind (not a tensor, no symbol, a wrt that names nothing)."""


class ShapeMismatch(SymgradError):
    """The symbolic and the torch computation disagree on a shape."""


class UnsupportedOp(SymgradError):
    """The symbolic forward (or an imported model) uses an op symgrad has no row for."""


class AutogradFailed(SymgradError):
    """torch's autograd raised while running the torch function the way the user named (``via``)."""
