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
from .trace_grad import IN_PLACE, NO_GRAD

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
_HINTS = {
    "linalg_matrix_exp": " (torch.nn.utils.parametrizations.orthogonal maps square weights through matrix_exp: "
                         "orthogonal(layer, orthogonal_map='cayley') or 'householder' is checked)",
}

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
    _interpret(b, gm, env, top=True)
    if b.data_from_values:  # read by the exploded twin of symbolic inputs (Note [Exploded twin])
        graph.data_from_values = "integer data computed from the inputs' values (an argmax, a comparison)"
    return graph


def _interpret(b: Builder, gm, env: dict, top: bool):
    """Read ``gm``'s calls into the graph; the top level sets the graph's outputs, an inlined forward
    (Note [One register hook]) returns its output."""
    written = _writes_into_inputs(gm, env)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            if not top:
                return _map(node.args[0], env)
            b.graph.outputs = [_read_buffers(b, o) for o in _flatten(_map(node.args[0], env))]
            return None
        if node.op == "get_attr":  # a tensor the traced code held (a buffer, a constant)
            env[node] = getattr(gm, node.target)
            continue
        if node.op != "call_function":
            raise UnsupportedOp(f"fx node {node.name!r} is a {node.op}; only ATen calls are supported")
        args, kwargs = _map(node.args, env), _map(node.kwargs, env)
        b.fx_node = node
        env[node] = _call(b, node, args, kwargs)
        if node.meta.get(NO_GRAD) or _detached_in_place(node, args):  # Note [Grad mode inside forward]
            env[node] = _no_grad_result(b, node, args, env[node])
        if node in written and hasattr(env[node], "shape"):
            env[node] = aten_seq.straight_through(b, env[written[node]], env[node])
    return None


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
        if node.op == "call_function" and _is_copy(node.target) and len(node.args) > 1:
            dst, src = node.args[0], node.args[1]
            if getattr(dst, "op", None) == "placeholder" and isinstance(env.get(dst), Node) \
                    and getattr(src, "op", None) == "call_function":
                written[src] = dst
    return written


def _flatten(x):
    if isinstance(x, (list, tuple)):
        for a in x:
            yield from _flatten(a)
    else:
        yield x


def _call(b: Builder, node, args, kwargs):
    import operator

    import torch

    target = node.target
    if target is operator.getitem:
        return args[0][args[1]]
    if b.buffers and not getattr(target, "is_view", False):  # a view of a buffer stays a view (read at use)
        args = (args[0],) + _read_buffers(b, args[1:]) if _is_copy(target) else _read_buffers(b, args)
    if _is_copy(target) and isinstance(args[0], torch.Tensor) and (_has_node(args[1:]) or b.buffers):
        return _write_into_constant(b, args[0], args[1])
    if not (_has_node(args) or _has_node(kwargs)) and torch.Tag.nondeterministic_seeded in getattr(target, "tags", ()):
        # torch.rand(4) in forward: folding it would freeze the trace's draw, and torch draws again
        raise UnsupportedOp(f"{target} (fx node {node.name!r}) draws random numbers on every call, so torch and the "
                            "closed form would see different values: pass the noise as an input (draw it outside "
                            "forward), or call model.eval() for dropout; FractionalMaxPool draws its samples so: "
                            "call F.fractional_max_pool2d with _random_samples= fixed (a buffer)")
    if not (_has_node(args) or _has_node(kwargs)):  # constant folding, in float64
        if isinstance(kwargs.get("dtype"), torch.dtype) and kwargs["dtype"].is_floating_point and \
                ("empty" in str(target) or not any(True for _ in _tensors(args))):
            # a buffer (empty, full, zeros) made in float64, so its views stay views of it in a float32
            # check too (a float32 one would be copied to float64 at each view): Note [Writes into a new buffer]
            kwargs = {**kwargs, "dtype": torch.float64}
        with torch.no_grad():
            out = target(*_as_float64(args), **kwargs)
        for t in out if isinstance(out, (list, tuple)) else (out,):
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                b.folded[id(t)] = t  # computed, not given: torch rounds it in the checked dtype
        _note_value_dependence(b, node, args, out)
        return out
    user = _user_handler(target)
    if user is not None:
        return _inline(b, *user, args, kwargs)
    handler = aten.handler_for(target)
    val = node.meta.get("val")
    if handler is None and "_local_scalar_dense" in str(target):
        return _branch_value(b, node, args[0])
    if handler is None and _integral(val):
        # an integer or bool result that depends on floats (argmax, any, isnan): data, not a function
        # with a derivative; computed from the float64 values
        with torch.no_grad():
            out = target(*_values(b, args), **_values(b, kwargs))
        _mark_data(b, out)
        return out
    if handler is None:
        raise UnsupportedOp(
            f"symgrad's op graph has no rule for ATen op {target} (fx node {node.name!r}). Register one with "
            "symgrad.register(torch.ops.aten.<op>.<overload>, forward) where forward computes the op in supported "
            "torch ops, or pass symbolic= with a reference forward written in supported torch ops."
            + _HINTS.get(str(target).split(".")[1] if str(target).count(".") >= 2 else "", "")
        )
    try:
        return handler(b, args, kwargs, val)
    except UnsupportedOp:
        raise
    except NotImplementedError as err:
        raise UnsupportedOp(f"ATen op {target} (fx node {node.name!r}): {err}") from err



# Note [Value-dependent branches]
# A Python branch on a value computed from the inputs (F.gaussian_nll_loss's ``any(var < 0)``, a
# ``.item()``) is traced at the checked values (make_fx's _error_on_data_dependent_ops=False): at
# those values the function is the branch taken, so its derivative there is that branch's, as
# torch's autograd takes it too (an ``.item()`` is a constant to both, as ``detach`` is).  Such a
# graph holds only for inputs that take the same branches: it is never cached (``graph.specialized``).


def _mark_data(b: Builder, out) -> None:
    """Integer data computed from float values (a comparison, ``any``): remembered by id."""
    for t in out if isinstance(out, (list, tuple)) else (out,):
        if hasattr(t, "dtype"):
            b.data_from_values[id(t)] = t


def _note_value_dependence(b: Builder, node, args, out) -> None:
    if not any(id(a) in b.data_from_values for a in _tensors(args)):
        return
    if "_local_scalar_dense" in str(node.target):  # a Python number the traced code went on with
        b.graph.specialized = f"a Python branch or .item() on a value computed from the inputs (fx node {node.name!r})"
    _mark_data(b, out)


def _branch_value(b: Builder, node, arg):
    """A Python ``bool`` the traced code branched on, computed from the inputs' values."""
    src = node.args[0].meta.get("val") if hasattr(node.args[0], "meta") else None
    if src is None or src.is_floating_point():
        raise UnsupportedOp(
            f".item() (fx node {node.name!r}) of a float computed from the inputs: the op graph cannot tell a "
            "constant from a value to differentiate there; write .detach() where torch should treat it as a "
            "constant, or keep the computation in tensors")
    b.graph.specialized = f"a Python branch on a value computed from the inputs (fx node {node.name!r})"
    return b.value_of(arg).to(src.dtype).item()


# Note [Writes into a new buffer]
# Some composites torch does not functionalize (circular padding) write their result into slices of
# a fresh ``empty`` tensor with ``copy_``.  The buffer is a folded constant; each ``copy_`` of a value
# that depends on the inputs into (a view of) it makes a ``select`` node holding the buffer's new
# contents (``b.buffers``), and every later read of the buffer or of a view of it reads that node.


def _is_copy(target) -> bool:
    return str(target) == "aten.copy_.default"


def _base_of(t):
    return t._base if t._base is not None else t


def _flat_index(base, view):
    """The flat positions in ``base`` (contiguous) that ``view`` covers, in the view's shape."""
    import torch

    if not base.is_contiguous():
        raise UnsupportedOp("a copy_ into a view of a non-contiguous buffer: symgrad follows writes into new "
                            "contiguous tensors only (Note [Writes into a new buffer])")
    pos = torch.arange(base.numel()).reshape(base.shape)
    return pos.as_strided(tuple(view.shape), view.stride(), view.storage_offset() - base.storage_offset())


def _read_buffers(b: Builder, x):
    import torch

    if isinstance(x, (list, tuple)):
        return type(x)(_read_buffers(b, a) for a in x)
    if not isinstance(x, torch.Tensor) or id(_base_of(x)) not in b.buffers:
        return x
    base, node = b.buffers[id(_base_of(x))]
    return b.select([node], (_flat_index(base, x) + 1).numpy())


def _write_into_constant(b: Builder, dst, src):
    import numpy as np

    base = _base_of(dst)
    held = b.buffers.get(id(base))
    current = held[1] if held else b.const(base)
    if not isinstance(src, Node):
        src = b.const(src)
    if tuple(src.shape) != tuple(dst.shape):
        src = b.layout("expand", src, tuple(dst.shape))
    n = base.numel()
    idx = np.arange(1, n + 1)
    idx[_flat_index(base, dst).reshape(-1).numpy()] = n + 1 + np.arange(dst.numel())
    b.buffers[id(base)] = (base, b.select([current, src], idx.reshape(tuple(base.shape))))
    return _read_buffers(b, dst)


def _tensors(x):
    if isinstance(x, (list, tuple)):
        for a in x:
            yield from _tensors(a)
    elif hasattr(x, "dtype"):
        yield x


def _integral(val) -> bool:
    import torch

    vals = val if isinstance(val, (list, tuple)) else [val]
    return bool(vals) and all(isinstance(v, torch.Tensor) and not v.is_floating_point() for v in vals)


def _values(b: Builder, x):
    if isinstance(x, Node):
        return b.value_of(x)
    if isinstance(x, (list, tuple)):
        return type(x)(_values(b, a) for a in x)
    if isinstance(x, dict):
        return {k: _values(b, v) for k, v in x.items()}
    return _as_float64(x)
