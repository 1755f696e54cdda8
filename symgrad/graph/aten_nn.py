"""Convolution and pooling as core nodes: patches (a ``select``) then a contraction or a reduction.

``patches(idx, ...)`` builds, from a 1-based index array of the input ``(N, C, *S)``, the index
array ``(N, C, *O, *K)`` of every window (0 where a window reaches into the padding), for any
number of spatial dimensions, stride, padding, dilation and ``ceil_mode``.  A convolution is then
``einsum(patches(x), weight)`` (grouped as torch groups channels), max pooling a ``max`` over the
window axes (padding is -inf there), average pooling a sum divided by torch's divisor.
"""

from __future__ import annotations

import numpy as np

from ..errors import UnsupportedOp
from .aten import handles
from .trace import Builder


def _out_size(s, k, st, p, d, ceil):
    span = d * (k - 1) + 1
    if ceil:
        o = -(-(s + 2 * p - span) // st) + 1
        if (o - 1) * st >= s + p:  # the last window must start inside the input or left padding
            o -= 1
    else:
        o = (s + 2 * p - span) // st + 1
    return o


def patches(idx: np.ndarray, kernel, stride, padding, dilation, ceil_mode=False) -> np.ndarray:
    """Window index array ``(N, C, *O, *K)`` of a 1-based index array ``(N, C, *S)``."""
    nd = len(kernel)
    spatial = idx.shape[2:]
    outs = [_out_size(s, k, st, p, d, ceil_mode) for s, k, st, p, d in zip(spatial, kernel, stride, padding, dilation)]
    extra = [max(0, (o - 1) * st + d * (k - 1) + 1 - (s + 2 * p))
             for o, s, k, st, p, d in zip(outs, spatial, kernel, stride, padding, dilation)]
    padded = np.pad(idx, [(0, 0), (0, 0)] + [(p, p + e) for p, e in zip(padding, extra)])
    grids = np.meshgrid(*[np.arange(o) * st for o, st in zip(outs, stride)],
                        *[np.arange(k) * d for k, d in zip(kernel, dilation)], indexing="ij")
    pos = [grids[i] + grids[nd + i] for i in range(nd)]  # (*O, *K) coordinates per spatial axis
    return padded[(slice(None), slice(None), *pos)]


def _tuple(v, n):
    return tuple(v) * n if len(v) == 1 else tuple(v)


def _index_array(node) -> np.ndarray:
    return np.arange(1, node.size + 1, dtype=np.int64).reshape(node.shape)


@handles("aten.convolution")
def _convolution(b: Builder, args, kwargs, val):
    x, w, bias, stride, padding, dilation, transposed, output_padding, groups = args
    x, w = b.node_of(x), b.node_of(w)
    nd = len(w.shape) - 2
    if transposed:
        return _conv_transpose(b, x, w, bias, _tuple(stride, nd), _tuple(padding, nd), _tuple(dilation, nd),
                               _tuple(output_padding, nd), groups, val)
    kernel = w.shape[2:]
    win = patches(_index_array(x), kernel, _tuple(stride, nd), _tuple(padding, nd), _tuple(dilation, nd))
    return _conv_core(b, b.select([x], win), w, bias, groups, nd, val)


def _conv_core(b, win_node, w, bias, groups, nd, val, col2im: bool = False):
    n, c = win_node.shape[:2]
    outs = win_node.shape[2:2 + nd]
    kernel = w.shape[2:]
    cout = w.shape[0]
    g = groups
    letters = iter("ijklmpqrstuvwxyz")  # the spatial axes; n, g, c, o name the others
    o_ax = "".join(next(letters) for _ in range(nd))
    k_ax = "".join(next(letters) for _ in range(nd))
    grouped = b.layout("reshape", win_node, (n, g, c // g) + tuple(outs) + tuple(kernel))
    wg = b.layout("reshape", w, (g, cout // g, c // g) + tuple(kernel))
    y = b.contract(f"ngc{o_ax}{k_ax},goc{k_ax}->ngo{o_ax}", grouped, wg)
    if col2im:  # a transposed convolution adds its patches up in half precision (approx.kernel)
        y.attrs["_col2im"] = True
    y = b.layout("reshape", y, (n, cout) + tuple(outs))
    if bias is not None:
        bn = b.layout("reshape", b.node_of(bias), (cout,) + (1,) * nd)
        y = b.pointwise(lambda s, t: s + t, [y, bn], y.shape)
        y.attrs["_sequential"] = ("float32",)  # Note [Sequential reverse sums] (approx.py)
    if tuple(y.shape) != tuple(val.shape):
        raise UnsupportedOp(f"convolution: symgrad's output shape {y.shape} differs from torch's {tuple(val.shape)}")
    return y


def _conv_transpose(b, x, w, bias, stride, padding, dilation, output_padding, groups, val):
    """conv_transpose = a stride-1 convolution of the input spread out by ``stride`` and padded by
    ``d (k - 1) - p``, with the kernel flipped and its channel axes swapped per group."""
    nd = len(stride)
    n, c = x.shape[:2]
    kernel = w.shape[2:]
    spread_shape = [(s - 1) * st + 1 for s, st in zip(x.shape[2:], stride)]
    spread = np.zeros((n, c, *spread_shape), np.int64)
    spread[(slice(None), slice(None), *[slice(None, None, st) for st in stride])] = _index_array(x)
    pads = [d * (k - 1) - p for d, k, p in zip(dilation, kernel, padding)]
    if any(p < 0 for p in pads):
        raise UnsupportedOp("conv_transpose with padding larger than dilation*(kernel-1)")
    spread = np.pad(spread, [(0, 0), (0, 0)] + [(p, p + op) for p, op in zip(pads, output_padding)])
    win = patches(spread, kernel, (1,) * nd, (0,) * nd, dilation)
    g = groups
    cin_g, cout_g = w.shape[0] // g, w.shape[1]
    flip_idx = _index_array(w)[(slice(None), slice(None), *[slice(None, None, -1)] * nd)]
    wf = b.select([w], flip_idx)  # (Cin, Cout/g, *K) flipped
    wf = b.layout("reshape", wf, (g, cin_g, cout_g) + tuple(kernel))
    wf = b.layout("permute", wf, (0, 2, 1) + tuple(range(3, 3 + nd)))
    wf = b.layout("reshape", wf, (g * cout_g, cin_g) + tuple(kernel))
    return _conv_core(b, b.select([x], win), wf, bias, groups, nd, val, col2im=True)


def _pool_args(args, nd):
    kernel = _tuple(args[1], nd)
    stride = _tuple(args[2], nd) if len(args) > 2 and args[2] else kernel
    padding = _tuple(args[3], nd) if len(args) > 3 else (0,) * nd
    return kernel, stride, padding


@handles("aten.max_pool2d_with_indices", "aten.max_pool3d_with_indices")
def _max_pool(b: Builder, args, kwargs, val):
    x = b.node_of(args[0])
    nd = 2 if "2d" in str(b.fx_node.target) else 3
    kernel, stride, padding = _pool_args(args, nd)
    dilation = _tuple(args[4], nd) if len(args) > 4 else (1,) * nd
    ceil = bool(args[5]) if len(args) > 5 else False
    lead = x.shape[:-nd]
    x4 = b.layout("reshape", x, (int(np.prod(lead[:-1])) if len(lead) > 1 else 1, lead[-1]) + x.shape[-nd:])
    win = b.select([x4], patches(_index_array(x4), kernel, stride, padding, dilation, ceil), fill=-np.inf)
    out = b.reduce("max", win, tuple(range(2 + nd, 2 + 2 * nd)), False)
    out = b.layout("reshape", out, tuple(val[0].shape))
    return out, _indices(b, args)  # the indices: integer data, from the float64 values


@handles("aten.avg_pool2d", "aten.avg_pool3d")
def _avg_pool(b: Builder, args, kwargs, val):
    x = b.node_of(args[0])
    nd = 2 if "2d" in str(b.fx_node.target) else 3
    kernel, stride, padding = _pool_args(args, nd)
    ceil = bool(args[4]) if len(args) > 4 else False
    include_pad = bool(args[5]) if len(args) > 5 else True
    divisor = args[6] if len(args) > 6 else None
    lead = x.shape[:-nd]
    x4 = b.layout("reshape", x, (int(np.prod(lead[:-1])) if len(lead) > 1 else 1, lead[-1]) + x.shape[-nd:])
    idx = patches(_index_array(x4), kernel, stride, padding, (1,) * nd, ceil)
    axes = tuple(range(2 + nd, 2 + 2 * nd))
    total = b.reduce("sum", b.select([x4], idx), axes, False)
    if divisor:
        count = np.full(total.shape, float(divisor))
    elif include_pad:  # torch counts the padding but not the ceil_mode overhang past it
        per_axis = []
        for o, s, k, st, p in zip(total.shape[2:], x4.shape[2:], kernel, stride, padding):
            start = np.arange(o) * st - p
            per_axis.append(np.minimum(start + k, s + p) - start)
        count = np.broadcast_to(np.prod(np.meshgrid(*per_axis, indexing="ij"), axis=0), total.shape).astype(np.float64)
    else:
        count = (idx > 0).sum(axis=axes).astype(np.float64)
    import torch

    out = b.pointwise(lambda s, c: s / c, [total, torch.from_numpy(count)], total.shape)
    return b.layout("reshape", out, tuple(val.shape))


def _indices(b: Builder, args):
    import torch

    with torch.no_grad():
        return b.fx_node.target(b.value_of(args[0]), *args[1:])[1]


def _adaptive_windows(s: int, o: int) -> np.ndarray:
    """``(o, k)`` positions of each adaptive window along an axis of size ``s`` (-1 past its end)."""
    start = (np.arange(o) * s) // o
    end = -((-(np.arange(o) + 1) * s) // o)
    k = int((end - start).max())
    pos = start[:, None] + np.arange(k)
    return np.where(pos < end[:, None], pos, -1)


@handles("aten.adaptive_max_pool2d", "aten.adaptive_max_pool3d", "aten.adaptive_max_pool1d")
def _adaptive_max_pool(b: Builder, args, kwargs, val):
    x = b.node_of(args[0])
    sizes = tuple(args[1])
    nd = len(sizes)
    spatial = x.shape[-nd:]
    wins = [_adaptive_windows(s, o) for s, o in zip(spatial, sizes)]
    grids = np.meshgrid(*[np.arange(o) for o in sizes], *[np.arange(w.shape[1]) for w in wins], indexing="ij")
    pos = [wins[i][grids[i], grids[nd + i]] for i in range(nd)]
    valid = np.all([p >= 0 for p in pos], axis=0)
    idx = _index_array(x)[(Ellipsis, *[np.maximum(p, 0) for p in pos])]
    idx = np.where(valid, idx, 0)
    win = b.select([x], idx, fill=-np.inf)
    out = b.reduce("max", win, tuple(range(len(x.shape), len(x.shape) + nd)), False)
    return out, _indices(b, args)


@handles("aten._adaptive_avg_pool3d", "aten._adaptive_avg_pool2d", "aten.adaptive_avg_pool3d")
def _adaptive_avg_pool(b: Builder, args, kwargs, val):
    """The mean over each adaptive window (windows of different sizes: padded, divided by the count)."""
    import torch

    x = b.node_of(args[0])
    sizes = tuple(args[1])
    nd = len(sizes)
    wins = [_adaptive_windows(s, o) for s, o in zip(x.shape[-nd:], sizes)]
    grids = np.meshgrid(*[np.arange(o) for o in sizes], *[np.arange(w.shape[1]) for w in wins], indexing="ij")
    pos = [wins[i][grids[i], grids[nd + i]] for i in range(nd)]
    valid = np.all([p >= 0 for p in pos], axis=0)
    idx = np.where(valid, _index_array(x)[(Ellipsis, *[np.maximum(p, 0) for p in pos])], 0)
    axes = tuple(range(len(x.shape), len(x.shape) + nd))
    total = b.reduce("sum", b.select([x], idx), axes, False)
    count = torch.from_numpy(valid.sum(axis=tuple(range(nd, 2 * nd))).astype(np.float64))
    return b.pointwise(lambda s, c: s / c, [total, count], tuple(val.shape))


from . import aten_ext, aten_scan  # noqa: E402,F401 - register the handlers defined there
