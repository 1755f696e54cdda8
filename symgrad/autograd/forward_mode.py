"""Stage 4, autograd: the forward mode a check runs by default, beside reverse mode.

torch.func.jvp first, then dual tensors (Note [A jvp that raises] in graph/check.py); the custom ops
torch runs under forward mode without their tangent (Note [A tangent torch drops]).
"""

from __future__ import annotations

from typing import Callable, Mapping

from ..errors import AutogradFailed
from .run import FORWARD_MODE_VIAS, run_autograd

__all__ = ["jvp_raised", "no_tangent", "NO_TANGENT_REASON", "recording_ops", "tangent_dropping_ops",
           "run_recording_ops", "first_forward_mode", "not_run_note", "dropped_reason"]


def jvp_raised(err: Exception, how: str) -> AutogradFailed:
    """The error for a custom Function's jvp that raised in the forward mode a check runs by default
    (Note [A jvp that raises] in graph/check.py)."""
    return AutogradFailed(
        f"{err} It raised in forward mode (random tangents, via={how!r}), which the check runs beside reverse "
        "mode: a custom Function's jvp that raises is a bug of its own (in forward mode ctx.saved_tensors is "
        "empty: a jvp reads what forward gave ctx.save_for_forward). Fix it, or pass v= (or via='backward') to "
        "check reverse mode alone.")


def no_tangent(result) -> bool:
    """Whether torch's forward mode gave the output no tangent at all (``via="forward_ad"``)."""
    return bool(getattr(result, "symgrad_no_tangent", False))


NO_TANGENT_REASON = ("torch's forward mode gave the output no tangent (dual tensors): an op on the way has no "
                     "forward-mode rule and lets the tangent go without an error (a higher-order op such as "
                     "torch.cond, a torch.library custom op)")


# Note [A tangent torch drops]
# A torch.library custom op (``custom_op`` with ``register_autograd``, or ``register_autograd`` on a
# defined op) gets its autograd from a generated Function with no jvp, applied only where an input
# requires grad: under forward mode (dual tensors, ``torch.func.jvp``) the op runs as if no tangent
# reached it, and its output's tangent is zero without an error (torch 2.13).  A correct custom op
# then failed the jvp that the default check runs beside reverse mode.  The first forward-mode run
# records the ops outside torch's own namespaces that the function calls (a dispatch mode sees them
# below autograd), and each runs once more on dual tensors: one whose output comes back with no
# tangent is named.  The default check then leaves forward mode out with that reason; a jvp the user
# asked for is compared (torch's tangent is wrong) and the report gives the reason.  Dual tensors
# (``via="forward_ad"``, the default check's second try) do the same through ``torch.cond``: an
# output with no tangent at all is read as zeros and marked, and is treated the same way.  Where the
# recording itself breaks the run (a dispatch mode changes ``torch.cond``'s eager path), the run is
# repeated without it.
TORCH_NAMESPACES = frozenset({"aten", "prims", "prim"})


def recording_ops():
    """A context whose ``calls`` list holds ``(op, args, kwargs)`` of the first call of each op outside
    torch's own namespaces run inside it (Note [A tangent torch drops])."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Recording(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls, self._seen = [], set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if getattr(func, "namespace", "aten") not in TORCH_NAMESPACES and func not in self._seen:
                self._seen.add(func)
                self.calls.append((func, _detached(args), _detached(kwargs)))
            return func(*args, **kwargs)

    return _Recording()


def _detached(tree):
    import torch
    from torch.utils._pytree import tree_map

    return tree_map(lambda a: a.detach().clone() if isinstance(a, torch.Tensor) else a, tree)


def tangent_dropping_ops(calls) -> list[str]:
    """The names of the recorded ops whose floating-point output has no tangent when their floating
    inputs carry one (Note [A tangent torch drops]); an op that raises on dual tensors is not named
    (forward mode through it raises in the check's own run)."""
    import torch
    import torch.autograd.forward_ad as fwad
    from torch.utils._pytree import tree_flatten, tree_map

    named = []
    for op, args, kwargs in calls:
        with fwad.dual_level():
            dual = lambda a: (fwad.make_dual(a, torch.ones_like(a))  # noqa: E731
                              if isinstance(a, torch.Tensor) and a.is_floating_point() else a)
            try:
                out = op(*tree_map(dual, args), **tree_map(dual, kwargs))
            except Exception:  # noqa: BLE001 - torch refuses forward mode here: the check's own run says so
                continue
            floats = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor) and o.is_floating_point()]
            if any(fwad.unpack_dual(o).tangent is None for o in floats):
                named.append(op._schema.name)
    return named


def run_recording_ops(fn: Callable, inputs: Mapping[str, object], wrt: list[str], via: str, **kw):
    """``(run_autograd's result, the custom ops torch drops the tangent through)`` for a forward-mode
    run; where the recording breaks the run, it runs again without (Note [A tangent torch drops])."""
    record = recording_ops()
    try:
        return run_autograd(fn, inputs, wrt, via, **kw, record=record), tangent_dropping_ops(record.calls)
    except Exception:  # noqa: BLE001 - its own error, if any, comes from the plain run
        return run_autograd(fn, inputs, wrt, via, **kw), []


def first_forward_mode(run: Callable, meta: dict, absent: tuple = (NotImplementedError,)):
    """``(how, run(how))`` for the first of torch.func.jvp and dual tensors that runs, or None with
    ``meta["jvp"]`` saying why neither did: the default check's forward mode, not asked for (Note [A
    jvp that raises] in graph/check.py).  A custom Function's jvp failing in its own code raises;
    ``absent``: errors that say forward mode is not there (left out at once, with their text)."""
    failed = None
    for how in FORWARD_MODE_VIAS:
        try:
            return how, run(how)
        except AutogradFailed as err:  # e.g. a custom Function with no jvp
            if getattr(err, "in_user_jvp", False):
                raise jvp_raised(err, how) from err
            failed = failed or err
        except absent as err:
            meta["jvp"] = f"not checked ({_cut(str(err), 600)})"
            return None
    meta["jvp"] = not_run_note(failed)
    return None


def not_run_note(err: Exception) -> str:
    """The report's line for forward mode that could not run (Note [A jvp that raises])."""
    return f"not checked (torch's forward mode could not run: {_cut(str(err), 400)})"


def _cut(text: str, width: int) -> str:
    """``text``, or its first ``width`` characters cut at a word, for the report's forward-mode line."""
    return text if len(text) < width else text[:width].rsplit(" ", 1)[0] + " ..."


def dropped_reason(names: list[str]) -> str:
    """Why torch's tangent is wrong through the ops ``names`` (Note [A tangent torch drops])."""
    return (f"torch's forward mode drops the tangent through {', '.join(names)}: a torch.library custom op has no "
            "forward-mode rule (register_autograd gives reverse mode only), and torch runs it under forward mode "
            "as if no tangent reached it, so a jvp through it comes back as zero there without an error")
