"""The tensor back end's references: a differentiated tensor's values, rounding bound and kink band,
stacked the way autograd returns them (stage "compare"; used by check.py and order2.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..compare.kinks import stack_generators
from ..reference import Reference
from .approx import Approx

__all__ = ["JACOBIAN_VIAS", "reference", "approx_reference", "State"]

JACOBIAN_VIAS = ("functional.jacobian", "jacrev", "jacfwd", "onehot-vjp")


def reference(name: str, grads: list, shape: tuple, out_shape: tuple, how: str, scale: float, failed: list,
               generators: list | None = None, text: str = "reverse mode over the op graph") -> Reference:
    """One reference per differentiated tensor: its gradient, or its products stacked (random
    cotangents: ``(k, *shape)``; a Jacobian: ``(*out_shape, *shape)``)."""
    def field(g, attr):
        if g is None:
            return np.zeros(shape)
        t = getattr(g, attr)
        return np.zeros(shape) if t is None else np.broadcast_to(t, g.shape).reshape(shape)

    if how in JACOBIAN_VIAS:
        full = out_shape + shape
    elif how == "random-vjp":
        full = (len(grads),) + shape
    else:
        full = shape

    def stacked(attr):
        t = field(grads[0], attr).reshape(full) if len(grads) == 1 else np.stack([field(g, attr) for g in grads]).reshape(full)
        return t if scale == 1 else scale * t

    v, e = stacked("v"), stacked("e")
    banded = any(g is not None and g.lo is not None for g in grads)
    lo, hi = (stacked("lo"), stacked("hi")) if banded else (0.0, 0.0)  # unbanded: no kink, no band
    if all(g is None for g in grads):
        uses = str(text).split("   (δ")[0] if text and "δ[" in str(text) else None
        text = "0 (no path from it to the output)" if uses is None else (
            f"0 (its uses, {uses}, pass a step function (round, floor, sign, a comparison) or a detach, whose "
            "derivative is 0; a straight-through estimator is checked with symbolic= its surrogate, e.g. "
            "x + (torch.round(x) - x).detach())")
    ref = Reference(name, v, text, rounding=e, verified=not failed, value_eps=2.0**-52)
    if failed:
        from .crosscheck import _linear

        which = ("adjoint cross-check (Note [Adjoint cross-check])" if all(_linear(n) for n in failed) else
                 "cross-check (Note [Adjoint cross-check], Note [Node cross-check])")
        ref.note = ("the tensor rule of " + ", ".join(f"{n.kind} node {n.name or n.origin}" for n in failed[:3])
                    + f" failed its {which}: no verdict can be trusted")
    gens = stack_generators([[scale * g.reshape(full) for g in group] for group in generators or []], full)
    if gens is not None:  # Note [Kink units]: the entrywise band spans every unit's sides, and more
        lo = lo - np.sum(np.minimum(gens.min(axis=1), 0.0), axis=0)
        hi = hi + np.sum(np.maximum(gens.max(axis=1), 0.0), axis=0)
        ref.kink_generators = gens
    if np.any(lo) or np.any(hi):
        ref.lower, ref.upper, ref.kink = v - lo, v + hi, (lo + hi) > 0
    return ref


@dataclass
class State:
    """A graph check's state (graph/check.py): its graph and forward values, output node, context,
    failed cross-checks, the torch function and leaves, differentiated names, dtype, tolerances."""

    graph: object
    values: dict
    out: object
    ctx: object
    failed: list
    torch_fn: object
    leaves: dict
    wrt: list
    dtype: str
    rtol: float | None
    atol: float | None
    forward_spread: object = None  # LAMBDA sigma of the forward output (Note [Statistical forward])


def approx_reference(name: str, a: Approx, text: str, failed: list) -> Reference:
    ref = Reference(name, a.v, text, rounding=np.broadcast_to(a.e, a.shape), verified=not failed, value_eps=2.0**-52)
    if a.banded:
        ref.lower, ref.upper, ref.kink = a.v - a.lo, a.v + a.hi, a.band() > 0
    return ref
