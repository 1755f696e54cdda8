"""What a check does around the function under test: a structured output flattened into one tensor
(Note [Structured outputs]), a module's buffers saved and put back."""

from __future__ import annotations

from ..errors import InputError
from ..validate import refuse_non_tensor_value

__all__ = ["flatten_output", "buffers", "restore"]


# Note [Structured outputs]
# ~~~~~~~~~~~~~~~~~~~~~~~~~
# A model returning a tuple, list or dict of tensors (nn.LSTM's (out, (h, c)), a detection head's
# {"logits": ..., "boxes": ...}) has one Jacobian per output; a vector-Jacobian product with random
# cotangents on every output is the same as one with a random cotangent on the concatenation of
# their flattened entries.  So the function under test and its traced twin both return that
# concatenation (floating-point tensors only, in the order a depth-first walk meets them: tuple and
# list order, dict insertion order); integer outputs (topk's indices) and non-tensors carry no
# derivative and are left out.  The report's meta says which tensors, in which order.


def flatten_output(out):
    """(tensor, shapes): ``out`` itself and None when it is a tensor; else the concatenation of its
    floating-point tensors' flattened entries and their shapes (Note [Structured outputs])."""
    import torch

    if isinstance(out, torch.Tensor):
        return out, None
    parts: list = []

    def walk(o):
        if isinstance(o, torch.Tensor):
            if o.is_floating_point() or o.is_complex():
                parts.append(o)
        elif isinstance(o, dict):
            for value in o.values():
                walk(value)
        elif isinstance(o, (tuple, list)):
            for value in o:
                walk(value)

    walk(out)
    if not isinstance(out, (tuple, list, dict)):
        refuse_non_tensor_value(out, "the function")  # None, a string, a number: say what to return
    if not parts:
        raise InputError(f"the function returned a {type(out).__name__} with no floating-point tensor in it, so "
                         "there is no derivative to check: return a tensor (or a tuple / dict of tensors), or "
                         "pass loss= to reduce the output to a scalar")
    return torch.cat([p.reshape(-1) for p in parts]), [tuple(p.shape) for p in parts]


def buffers(fn) -> dict:
    """A copy of a module's buffers: the check runs its forward several times, and a BatchNorm in
    training mode updates its running statistics on every call; they are put back afterwards."""
    import torch

    if not isinstance(fn, torch.nn.Module):
        return {}
    return {name: b.detach().clone() for name, b in fn.named_buffers()}


def restore(fn, saved: dict) -> None:
    import torch

    if not saved:
        return
    with torch.no_grad(), torch._C._DisableFuncTorch():  # also inside torch.func.jvp's transform
        for name, b in fn.named_buffers():
            if name in saved and b.shape == saved[name].shape and not torch.equal(b, saved[name]):
                b.copy_(saved[name])
