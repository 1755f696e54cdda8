"""Which axis of every fx node holds the samples, decided op by op (never assumed).

# Note [Per-sample derivation]
A batch of N samples through a network is N copies of one computation.  When no op between the
inputs and the output (or the final loss reduction) mixes samples, symgrad derives the closed form
once, for one symbolic sample, and evaluates it vectorised over the batch: the symbolic cost does
not grow with N.  Whether that holds is decided here, soundly: every node gets a *batch info*

- ``None``: does not depend on the samples (parameters, constants, shapes of unbatched tensors);
- an ``int``: a tensor whose axis ``a`` indexes the samples, sample ``n`` in slice ``n`` alone;
- ``N``: an integer equal to the batch size (``x.size(0)``), allowed only as a reshape's batch entry;
- ``Shape(a)``: a shape tuple whose entry ``a`` is the batch size;
- ``Reduced(kind)``: the sum or mean over all samples of a per-sample quantity (the loss); only
  the graph's output may be one.

Each importer rule names a batch rule below.  A rule that cannot prove that samples stay apart
raises ``Mixing`` with the reason, and symgrad falls back to exploding the whole batch, which is
always right, only slower.  The inputs whose leading size is the batch size are the batched ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

__all__ = ["Mixing", "Reduced", "Shape", "N", "BATCH_RULES", "batch_info"]


class Mixing(Exception):
    """An op may mix samples (or symgrad cannot prove it does not)."""


class _BatchSize:
    def __repr__(self):
        return "N"


N = _BatchSize()


@dataclass(frozen=True)
class Shape:
    axis: int


@dataclass(frozen=True)
class Reduced:
    kind: str  # "sum" or "mean"


def _is_tensor(x) -> bool:
    return (type(x).__module__ or "").startswith("torch") and hasattr(x, "shape") and hasattr(x, "dtype")


class Ctx:
    """What a batch rule sees: real argument values, their batch infos, the real output."""

    def __init__(self, name, args, kwargs, infos, kwinfos, out, module=None):
        self.name, self.args, self.kwargs, self.infos, self.kwinfos = name, args, kwargs, infos, kwinfos
        self.out, self.module = out, module

    def arg(self, i, key, default=None):
        return self.args[i] if len(self.args) > i else self.kwargs.get(key, default)

    def info(self, i, key=None):
        if len(self.infos) > i:
            return self.infos[i]
        return self.kwinfos.get(key) if key else None

    def all_infos(self):
        flat = []
        for v, i in list(zip(self.args, self.infos)) + [(self.kwargs[k], self.kwinfos[k]) for k in self.kwargs]:
            if isinstance(v, (list, tuple)) and isinstance(i, (list, tuple)):
                flat += list(zip(v, i))
            else:
                flat.append((v, i))
        return flat


def _tensor_axis(info, what: str):
    if info is None or isinstance(info, int) and not isinstance(info, bool):
        return info
    raise Mixing(f"{what} uses {info!r} (a batch-size or reduced value) as a tensor")


def _no_batch_scalars(c: Ctx):
    for v, i in c.all_infos():
        if not _is_tensor(v) and i is not None:
            raise Mixing(f"{c.name} computes with the batch size ({i!r}): the result depends on how many samples there are")


def pointwise(c: Ctx):
    """Broadcasting elementwise op: all batched operands must put the samples on the same output axis."""
    _no_batch_scalars(c)
    out_nd = c.out.dim()
    axes, unbatched = set(), []
    for v, i in c.all_infos():
        if not _is_tensor(v):
            continue
        a = _tensor_axis(i, c.name)
        if a is None:
            unbatched.append(v)
        else:
            axes.add(out_nd - (v.dim() - a))
    if not axes:
        return None
    if len(axes) > 1:
        raise Mixing(f"{c.name} combines tensors whose samples lie on different axes")
    a = axes.pop()
    for v in unbatched:
        pos = a - (out_nd - v.dim())
        if pos >= 0 and v.shape[pos] != 1:
            raise Mixing(f"{c.name} broadcasts a tensor of shape {tuple(v.shape)} along the sample axis")
    return a


def identity(c: Ctx):
    return _tensor_axis(c.info(0, "input"), c.name)


def linear(c: Ctx):
    x = c.arg(0, "input")
    a = _tensor_axis(c.info(0, "input"), c.name)
    for v, i in c.all_infos()[1:]:
        if i is not None:
            raise Mixing(f"{c.name}: the weight or bias depends on the samples")
    if a is None:
        return None
    if x.dim() < 2 or a == x.dim() - 1:
        raise Mixing(f"{c.name} contracts the sample axis")
    return a


def matmul(c: Ctx):
    A, B = c.arg(0, "input"), c.arg(1, "other")
    ia, ib = _tensor_axis(c.info(0, "input"), c.name), _tensor_axis(c.info(1, "other"), c.name)
    if ia is None and ib is None:
        return None
    if ia is not None and ib is None and A.dim() >= 2 and ia < A.dim() - 1 and B.dim() <= 2:
        return ia
    if ia is None and ib is not None and A.dim() <= 2 and B.dim() == 2 and ib == 1:
        return c.out.dim() - 1
    raise Mixing(f"{c.name} contracts or pairs up the sample axis")


def along_dim(c: Ctx):
    """softmax / log_softmax: fine unless ``dim`` is the sample axis."""
    a = _tensor_axis(c.info(0, "input"), c.name)
    dim = c.arg(1, "dim") if c.module is None else c.module.dim
    if a is None:
        return None
    if dim is None or dim % c.args[0].dim() == a:
        raise Mixing(f"{c.name} normalises across samples (dim={dim})")
    return a


def reduce(c: Ctx):
    x = c.arg(0, "input")
    a = _tensor_axis(c.info(0, "input"), c.name)
    dim, keepdim = c.arg(1, "dim"), c.arg(2, "keepdim", False)
    kind = "mean" if "mean" in c.name else "sum"
    if a is None:
        return None
    if dim is None:
        return Reduced(kind)
    dims = {d % x.dim() for d in ((dim,) if isinstance(dim, int) else dim)}
    if a in dims:
        if dims == set(range(x.dim())) and not keepdim:
            return Reduced(kind)
        raise Mixing(f"{c.name} reduces over the sample axis but not over everything")
    return a if keepdim else a - sum(d < a for d in dims)


def reshape(c: Ctx):
    x = c.args[0]
    a = _tensor_axis(c.infos[0], c.name)
    if a is None:
        for i in c.infos[1:]:
            if i is not None:
                raise Mixing(f"{c.name} reshapes a sample-independent tensor to the batch size")
        return None
    shape = list(c.args[1:])
    infos = list(c.infos[1:])
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = list(shape[0])
        infos = list(infos[0]) if isinstance(infos[0], (tuple, list)) else [None] * len(shape)
    if isinstance(infos and infos[0], Shape):  # view(x.shape)
        infos = [N if k == infos[0].axis else None for k in range(len(shape))]
    if a != 0 or not shape or c.out.shape[0] != x.shape[0]:
        raise Mixing(f"{c.name} moves elements between samples")
    if not (infos[0] is N or shape[0] == -1) or any(i is not None for i in infos[1:]):
        raise Mixing(f"{c.name} hard-codes the batch size (use x.size(0) or -1 for the first entry)")
    return 0


def flatten(c: Ctx):
    x = c.arg(0, "input")
    a = _tensor_axis(c.info(0, "input"), c.name)
    if a is None:
        return None
    if c.module is not None:
        start, end = c.module.start_dim, c.module.end_dim
    else:
        start, end = c.arg(1, "start_dim", 0), c.arg(2, "end_dim", -1)
    nd = max(x.dim(), 1)
    start, end = start % nd, end % nd
    if x.dim() <= 1 or a < start:
        return a
    if a > end:
        return a - (end - start)
    raise Mixing(f"{c.name} flattens the sample axis together with others")


def transpose(c: Ctx):
    x = c.args[0]
    a = _tensor_axis(c.infos[0], c.name)
    if a is None:
        return None
    if len(c.args) == 1:  # .t()
        return a if x.dim() < 2 else 1 - a
    d0, d1 = c.args[1] % x.dim(), c.args[2] % x.dim()
    return d1 if a == d0 else d0 if a == d1 else a


def permute(c: Ctx):
    a = _tensor_axis(c.infos[0], c.name)
    if a is None:
        return None
    dims = c.args[1:]
    dims = list(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else list(dims)
    return [d % c.args[0].dim() for d in dims].index(a)


def unsqueeze(c: Ctx):
    a = _tensor_axis(c.infos[0], c.name)
    if a is None:
        return None
    d = c.arg(1, "dim") % (c.args[0].dim() + 1)
    return a + 1 if d <= a else a


def squeeze(c: Ctx):
    x = c.args[0]
    a = _tensor_axis(c.infos[0], c.name)
    if a is None:
        return None
    d = c.arg(1, "dim")
    if d is None:
        raise Mixing(f"{c.name} without dim would drop the sample axis of a one-sample batch")
    d = d % x.dim()
    if d == a:
        raise Mixing(f"{c.name} squeezes the sample axis")
    return a - 1 if (d < a and c.out.dim() < x.dim()) else a


def cat(c: Ctx):
    tensors, infos = c.arg(0, "tensors"), c.info(0, "tensors")
    dim = c.arg(1, "dim", 0)
    axes = {_tensor_axis(i, c.name) for i in infos}
    if axes == {None}:
        return None
    if len(axes) != 1:
        raise Mixing(f"{c.name} joins batched and unbatched tensors")
    a = axes.pop()
    if dim % tensors[0].dim() == a:
        raise Mixing(f"{c.name} concatenates along the sample axis")
    return a


def size(c: Ctx):
    a = _tensor_axis(c.infos[0], c.name)
    if a is None:
        return None
    d = c.arg(1, "dim")
    if d is None:
        return Shape(a) if c.name.endswith("size") else None
    return N if d % c.args[0].dim() == a else None


def getattr_rule(c: Ctx):
    name = c.args[1]
    a = _tensor_axis(c.infos[0], c.name)
    if name == "shape":
        return None if a is None else Shape(a)
    if name == "T":
        return None if a is None else c.args[0].dim() - 1 - a
    if name == "ndim":
        return None
    raise Mixing(f"attribute {name!r}")


def getitem(c: Ctx):
    base, info = c.args[0], c.infos[0]
    if isinstance(info, Shape):
        key = c.args[1]
        if isinstance(key, int):
            return N if key % len(base) == info.axis else None
        raise Mixing("slicing a shape that holds the batch size")
    if isinstance(info, (list, tuple)):
        return info[c.args[1]] if isinstance(c.args[1], int) else None
    if info is None and all(i is None for i in c.infos[1:]):
        return None
    raise Mixing(f"{c.name} indexes a batched tensor")


def channelwise(c: Ctx):
    a = _tensor_axis(c.info(0, "input"), c.name)
    if a is None or a == 0:
        return a
    raise Mixing(f"{c.name} normalises a tensor whose samples are not on axis 0")


def loss(c: Ctx):
    """A loss of (input, target): per-sample when both put the samples on axis 0 and no weight ties them."""
    ia, it = _tensor_axis(c.info(0, "input"), c.name), _tensor_axis(c.info(1, "target"), c.name)
    reduction = c.module.reduction if c.module is not None else c.arg(99, "reduction", "mean")
    weight = getattr(c.module, "weight", None) if c.module is not None else c.kwargs.get("weight")
    if ia is None and it is None:
        return None
    if ia != 0 or it != 0:
        raise Mixing(f"{c.name}: input and target must both hold the samples on axis 0")
    if weight is not None:
        raise Mixing(f"{c.name} with weight=: the weights tie samples together")
    if reduction == "none":
        return 0
    return Reduced("mean" if reduction == "mean" else "sum")


BATCH_RULES: dict[str, Callable[[Ctx], object]] = {
    "pointwise": pointwise, "identity": identity, "linear": linear, "matmul": matmul, "along_dim": along_dim,
    "reduce": reduce, "reshape": reshape, "flatten": flatten, "transpose": transpose, "permute": permute,
    "unsqueeze": unsqueeze, "squeeze": squeeze, "cat": cat, "size": size, "getattr": getattr_rule,
    "getitem": getitem, "channelwise": channelwise, "loss": loss,
}


def batch_info(rule_name: str | None, c: Ctx):
    """Apply the named rule; a consumer of a ``Reduced`` value, or an unknown rule, is ``Mixing``."""
    for _, i in c.all_infos():
        if isinstance(i, Reduced):
            raise Mixing(f"{c.name} uses the batch-reduced value; only the output may be one")
    if rule_name is None:
        if all(i is None for _, i in c.all_infos()):
            return None
        raise Mixing(f"{c.name} has no batch rule (register it with batch=...)")
    return BATCH_RULES[rule_name](c)
