"""Random compositions of supported ops, for the property test and the false-alarm script.

``random_program(draw)`` builds ``f(x) = sum(w * g_k(... g_1(x)))`` from the unary and row-wise ops
below, each applied where its derivative is well defined and not saturated (so a relative bug in
the backward is visible in every dtype).  ``scaled(fn, factor)`` is the same function as a custom
``autograd.Function`` whose backward is torch's own gradient times ``factor``: a seeded bug.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["UNARY", "ROWWISE", "OPS_FOR_SCRIPTS", "compose", "scaled", "with_backward", "with_jvp", "custom", "vjp",
           "wrong_second"]

# name -> (torch function, safe input transform that keeps the op inside its well-conditioned domain)
UNARY = {
    "tanh": (torch.tanh, lambda x: x.clamp(-2, 2)),
    "sigmoid": (torch.sigmoid, lambda x: x.clamp(-4, 4)),
    "exp": (torch.exp, lambda x: x.clamp(-3, 3)),
    "log": (torch.log, lambda x: x.abs() + 0.5),
    "sin": (torch.sin, lambda x: x),
    "cos": (torch.cos, lambda x: x),
    "gelu": (F.gelu, lambda x: x.clamp(-3, 3)),
    "silu": (F.silu, lambda x: x.clamp(-4, 4)),
    "softplus": (F.softplus, lambda x: x.clamp(-4, 4)),
    "elu": (F.elu, lambda x: x.clamp(-3, 3)),
    "square": (torch.square, lambda x: x),
    "sqrt": (torch.sqrt, lambda x: x.abs() + 0.5),
    "reciprocal": (torch.reciprocal, lambda x: x.abs() + 0.5),
    "erf": (torch.erf, lambda x: x.clamp(-2, 2)),
    "atan": (torch.atan, lambda x: x),
    "log1p": (torch.log1p, lambda x: x.abs()),
}
ROWWISE = {
    "softmax": lambda x: torch.softmax(x, -1),
    "log_softmax": lambda x: torch.log_softmax(x, -1),
    "layer_norm": lambda x: F.layer_norm(x, x.shape[-1:]),
    "normalize": lambda x: F.normalize(x, dim=-1),
    "logsumexp": lambda x: torch.logsumexp(x, -1, keepdim=True).expand_as(x) + x,
    "cumsum": lambda x: torch.cumsum(x, -1),
    "matmul": lambda x: x @ torch.linspace(-1, 1, x.shape[-1] ** 2, dtype=x.dtype).reshape(x.shape[-1], -1),
}

OPS_FOR_SCRIPTS = sorted(UNARY) + sorted(ROWWISE)


def compose(names: list[str], weights: torch.Tensor):
    """``x -> sum(weights * op_k(... op_1(x)))`` (a random cotangent, so a backward that ignores
    ``grad_output`` is visible too)."""

    def chain(x):
        for name in names:
            if name in UNARY:
                fn, domain = UNARY[name]
                x = fn(domain(x))
            else:
                x = ROWWISE[name](x)
        return x

    def fn(x):
        return (weights * chain(x)).sum()

    fn.chain = chain
    return fn


def with_backward(fn, backward):
    """``fn`` as a custom ``autograd.Function`` whose backward is ``backward(x, g)``: the code under
    test of a seeded bug (the forward is torch's own).  One input: ``custom``'s case."""
    return custom(fn, backward)


def custom(forward, backward):
    """``forward`` as a custom Function of any number of tensors whose backward is
    ``backward(*saved inputs, grad_output)``."""

    class Seeded(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *xs):
            ctx.save_for_backward(*xs)
            return forward(*xs)

        @staticmethod
        def backward(ctx, g):
            return backward(*ctx.saved_tensors, g)

    return Seeded.apply


def with_jvp(fn, backward, jvp=None, vmap: bool = False):
    """``fn`` of one tensor as a setup_context-style Function (what torch.func and forward-mode AD
    need) whose backward is ``backward(x, g)`` and, when given, whose jvp is ``jvp(x, t)``;
    ``vmap``: torch generates its vmap rule (``jacfwd``/``jacrev`` over it)."""

    class Seeded(torch.autograd.Function):
        generate_vmap_rule = vmap

        @staticmethod
        def forward(x):
            return fn(x)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])
            ctx.x = inputs[0]

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return backward(x, g)

    if jvp is not None:
        Seeded.jvp = staticmethod(lambda ctx, t: jvp(ctx.x, t))
    return Seeded.apply


def vjp(fn, x, g):
    """torch's own vector-Jacobian product of ``fn`` at ``x`` with cotangent ``g``."""
    with torch.enable_grad():
        xx = x.detach().requires_grad_()
        (out,) = torch.autograd.grad(fn(xx), xx, g)
    return out


def scaled(fn, factor: float):
    """``fn`` whose backward is torch's own gradient times ``factor`` (a seeded bug)."""
    return with_backward(fn, lambda x, g: vjp(fn, x, g) * factor)


def wrong_second(fn, rel: float):
    """``fn`` as a custom ``autograd.Function`` whose backward is torch's own gradient, right in value,
    but differentiable with a slope ``1 + rel`` times the true one: its double backward is off by
    ``1 + rel`` (the inputs enter the recomputed gradient as ``x + rel (x - x.detach())``), so only
    ``order=2`` can see the seeded bug."""

    class WrongSecond(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *xs):
            ctx.save_for_backward(*xs)
            return fn(*xs)

        @staticmethod
        def backward(ctx, g):
            xs = ctx.saved_tensors
            with torch.enable_grad():
                moved = [x + rel * (x - x.detach()) if need else x.detach()
                         for x, need in zip(xs, ctx.needs_input_grad)]
                # a graph from the moved copies; each is itself connected to x when x requires grad
                leaves = [m if m.requires_grad else m.requires_grad_(bool(need))
                          for m, need in zip(moved, ctx.needs_input_grad)]
                diff = [m for m, need in zip(leaves, ctx.needs_input_grad) if need]
                grads = iter(torch.autograd.grad(fn(*leaves), diff, g, create_graph=True, allow_unused=True))
            return tuple(next(grads) if need else None for need in ctx.needs_input_grad)

    return WrongSecond.apply
