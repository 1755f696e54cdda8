"""Handlers of the ops that contract, reduce, reshape or move entries (the ``contract``, ``reduce``,
``layout`` and ``select`` nodes), and of the constants made from shapes and numbers.

Ops that only move entries (views, slices, gather, cat, padding, flips, patches) are defined by
running the op itself on *index tensors*: the entry ``k`` of the (1-based) index tensor says
which input entry lands where, so one rule (the ``select`` node and its adjoint) serves them all.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from ..errors import UnsupportedOp
from .aten import HANDLERS, handles, indices_read
from .data_select import data_selection, moves_data
from .ir import Node
from .functions_stats import centred as running_centred
from .trace import Builder

__all__ = ["SELECTIONS", "index_tensors"]


# ---------------------------------------------------------------------------------- contractions

@handles("aten.mm")
def _mm(b, args, kwargs, val):
    return b.contract("ij,jk->ik", args[0], args[1])


@handles("aten.bmm")
def _bmm(b, args, kwargs, val):
    return b.contract("bij,bjk->bik", args[0], args[1])


@handles("aten.matmul", "aten.linear")
def _composite(b, args, kwargs, val):
    raise UnsupportedOp(f"{b.fx_node.target} should have been decomposed by torch")


# ---------------------------------------------------------------------------------- reductions

def _dims(dims, ndim):
    if dims is None or dims == []:
        return tuple(range(ndim))
    if isinstance(dims, int):
        dims = [dims]
    return tuple(d % ndim for d in dims) if ndim else ()


@handles("aten.sum.dim_IntList", "aten.sum.default", "prims.sum.default")
def _sum(b, args, kwargs, val):
    x = b.node_of(args[0])
    dims = args[1] if len(args) > 1 else kwargs.get("dim")
    keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    return b.reduce("sum", x, _dims(dims, len(x.shape)), bool(keep))


@handles("aten.mean.dim", "aten.mean.default")
def _mean(b, args, kwargs, val):
    x = b.node_of(args[0])
    axes = _dims(args[1] if len(args) > 1 else kwargs.get("dim"), len(x.shape))
    keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    n = int(np.prod([x.shape[a] for a in axes])) if axes else 1
    total = b.reduce("sum", x, axes, bool(keep))
    return b.pointwise(lambda s: s / n, [total], total.shape)


@handles("aten.amax", "aten.amin")
def _amax(b, args, kwargs, val):
    x = b.node_of(args[0])
    op = "max" if "amax" in str(b.fx_node.target) else "min"
    dims = args[1] if len(args) > 1 else kwargs.get("dim", [])
    keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    return b.reduce(op, x, _dims(dims, len(x.shape)), bool(keep))


@handles("aten.max.dim", "aten.min.dim")
def _max_dim(b, args, kwargs, val):
    x = b.node_of(args[0])
    op = "max" if ".max." in str(b.fx_node.target) else "min"
    keep = bool(args[2]) if len(args) > 2 else False
    import torch

    own = b.torch_value(b.fx_node) if indices_read(b.fx_node) else None
    if own is not None:  # Note [Torch's own picks] (aten_order.py): the values follow torch's indices
        dim = args[1] % len(x.shape) if x.shape else 0
        ids = torch.arange(1, x.size + 1).reshape(x.shape)
        picked = torch.gather(ids, dim, own[1].unsqueeze(dim) if own[1].dim() < ids.dim() else own[1])
        picked = picked if keep else picked.squeeze(dim)
        return b.select([x], picked.long().numpy()), own[1]
    values = b.reduce(op, x, _dims(args[1], len(x.shape)), keep)
    with torch.no_grad():  # the indices: integer data, from the float64 values
        indices = b.fx_node.target(b.value_of(x), *args[1:])[1]
    return values, indices


@handles("aten.max.default", "aten.min.default")
def _max_all(b, args, kwargs, val):
    x = b.node_of(args[0])
    return b.reduce("max" if ".max." in str(b.fx_node.target) else "min", x, tuple(range(len(x.shape))), False)


@handles("aten.var.correction", "aten.var.dim", "aten.var", "aten.std.correction")
def _var(b, args, kwargs, val):
    x = b.node_of(args[0])
    dims = args[1] if len(args) > 1 else kwargs.get("dim")
    axes = _dims(dims, len(x.shape))
    prims = "prims" in str(b.fx_node.target)
    correction = kwargs.get("correction", args[2] if len(args) > 2 and prims else 1)
    correction = 1 if correction is None else correction
    keep = kwargs.get("keepdim", False)
    n = int(np.prod([x.shape[a] for a in axes])) if axes else 1
    mean = b.pointwise(lambda s: s / n, [b.reduce("sum", x, axes, True)])
    centred = b.pointwise(lambda s, m: running_centred(s, m) ** 2, [x, mean])  # Note [A running mean's roundings]
    total = b.reduce("sum", centred, axes, bool(keep))
    var = b.pointwise(lambda s: s / (n - correction), [total])
    return b.pointwise(sp.sqrt, [var]) if "std" in str(b.fx_node.target) else var


# ---------------------------------------------------------------------------------- layout

@handles("aten.view", "aten._unsafe_view", "aten.reshape", "aten.view_copy", "aten.unsqueeze", "aten.squeeze",
         "aten.flatten", "aten.unflatten", "aten.squeeze_copy", "aten.unsqueeze_copy", "aten.collapse_view",
         "aten.split_dim", "aten.squeeze_", "aten.unsqueeze_")  # in-place twins: torch.quantile's trace ends in squeeze_
def _reshape(b, args, kwargs, val):
    return b.layout("reshape", args[0], tuple(val.shape))


@handles("aten.permute", "aten.permute_copy")
def _permute(b, args, kwargs, val):
    return b.layout("permute", args[0], tuple(args[1]))


@handles("aten.t", "aten.transpose.int", "aten.transpose_copy.int", "aten.t_copy", "aten.transpose_")
def _transpose(b, args, kwargs, val):
    x = b.node_of(args[0])
    n = len(x.shape)
    d0, d1 = (args[1], args[2]) if len(args) > 2 else (0, 1)
    perm = list(range(n))
    if n >= 2:
        perm[d0 % n], perm[d1 % n] = perm[d1 % n], perm[d0 % n]
    return b.layout("permute", x, tuple(perm))


@handles("aten.expand", "aten.expand_copy", "aten.broadcast_to", "aten.broadcast_in_dim")
def _expand(b, args, kwargs, val):
    x = b.node_of(args[0])
    if "broadcast_in_dim" in str(b.fx_node.target):
        kept = list(args[2])
        shape = [1] * len(val.shape)
        for i, d in zip(kept, x.shape):
            shape[i] = d
        x = b.layout("reshape", x, tuple(shape))
    return b.layout("expand", x, tuple(val.shape))


# ---------------------------------------------------------------------------------- selections

def index_tensors(b: Builder, args):
    """Each float operand (a graph node, or a float constant beside one) replaced by a 1-based index
    tensor into the concatenated operands; integer operands (indices, masks) stay as they are."""
    import torch

    offset, nodes = 0, []

    def swap(a):
        nonlocal offset
        if isinstance(a, (list, tuple)):
            return type(a)(swap(x) for x in a)
        if not (isinstance(a, Node) or isinstance(a, torch.Tensor) and a.is_floating_point()):
            return a
        node = b.node_of(a)
        t = torch.arange(offset + 1, offset + node.size + 1, dtype=torch.float64).reshape(node.shape)
        offset += node.size
        nodes.append(node)
        return t

    return [swap(a) for a in args], nodes


SELECTIONS = (
    "aten.slice.Tensor", "aten.select.int", "aten.index_select", "aten.gather", "aten.index.Tensor", "aten.cat",
    "aten.stack", "aten.split_with_sizes", "aten.split.Tensor", "aten.unbind.int", "aten.flip", "aten.roll",
    "aten.repeat", "aten.constant_pad_nd", "aten.reflection_pad1d", "aten.reflection_pad2d", "aten.reflection_pad3d",
    "aten.replication_pad1d", "aten.replication_pad2d", "aten.replication_pad3d", "aten.diagonal",
    "aten.diag_embed", "aten.triu", "aten.tril", "aten.im2col", "aten.unfold", "aten.pixel_shuffle", "aten.index_put_",
    "aten.pixel_unshuffle", "aten.upsample_nearest1d", "aten.upsample_nearest2d", "aten.upsample_nearest3d",
    "aten.narrow", "aten.slice_copy.Tensor", "aten.select_copy.int", "aten.split_with_sizes_copy",
    "aten.unbind_copy.int", "aten.diagonal_copy", "aten.take", "aten.movedim", "aten.rot90",
    "aten.index_put", "aten.masked_fill.Scalar", "aten.slice_scatter", "aten.select_scatter",
    "aten.as_strided", "aten.as_strided_copy", "aten.alias_copy", "aten.repeat_interleave.self_int",
    "aten._unsafe_index.Tensor", "aten.lift_fresh", "aten.split_copy.Tensor", "aten.split_copy", "aten.scatter.src",
    "aten.scatter.value", "aten.masked_select", "aten.unfold_copy", "aten.chunk",
    "aten.tensor_split", "aten.take_along_dim",
)


# the argument positions that hold indices: an index computed from floats (grid_sample's floor of
# its grid) is integer data, taken from the float64 values
_INDEX_ARGS = {"aten.index.Tensor": 1, "aten._unsafe_index.Tensor": 1, "aten.index_put": 1, "aten.index_put_": 1,
               "aten.gather": 2, "aten.index_select": 2, "aten.scatter.src": 2, "aten.scatter.value": 2,
               "aten.take": 1}


def _index_data(b, name: str, args: list) -> list:
    pos = _INDEX_ARGS.get(name.rsplit(".", 1)[0] if name.count(".") >= 2 else name, _INDEX_ARGS.get(name))
    if pos is None or pos >= len(args):
        return args
    import torch

    def data(a, fx_arg):
        if not isinstance(a, Node):
            return a
        # a bool mask (x[x > 0]) stays a mask: as 0/1 integers it would pick rows 0 and 1
        val = getattr(fx_arg, "meta", {}).get("val")
        return b.value_of(a).bool() if getattr(val, "dtype", None) == torch.bool else b.value_of(a).long()

    a = args[pos]
    fx_a = b.fx_node.args[pos] if b.fx_node is not None and pos < len(b.fx_node.args) else None
    if isinstance(a, (list, tuple)):
        fx_list = fx_a if isinstance(fx_a, (list, tuple)) and len(fx_a) == len(a) else [None] * len(a)
        args[pos] = type(a)(data(x, f) for x, f in zip(a, fx_list))
    else:
        args[pos] = data(a, fx_a)
    return args


def _selection(b, args, kwargs, val):
    import torch

    target = b.fx_node.target
    name = str(target)
    if moves_data(val, args):  # Note [Bool entries moved beside a comparison]
        return data_selection(b, target, args, kwargs, val)
    fill = 0.0
    args = _index_data(b, name, list(args))
    if name.startswith("aten.constant_pad_nd"):  # the padding holds a constant: the select's fill
        fill = float(args[2] if len(args) > 2 else kwargs.get("value", 0.0))
        args, kwargs = list(args[:2]), {}
    if name.startswith("aten.scatter.value"):  # scatter(x, dim, index, value): the value is the fill
        fill = float(args[3])
        args = list(args[:3]) + [0.0]
    if name.startswith("aten.masked_fill") and args[2] != 0:
        # masked_fill(x, mask, v): entries under the mask become v, a constant
        idx_args, nodes = index_tensors(b, [args[0]])
        mask = torch.as_tensor(args[1]).bool() if not hasattr(args[1], "kind") else None
        if mask is None:
            raise UnsupportedOp("masked_fill with a mask that depends on an input")
        out = target(idx_args[0], mask, 0.0)
        sel = b.select(nodes, out.long().numpy())
        const = torch.where(mask.expand(out.shape), torch.tensor(float(args[2]), dtype=torch.float64), 0.0)
        return b.pointwise(lambda s, c: s + c, [sel, const], tuple(val.shape))
    idx_args, nodes = index_tensors(b, list(args))
    out = target(*idx_args, **kwargs)
    if isinstance(out, (list, tuple)):
        return type(out)(b.select(nodes, o.long().numpy(), fill) for o in out)
    return b.select(nodes, out.long().numpy(), fill)


for _name in SELECTIONS:
    HANDLERS[_name] = _selection


# ---------------------------------------------------------------------------------- constants

@handles("aten.full", "aten.zeros", "aten.ones", "aten.scalar_tensor", "aten.arange", "aten.empty",
         "aten.full_like", "aten.zeros_like", "aten.ones_like", "aten.empty_like", "aten.new_zeros", "aten.new_ones",
         "aten.new_full", "aten.empty.memory_format", "aten.new_empty", "aten.empty_strided", "prims.empty_strided")
def _constant(b, args, kwargs, val):
    """Tensors made from shapes and numbers (``full_like(x, 0)`` only reads x's shape); ``empty`` is
    made zero: nothing checked may depend on uninitialised memory."""
    import torch

    def shape_only(a):
        return torch.zeros(a.shape, dtype=torch.float64) if isinstance(a, Node) else a

    if "empty" in str(b.fx_node.target):
        return torch.zeros(tuple(val.shape), dtype=torch.float64)
    with torch.no_grad():
        out = b.fx_node.target(*[shape_only(a) for a in args], **kwargs)
    return out.double() if out.is_floating_point() else out


@handles("aten.rand_like", "aten.randn_like", "aten.rand", "aten.randn", "aten.bernoulli", "aten.native_dropout",
         "aten.randint", "aten.normal")
def _random(b, args, kwargs, val):
    raise UnsupportedOp(f"{b.fx_node.target} draws random numbers: call model.eval() (dropout) or pass the noise "
                        "as an input, so that torch and the closed form see the same values")

