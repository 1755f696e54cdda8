"""What the fx interpreter keeps besides the graph: integer data computed from values (Python
branches, ``.item()``) and writes into new buffers (``copy_`` into slices of a fresh tensor)."""

from __future__ import annotations

from ..errors import UnsupportedOp
from .ir import Node
from .trace import Builder

__all__ = ["branch_value", "is_copy", "iter_tensors", "mark_data", "note_value_dependence", "read_buffers",
           "refuse_float_items", "write_into_constant"]


# Note [Value-dependent branches]
# A Python branch on a value computed from the inputs (F.gaussian_nll_loss's ``any(var < 0)``, a
# ``.item()``) is traced at the checked values (make_fx's _error_on_data_dependent_ops=False): at
# those values the function is the branch taken, so its derivative there is that branch's, as
# torch's autograd takes it too (an ``.item()`` is a constant to both, as ``detach`` is).  Such a
# graph holds only for inputs that take the same branches: it is never cached (``graph.specialized``).


def mark_data(b: Builder, out) -> None:
    """Integer data computed from float values (a comparison, ``any``): remembered by id."""
    for t in out if isinstance(out, (list, tuple)) else (out,):
        if hasattr(t, "dtype"):
            b.data_from_values[id(t)] = t


def note_value_dependence(b: Builder, node, args, out) -> None:
    if not any(id(a) in b.data_from_values for a in iter_tensors(args)):
        return
    if "_local_scalar_dense" in str(node.target):  # a Python number the traced code went on with
        b.graph.specialized = f"a Python branch or .item() on a value computed from the inputs (fx node {node.name!r})"
    mark_data(b, out)


def branch_value(b: Builder, node, arg):
    """A Python number the traced code went on with (a branch's ``bool``, an ``.item()``), computed
    from the inputs' values: data at the checked values (Note [Value-dependent branches])."""
    src = node.args[0].meta.get("val") if hasattr(node.args[0], "meta") else None
    if src is None:
        raise UnsupportedOp(f".item() (fx node {node.name!r}) of a value the trace did not record: keep the "
                            "computation in tensors, or write .detach() where torch should treat it as a constant")
    b.graph.specialized = f"a Python branch or .item() on a value computed from the inputs (fx node {node.name!r})"
    if not src.is_floating_point():
        return b.value_of(arg).to(src.dtype).item()
    # Note [A float .item()]: a constant to torch; to symgrad only while it depends on no leaf
    # differentiated (checked once wrt is known: refuse_float_items)
    items = getattr(b.graph, "float_items", None)
    if items is None:
        items = b.graph.float_items = {}
    items[node.name] = _leaves_under(arg)
    own = b.torch_value(node)
    return float(own) if own is not None else b.value_of(arg).item()


# Note [A float .item()]
# A float ``.item()`` is a Python number: torch's autograd treats it as a constant.  Where it is
# computed from data only (a focal loss dividing by the number of positive targets), that is the
# derivative of the function too, and the number is torch's own (in the checked dtype).  Where it
# depends on a value differentiated, torch's gradient lacks the term through it and the op graph
# cannot tell which the user meant: refused, naming ``.detach()`` as the way to say "constant".


def _leaves_under(node) -> set:
    """Names of the leaves (inputs and parameters, not constants) ``node`` is computed from, not
    through a ``detach``."""
    seen, todo, names = set(), [node], set()
    while todo:
        n = todo.pop()
        if not isinstance(n, Node) or id(n) in seen:
            continue
        seen.add(id(n))
        if n.kind == "leaf":
            if n.attrs.get("role") != "const":
                names.add(n.name)
        elif n.kind != "stop":  # past a detach the number is a constant to torch too
            todo.extend(n.args)
    return names


def refuse_float_items(graph, wrt) -> None:
    """Refuse a float ``.item()`` computed from a leaf in ``wrt`` (Note [A float .item()])."""
    for fx_name, leaves in (getattr(graph, "float_items", None) or {}).items():
        hit = sorted(set(leaves) & set(wrt))
        if hit:
            raise UnsupportedOp(
                f".item() (fx node {fx_name!r}) of a float computed from {', '.join(map(repr, hit))}, which is "
                "differentiated: torch treats that number as a constant, so its gradient lacks the term through "
                "it. Write .detach() where a constant is meant, or keep the computation in tensors")


# Note [Writes into a new buffer]
# Some composites torch does not functionalize (circular padding) write their result into slices of
# a fresh ``empty`` tensor with ``copy_``.  The buffer is a folded constant; each ``copy_`` of a value
# that depends on the inputs into (a view of) it makes a ``select`` node holding the buffer's new
# contents (``b.buffers``), and every later read of the buffer or of a view of it reads that node.


def is_copy(target) -> bool:
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


def read_buffers(b: Builder, x):
    import torch

    if isinstance(x, (list, tuple)):
        return type(x)(read_buffers(b, a) for a in x)
    if not isinstance(x, torch.Tensor) or id(_base_of(x)) not in b.buffers:
        return x
    base, node = b.buffers[id(_base_of(x))]
    return b.select([node], (_flat_index(base, x) + 1).numpy())


def write_into_constant(b: Builder, dst, src):
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
    return read_buffers(b, dst)


def iter_tensors(x):
    if isinstance(x, (list, tuple)):
        for a in x:
            yield from iter_tensors(a)
    elif hasattr(x, "dtype"):
        yield x
