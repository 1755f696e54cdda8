"""Exploded twins: torch code as one exact expression per output entry, read through the op graph.

# Note [Exploded twin]
The exploded engine (``symgrad.elementwise``: one exact expression per entry, differentiated by
symengine, with its accuracy oracle and joint kink check) reads torch code the way every other
route does: the forward is traced into core ATen ops (``trace.py``), read as an op graph
(``interpret.py``, where ops registered with ``symgrad.register`` come in), and exploded
(``explode.py``).  Every output entry becomes one exact expression over per-entry symbols of the
float leaves, named as ``symgrad.symbols`` names them (``x[0, 1]``, ``fc.weight[2, 0]``), so the
twin of a torch forward is an ordinary ``SymTensor`` in the check's own input symbols.  There is
no second importer: what the tensor back end reads, the exploded engine reads, with the same
definition of every op.

The trace runs at the values being checked, so value-dependent choices (a max pooling's
argmax, a detached value, a Python branch on a value) are those of that point, as torch's autograd
makes them.  ``import_fn`` has no values (its inputs are symbols): it traces at random values and
refuses a forward whose graph depends on them (a branch or integer data computed from values, Note
[Value-dependent branches] in interpret.py), since its twin would then hold only near an arbitrary
point.  A detached value is a constant of that point: softmax's shift by its detached maximum
cancels, ``x * x.detach()`` does not, so a twin holding one is compared with torch at a second
random point and refused where they differ.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from ..errors import InputError, UnsupportedOp

__all__ = ["exploded_output", "explode_torch", "graph_for_bounds", "widen_to_tensor_bounds", "bound_tangent_zeros",
           "widen_forward", "bound_zeros", "exact_zeros", "graph_ctx", "graph_output", "SymbolicTwin", "import_fn"]


def _graph_of(torch_fn: Callable, names: list, tensors: list, constants=()):
    from .interpret import to_graph
    from .trace import trace_callable

    roles = ["input" if t.is_floating_point() and n not in constants else "const" for n, t in zip(names, tensors)]

    def run(*flat):  # the leaves positionally, whatever torch_fn's signature (defaults, *args)
        return torch_fn(*flat)

    gm = trace_callable(run, tuple(tensors))
    return to_graph(gm, list(zip(names, roles, tensors)))


def _explode_output(graph, budget, n_wrt, n_diff, forward_ad=False):
    from ..symbolic.tensor import SymTensor
    from .explode import explode_nodes
    from .ir import Node

    outs = graph.outputs
    if len(outs) != 1 or not isinstance(outs[0], Node):
        what = "None" if outs == [None] else f"{len(outs)} values"
        raise InputError(f"the forward returned {what}, not one tensor: the exploded engine differentiates one tensor "
                         "output. Fix: return one tensor (for a tuple or dict, check a wrapper such as "
                         "lambda x: fn(x)[0]; for None, add the missing return), or use the op graph "
                         "(engine='graph'), which checks tuple and dict outputs")
    out = outs[0]
    n_diff = out.size if n_diff is None else n_diff  # None: every output entry is differentiated (a Jacobian)
    built, _ = explode_nodes(graph, out=out, n_wrt=n_wrt, n_diff=n_diff, budget=budget, forward_ad=forward_ad)
    return SymTensor(np.asarray(built[out], object).reshape(out.shape))


def explode_torch(torch_fn: Callable, leaves: Mapping, *, budget: int | None = None, n_wrt: int | None = None,
                  n_diff: int | None = 1, constants=(), forward_ad: bool = False) -> tuple:
    """``(exploded_output(...), the op graph it came from)``: the graph gives the tensor back end's
    rounding bounds for the same products (``widen_to_tensor_bounds``).  ``n_diff=None``: a Jacobian
    (every output entry differentiated), sized as such before anything is built.  ``forward_ad``: for
    torch's forward-mode AD (Note [Grad mode inside forward] in trace_grad.py)."""
    names = list(leaves)
    tensors = [leaves[n].detach() for n in names]
    graph = _graph_of(torch_fn, names, tensors, constants)
    return _explode_output(graph, budget, n_wrt, n_diff, forward_ad), graph


def exploded_output(torch_fn: Callable, leaves: Mapping, *, budget: int | None = None, n_wrt: int | None = None,
                    n_diff: int | None = 1, constants=()):
    """``torch_fn(*leaves.values())`` as a ``SymTensor`` (Note [Exploded twin]): each output entry's exact
    expression over the symbols of the float leaves, named after ``leaves``' keys (those named in
    ``constants`` are data: their values, not symbols).  ``budget``,
    ``n_wrt`` and ``n_diff`` size the explosion before it is built (Note [Memory guard])."""
    return explode_torch(torch_fn, leaves, budget=budget, n_wrt=n_wrt, n_diff=n_diff, constants=constants)[0]


# Note [Bounds of two evaluation orders]
# An exploded entry is the derivative simplified: symengine folds ``1 - (1 - tanh(x)**2)`` (what
# autograd computes for tanhshrink) into ``tanh(x)**2``, and exact constants into one (attention's
# ``q * s`` and ``k * s`` into ``s**2 * q * k``).  The closed form's rounding bound follows the
# simplified expression, so it misses roundings torch's evaluation makes: torch's own tanhshrink
# failed in float64, 114 ulps where 19 were allowed.  The tensor back end's bound follows the graph's
# nodes, as autograd does.  Each bounds a legitimate evaluation order of the same derivative, so an
# entry's rounding allowance is the larger of the two (``widen_to_tensor_bounds``).


def graph_for_bounds(torch_fn: Callable, leaves: Mapping):
    """The op graph of torch code whose forward also ran on symbolic tensors (operators, ``F.tanhshrink``),
    for its tensor bounds; None where it cannot be traced (the closed form's bound then stands alone)."""
    from ..errors import SymgradError

    try:
        return _graph_of(torch_fn, list(leaves), [leaves[n].detach() for n in leaves])
    except (SymgradError, RuntimeError, TypeError, ValueError):
        return None


def exact_zeros(ref) -> np.ndarray:
    """Entries the closed form evaluates to exactly 0 with no rounding (a tangent or direction of 0
    on every input it keeps), where torch may still sum what the other inputs send."""
    if ref.rounding is None:
        return np.zeros(np.shape(ref.value), bool)
    return (np.asarray(ref.value) == 0) & (np.asarray(ref.rounding) == 0)


def bound_zeros(ref, bound, exact: bool = True) -> None:
    """The op graph's bound ``bound`` (shaped as ``ref``) where the closed form has none of torch's
    terms (Note [Allowances of other entries] in compare/compare.py): its structural zeros'
    ``structural_bound`` (NaN: no cap) and, with ``exact``, its exact zeros' rounding."""
    bound = np.asarray(bound, np.float64).reshape(np.shape(ref.value))
    if ref.structural_zero is not None:
        zero = np.asarray(ref.structural_zero, bool).reshape(bound.shape)
        ref.structural_bound = np.where(zero, np.where(np.isnan(bound), np.inf, bound), 0.0)
    if exact:
        hit = exact_zeros(ref) & np.isfinite(bound)
        if hit.any():
            ref.rounding = np.where(hit, bound, ref.rounding)


def graph_ctx(dtype: str):
    """The scalar evaluator's context for a check in ``dtype``."""
    from ..compare.compare import EPS
    from .scalar import Ctx

    return Ctx(EPS.get(dtype, 2.0**-52), dtype)


def graph_output(graph):
    """The graph's first output node, or None."""
    return next((o for o in graph.outputs if o is not None), None)


def widen_to_tensor_bounds(graph, out, refs, out_ref, seeds, how, wrt_names, dtype: str, scale,
                           zeros_only: bool = False) -> None:
    """Each entry's rounding allowance: the larger of the closed form's bound and the tensor back
    end's for the same product (Note [Bounds of two evaluation orders]).  A NaN bound (a masked
    score's ``-inf`` times a zero in the bound's propagation) gives way to the other.  The entries
    the closed form cancels to 0 get the tensor bound as their structural one (``zeros_only``: those
    alone)."""
    from .approx import Approx
    from .engine import backward, forward
    from .refs import reference

    ctx = graph_ctx(dtype)
    try:
        values = forward(graph, ctx)
        nodes = [graph.inputs.get(n) for n in wrt_names]
        live = [n for n in nodes if n is not None]
        per_seed = [backward(graph, values, {out: Approx(s)}, live, ctx) for s in seeds]
    except (NotImplementedError, ValueError, ArithmeticError):  # a rule the tensor back end lacks: its own bound
        return
    if not zeros_only:
        out_ref.rounding = np.fmax(out_ref.rounding, np.broadcast_to(values[out].e, out.shape))
    for ref, name, node in zip(refs, wrt_names, nodes):
        grads = [None if node is None else g[node] for g in per_seed]
        tensor = reference(name, grads, node.shape if node is not None else np.shape(ref.value), out.shape, how,
                           scale, []).rounding
        tensor = np.broadcast_to(tensor, np.shape(ref.value))
        if ref.structural_zero is not None:  # Note [Allowances of other entries] in compare/compare.py
            bound_zeros(ref, tensor, exact=False)
            tensor = np.where(np.asarray(ref.structural_zero, bool).reshape(tensor.shape), 0.0, tensor)
        if not zeros_only:
            ref.rounding = np.fmax(ref.rounding, tensor)  # NaN: the other


def widen_forward(graph, out_ref, dtype: str) -> bool:
    """``out_ref``'s rounding: the larger of its own and the op graph's forward bound (Note [Bounds of
    two evaluation orders]).  Whether it could be computed."""
    from .engine import forward

    out = graph_output(graph)
    if out is None or out_ref.rounding is None or int(np.prod(out.shape, dtype=np.int64)) != np.size(out_ref.value):
        return False
    try:
        values = forward(graph, graph_ctx(dtype))
    except (NotImplementedError, ValueError, ArithmeticError, UnsupportedOp):
        return False
    bound = np.broadcast_to(values[out].e, out.shape).reshape(np.shape(out_ref.value))
    out_ref.rounding = np.fmax(np.asarray(out_ref.rounding, np.float64), bound)
    return True


def bound_tangent_zeros(graph, ref, tangents: Mapping, dtype: str, widen: bool = False) -> None:
    """Forward mode: the entries of the jvp reference ``ref`` that its closed form cancels to 0, or
    evaluates to an exact 0, get the bound of the op graph's tangent along ``tangents`` (input name ->
    tensor) there, what torch sums (Note [Allowances of other entries] in compare/compare.py); with
    ``widen``, every entry's rounding is the larger of the two bounds (Note [Bounds of two evaluation
    orders]: torch's tanhshrink jvp ``t - t (1 - tanh(x)**2)`` against the closed form's ``tanh(x)**2 t``)."""
    from .approx import Approx
    from .engine import forward, tangent

    out = graph_output(graph)
    if out is None or int(np.prod(out.shape, dtype=np.int64)) != np.size(ref.value):
        return
    ctx = graph_ctx(dtype)
    moves = {graph.inputs[n]: Approx(t.detach().double().cpu().numpy()) for n, t in tangents.items()
             if n in graph.inputs}
    try:
        got = tangent(graph, forward(graph, ctx), moves, out, ctx)
    except (NotImplementedError, ValueError, ArithmeticError, UnsupportedOp):  # the share stands
        return
    # an exact 0 the twin gets from zero tangents (a twin leaving out a softmax's shift, the shift's
    # tangent alone nonzero): torch sums the shift's tangent there, and is allowed its bound
    bound = np.zeros(np.shape(ref.value)) if got is None else np.broadcast_to(got.e, got.shape)
    bound_zeros(ref, bound)
    if widen and got is not None and ref.rounding is not None:  # Note [Bounds of two evaluation orders]
        ref.rounding = np.fmax(np.asarray(ref.rounding, np.float64), np.reshape(bound, np.shape(ref.value)))


def _example(x, seed: int):
    """A float64 tensor to trace at: a SymTensor's numbers as they are, its symbols drawn at random."""
    import torch

    from ..symbolic.tensor import SymTensor

    if isinstance(x, torch.Tensor):
        return x.detach()
    data = x.data if isinstance(x, SymTensor) else np.asarray(x, object)
    rng = np.random.default_rng(seed)
    values = np.empty(data.shape, np.float64)
    for i, e in enumerate(data.ravel()):
        try:
            values.flat[i] = float(e)
        except (TypeError, RuntimeError, ValueError):
            values.flat[i] = rng.uniform(0.25, 1.5) * rng.choice([-1.0, 1.0])
    return torch.from_numpy(values)


class SymbolicTwin:
    """A torch function or module, callable on ``SymTensor``s (Note [Exploded twin]).

    ``twin(*inputs)`` gives the output's exact expressions; a module's parameters are symbols
    named after them (``layer1.weight[0, 1]``) unless ``params={name: SymTensor}`` is passed.
    """

    def __init__(self, fn):
        import torch.nn as nn

        from ..validate import check_callable, refuse_hooks, refuse_stateful

        check_callable(fn)
        if isinstance(fn, nn.Module):
            from ..symbolic.numbers import refuse_string_attributes

            refuse_string_attributes(fn)
            refuse_stateful(fn)
            refuse_hooks(fn)
        self.fn = fn

    def parameters(self) -> dict:
        from ..symbolic.tensor import symbols

        named = self.fn.named_parameters() if hasattr(self.fn, "named_parameters") else ()
        return {name: symbols(name, tuple(p.shape)) for name, p in named}

    def __call__(self, *inputs, params=None):
        import torch

        from ..symbolic.tensor import as_symtensor, symbols

        model = self.fn if isinstance(self.fn, torch.nn.Module) else None
        weights = dict(model.named_parameters()) if model is not None else {}
        given = self.parameters() if params is None else {n: as_symtensor(p) for n, p in params.items()}
        tensor_at = [i for i, x in enumerate(inputs) if not isinstance(x, (int, float))]
        names = list(weights) + [f"__symgrad_in{i}" for i in tensor_at]
        tensors = [p.detach().double() for p in weights.values()] + [_example(inputs[i], i) for i in tensor_at]

        def run(*flat):
            args = list(inputs)
            for i, t in zip(tensor_at, flat[len(weights):]):
                args[i] = t
            if model is None:
                return self.fn(*args)
            return torch.func.functional_call(model, dict(zip(weights, flat[:len(weights)])), tuple(args))

        graph = _graph_of(run, names, tensors)
        label = getattr(self.fn, "__name__", type(self.fn).__name__)
        _refuse_value_dependence(graph, label)
        out = _explode_output(graph, None, None, 1)
        if any(n.kind == "stop" for n in graph.nodes):
            _refuse_unless_it_holds_elsewhere(out, run, names, tensors, label)
        swap = {}
        for name, i, t in zip(names[len(weights):], tensor_at, tensors[len(weights):]):
            if t.is_floating_point():
                swap.update(zip(symbols(name, tuple(t.shape)).data.ravel(), as_symtensor(inputs[i]).data.ravel()))
        for name in weights:
            if name not in given:
                raise InputError(f"params= has no entry for the parameter {name!r}; give every parameter or none")
            swap.update(zip(symbols(name, tuple(weights[name].shape)).data.ravel(), given[name].data.ravel()))
        data = np.empty(out.data.shape, object)
        for j, e in enumerate(out.data.ravel()):
            data.flat[j] = e.xreplace(swap) if hasattr(e, "xreplace") else e
        return as_symtensor(data)


def _refuse_unless_it_holds_elsewhere(out, run, names, tensors, label: str) -> None:
    """A detached value is a constant of the trace's point.  Softmax's shift by its detached maximum
    cancels, ``x * x.detach()`` does not: the twin is evaluated at a second random point and
    compared with torch there; where they differ, it is refused."""
    import symengine as se
    import torch

    from ..symbolic.tensor import symbols

    rng = np.random.default_rng(12345)
    other = [torch.from_numpy(rng.uniform(0.25, 1.5, tuple(t.shape)) * rng.choice([-1.0, 1.0], tuple(t.shape)))
             if t.is_floating_point() else t for t in tensors]
    subs = {}
    for name, t, o in zip(names, tensors, other):
        if t.is_floating_point():
            subs.update({s: se.Float(float(v)) for s, v in zip(symbols(name, tuple(t.shape)).data.ravel(),
                                                               o.numpy().ravel())})
    with torch.no_grad():
        want = run(*other).double().numpy().ravel()
    got = np.array([float(se.sympify(e).xreplace(subs)) if hasattr(e, "xreplace") else float(e)
                    for e in out.data.ravel()])
    if not np.allclose(got, want, rtol=1e-9, atol=1e-12):
        _refuse(label, "a detached value that does not cancel")


def _refuse(label: str, reason: str) -> None:
    raise UnsupportedOp(f"{label} depends on its inputs' values ({reason}), so no twin holds for symbolic inputs; "
                        "check it at values instead: symgrad.check(fn, inputs, engine='elementwise')")


def _refuse_value_dependence(graph, label: str) -> None:
    reason = getattr(graph, "specialized", "") or getattr(graph, "data_from_values", "")
    if reason:
        _refuse(label, reason)


def import_fn(fn) -> SymbolicTwin:
    """The exploded twin of a torch function or ``nn.Module`` (Note [Exploded twin])."""
    return SymbolicTwin(fn)
