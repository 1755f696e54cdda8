"""An fx graph of ATen ops (from ``trace_callable``) as an op :class:`Graph`.

Each placeholder is matched to a leaf the caller describes (an input, a parameter, or constant
data); each call goes through its handler in ``symgrad.graph.aten`` unless none of its tensor
arguments depends on a leaf, in which case it runs in torch (float64) and becomes a constant.
"""

from __future__ import annotations

from typing import Callable

from ..errors import InputError, UnsupportedOp
from . import aten, aten_ctc, aten_nn, aten_order, aten_seq, aten_shift, aten_tensor  # noqa: F401 - register the tensor, convolution, pooling, order-statistics, softmax, CTC and sequence handlers
from .ir import Graph, Node
from .trace import Builder
from .interpret_data import (branch_value, is_copy, iter_tensors, mark_data, note_value_dependence, read_buffers,
                             write_into_constant)
from .fold_error import (INDEX_STEPS, cast_margin, casts, deep_fold, errors_by_wide, exact_fold, flatten, fold_eps,
                         fold_error, traced_dtype)
from .trace_grad import CHOSEN, DECOMPOSED, IN_PLACE, NO_GRAD, SEQUENTIAL

__all__ = ["to_graph", "register"]

_USER: dict = {}


# Note [One register hook]
# An op torch keeps opaque in the trace (a ``torch.library`` custom op, or an ATen op the table has
# no handler for) is taught to symgrad once, by its forward: ``register(op, forward)`` where
# ``forward`` computes what the op computes in torch ops the graph reads.  Where the op appears,
# ``forward`` is traced at the op's own argument values and its ATen ops are read into the graph in
# the op's place, so both back ends (tensor and exploded), every check (gradients, forward mode,
# second order) and every dtype see one definition; its derivative, rounding bound and kinks come
# from the core nodes it is made of.  Python functions and modules need no registration: the trace
# goes through them.

def register(op, forward: Callable) -> None:
    """Teach symgrad an op the trace keeps opaque (Note [One register hook]).  ``op``: a custom op or
    ATen op (``torch.ops.mylib.cube``, ``torch.ops.aten.erfinv.default``) or its name (``"mylib.cube"``);
    ``forward``: a function of the op's arguments computing the same thing in supported torch ops."""
    import torch

    if not callable(forward):
        raise InputError(f"register needs the op's forward as a callable, not a {type(forward).__name__}")
    if isinstance(op, str):
        name = op.replace("::", ".")
    elif isinstance(op, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        name = str(op)
    else:
        raise InputError(f"register takes an op (torch.ops.<namespace>.<op>, or its name), not {op!r}: symgrad "
                         "traces through Python functions and modules, so only ops the trace keeps opaque "
                         "(torch.library custom ops, ATen ops outside the table) need registering")
    _USER[name] = forward


# where a refused op usually comes from, and the supported way around it
_FORWARD_MODE_INSIDE = (
    " This op comes from forward mode (torch.func.jvp or jacfwd) inside the function: symgrad traces the "
    "reverse-mode transforms (torch.func.grad, vjp, jacrev) inside a forward, not the forward-mode ones. Fix: "
    "write the inner derivative with torch.func.vjp or jacrev (a Hutchinson estimate's eps . (J eps) is "
    "(eps^T J) . eps, and eps^T J is torch.func.vjp(net, x)[1](eps)).")
_HINTS: dict = {"is_same_size": _FORWARD_MODE_INSIDE, "_has_same_storage_numel": _FORWARD_MODE_INSIDE}

_INLINING: set = set()  # the registered ops whose forward is being read (inside it, the op is the table's)


def _user_handler(target):
    name = str(target)
    packet = name.rsplit(".", 1)[0] if name.count(".") >= 2 else name
    for key in (name, packet):
        if key in _USER and key not in _INLINING:
            return key, _USER[key]
    return None


def _inline(b: Builder, key: str, forward: Callable, args, kwargs):
    """``forward(*args, **kwargs)`` traced at the arguments' values and read into the graph in the
    registered op's place (Note [One register hook])."""
    import torch.utils._pytree as pytree

    from .trace import trace_callable

    flat, spec = pytree.tree_flatten((args, kwargs))
    slots = [i for i, a in enumerate(flat) if isinstance(a, Node)]

    def run(*tensors):
        filled = list(flat)
        for i, t in zip(slots, tensors):
            filled[i] = t
        a, k = pytree.tree_unflatten(filled, spec)
        return forward(*a, **k)

    values = tuple(b.value_of(flat[i]) for i in slots)
    outer = b.fx_node
    _INLINING.add(key)
    try:
        sub = trace_callable(run, values)
        placeholders = [n for n in sub.graph.nodes if n.op == "placeholder"]
        return _interpret(b, sub, {ph: flat[i] for ph, i in zip(placeholders, slots)}, top=False)
    finally:
        _INLINING.discard(key)
        b.fx_node = outer


def _map(x, env):
    import torch.fx as fx

    if isinstance(x, fx.Node):
        return env[x]
    if isinstance(x, (list, tuple)):
        return type(x)(_map(a, env) for a in x)
    if isinstance(x, dict):
        return {k: _map(v, env) for k, v in x.items()}
    return x


def _has_node(x) -> bool:
    if isinstance(x, Node):
        return True
    if isinstance(x, (list, tuple)):
        return any(_has_node(a) for a in x)
    if isinstance(x, dict):
        return any(_has_node(v) for v in x.values())
    return False


def _as_float64(x):
    import torch

    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.double()
    if isinstance(x, (list, tuple)):
        return type(x)(_as_float64(a) for a in x)
    return x


def to_graph(gm, leaves: list) -> Graph:
    """``leaves``: one ``(name, role, tensor)`` per placeholder, in order; role is ``input``,
    ``param`` or ``const``."""
    graph = Graph()
    b = Builder(graph)
    env: dict = {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(leaves):
        raise UnsupportedOp(f"the traced graph takes {len(placeholders)} tensors but {len(leaves)} were given")
    for ph, (name, role, t) in zip(placeholders, leaves):
        if role == "const" or not t.is_floating_point():
            env[ph] = t.detach()
        else:
            env[ph] = b.leaf(name, t.detach().double().cpu().numpy(), role)
            env[ph].attrs["_dtype"] = str(t.dtype).replace("torch.", "")  # Note [Nodes computed in a wider dtype]
    b.torch_run = lambda: _torch_values(gm, [t for _, _, t in leaves])
    _interpret(b, gm, env, top=True)
    graph.merge_repeats()  # Note [One node per computation] in ir.py
    if b.data_from_values:  # read by the exploded twin of symbolic inputs (Note [Exploded twin])
        graph.data_from_values = "integer data computed from the inputs' values (an argmax, a comparison)"
    return graph


def _torch_values(gm, tensors: list) -> dict:
    """Every fx node's value with ``gm`` run on the leaves as given (torch's own dtype and kernels);
    empty where it does not run."""
    import torch

    seen: dict = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            seen[n] = out
            return out

    try:
        with torch.no_grad():
            Recorder(gm).run(*(t.detach() for t in tensors))
    except Exception:  # noqa: BLE001 - no values of torch's own: the float64 forward decides, as before
        return {}
    return seen


def _interpret(b: Builder, gm, env: dict, top: bool):
    """Read ``gm``'s calls into the graph; the top level sets the graph's outputs, an inlined forward
    (Note [One register hook]) returns its output."""
    import torch

    written = _writes_into_inputs(gm, env)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            if not top:
                return _map(node.args[0], env)
            b.graph.outputs = [read_buffers(b, o) for o in flatten(_map(node.args[0], env))]
            return None
        if node.op == "get_attr":  # a tensor the traced code held (a buffer, a constant)
            env[node] = getattr(gm, node.target)
            continue
        if node.op != "call_function":
            raise UnsupportedOp(f"fx node {node.name!r} is a {node.op}; only ATen calls are supported")
        if isinstance(node.meta.get("val"), torch.Tensor) and node.meta["val"].is_complex():
            from ..symbolic.numbers import COMPLEX

            # name the FFT where there is one, not the cast to complex that feeds it (FNet's fft2)
            named = next((n for n in gm.graph.nodes if "fft" in str(n.target)), node)
            raise UnsupportedOp(f"{COMPLEX} (fx node {named.name!r}, {named.target})")
        args, kwargs = _map(node.args, env), _map(node.kwargs, env)
        b.fx_node = node
        start = len(b.graph.nodes)
        env[node] = _call(b, node, args, kwargs)
        if node.meta.get(CHOSEN):  # a form chosen from the values: never cached
            b.graph.specialized = node.meta[CHOSEN]
        if node.meta.get(SEQUENTIAL) and isinstance(env[node], Node):  # Note [Sequential reverse sums]
            env[node].attrs["_sequential"] = node.meta[SEQUENTIAL]
        if node.meta.get(NO_GRAD) or _detached_in_place(node, args):  # Note [Grad mode inside forward]
            env[node] = _no_grad_result(b, node, args, env[node])
        if node in written and hasattr(env[node], "shape"):
            env[node] = aten_seq.straight_through(b, env[written[node]], env[node])
        _note_dtype(b.graph.nodes[start:], node)
    return None


def _note_dtype(nodes: list, fx_node) -> None:
    """The nodes made for ``fx_node`` note the floating dtype torch computed it in (Note [Nodes
    computed in a wider dtype] in approx.py)."""
    import torch

    val = fx_node.meta.get("val")
    vals = val if isinstance(val, (tuple, list)) else (val,)
    dtype = next((v.dtype for v in vals if isinstance(v, torch.Tensor) and v.is_floating_point()), None)
    if dtype is None:
        return
    # a decomposition's inner dtypes are not torch's kernel's: its nodes keep the check's for their
    # rules, and note the dtype their value is stored in (rules._widening reads it)
    key = "_stored" if fx_node.meta.get(DECOMPOSED) else "_dtype"
    name = str(dtype).replace("torch.", "")
    tangent = fx_node.meta.get(aten.TANGENT_DTYPE)  # aten.narrowed_cotangent
    for n in nodes:
        if n.kind != "leaf":
            n.attrs.setdefault(key, name)
            if tangent is not None:
                n.attrs.setdefault("_tangent_dtype", tangent)


def _in_place(node) -> bool:
    schema = getattr(node.target, "_schema", None)
    return bool(node.meta.get(IN_PLACE) or schema is not None and schema.is_mutable)


def _detached_in_place(node, args) -> bool:
    a = args[0] if args else None
    return _in_place(node) and isinstance(a, Node) and a.kind == "stop" and not a.attrs.get("reverse_only")


def _no_grad_result(b: Builder, node, args, out):
    """An op run under ``no_grad``: a new tensor is a constant to reverse mode; an in-place op on a
    tensor autograd tracks (cosine_similarity's ``clamp_min_`` of its norms), or on a detached alias
    of one (embedding's renorm of ``weight.detach()``), changes its value but not its history, so the
    gradient passes as if it were the identity: ``a + stop(op(a) - a)``."""
    a = args[0] if args else None
    if _in_place(node) and isinstance(a, Node) and isinstance(out, Node) and out.shape == a.shape:
        alias = a.kind == "stop" and not a.attrs.get("reverse_only")
        if alias:  # in place on a detached alias: the values of the tensor it aliases change, in
            a = a.args[0]  # neither mode's history (forward-mode AD ignores no_grad, not detach)
        moved = b.stop(b.pointwise(lambda r, x: r - x, [out, a]), reverse_only=not alias)
        return b.pointwise(lambda x, d: x + d, [a, moved])
    return _stopped(b, out)


def _stopped(b: Builder, x):
    """``x`` (a node, or a tuple of them) computed under ``no_grad``: constant to reverse mode."""
    if isinstance(x, Node):
        return b.stop(x, reverse_only=True)
    if isinstance(x, (tuple, list)):
        return type(x)(_stopped(b, a) for a in x)
    return x



# Note [Writes into an input]
# Functionalization turns an in-place update of an input (``embedding_renorm_`` on the weight under
# ``max_norm=``, a ``clamp_`` under no_grad) into a new value ``V`` that later ops read, and a final
# ``copy_(input, V)``.  In torch the input stays the same autograd leaf -- updating a leaf that needs
# gradients in place is an error unless autograd is off -- so every later read is differentiated as
# the leaf itself, at the new values.  The node computing ``V`` is therefore read as
# ``leaf + stop(V - leaf)`` (``aten_seq.straight_through``; Note [Gradient rules torch defines
# beside the derivative]).


def _writes_into_inputs(gm, env: dict) -> dict:
    """fx node of each value ``copy_`` writes into a differentiable input -> that input's fx node."""
    written = {}
    for node in gm.graph.nodes:
        if node.op == "call_function" and is_copy(node.target) and len(node.args) > 1:
            dst, src = node.args[0], node.args[1]
            if getattr(dst, "op", None) == "placeholder" and isinstance(env.get(dst), Node) \
                    and getattr(src, "op", None) == "call_function":
                written[src] = dst
    return written


def _picks_integers(target, out) -> bool:
    """A folded floor/ceil/round/trunc, or a cast to an integer dtype: an index torch picks."""
    import torch

    if not isinstance(out, torch.Tensor):
        return False
    name = str(target)
    return any(s in name for s in INDEX_STEPS) or (
        ("_to_copy" in name or "convert_element_type" in name) and not out.is_floating_point())


def _call(b: Builder, node, args, kwargs):
    import operator

    import torch

    target = node.target
    if target is operator.getitem:
        return args[0][args[1]]
    if b.buffers and not getattr(target, "is_view", False):  # a view of a buffer stays a view (read at use)
        args = (args[0],) + read_buffers(b, args[1:]) if is_copy(target) else read_buffers(b, args)
    if is_copy(target) and isinstance(args[0], torch.Tensor) and (_has_node(args[1:]) or b.buffers):
        return write_into_constant(b, args[0], args[1])
    if not (_has_node(args) or _has_node(kwargs)) and torch.Tag.nondeterministic_seeded in getattr(target, "tags", ()):
        # torch.rand(4) in forward: folding it would freeze the trace's draw, and torch draws again
        raise UnsupportedOp(f"{target} (fx node {node.name!r}) draws random numbers on every call, so torch and the "
                            "closed form would see different values: pass the noise as an input (draw it outside "
                            "forward), or call model.eval() for dropout; FractionalMaxPool draws its samples so: "
                            "call F.fractional_max_pool2d with _random_samples= fixed (a buffer)")
    if not (_has_node(args) or _has_node(kwargs)):  # constant folding, in float64
        if isinstance(kwargs.get("dtype"), torch.dtype) and kwargs["dtype"].is_floating_point and \
                ("empty" in str(target) or not any(True for _ in iter_tensors(args))):
            # a buffer (empty, full, zeros) made in float64, so its views stay views of it in a float32
            # check too (a float32 one would be copied to float64 at each view): Note [Writes into a new buffer]
            kwargs = {**kwargs, "dtype": torch.float64}
        wide = _as_float64(args)
        with torch.no_grad():
            out = target(*wide, **kwargs)
        exact, deep = exact_fold(b, node, target, args, out), deep_fold(b, target, args)
        coarsest = fold_eps(b, node, args)
        if coarsest > 2.0**-52 and _picks_integers(target, out):  # Note [Scalars are rounded too] (fold_error.py)
            own = b.torch_value(node)
            if isinstance(own, torch.Tensor) and tuple(own.shape) == tuple(out.shape):
                out = own.to(out.dtype)  # torch's own floor or index, as Note [Torch's own picks]
        cast = casts(target)
        inputs = errors_by_wide(b, args, wide, cast, cast_margin(node) if cast else 1.0)
        with torch.no_grad():  # Note [Rounding of folded constants] (fold_error.py)
            err = fold_error(target, list(wide), kwargs, out, inputs, traced_dtype(node))
        for t in out if isinstance(out, (list, tuple)) else (out,):
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                b.folded[id(t)] = t  # computed, not given: torch rounds it in the checked dtype
                b.fold_eps[id(t)] = coarsest  # ... or in a narrower one on the way
                if err is not None and t is out:
                    b.fold_abs[id(t)] = err
                if deep:
                    b.fold_deep.add(id(t))
                if exact:
                    b.exact_folds.add(id(t))  # ... unless it computes it as the fold did (Note [Folded constants])
        note_value_dependence(b, node, args, out)
        return out
    user = _user_handler(target)
    if user is not None:
        return _inline(b, *user, args, kwargs)
    handler = aten.handler_for(target)
    val = node.meta.get("val")
    if handler is None and "_local_scalar_dense" in str(target):
        return branch_value(b, node, args[0])
    if handler is None and _integral(val):
        # an integer or bool result that depends on floats (argmax, any, isnan): data, not a function
        # with a derivative; computed from the float64 values
        own = b.torch_value(node) if "argmax" in str(target) or "argmin" in str(target) else None
        with torch.no_grad():  # an argmax is torch's own pick (Note [Torch's own picks] in aten_order.py)
            out = own if own is not None else target(*_traced_dtypes(node.args, _values(b, args)), **_values(b, kwargs))
        mark_data(b, out)
        return out
    if handler is None:
        raise UnsupportedOp(
            f"symgrad's op graph has no rule for {'ATen' if str(target).startswith('aten.') else 'custom'} op {target} "
            f"(fx node {node.name!r}). Register one with "
            f"symgrad.register(torch.ops.{target}, forward) where forward computes the op in supported "
            "torch ops, or pass symbolic= with a reference forward written in supported torch ops."
            + _HINTS.get(str(target).split(".")[1] if str(target).count(".") >= 2 else "", "")
        )
    try:
        return handler(b, args, kwargs, val)
    except UnsupportedOp:
        raise
    except NotImplementedError as err:
        raise UnsupportedOp(f"ATen op {target} (fx node {node.name!r}): {err}") from err



def _integral(val) -> bool:
    import torch

    vals = val if isinstance(val, (list, tuple)) else [val]
    return bool(vals) and all(isinstance(v, torch.Tensor) and not v.is_floating_point() for v in vals)


def _traced_dtypes(fx_args, values):
    """``values`` with each integer or bool argument back in the dtype the trace gave it (the graph
    holds a comparison as 0/1 in float64; torch.distributions' validation reads it with ``all``)."""
    import torch

    out = []
    for fx, v in zip(fx_args, values):
        dt = getattr(getattr(fx, "meta", {}).get("val"), "dtype", None) if hasattr(fx, "meta") else None
        if isinstance(v, torch.Tensor) and isinstance(dt, torch.dtype) and not dt.is_floating_point \
                and v.is_floating_point():
            v = v.to(dt)
        out.append(v)
    return out + list(values[len(out):])


def _values(b: Builder, x):
    if isinstance(x, Node):
        return b.value_of(x)
    if isinstance(x, (list, tuple)):
        return type(x)(_values(b, a) for a in x)
    if isinstance(x, dict):
        return {k: _values(b, v) for k, v in x.items()}
    return _as_float64(x)
