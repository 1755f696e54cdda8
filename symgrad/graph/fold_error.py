"""The rounding a folded constant carries: a running error bound through the ops that fold it.

# Note [Rounding of folded constants]
# A constant the trace folds (Note [Folded constants] in trace.py) is charged FOLDED_ULPS units of
# its own size, which is right for one short chain of roundings on values of its own size.  It is
# not for interpolation weights: bicubic's weights are cubic polynomials of t = s - floor(s), the
# fraction of a source coordinate s = (i + 0.5) / scale - 0.5 that is up to the input's size (20,
# 200); s is rounded on its own scale, so t, and each weight, is off by a few ulps of s, not of t.
# torch's own bicubic upsampling by 2.3 failed in float64 and float32 (its kernel computes the
# weights by another formula than the decomposition the trace folds), and so did antialiased
# bilinear resizing in float32.  So every folded op also carries an absolute bound: its inputs'
# bounds carried through it (each input moved by its bound either way, the larger change kept:
# first order, like the rest of Note [Approx arithmetic]) plus an ulp of its result in the dtype torch
# computes it in, unless a narrower dtype holds it exactly.  An ulp, not the half a correctly rounded
# op errs by: torch's kernels compute their weights by their own formulas, not the decomposition's
# (with half an ulp, float32 bilinear resizing with align_corners=True failed; with nothing in
# float64, where the fold holds every result by construction, bicubic did).  A cast adds nothing:
# the fold rounds as torch does.  The constant is charged the larger of that bound and FOLDED_ULPS
# of its own size, not both (x * exp(3 c).double() with a float32 c was allowed 15 times its
# rounding, and a float64 backward 1e-5 off passed).  Step functions (floor, comparisons, integer
# casts) give data, exact: torch's index choice is its own, and the value they select is continuous
# across it.  Layout ops add no rounding.
"""

from __future__ import annotations

import math

import numpy as np

from .interpret_data import iter_tensors
from .trace import FOLDED_ULPS

__all__ = ["fold_error", "fold_eps", "traced_dtype", "errors_by_wide", "exact_fold", "deep_fold", "casts", "cast_margin",
           "flatten", "INDEX_STEPS"]

INDEX_STEPS = ("floor", "ceil", "trunc", "round")  # steps whose result torch may use as an index
_STEPS = INDEX_STEPS + ("sign", ".eq", ".ne", ".lt", ".le", ".gt", ".ge", "logical_",
          "bitwise_", "argmax", "argmin", "isnan", "isinf", "isfinite")
_LAYOUT = ("view", "reshape", "permute", "expand", "cat", "stack", "select", "slice", "index", "clone",
           "squeeze", "unsqueeze", "transpose", ".t.", "alias", "copy", "gather", "where", "flip", "roll",
           "repeat", "narrow", "split", "chunk", "unbind", "constant_pad", "full", "zeros", "ones", "empty",
           "arange", "scalar_tensor", "lift_fresh", "detach", "clamp", "minimum", "maximum", "amax", "amin")


def _moved(args: list, position: tuple, step) -> list:
    out = list(args)
    if len(position) == 1:
        out[position[0]] = args[position[0]] + step
    else:
        inner = list(args[position[0]])
        inner[position[1]] = inner[position[1]] + step
        out[position[0]] = type(args[position[0]])(inner)
    return out


def _positions(args: list):
    import torch

    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            yield (i,), a
        elif isinstance(a, (list, tuple)):
            for j, t in enumerate(a):
                if isinstance(t, torch.Tensor) and t.is_floating_point():
                    yield (i, j), t


def fold_error(target, args: list, kwargs: dict, out, errors: dict, dtype):
    """An absolute bound (float64 array of ``out``'s shape) on how far torch's own evaluation of this
    folded op may be from the float64 fold, given ``errors`` (id -> bound) of its folded inputs (the
    float64 ``args`` it was folded from) and the float ``dtype`` torch computes it in (None: no
    float output); None where ``out`` is no float tensor."""
    import torch

    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        return None
    name = str(target)
    base = out.detach().double()
    if any(s in name for s in _STEPS):
        return np.zeros(tuple(base.shape))
    # a cast rounds as torch's does (the fold runs it too): it carries its input's bound only
    rounds = dtype is not None and not ("_to_copy" in name or "convert_element_type" in name) and \
        not any(s in name for s in _LAYOUT)
    narrow = dtype is not None and torch.finfo(dtype).eps > torch.finfo(torch.float64).eps
    total = np.zeros(tuple(base.shape))
    with torch.no_grad(), np.errstate(invalid="ignore", over="ignore"):
        for position, t in _positions(args):
            err = errors.get(id(t))
            if err is None or not np.any(err):
                continue
            change = _carried(target, args, kwargs, position, t, np.asarray(err, np.float64), base)
            total = total + np.where(np.isfinite(change), change, 0.0)
        if rounds and narrow:  # Note [Scalars are rounded too]
            for i, a in enumerate(args):
                if not (isinstance(a, float) and math.isfinite(a)):
                    continue
                held_as = float(torch.tensor(a, dtype=dtype))
                if held_as != a:
                    step = abs(held_as - a)
                    change = _carried(target, args, kwargs, (i,), torch.tensor(a), np.float64(step), base)
                    total = total + np.where(np.isfinite(change), change, 0.0)
    if rounds:  # a rounding where a narrower dtype does not hold the result (arange(7) - 3 it does, in float16)
        held = np.zeros(tuple(base.shape), bool)
        if narrow:  # a float64 fold is held by construction
            with np.errstate(over="ignore", invalid="ignore"):
                held = (base.to(dtype).double() == base).numpy() & ~(total > 0)  # held, unless its inputs moved it
        total = total + np.where(held, 0.0, torch.finfo(dtype).eps * np.abs(base.numpy()))
    return total


# Note [Scalars are rounded too]
# A Python float in a folded op (``37 * (6 / 37)``, the source coordinate of bilinear resizing with
# align_corners=True, ``0.99 ** arange(n)``) is rounded by torch to the dtype it computes in; the fold
# kept it in float64.  At the last output column torch's coordinate was 5.9999995 (index 5, weight
# 0.9999995), the fold's exactly 6.0, and the result 6.0 "held" exactly in float32 got no bound at all:
# torch's own float32 resize failed by 4.8e-7 where 3.0e-7 was allowed.  Each such scalar is moved by
# its rounding in that dtype like a folded input, and a result counts as held only where nothing moved
# it.  (Its partner: a folded floor or integer cast takes torch's own pick, in interpret.py.)


def _carried(target, args, kwargs, position, t, err, base):
    """The change of the op's result when one folded input moves by its bound, either way; where
    the op will not run on the moved input (it raises, or its result changes shape) the input's
    largest absolute and relative bounds are carried to every entry (Note [Unmovable folds])."""
    import torch

    scalar = len(position) == 1 and isinstance(args[position[0]], float)
    step = float(err) if scalar else torch.as_tensor(err, dtype=t.dtype)  # a Python scalar stays one
    change = np.zeros(tuple(base.shape))
    for sign in (1.0, -1.0):
        try:
            moved = target(*_moved(args, position, sign * step), **kwargs)
        except Exception:  # noqa: BLE001 - an op that will not take the moved input: Note [Unmovable folds]
            moved = None
        if not isinstance(moved, torch.Tensor) or tuple(moved.shape) != tuple(base.shape):
            return _unmovable(t, err, base)
        change = np.maximum(change, np.abs(moved.detach().double().numpy() - base.numpy()))
    return change


# Note [Unmovable folds]
# An op that raises on its input moved by the input's bound, or whose result then changes shape (a
# data-dependent selection), cannot be asked how far the bound moves it.  Dropping the input's bound
# there would charge the result its own rounding alone: the unsound direction.  Instead every entry
# keeps the input's largest absolute bound and its largest relative bound times the result's size:
# first order for sums, products and selections of the input (an op that amplifies its input's error,
# exp of a large argument, is not covered; none such was seen to refuse its moved input).
def _unmovable(t, err, base) -> np.ndarray:
    size = np.abs(t.detach().double().cpu().numpy())
    err = np.broadcast_to(err, size.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(size > 0, err / size, 0.0)
    finite = np.isfinite(err)
    largest = float(err[finite].max()) if finite.any() else 0.0
    ratio = float(rel[np.isfinite(rel)].max()) if np.isfinite(rel).any() else 0.0
    return np.maximum(largest, ratio * np.abs(base.numpy()))


def traced_dtype(node):
    """The float dtype torch computes this node in (the widest ulp of its float outputs), or None."""
    import torch

    outs = [v.dtype for v in iter_tensors([node.meta.get("val")]) if v.is_floating_point()]
    return max(outs, key=lambda d: torch.finfo(d).eps) if outs else None


def errors_by_wide(b, args, wide, floored: bool = False, margin: float = 1.0) -> dict:
    """The folded inputs' bounds, keyed by the float64 tensors the fold runs on (``wide``: ``args``
    through ``_as_float64``, a copy where the dtype changes); ``floored``: each ``margin`` times over,
    and at least the FOLDED_ULPS a fold that is not exact is charged (Note [A cast settles a fold])."""
    out = {}
    for a, w in zip(iter_tensors(list(args)), iter_tensors(list(wide))):  # the same tensors, in order
        err = b.fold_abs.get(id(a))
        if floored and id(a) in b.folded and id(a) not in b.exact_folds:
            floor = FOLDED_ULPS * b.fold_eps.get(id(a), 0.0) * np.abs(a.detach().double().numpy())
            err = floor if err is None else np.maximum(margin * err, floor)
        if err is not None:
            out[id(w)] = err
    return out


# Note [A cast settles a fold]
# A folded constant that is not exact is charged FOLDED_ULPS units of the narrowest dtype on its way
# (Note [Folded constants] in trace.py).  Past a cast that is too much: ``linspace(-1, 1, 16)`` is
# computed in float32, a few float32 ulps from the fold, and its cast to bfloat16 rounds torch's value
# and the fold's to the same bfloat16 number unless they straddle a rounding boundary; it was charged
# 4 bfloat16 units (3 %), and a backward 2 % off passed.  A cast's result is the cast of a value
# within its input's bound (fold_abs, and at least the FOLDED_ULPS it would be charged), so it is off by
# at most what the cast does to the ends of that interval: 0 where both ends round alike, the step
# to the next representable number where they do not (``fold_error`` moves the input by its bound).
# Where the cast narrows, that bound is taken FOLDED_ULPS times over (its ulp per op is first order,
# and torch's float32 exp and sin are an ulp or two off: a sinusoidal table of 2,048 positions cast
# to float16, whose angles carry the exp's error times the position, failed torch's own gradient at 1
# in 3 draws); a widening cast passes the value on, and its bound as it is.
# That bound is complete where the chain before the cast is pointwise and layout ops, an ulp or so
# each (a sum's rounding grows with its length: past a reduction the cast keeps FOLDED_ULPS of its
# narrowest dtype), so the cast's result is charged it and no FOLDED_ULPS.  And an exact
# result needs no allowance: a sum, difference or product of exact values (given constants, exact
# folds, Python numbers the dtype holds), a layout op of them, or an arange of integers, whose float64
# result the traced dtype holds, is what torch computes too (each is one correctly rounded operation,
# and rounding a representable number changes nothing; a division is not listed, torch divides by a
# scalar through its reciprocal).  ``arange(1., 7.).to(torch.float64)`` was charged 4 float32
# units, and a float64 backward 1e-6 off passed.
_CASTS = ("aten._to_copy", "prims.convert_element_type", "aten.to.")
_EXACT_WHEN_HELD = ("aten.add.Tensor", "aten.sub.Tensor", "aten.mul.Tensor", "aten.neg.default")


def casts(target) -> bool:
    return str(target).startswith(_CASTS)


def cast_margin(node) -> float:
    """How many times over a cast takes its input's fold bound: FOLDED_ULPS where it narrows (which
    side of a rounding boundary torch's value lies on), 1 where it widens (the value passes unchanged)."""
    import torch

    src = node.args[0] if node.args else None
    before = traced_dtype(src) if hasattr(src, "meta") else None
    after = traced_dtype(node)
    if before is None or after is None:
        return FOLDED_ULPS
    return FOLDED_ULPS if torch.finfo(after).eps > torch.finfo(before).eps else 1.0


def deep_fold(b, target, args) -> bool:
    """Whether a folded op or one before it is neither pointwise nor layout (a sum, a product of
    matrices): its bound, an ulp per op, is not complete (Note [A cast settles a fold])."""
    import torch

    if any(id(t) in b.fold_deep for t in iter_tensors(list(args))):
        return True
    name = str(target)
    return not (torch.Tag.pointwise in getattr(target, "tags", ()) or casts(target) or any(s in name for s in _LAYOUT))


def exact_fold(b, node, target, args, out) -> bool:
    """Whether a folded op's result needs no FOLDED_ULPS: torch computes it as the float64 fold does
    (Note [Folded constants] in trace.py) or its bound is complete (Note [A cast settles a fold])."""
    inputs = [t for t in iter_tensors(list(args)) if t.is_floating_point()]
    if casts(target):
        return not any(id(t) in b.folded and id(t) not in b.exact_folds and id(t) in b.fold_deep for t in inputs)
    if any(id(t) in b.folded and id(t) not in b.exact_folds for t in inputs):
        return False
    vals = [v for v in iter_tensors([node.meta.get("val")]) if v.is_floating_point()]
    if all(str(v.dtype) == "torch.float64" for v in vals) and all(_traced_float64(a) for a in node.args):
        return True
    return _held_exactly(b, node, target, args, inputs, out)


def _held_exactly(b, node, target, args, inputs, out) -> bool:
    """An exact operation on exact values whose result the traced dtype holds (Note [A cast settles a fold])."""
    import torch

    name = str(target)
    if not (name in _EXACT_WHEN_HELD or any(s in name for s in _LAYOUT)) or "alpha" in (node.kwargs or {}):
        return False
    dtype = traced_dtype(node)
    if dtype is None or not isinstance(out, torch.Tensor) or any(np.any(b.fold_abs.get(id(t), 0.0)) for t in inputs):
        return False
    for a in flatten(args):
        if isinstance(a, float) and float(torch.tensor(a, dtype=dtype)) != a:
            return False
    if "arange" in name and not all(float(a).is_integer() for a in flatten(args) if isinstance(a, (int, float))):
        return False
    base = out.detach().double()
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(torch.isfinite(base).all()) and bool((base.to(dtype).double() == base).all())


def flatten(x):
    """The leaves of nested lists and tuples, in order."""
    if isinstance(x, (list, tuple)):
        for a in x:
            yield from flatten(a)
    else:
        yield x


def _traced_float64(arg) -> bool:
    """An fx argument that is not a floating tensor, or one traced in float64."""
    vals = [v for v in iter_tensors([getattr(arg, "meta", {}).get("val")]) if v.is_floating_point()]
    if isinstance(arg, (list, tuple)):
        return all(_traced_float64(a) for a in arg)
    return all(str(v.dtype) == "torch.float64" for v in vals)


def fold_eps(b, node, args) -> float:
    """The machine epsilon of the narrowest float dtype torch computes a folded value in: its own
    traced dtype and its folded inputs' (log of a float32 constant cast to float64 is float32's)."""
    import torch

    vals = [v for v in iter_tensors([node.meta.get("val")]) if v.is_floating_point()]
    eps = max((torch.finfo(v.dtype).eps for v in vals), default=0.0)
    for t in iter_tensors(list(args)):
        eps = max(eps, b.fold_eps.get(id(t), 0.0))
    return eps

