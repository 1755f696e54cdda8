"""symgrad's exceptions.  Every message names the cause and the fix."""

__all__ = ["SymgradError", "ShapeMismatch", "UnsupportedOp", "InputError", "AutogradFailed"]


MAX_MESSAGE = 2000  # characters; an error quoting a huge expression is cut in the middle


def cap(message: str, limit: int = MAX_MESSAGE) -> str:
    """``message`` cut to about ``limit`` characters, keeping its start (the cause) and its end (the fix)."""
    if len(message) <= limit:
        return message
    room = limit - 48  # the marker's own characters
    head, tail = message[: room * 3 // 4], message[-(room // 4):]
    return f"{head} [... {len(message) - len(head) - len(tail):,} characters cut ...] {tail}"


class SymgradError(ValueError):
    """Base class: something about the user's input makes the check impossible."""

    def __init__(self, *args):
        super().__init__(*(cap(a) if isinstance(a, str) else a for a in args))


class InputError(SymgradError, TypeError):
    """An input is of the wrong kind (not a tensor, no symbol, a wrt that names nothing)."""


class ShapeMismatch(SymgradError):
    """The symbolic and the torch computation disagree on a shape."""


class UnsupportedOp(SymgradError):
    """The symbolic forward (or an imported model) uses an op symgrad has no row for."""


class AutogradFailed(SymgradError):
    """torch's autograd raised while running the torch function the way the user named (``via``)."""


def exploded_memory_guard(check):
    """A MemoryError of the exploded back end (its exact expressions, their generated code) as an
    InputError naming the alternative (Note [Memory guard] in graph/budget.py): the size estimate
    counts expression nodes, and a deeply nested forward (an ODE solver's stages) can still outgrow it."""
    import functools

    @functools.wraps(check)
    def guarded(*args, **kwargs):
        try:
            return check(*args, **kwargs)
        except MemoryError as err:
            raise InputError(f"the exploded back end ran out of memory ({err or 'MemoryError'}): its exact "
                             "expressions grew past the size estimate. Use the tensor back end (engine='graph' "
                             "or 'auto'), whose cost is numpy's.") from None

    return guarded
