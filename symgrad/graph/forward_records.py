"""Forward mode over the op graph: JVP records and the Jacobian by columns (stage "compare";
graph/check.py's check state, Note [Jacobian by columns])."""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping

import numpy as np

from ..compare.compare import compare_all
from ..errors import InputError, ShapeMismatch
from ..progress import stage
from .approx import Approx
from .columns import by_columns
from .cones import basis, tangent_bands
from . import montecarlo
from .engine import tangent
from .forward_kinks import column_generators, forward_generators
from .pointwise_oracle import attach_tangent_oracle
from .refs import JACOBIAN_VIAS, State, approx_reference
from .rerun_scale import product_spread, scale_products
from .statistical import tighten

__all__ = ["TangentDropped", "jvp_records", "stack_tangents", "tangent_dict", "n_in", "by_columns_wanted", "column_records", "has_reverse_stops"]


class TangentDropped(Exception):
    """torch's forward mode drops the tangent through a custom op of the function (Note [A tangent
    torch drops] in autograd/forward_mode.py); ``str()`` says which and why."""


def _run_jvp(st: State, via: str, d: dict, record: bool = False):
    """torch's result (and, ``record``: the custom ops it drops the tangent through)."""
    import torch

    from ..autograd.forward_mode import run_recording_ops
    from ..autograd.run import run_autograd

    with torch.enable_grad():
        if record:
            return run_recording_ops(st.torch_fn, st.leaves, st.wrt, via, tangents=d)
        return run_autograd(st.torch_fn, st.leaves, st.wrt, via, tangents=d)


def jvp_records(st: State, directions: list, via: str, *, meta: dict | None = None) -> list:
    """One record of the output's tangents, stacked over ``directions`` ({name: tangent tensor}).
    Where torch drops the tangent through a custom op, ``TangentDropped`` is raised when no ``meta``
    is given (the default check's forward mode, not asked for), else the reason goes to ``meta["jvp"]``
    and torch's tangent is compared."""
    import torch

    from ..autograd.forward_mode import NO_TANGENT_REASON, dropped_reason, no_tangent

    got, ours, all_seeds = [], [], []
    st = _convention(st, via != "functional.jvp")
    for k, d in enumerate(directions):
        actual, dropped = _run_jvp(st, via, d, record=True) if k == 0 else (_run_jvp(st, via, d), [])
        if dropped or (k == 0 and no_tangent(actual["jvp"])):
            why = dropped_reason(dropped) if dropped else NO_TANGENT_REASON
            if meta is None:
                raise TangentDropped(why)
            meta["jvp"] = why
        got.append(actual["jvp"])
        seeds = {st.graph.inputs[n]: Approx(d[n].detach().double().cpu().numpy())
                 for n in st.wrt if n in st.graph.inputs}
        ours.append(tangent(st.graph, st.values, seeds, st.out, st.ctx))
        all_seeds.append(seeds)
    stacked = stack_tangents(ours, st.values[st.out].shape)
    ref = approx_reference("jvp", stacked if len(ours) > 1 else stacked.map(lambda t: t[0]),
                           "forward mode over the op graph", st.failed)
    if ref.kink is not None:  # Note [Forward kink units]
        ref.kink_generators = forward_generators(st, all_seeds, tuple(ref.value.shape))
    attach_tangent_oracle(st.graph, ref, st.out, directions, st.leaves)
    tangent_bands(st, [ref], lambda values: _tangents_at(st, values, directions, ref.value.shape),
                  [{n: a.v for n, a in seeds.items()} for seeds in all_seeds])
    base = np.asarray(ref.value, np.float64)
    compute = lambda values: _tangents_at(st, values, directions, base.shape)[0]  # noqa: E731
    _statistical_jvp(st, ref, compute)
    value = torch.stack(got) if len(got) > 1 else got[0]
    records = compare_all([ref], {"jvp": value}, st.dtype, quantity="jvp", rtol=st.rtol, atol=st.atol)
    scale_products(st, records, [base], compute, len(directions))  # Note [Scale of every product] in rerun_scale.py
    return records


# Note [Statistical tangents]
# The reverse sweeps' statistical allowance (Note [Statistical allowance] in montecarlo.py) did not
# reach forward mode: a float32 LayerNorm jvp that dropped eps (5e-6 relative, as its backward in
# Note [Float32's reruns at a hundredth]) passed on 9 of 10 seeds, each entry allowed about 200 times
# torch's error.  Where the same test finds the worst case coarse, the forward and tangent sweeps run
# SAMPLES more times with every rounding moved by its bound and a random sign, and each entry's
# allowance becomes the smaller of the worst case and LAMBDA standard deviations of those reruns.
# float32 and float64 only: half precision has the products' scale test (rerun_scale.py).
def _statistical_jvp(st: State, ref, compute) -> None:
    from ..compare.half import rounding_ulps

    if st.dtype not in ("float32", "float64") or ref.rounding is None or not montecarlo.wanted(st.graph, st.dtype, [ref]):
        return
    stage("op graph: random-rounding reruns of the tangents")
    sigma = product_spread(st, compute, [np.asarray(ref.value, np.float64)])[0]
    tighten(ref, montecarlo.LAMBDA * sigma / rounding_ulps(st.dtype))


def stack_tangents(ours: list, shape: tuple) -> Approx:
    """The output's tangents along several directions (None: zero) as one Approx, ``(k, *shape)``."""
    ours = [Approx(np.zeros(shape)) if t is None else t for t in ours]
    return Approx(*(np.stack([np.broadcast_to(f, t.shape) for f, t in zip(fields, ours)]) for fields in
                    ([t.v for t in ours], [t.e for t in ours], [t.sides()[0] for t in ours], [t.sides()[1] for t in ours])))


def _tangents_at(st: State, values: dict, directions: list, shape: tuple) -> tuple:
    """([tangents stacked like the jvp reference], [their bounds]) at the forward ``values``."""
    vs, es = [], []
    for d in directions:
        seeds = {st.graph.inputs[n]: Approx(d[n].detach().double().cpu().numpy()) for n in st.wrt if n in st.graph.inputs}
        t = tangent(st.graph, values, seeds, st.out, st.ctx)
        t = t if t is not None else Approx(np.zeros(values[st.out].shape))
        vs.append(t.v)
        es.append(np.broadcast_to(t.e, t.shape))
    return [np.stack(vs).reshape(shape)], [np.stack(es).reshape(shape)]


def _convention(st: State, forward_ad: bool) -> State:
    """``st`` with the stops of reverse mode alone (``no_grad`` regions, embedding's padding row)
    holding in the tangent sweeps unless torch runs forward-mode AD (Note [Grad mode inside forward])."""
    if st.ctx.backward_graph != (not forward_ad):
        st = replace(st, ctx=replace(st.ctx, backward_graph=not forward_ad))
    return st


def has_reverse_stops(graph) -> bool:
    return any(n.kind == "stop" and n.attrs.get("reverse_only") for n in graph.nodes)


def _hint(tangents, leaves, wrt) -> str:
    """Where the tangents fit inputs that wrt leaves out (a module's parameters are its default wrt),
    name the wrt= that checks them."""
    import torch

    given = {"?": tangents} if isinstance(tangents, torch.Tensor) else dict(tangents) if isinstance(tangents, Mapping) else {}
    fits = [n for n, leaf in leaves.items() if n not in wrt and leaf.is_floating_point() and any(
        tuple(getattr(t, "shape", ())) == tuple(leaf.shape) for t in given.values())]
    return f" (to push tangents into the inputs instead, pass wrt={fits!r})" if fits else ""


def tangent_dict(tangents, leaves, wrt) -> dict:
    import torch

    if isinstance(tangents, torch.Tensor) and len(wrt) == 1:
        tangents = {wrt[0]: tangents}
    if not isinstance(tangents, Mapping) or set(tangents) != set(wrt):  # a lone tensor for several names too
        raise InputError(f"tangents must map each of {wrt} to a tensor of its shape{_hint(tangents, leaves, wrt)}")
    out = {}
    for n in wrt:
        t = torch.as_tensor(tangents[n], dtype=leaves[n].dtype)
        if tuple(t.shape) != tuple(leaves[n].shape):
            raise ShapeMismatch(f"tangent for {n!r} has shape {tuple(t.shape)}, the input has {tuple(leaves[n].shape)}")
        out[n] = t
    return out


def n_in(st: State) -> int:
    return sum(st.leaves[n].numel() for n in st.wrt if n in st.graph.inputs)


def by_columns_wanted(st: State, out_t, via, cotangents) -> bool:
    """A full Jacobian with fewer differentiated input entries than output entries."""
    full = via in JACOBIAN_VIAS or (via is None and cotangents == "full")
    if via == "jacfwd" and n_in(st) > 0 and has_reverse_stops(st.graph):
        return True  # forward-mode AD passes them where the rows' reverse sweeps would stop
    return full and 0 < n_in(st) < out_t.numel()


def column_records(st: State, how: str, out_shape: tuple) -> list:
    """The Jacobian by forward-mode sweeps, one per input entry (Note [Jacobian by columns])."""
    import torch

    from ..autograd.run import run_autograd

    stage(f"op graph: {n_in(st)} forward-mode sweeps and torch autograd")
    st = _convention(st, how == "jacfwd")
    with torch.enable_grad():
        actual = run_autograd(st.torch_fn, st.leaves, st.wrt, how)
    nodes = {n: st.graph.inputs.get(n) for n in st.wrt}
    cols = by_columns(st.graph, st.values, st.out, st.ctx, nodes, {n: tuple(st.leaves[n].shape) for n in st.wrt},
                      out_shape)
    refs = [approx_reference(n, cols[n], "forward mode over the op graph, one input entry at a time", st.failed)
            for n in st.wrt]
    if any(r.kink is not None for r in refs):  # Note [Forward kink units]
        gens = column_generators(st, nodes, {n: tuple(st.leaves[n].shape) for n in st.wrt}, tuple(out_shape))
        for r in refs:
            r.kink_generators = None if gens is None else gens.get(r.name)

    def at(values):  # Note [Cone points]: the columns again at moved inputs
        moved = by_columns(st.graph, values, st.out, st.ctx, nodes, {n: tuple(st.leaves[n].shape) for n in st.wrt},
                           out_shape)
        return ([moved[n].v.reshape(r.value.shape) for n, r in zip(st.wrt, refs)],
                [np.broadcast_to(moved[n].e, moved[n].shape).reshape(r.value.shape) for n, r in zip(st.wrt, refs)])

    columns = basis({nodes[n]: tuple(st.leaves[n].shape) for n in st.wrt if nodes[n] is not None})
    tangent_bands(st, refs, at, columns)
    return compare_all(refs, actual, st.dtype, quantity="jacobian", rtol=st.rtol, atol=st.atol)
