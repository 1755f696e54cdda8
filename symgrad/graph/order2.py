"""``order=2`` on the tensor back end: torch's double backward against the op graph's exact
Hessian-vector products (Note [Hessian-vector rules] in ``hvp.py``, Note [Double backward] in
``symgrad/autograd/run.py``)."""

from __future__ import annotations

import dataclasses

from typing import Mapping

import numpy as np

from ..compare.compare import compare_all
from ..errors import InputError, ShapeMismatch
from ..progress import stage
from .approx import Approx
from .hvp import hvp
from .rerun_scale import scale_products

__all__ = ["TORCH_DIFFERS", "ORDER2_VIAS", "hvp_records", "directions_and_cotangent", "check_order",
           "bound_structural_zeros"]

# torch's double backward deliberately differs from the exact second derivative here (a documented
# constant in its source, not a rounding error): the check must FAIL these, and does
TORCH_DIFFERS = {
    "binary_cross_entropy": "torch's double backward divides by (p + 1e-12)^2 (1 - p + 1e-12)^2 "
                            "(binary_cross_entropy_double_backward): about 1e-11 relative off",
    "binary_cross_entropy weight": "as binary_cross_entropy",
}

# order=2 runs torch.autograd.grad twice (the first with create_graph=True), whatever via names
ORDER2_VIAS = (None, "autograd.grad", "backward")
DOUBLE_BACKWARD = "double backward (autograd.grad with create_graph=True, then autograd.grad)"


def check_order(order, via) -> None:
    if order not in (1, 2) or isinstance(order, bool):
        raise InputError(f"order must be 1 (first derivatives) or 2 (double backward, Hessian-vector products), "
                         f"not {order!r}")
    if order == 2 and via not in ORDER2_VIAS:
        raise InputError(f"order=2 checks torch's double backward (autograd.grad twice, the first with "
                         f"create_graph=True), so via={via!r} does not apply: leave via out, or check the full "
                         "Hessian with via='functional.hessian' (order=1)")


def directions_and_cotangent(out_t, leaves: Mapping, wrt: list, v, tangents, count, seed: int):
    """(cotangent v or None for a scalar output, [{name: w}] directions): the given ``v`` / ``tangents``
    (one direction ``w`` per input in ``wrt``), else seeded random ones (``count`` directions)."""
    import torch

    gen = torch.Generator().manual_seed(seed + 7)
    if v is not None:
        v = torch.as_tensor(v, dtype=out_t.dtype)
        if tuple(v.shape) != tuple(out_t.shape):
            raise ShapeMismatch(f"v has shape {tuple(v.shape)}, the output has {tuple(out_t.shape)}")
    elif out_t.numel() != 1:
        v = torch.randn(out_t.shape, generator=gen, dtype=torch.float64).to(out_t.dtype)
    if tangents is not None:
        if isinstance(tangents, torch.Tensor) and len(wrt) == 1:
            tangents = {wrt[0]: tangents}
        if not isinstance(tangents, Mapping) or set(tangents) != set(wrt):
            raise InputError(f"with order=2, tangents= is the direction w of the second derivative (H w): "
                             f"one tensor per input in wrt ({', '.join(wrt)}), each of that input's shape")
        one = {}
        for n in wrt:
            t = torch.as_tensor(tangents[n], dtype=leaves[n].dtype)
            if tuple(t.shape) != tuple(leaves[n].shape):
                raise ShapeMismatch(f"direction for {n!r} has shape {tuple(t.shape)}, the input has "
                                    f"{tuple(leaves[n].shape)}")
            one[n] = t
        return v, [one]
    if not isinstance(count, int) or count < 1:
        raise InputError(f"cotangents (the number of random directions w) must be a positive integer, not {count!r}")
    dirs = [{n: torch.randn(leaves[n].shape, generator=gen, dtype=torch.float64).to(leaves[n].dtype) for n in wrt}
            for _ in range(count)]
    return v, dirs


def hvp_records(st, out_t, *, v=None, tangents=None, count: int = 3, seed: int = 0) -> tuple[list, dict]:
    """Records of torch's double backward against forward-over-reverse over the graph, one per input
    in ``wrt`` (the products stacked over the directions), and the report's meta entries."""
    from ..autograd.run import run_double_backward
    from .refs import reference as _reference

    given_v = v is not None
    v, dirs = directions_and_cotangent(out_t, st.leaves, st.wrt, v, tangents, count, seed)
    seed_v = np.ones(tuple(out_t.shape)) if v is None else v.detach().double().cpu().numpy()
    stage(f"op graph: {len(dirs)} Hessian-vector product(s) and torch's double backward")
    extras: dict = {}
    actual, note = run_double_backward(st.torch_fn, st.leaves, st.wrt, v, dirs, extras)
    nodes = [st.graph.inputs.get(n) for n in st.wrt]
    live = [n for n in nodes if n is not None]
    tangents_at = [{st.graph.inputs[n]: Approx(d[n].detach().double().cpu().numpy()) for n in st.wrt
                    if n in st.graph.inputs} for d in dirs]

    def products(values) -> list:
        per_dir = [hvp(st.graph, values, st.out, Approx(seed_v), ts, live, st.ctx) for ts in tangents_at]
        return [_reference(n, [None if node is None else h[node] for h in per_dir], tuple(st.leaves[n].shape),
                           tuple(out_t.shape), "random-vjp", 1, st.failed, None,
                           "forward over reverse over the op graph (Hessian-vector product)")
                for n, node in zip(st.wrt, nodes)]

    refs = products(st.values)
    records = compare_all(refs, actual, st.dtype, quantity="hvp", rtol=st.rtol, atol=st.atol)
    kept = [(rec, np.asarray(ref.value, np.float64)) for rec, ref in zip(records, refs) if ref.rounding is not None]
    scale_products(st, [rec for rec, _ in kept], [b for _, b in kept],  # Note [Scale of every product]
                   lambda values: [np.asarray(r.value, np.float64) for r in products(values) if r.rounding is not None],
                   len(dirs))
    records += _first_order_records(st, out_t, seed_v, tangents_at, extras, v is None)
    annotate(records, note)
    what = "given direction w" if tangents is not None else f"{len(dirs)} random directions w"
    cot = "v = 1 (scalar output)" if v is None else ("the given cotangent v" if given_v else "a random cotangent v")
    return records, {"quantity": f"hvp: w^T d2<v, f>/dx2 ({what}, {cot}), with the first backward under create_graph=True "
                     "and its derivative in v (J w)", "via": DOUBLE_BACKWARD}


def _first_order_records(st, out_t, seed_v, tangents_at: list, extras: dict, scalar: bool) -> list:
    """The first backward run with create_graph=True against the exact gradient, and its derivative
    in the cotangent against the exact J w (Note [Double backward] in symgrad/autograd/run.py)."""
    from .cones import tangent_bands
    from .engine import tangent
    from .forward_records import stack_tangents
    from .kinkunits import sweep_references
    from .refs import approx_reference

    nodes = [st.graph.inputs.get(n) for n in st.wrt]
    live = [n for n in nodes if n is not None]
    # the same references a first-order check builds: kinks, ties and cone points (a norm at 0) included
    refs = sweep_references(st, [seed_v], live, nodes, "autograd.grad", tuple(out_t.shape), 1, flip=False)[0]
    quantity = "grad (create_graph)" if scalar else "vjp (create_graph)"
    records = compare_all(refs, extras["grad"], st.dtype, quantity=quantity, rtol=st.rtol, atol=st.atol)
    # J w is the transpose of the backward's map: the stops that hold for reverse mode hold here too
    # (an embedding's padding row, read through a reverse-only stop, passes nothing back)
    ctx = dataclasses.replace(st.ctx, backward_graph=True)
    try:
        ours = [tangent(st.graph, st.values, ts, st.out, ctx) for ts in tangents_at]
    except NotImplementedError:  # a node without a forward-mode rule: the cotangent's row is left out
        return records
    ref = approx_reference("grad_output", stack_tangents(ours, st.values[st.out].shape), "forward mode over the op graph: the derivative of the backward "
                           "in its cotangent, J w", st.failed)
    shape = np.shape(ref.value)

    def at(values):  # the tangents at moved inputs (Note [Cone points]), stacked as the reference
        got = [tangent(st.graph, values, ts, st.out, ctx) for ts in tangents_at]
        return ([np.stack([np.zeros(st.values[st.out].shape) if t is None else np.broadcast_to(t.v, t.shape)
                           for t in got]).reshape(shape)],
                [np.stack([np.zeros(st.values[st.out].shape) if t is None else np.broadcast_to(t.e, t.shape)
                           for t in got]).reshape(shape)])

    tangent_bands(dataclasses.replace(st, ctx=ctx), [ref], at, [{n: a.v for n, a in ts.items()} for ts in tangents_at])
    return records + compare_all([ref], {"grad_output": extras["jw"]}, st.dtype, quantity="jvp",
                                 rtol=st.rtol, atol=st.atol)


def annotate(records: list, note: str) -> None:
    """The not-differentiable note on every failing record (Note [Double backward])."""
    if not note:
        return
    for rec in records:
        if not rec.passed:
            rec.note = (rec.note + " " if rec.note else "") + note


def bound_structural_zeros(graph, refs: list, firsts: list, jw_ref, seed_v, dirs: list, wrt: list, dtype: str) -> None:
    """The exploded check's structural zeros at order 2 (entries of ``H w``, of the first gradient and
    of ``J w`` that its closed form cancels to 0) get the op graph's bound of what torch sums there:
    0 where torch's code sums nothing (an input entering linearly, a separable function's cross
    terms), the size of the terms where it sums a cancelling shift (Note [Allowances of other
    entries] in compare/compare.py).  Where a rule is missing the share of the check's largest
    derivative stands.  ``seed_v``: the output's cotangent (None: a scalar output's 1)."""
    from ..errors import UnsupportedOp
    from .engine import backward, forward, tangent
    from .twin import graph_ctx, graph_output

    out = graph_output(graph)
    if out is None or (seed_v is not None and tuple(out.shape) != tuple(np.shape(seed_v))):
        return
    seed_v = np.ones(tuple(out.shape)) if seed_v is None else seed_v
    ctx = graph_ctx(dtype)
    nodes = [graph.inputs.get(n) for n in wrt]
    live = [n for n in nodes if n is not None]
    moves = [{graph.inputs[n]: Approx(d[n].detach().double().cpu().numpy()) for n in wrt if n in graph.inputs}
             for d in dirs]
    try:
        values = forward(graph, ctx)
        per_dir = [hvp(graph, values, out, Approx(seed_v), m, live, ctx) for m in moves]
        grads = backward(graph, values, {out: Approx(seed_v)}, live, ctx)
        jws = [tangent(graph, values, m, out, dataclasses.replace(ctx, backward_graph=True)) for m in moves]
    except (NotImplementedError, ValueError, ArithmeticError, UnsupportedOp):
        return
    for ref, node in zip(refs, nodes):
        _structural_bound(ref, [None if node is None else h.get(node) for h in per_dir])
    for ref, node in zip(firsts, nodes):
        _structural_bound(ref, [None if node is None else grads.get(node)])
    _structural_bound(jw_ref, jws)


def _structural_bound(ref, approxes: list) -> None:
    """``twin.bound_zeros`` with the op graph's bounds ``approxes`` (one per direction, stacked as the
    reference is; ``None``: torch sums nothing there)."""
    from .twin import bound_zeros, exact_zeros

    if ref.structural_zero is None and not exact_zeros(ref).any():
        return
    shape = np.shape(ref.value)
    parts = [np.zeros(shape[1:] if len(approxes) > 1 else shape) if a is None or a.e is None
             else np.broadcast_to(a.e, a.shape) for a in approxes]
    bound_zeros(ref, np.stack(parts) if len(approxes) > 1 else parts[0])
