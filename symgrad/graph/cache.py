"""The op graph's in-memory cache of traced graphs (Note [Graph cache]); the disk layer is diskcache.py."""

from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict

from ..ops import note_float32_constants
from . import diskcache

__all__ = ["key", "lookup", "remember", "known", "GRAPH_CACHE_SIZE"]

# Note [Graph cache]
# Tracing costs more than everything else on a repeat check, so the graph of a (function, leaf
# names/shapes/dtypes, integer inputs, target) is kept (LRU, ``GRAPH_CACHE_SIZE``; on disk too,
# Note [Disk cache] in diskcache.py) and its leaves refreshed with the new values.  Anything else
# the trace baked in (a tensor the function closes over, a branch taken on a value) shows as a
# disagreement of the forward row: such a graph is traced afresh before any derivative is compared.
GRAPH_CACHE_SIZE = 8
_GRAPHS: "OrderedDict" = OrderedDict()


def key(fn, symbolic, loss, target, names, tensors):
    import torch

    data = hashlib.sha1()
    for t in tensors:
        if not t.is_floating_point():
            data.update(t.detach().cpu().contiguous().numpy().tobytes())
    if target is not None and hasattr(target, "detach"):
        data.update(target.detach().double().cpu().contiguous().numpy().tobytes())
    shapes = tuple((n, tuple(t.shape), str(t.dtype)) for n, t in zip(names, tensors))
    state = ()
    if isinstance(fn, torch.nn.Module):  # Note [Module state] in diskcache.py: attributes and hooks too
        state = diskcache.module_state(fn, _identity)
    return (id(fn), id(symbolic), id(loss), shapes, data.hexdigest(), state)


def _identity(v):
    import torch

    if isinstance(v, torch.Tensor):  # a tensor attribute is baked into the graph: its values count
        raw = v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        return (tuple(v.shape), str(v.dtype), hashlib.sha1(raw).hexdigest())
    return (type(v).__qualname__, id(v))


def lookup(k, names, tensors, disk_key=None):
    entry = _GRAPHS.get(k)
    if entry is not None and entry[0]() is not None:
        _GRAPHS.move_to_end(k)
        graph = entry[1]
    else:
        graph = diskcache.load(disk_key)  # Note [Disk cache]
        if graph is None:
            return None
    # the float32 constants noted when it was traced (celu's 1/alpha), for this check (Note [Float32
    # constants of a check] in symgrad/ops.py): a cached graph is not traced again to note them
    note_float32_constants(getattr(graph, "float32_constants", ()))
    for name, t in zip(names, tensors):
        node = graph.inputs.get(name)
        if node is not None:
            node.attrs["value"] = t.detach().double().cpu().numpy()
    return graph


def remember(k, fn, graph) -> None:
    if getattr(graph, "specialized", ""):  # Note [Value-dependent branches] in interpret.py
        return
    try:
        ref = weakref.ref(fn)
    except TypeError:
        return
    _GRAPHS[k] = (ref, graph)
    _GRAPHS.move_to_end(k)
    while len(_GRAPHS) > GRAPH_CACHE_SIZE:
        _GRAPHS.popitem(last=False)


def known(k) -> bool:
    return k in _GRAPHS
