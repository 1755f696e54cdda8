"""The user's forward, run once, with grad recording on.

``grad_enabled`` makes ``check()`` work inside ``torch.no_grad()``; ``forward_once`` runs the torch
function once on the leaves and hands that same recorded output to autograd's ``backward`` /
``autograd.grad`` runner, so a check runs the user's forward once for the value and the derivative
together (README: "How often your function runs").
"""

from __future__ import annotations

from ..errors import InputError, SymgradError

__all__ = ["grad_enabled", "forward_once"]


def grad_enabled(fn):
    """Run ``fn`` with torch's grad mode on: a ``check()`` inside ``torch.no_grad()`` (or
    ``inference_mode``-free eval code) still records the graph autograd differentiates."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        with torch.enable_grad():
            return fn(*args, **kwargs)

    return wrapper


def forward_once(torch_fn, leaves: dict):
    """``(output, fn)``: the torch function run once on ``leaves`` with grad recording, and a stand-in
    for it that hands autograd's ``backward`` / ``autograd.grad`` runner this very output (once, when
    called on the same leaves), so that a check runs the user's forward once for the value and the
    derivative together.  Other vias call it on their own tensors and get real calls.  Where the
    recorded forward raises (an in-place op on a leaf), the value comes from a no-grad run and
    autograd's runner reports the error as before."""
    import torch

    try:
        out = torch_fn(*leaves.values())
    except Exception:  # noqa: BLE001 - reported by run_autograd, with its hints
        with torch.no_grad():
            try:
                return torch_fn(*(t.detach() for t in leaves.values())), torch_fn
            except SymgradError:
                raise
            except (RuntimeError, ValueError, TypeError, IndexError) as err:  # it cannot run at all here
                raise InputError(f"the function raised on these inputs ({type(err).__name__}: {str(err)[:300]}); "
                                 "symgrad checks derivatives where the forward runs: pass inputs it accepts") from err
    if not isinstance(out, torch.Tensor):
        return out, torch_fn
    unused = [True]

    def fn(*args):
        if unused[0] and len(args) == len(leaves) and all(a is b for a, b in zip(args, leaves.values())):
            unused[0] = False
            return out
        return torch_fn(*args)

    return out.detach(), fn
