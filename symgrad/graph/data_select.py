"""Selections that move bool or integer entries computed from graph nodes: data, run on the values
(Note [Bool entries moved beside a comparison])."""

from __future__ import annotations

from .ir import Node

__all__ = ["data_selection", "moves_data"]


def moves_data(val, args) -> bool:
    """Whether a selection moves bool or integer entries, some of them from graph nodes."""
    import torch

    vals = val if isinstance(val, (list, tuple)) else [val]
    return bool(vals) and all(isinstance(v, torch.Tensor) and not v.is_floating_point() for v in vals) \
        and _has_node(args)


def _has_node(x) -> bool:
    return isinstance(x, Node) or isinstance(x, (list, tuple)) and any(_has_node(a) for a in x)


# Note [Bool entries moved beside a comparison]
# A comparison is a node (a step, so that ties are kinks), but torch's result is bool: a mask built
# from it with slicing, copies and scatters (top-p filtering: ``remove[..., 1:] = remove[..., :-1]``)
# mixes such nodes with bool tensors that are already data.  Selecting by index tensors would read the
# bool data's 0/1 as positions; a selection whose result is bool or integer is therefore data, computed
# from the float64 values of its node operands cast to torch's dtype, as a cast of a node is.

def data_selection(b, target, args, kwargs, val):
    """The selection run on values: data (Note [Bool entries moved beside a comparison])."""
    import torch

    dtype = (val[0] if isinstance(val, (list, tuple)) else val).dtype

    def cast(a):
        if isinstance(a, Node):
            return b.value_of(a).to(dtype)
        return type(a)(cast(x) for x in a) if isinstance(a, (list, tuple)) else a

    with torch.no_grad():
        out = target(*cast(list(args)), **kwargs)
    for t in out if isinstance(out, (list, tuple)) else (out,):
        b.data_from_values[id(t)] = t
    return out
