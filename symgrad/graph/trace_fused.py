"""ATen ops whose backward is a fused formula, kept whole while tracing (Note [Fused backwards]).

# Note [Fused backwards]
# Functionalization runs a CompositeExplicitAutograd kernel's own ops (torch.func.functionalize has
# no rule of its own for it), so ``binary_cross_entropy_with_logits`` reached the trace as the ops
# of its C++ forward: a shift by max(-x, 0), two exps and a log.  Torch's backward of it is not the
# derivative of those ops but one fused formula, sigmoid(x) - t, with its own cancellation; the op
# graph must read the op itself (Note [BCE-with-logits as torch's kernel] in aten_ext.py).  While
# tracing, a TorchFunctionMode sends such a call to a ``symgrad::`` custom op of the same value,
# which the trace keeps opaque and a handler reads.
"""

from __future__ import annotations

from contextlib import contextmanager

__all__ = ["keeping_fused_ops"]

_OPS: dict = {}


def _custom_ops() -> dict:
    """The ``symgrad::`` ops (defined once per process): torch function -> custom op."""
    if _OPS:
        return _OPS
    import torch

    @torch.library.custom_op("symgrad::bce_with_logits", mutates_args=(),
                             schema="(Tensor x, Tensor t, Tensor? weight, Tensor? pos_weight, int reduction) -> Tensor")
    def bce_with_logits(x, t, weight, pos_weight, reduction):
        return torch.ops.aten.binary_cross_entropy_with_logits(x, t, weight, pos_weight, reduction).clone()

    @bce_with_logits.register_fake
    def _(x, t, weight, pos_weight, reduction):
        shape = torch.broadcast_shapes(x.shape, t.shape)
        return x.new_empty(shape if reduction == 0 else ())

    _OPS[torch.binary_cross_entropy_with_logits] = bce_with_logits
    return _OPS


def _reduction(size_average, reduce, reduction) -> int:
    from torch.nn import _reduction as red

    if size_average is not None or reduce is not None:
        return red.legacy_get_enum(size_average, reduce, emit_warning=False)
    return red.get_enum(reduction)


@contextmanager
def keeping_fused_ops():
    """While inside, calls of the ops of Note [Fused backwards] run as their ``symgrad::`` twins."""
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    ops = _custom_ops()

    class Keep(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is F.binary_cross_entropy_with_logits:
                given = dict(zip(("input", "target", "weight", "size_average", "reduce", "reduction", "pos_weight"),
                                 args), **kwargs)
                if tuple(given["target"].shape) == tuple(given["input"].shape):  # else torch's own error
                    return ops[torch.binary_cross_entropy_with_logits](
                        given["input"], given["target"], given.get("weight"), given.get("pos_weight"),
                        _reduction(given.get("size_average"), given.get("reduce"), given.get("reduction", "mean")))
            twin = ops.get(func)
            if twin is not None:
                given = dict(zip(("input", "target", "weight", "pos_weight", "reduction"), args), **kwargs)
                return twin(given["input"], given["target"], given.get("weight"), given.get("pos_weight"),
                            int(given.get("reduction", 1)))
            return func(*args, **kwargs)

    with Keep():
        yield
