"""The handler table: each core ATen op as core nodes of the op graph, defined by its forward.

One entry per op, registered with :func:`handles`.  A handler gets the :class:`Builder`, the
call's arguments (graph ``Node`` for values that depend on inputs, torch tensors for constants,
Python values otherwise) and ``val``, the traced run's output (for shapes and integer results).

The pointwise ops, copies and ``detach`` are here; the other op groups register their handlers
from their own modules: contractions, reductions, layouts, selections and constants in
``aten_tensor``, convolution and pooling in ``aten_nn`` (more in ``aten_ext``, linear algebra in
``aten_linalg``), order statistics in ``aten_order``, scatter_reduce, embedding and packed
sequences in ``aten_seq``, softmax and logsumexp in ``aten_shift``, CTC in ``aten_ctc``.
``symgrad.graph.interpret`` imports them all.
"""

from __future__ import annotations

import math
import operator

import numpy as np
import sympy as sp

from ..compare.compare import EPS
from .functions import (bessel_i0, bessel_i0e, bessel_i1, bessel_i1e, ceil, expm1, expm1_either, expm1_exp, floor, log1p, narrowed, round_even,
                        sigmoid, trunc)
from .fold_error import traced_dtype
from .functions_stats import erfcx, log_ndtr
from .ir import Node
from .trace_grad import BACKWARD_UNSEEN, DECOMPOSED, EXP_SLOPE, IN_FUNCTION, IN_PLACE, OWN_STOP

__all__ = ["HANDLERS", "handles", "handler_for", "indices_read"]

HANDLERS: dict = {}


def handles(*names):
    def deco(fn):
        for n in names:
            HANDLERS[n] = fn
        return fn

    return deco


def handler_for(target):
    name = str(target)
    if name.startswith("prims."):  # torch's primitives, where they mean what the ATen op means
        name = "aten." + name[len("prims."):]
    if name in HANDLERS:
        return HANDLERS[name]
    packet = name.rsplit(".", 1)[0] if name.count(".") >= 2 else name
    return HANDLERS.get(packet)


def indices_read(fx_node) -> bool:
    """Whether an op's indices output (its second) is read by anything after it (Note [Ties of order
    statistics] in aten_order.py)."""
    return any(u.target is operator.getitem and len(u.args) > 1 and u.args[1] == 1 and len(u.users) > 0
               for u in fx_node.users)


def _pw(fn):
    """A handler for a pointwise op whose tensor/scalar operands are its positional arguments."""
    return lambda b, args, kwargs, val: b.pointwise(fn, list(args), tuple(val.shape))


def _pw_kw(fn, *names, **defaults):
    """Pointwise with keyword parameters (``alpha=`` of add/sub)."""
    def handler(b, args, kwargs, val):
        n = len(args)
        extra = [kwargs.get(k, defaults[k]) for k in names]
        return b.pointwise(lambda *ops: fn(*ops[:n], *ops[n:]), list(args) + extra, tuple(val.shape))

    return handler


def _pw_piece(*pieces):
    return sp.Piecewise(*pieces)


def _step(rel):
    return lambda x, y: _pw_piece((1, rel(x, y)), (0, True))


# Note [sinc at 0]
# torch's decomposition of sinc is where(x == 0, 1, sin(pi x) / (pi x)): differentiated twice, the
# constant branch says 0 at 0 and the other is 0/0, where sinc'' (0) = -pi**2/3 (its Taylor series
# 1 - (pi x)**2/6 + ...): the reference was NaN, and a correct double backward failed beside torch's
# own (which is NaN there too).  sinc is read whole, its branch at 0 being that series' first two
# terms, which hold the value and the first two derivatives there; elsewhere torch's quotient, whose
# derivative cancels near 0 as torch's backward does (the accuracy question says so, Note [Pointwise
# gradients on the op graph]).
_UNARY = {
    "aten.neg": lambda x: -x, "aten.exp": sp.exp, "aten.log": sp.log, "aten.sin": sp.sin, "aten.cos": sp.cos,
    "aten.tan": sp.tan, "aten.tanh": sp.tanh, "aten.sinh": sp.sinh, "aten.cosh": sp.cosh, "aten.asin": sp.asin,
    "aten.acos": sp.acos, "aten.atan": sp.atan, "aten.asinh": sp.asinh, "aten.acosh": sp.acosh,
    "aten.atanh": sp.atanh, "aten.erf": sp.erf, "aten.erfc": sp.erfc, "aten.erfinv": sp.erfinv,
    "aten.lgamma": sp.loggamma, "aten.digamma": lambda x: sp.polygamma(0, x),
    "aten.log1p": log1p, "aten.sigmoid": sigmoid, "aten.sqrt": sp.sqrt, "aten.rsqrt": lambda x: 1 / sp.sqrt(x),
    "aten.reciprocal": lambda x: 1 / x, "aten.exp2": lambda x: 2**x, "aten.log2": lambda x: sp.log(x) / sp.log(2),
    "aten.log10": lambda x: sp.log(x) / sp.log(10), "aten.floor": floor, "aten.ceil": ceil,
    "aten.trunc": trunc, "aten.round": round_even, "aten.frac": lambda x: x - trunc(x),
    "aten.relu": lambda x: _pw_piece((x, x > 0), (0, True)),
    "aten.abs": lambda x: _pw_piece((x, x > 0), (0, sp.Eq(x, 0)), (-x, True)),
    "aten.sign": lambda x: _pw_piece((1, x > 0), (0, sp.Eq(x, 0)), (-1, True)),
    "aten.sgn": lambda x: _pw_piece((1, x > 0), (0, sp.Eq(x, 0)), (-1, True)),
    "aten.sinc": lambda x: _pw_piece((sp.sin(sp.pi * x) / (sp.pi * x), sp.Ne(x, 0)),
                                     (1 - (sp.pi * x) ** 2 / 6, True)),  # Note [sinc at 0]
    "aten.logical_not": lambda x: _pw_piece((1, sp.Eq(x, 0)), (0, True)),
    "aten.bitwise_not": lambda x: _pw_piece((1, sp.Eq(x, 0)), (0, True)),
    "aten.square": lambda x: x**2,
    "aten.i0": bessel_i0, "aten.special_i0e": bessel_i0e, "aten.special_i1": bessel_i1,
    "aten.special_i1e": bessel_i1e,  # Note [Modified Bessel functions as torch's kernels] in functions.py
    "aten.special_erfcx": erfcx,  # Note [erfcx] in functions_stats.py
    "aten.special_log_ndtr": log_ndtr,  # Note [log_ndtr as torch's kernel] in functions_stats.py
}
for _name, _fn in _UNARY.items():
    HANDLERS[_name] = _pw(_fn)
    HANDLERS[_name + "_"] = HANDLERS[_name]  # in-place twins, as functional ops (the trace rebinds)


@handles("aten.expm1", "aten.expm1_")
def _expm1(b, args, kwargs, val):
    """expm1, or inside elu's decomposition (not in place) ``expm1_exp``, whose slope is exp (Note
    [elu's slope from its input] in trace_grad.py)."""
    meta = getattr(getattr(b, "fx_node", None), "meta", {})
    fn = expm1
    if meta.get(EXP_SLOPE) and not meta.get(IN_PLACE):
        fn = expm1_either if meta.get(IN_FUNCTION) or meta.get(BACKWARD_UNSEEN) else expm1_exp
    return b.pointwise(fn, list(args), tuple(val.shape))


def _maximum(x, y):  # torch splits a tie's gradient in half
    return _pw_piece((x, x > y), (y, x < y), ((x + y) / 2, True))


def _minimum(x, y):
    return _pw_piece((x, x < y), (y, x > y), ((x + y) / 2, True))


_BINARY = {
    "aten.mul": operator.mul, "aten.div": operator.truediv,
    "aten.pow": operator.pow, "aten.maximum": _maximum, "aten.minimum": _minimum, "aten.fmax": _maximum,
    "aten.fmin": _minimum, "aten.atan2": sp.atan2, "aten.gt": _step(sp.StrictGreaterThan),
    "aten.lt": _step(sp.StrictLessThan), "aten.ge": _step(sp.GreaterThan), "aten.le": _step(sp.LessThan),
    "aten.eq": _step(sp.Eq), "aten.ne": _step(sp.Ne),
    "aten.logical_and": lambda x, y: _pw_piece((1, sp.And(sp.Ne(x, 0), sp.Ne(y, 0))), (0, True)),
    "aten.logical_or": lambda x, y: _pw_piece((1, sp.Or(sp.Ne(x, 0), sp.Ne(y, 0))), (0, True)),
    "aten.bitwise_and": lambda x, y: _pw_piece((1, sp.And(sp.Ne(x, 0), sp.Ne(y, 0))), (0, True)),
    "aten.bitwise_or": lambda x, y: _pw_piece((1, sp.Or(sp.Ne(x, 0), sp.Ne(y, 0))), (0, True)),
    "aten.remainder": lambda x, y: x - floor(x / y) * y, "aten.fmod": lambda x, y: x - _trunc(x / y) * y,
    # xlogy is 0 at x = 0 even where log y is not finite; elsewhere (y > 0) x log y, whose x-derivative
    # log y holds at x = 0 too (torch's backward agrees)
    "aten.xlogy": lambda x, y: _pw_piece((0, sp.And(sp.Eq(x, 0), sp.Le(y, 0))), (x * sp.log(y), True)),
    # xlog1py likewise (Note [xlog1py as torch's kernel]): x log1p(y), 0 at x = 0 where log1p y is not finite
    "aten.special_xlog1py": lambda x, y: _pw_piece((0, sp.And(sp.Eq(x, 0), sp.Le(y, -1))), (x * log1p(y), True)),
    "aten.hypot": lambda x, y: sp.sqrt(x**2 + y**2),
    "aten.polygamma": lambda n, x: sp.polygamma(n, x),
    "aten.rsub": lambda x, y, alpha=1: y - alpha * x,
}


def _trunc(x):
    return trunc(x)


def _compare(fn):
    """A comparison; against an infinite number it is data computed from the values (SymPy's real
    symbols are finite, so ``Eq(s0, -oo)`` would fold to false)."""
    pointwise = _pw(fn)

    def handler(b, args, kwargs, val):
        import torch

        if not any(isinstance(a, float) and not math.isfinite(a) for a in args):
            return pointwise(b, args, kwargs, val)
        with torch.no_grad():
            return b.fx_node.target(*[b.value_of(a) if isinstance(a, Node) else a for a in args])

    return handler


# Note [xlog1py as torch's kernel]
# torch's decomposition of special_xlog1py is where(x == 0, 0, x * log1p(y)), whose derivative in x
# is 0 at x = 0; torch's kernel backward (what autograd runs) gives log1p(y) there, the derivative of
# x log1p(y), which is identically 0 along x = 0 only where it is not finite.  Traced through the
# decomposition the op graph's closed form said 0: torch's own xlog1py failed at x = 0 and a backward
# returning 0 there passed.  xlog1py is therefore not decomposed (trace.py) and is read like xlogy.
_COMPARISONS = ("aten.gt", "aten.lt", "aten.ge", "aten.le", "aten.eq", "aten.ne")
for _name, _fn in _BINARY.items():
    HANDLERS[_name] = _compare(_fn) if _name in _COMPARISONS else _pw(_fn)
    HANDLERS[_name + "_"] = HANDLERS[_name]
HANDLERS["aten.add"] = HANDLERS["aten.add_"] = _pw_kw(lambda x, y, a: x + a * y, "alpha", alpha=1)
HANDLERS["aten.sub"] = HANDLERS["aten.sub_"] = _pw_kw(lambda x, y, a: x - a * y, "alpha", alpha=1)
HANDLERS["aten.mul_"] = HANDLERS["aten.mul"]


# Note [A constant zero base]
# x**y differentiated by y is x**y log x, which is 0 (-inf) = NaN at x = 0.  Where the base is a
# constant (a number, a buffer, data: never differentiated), a zero base is a function of y alone:
# 0**y is 0 for y > 0 (derivative 0, torch's too), 1 at y = 0 (a jump: one-sided derivatives 0) and
# inf below.  The form says so, so the closed form is 0 where torch's is, not NaN.  A base that is
# an input keeps x**y: there the point is a cone point (Note [Cone points] in cones.py), and the
# x-derivative y x**(y - 1) must stay.
def _zero_base_pow(x, y):
    return _pw_piece((x**y, sp.Ne(x, 0)), (0, y > 0), (1, sp.Eq(y, 0)), (sp.oo, True))


def _constant_with_zero(x) -> bool:
    if isinstance(x, (int, float)):
        return x == 0
    if isinstance(x, Node):
        if x.kind != "leaf" or x.attrs.get("role") != "const":
            return False
        return bool(np.any(np.asarray(x.attrs["value"]) == 0))
    return hasattr(x, "dtype") and hasattr(x, "shape") and bool((x == 0).any())  # a constant tensor


def _pow(b, args, kwargs, val):
    base, ex = args[0], args[1]
    if _constant_with_zero(base) and not isinstance(ex, (int, float)):
        if isinstance(base, (int, float)):
            return b.pointwise(lambda y: _pw_piece((0, y > 0), (1, sp.Eq(y, 0)), (sp.oo, True)),
                               [ex], tuple(val.shape))
        return b.pointwise(_zero_base_pow, [base, ex], tuple(val.shape))
    return b.pointwise(operator.pow, [base, ex], tuple(val.shape))


HANDLERS["aten.pow"] = HANDLERS["aten.pow_"] = _pow


@handles("aten.div.Tensor_mode", "aten.div.Scalar_mode")
def _div_mode(b, args, kwargs, val):
    mode = kwargs.get("rounding_mode", args[2] if len(args) > 2 else None)
    fn = {None: lambda x, y: x / y, "floor": lambda x, y: floor(x / y), "trunc": lambda x, y: _trunc(x / y)}
    return b.pointwise(fn[mode], list(args[:2]), tuple(val.shape))


@handles("aten.where.self", "aten.where.ScalarSelf", "aten.where.ScalarOther", "aten.where.Scalar")
def _where(b, args, kwargs, val):
    return b.pointwise(lambda c, x, y: _pw_piece((x, sp.Ne(c, 0)), (y, True)), list(args), tuple(val.shape))


# Note [Clamp with min > max]
# torch.clamp(x, min, max) is min(max(x, min), max): where min > max every entry is max, and its
# backward's mask (min <= x <= max) is empty, so the derivative is 0.  Testing x < min first gave min
# there: torch's own clamp(x, 1, 0) failed its forward check.  The max piece comes first and also
# holds where min > max; with min <= max the two pieces never overlap, so nothing else moves.
@handles("aten.clamp", "aten.clamp.Tensor", "aten.clamp_", "aten.clamp_min", "aten.clamp_max")
def _clamp(b, args, kwargs, val):
    x = args[0]
    lo = args[1] if len(args) > 1 else kwargs.get("min")
    hi = args[2] if len(args) > 2 else kwargs.get("max")
    name = str(b.fx_node.target)
    if "clamp_max" in name:
        lo, hi = None, args[1]
    ops, parts = [x], []
    if lo is not None:
        ops.append(lo)
    if hi is not None:
        ops.append(hi)

    def fn(x, *bounds):  # torch: derivative 1 at both edges (x itself is kept when equal)
        bounds = list(bounds)
        low = bounds.pop(0) if lo is not None else None
        high = bounds.pop(0) if hi is not None else None
        if high is not None:  # min(max(x, low), high): high wins where low > high (Note [Clamp with min > max])
            parts.append((high, x > high if low is None else sp.Or(x > high, sp.Gt(low, high))))
        if low is not None:
            parts.append((low, x < low))
        return _pw_piece(*parts, (x, True))

    return b.pointwise(fn, ops, tuple(val.shape))


@handles("aten.nan_to_num")
def _nan_to_num(b, args, kwargs, val):
    return args[0]


@handles("aten.detach", "aten.detach_", "aten.detach_copy")
def _detach(b, args, kwargs, val):
    fx_node = getattr(b, "fx_node", None)
    if fx_node is not None and fx_node.meta.get(IN_FUNCTION) and not fx_node.meta.get(OWN_STOP):
        return args[0]  # Note [Inside a custom Function's forward]
    return b.stop(args[0])


@handles("aten.clone", "aten.alias", "aten.lift_fresh_copy", "aten.contiguous", "aten._to_copy",
         "aten.to.dtype", "aten.view_of", "aten._conj", "aten.resolve_conj",
         "aten.resolve_neg", "aten.positive", "aten.dropout", "aten.convert_element_type")
def _identity(b, args, kwargs, val):
    """Copies and casts; a cast of a value to an integer or bool dtype is data (grid_sample's floor of
    its grid), computed from the float64 values."""
    if isinstance(args[0], Node) and getattr(val, "is_floating_point", lambda: True)() is False:
        return b.value_of(args[0]).to(val.dtype)
    return _cast(b, args[0])


def _kernel_dtypes(b, x, i: int = 0) -> tuple | None:
    """(the fx node read now, its argument ``i``'s floating dtype, its own), names such as
    "bfloat16" (None where not floating), for a node ``x`` built from a torch kernel the user's code
    calls; None inside one of the trace's decompositions, whose dtypes are not torch's kernel's."""
    fx_node = getattr(b, "fx_node", None)
    if fx_node is None or fx_node.meta.get(DECOMPOSED) or not isinstance(x, Node) or len(fx_node.args) <= i \
            or not hasattr(fx_node.args[i], "meta"):
        return None
    s_dt, o_dt = traced_dtype(fx_node.args[i]), traced_dtype(fx_node)  # "torch.bfloat16"[6:]
    return fx_node, (str(s_dt)[6:] if s_dt is not None else None), (str(o_dt)[6:] if o_dt is not None else None)


def _cast(b, x, i: int = 0):
    """A cast between floating dtypes (of the fx node's argument ``i``) is a node of its own (Note
    [Nodes computed in a wider dtype] in approx.py): narrowing rounds its value; widening is exact,
    its reverse rule rounds the cotangent."""
    dtypes = _kernel_dtypes(b, x, i)
    if dtypes is None:
        fx_node = getattr(b, "fx_node", None)
        if fx_node is not None and fx_node.meta.get(DECOMPOSED) and isinstance(x, Node) and x.kind != "leaf":
            stored = traced_dtype(fx_node)  # the value now stored in this dtype (rules._widening)
            if stored is not None:
                x.attrs["_stored"] = str(stored)[6:]
        return x  # a decomposition's own upcast keeps the identity: its dtypes are not torch's kernel's
    _, s_dt, o_dt = dtypes
    if s_dt is None or o_dt is None or s_dt == o_dt:
        return x
    narrowing = EPS.get(o_dt, 0.0) > EPS.get(s_dt, 0.0)
    return b.pointwise((lambda u: narrowed(u)) if narrowing else (lambda u: u), [x])


TANGENT_DTYPE = "symgrad_tangent_dtype"  # an fx node whose forward-mode formula runs in a narrower dtype


def narrowed_cotangent(b, out, i: int = 0, tangent: bool = False):
    """``out`` made from the fx node's argument ``i`` with a ``dtype=`` wider than it (``cumsum``,
    ``cumprod``), whose backward formula rounds its cotangent to the argument's dtype first
    (``grad.to(self.scalar_type())``): after ``out``, a node exact forward whose reverse rounds the
    cotangent in that narrow dtype, as a widening cast's does (Note [Nodes computed in a wider dtype]).
    ``tangent``: torch's forward-mode formula runs in the narrow dtype too (``cumprod_jvp(...).to(dtype)``):
    the fx node's nodes charge their tangent rules there (interpret._note_dtype)."""
    dtypes = _kernel_dtypes(b, out, i)
    if dtypes is None or None in dtypes or EPS.get(dtypes[1], 0.0) <= EPS.get(dtypes[2], 0.0):
        return out
    fx_node, narrow, _ = dtypes
    if tangent:
        fx_node.meta[TANGENT_DTYPE] = narrow
    rounded = b.pointwise(lambda u: u, [out])
    rounded.attrs["_dtype"] = narrow  # its reverse rule in the narrow dtype; its forward is exact
    rounded.attrs["_narrows_cotangent"] = True  # (Note [A cotangent passed on as it is] in rules.py)
    return rounded


def computed_in_float32(b, nodes: list, out):
    """``out``, made of ``nodes`` for a half-precision fx node whose CPU kernel computes in float32
    and rounds its result once, and whose backward computes in float32 from that rounded result
    (Note [A half softmax in float32] in aten_shift.py): ``nodes`` are charged float32 roundings, ``out``
    reads its local derivatives from a rounded output, and a narrowing cast rounds it."""
    dtypes = _kernel_dtypes(b, out)
    if dtypes is None or dtypes[1] != dtypes[2] or dtypes[2] not in ("float16", "bfloat16"):
        return out
    half = dtypes[2]
    for n in nodes:  # torch's forward-mode formula is aten ops on the rounded result: half steps
        n.attrs["_dtype"], n.attrs["_tangent_dtype"] = "float32", half
    out.attrs["output_rounded_in"] = half
    return b.pointwise(lambda u: narrowed(u), [out])


@handles("aten.copy_", "aten.copy")
def _copy_(b, args, kwargs, val):
    """``copy(self, src)``: ``src``'s values in ``self``'s shape (broadcast)."""
    src = _cast(b, args[1], 1)  # into a narrower tensor: one rounding (Note [Nodes computed in a wider dtype])
    shape = tuple(val.shape)
    return b.layout("expand", src, shape) if getattr(src, "shape", shape) != shape else src
