"""The importer's table: torch callables, tensor methods and nn modules -> symbolic forms, as data.

One :class:`Rule` per torch op the fx importer understands.  A rule says

- ``symbolic``: the op on ``SymTensor`` arguments (for a module: ``fn(module, get, *args, **kwargs)``,
  where ``get("weight")`` is the module's parameter as a tensor of symbols);
- ``batch``: how the op treats the batch dimension (see ``symgrad/importer/batch.py``): the name of
  a rule there, or ``None`` for "unknown", which makes symgrad explode the whole batch instead of
  deriving once per sample;
- ``notes``: shown in the README's coverage table.

Elementwise ops point at rows of the op table (``symgrad.ops``): the table is the one source of
their SymPy forms, derivatives and kink conventions.  ``register(target, symbolic, batch=...)``
adds a rule for a user op; ``coverage_rows()`` generates the README's coverage table.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable

import symengine as se
import sympy as sp

from ..symbolic import functional as sgf
from ..symbolic.numbers import number
from ..symbolic.tensor import SymTensor, as_symtensor
from ..errors import UnsupportedOp
from ..ops import OPS

__all__ = ["Rule", "RULES", "register", "lookup", "coverage_rows", "describe_target"]


@dataclass
class Rule:
    """One importer row (see the module docstring)."""

    kind: str  # "function", "method" or "module"
    target: Any  # the callable, the method name, or the nn.Module class
    symbolic: Callable
    batch: str | None = None
    notes: str = ""
    form: str = ""  # symbolic form shown in the coverage table


RULES: dict[tuple[str, Any], Rule] = {}


def describe_target(target) -> str:
    """``torch.nn.functional.relu``, ``Tensor.view``, ``torch.nn.Linear``: a readable name."""
    if isinstance(target, str):
        return f"Tensor.{target}"
    name = getattr(target, "__name__", None) or repr(target)
    try:
        import torch
        import torch.nn as nn
        import torch.nn.functional as F

        for prefix, namespace in (("torch.nn.functional", F), ("torch", torch), ("torch.nn", nn)):
            if getattr(namespace, name, None) is target:
                return f"{prefix}.{name}"
    except ImportError:  # pragma: no cover
        pass
    module = getattr(target, "__module__", None) or ""
    if module in ("_operator", "operator"):
        return f"operator.{name}"
    return f"{module}.{getattr(target, '__qualname__', name)}" if module else name


def _kind_of(target) -> str:
    if isinstance(target, str):
        return "method"
    if isinstance(target, type):
        return "module"
    return "function"


def register(target, symbolic: Callable, *, batch: str | None = None, notes: str = "", form: str = "",
             replace: bool = True) -> Rule:
    """Teach the importer a torch op (the hook for user ops).

    ``target``: a function as fx records it (``torch.special.erf``, ``my_fn`` wrapped with
    ``torch.fx.wrap``), a tensor method name (``"erf"``) or an ``nn.Module`` class (made a leaf of the
    trace, so its own forward and backward are never looked into).  ``symbolic``: the op on
    ``SymTensor``s, written with ``symgrad`` functions (``sg.tanh``, ``sg.sum``, ...); for a module
    class, ``symbolic(module, get, *args)`` with ``get("weight")`` its parameters as symbols.
    ``batch``: ``"pointwise"`` if the op treats every sample alone elementwise (any rule name of
    ``symgrad.importer.batch.BATCH_RULES``), ``None`` if unknown (sound, but slower).
    """
    kind = _kind_of(target)
    if batch is not None:
        from .batch import BATCH_RULES

        if batch not in BATCH_RULES:
            raise ValueError(f"batch={batch!r} is not a batch rule; choose one of {', '.join(sorted(BATCH_RULES))} or None")
    key = (kind, target)
    if key in RULES and not replace:
        raise ValueError(f"{describe_target(target)} already has an importer rule; pass replace=True")
    rule = Rule(kind, target, symbolic, batch, notes, form)
    RULES[key] = rule
    return rule


def lookup(kind: str, target) -> Rule | None:
    """The rule for an fx node's target; modules also match through their base classes."""
    if kind == "module":
        for cls in type(target).__mro__ if not isinstance(target, type) else target.__mro__:
            rule = RULES.get(("module", cls))
            if rule is not None:
                return rule
        return None
    try:
        return RULES.get((kind, target))
    except TypeError:  # unhashable target
        return None


# -- symbolic forms -----------------------------------------------------------------------------

def _arg(args, kwargs, i, name, default=None):
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


def _elementwise_fn(name: str):
    """``fn(x, *params)`` for an op-table row; parameters passed positionally or by name."""
    row = OPS[name]
    param_names = list(row.params)

    def fn(x, *args, **kwargs):
        params = {k: v for k, v in zip(param_names, args)}
        params.update({k: v for k, v in kwargs.items() if k in param_names})
        params = {k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for k, v in params.items()}
        return sgf.apply_op(name, x, **params)

    return fn


def _gelu(x, approximate="none"):
    return sgf.gelu(x, approximate=approximate)


def _clamp(x, min=None, max=None):  # noqa: A002
    """``torch.clamp``: the op table's 'clamp' row; a missing bound is dropped from its Piecewise
    (same conditions, so the same convention at the kink: derivative 1 where x equals a bound)."""
    if min is not None and max is not None:
        return sgf.clamp(x, min, max)
    if min is None and max is None:
        raise UnsupportedOp("torch.clamp needs min or max")
    bound = se.sympify(float(number(min if min is not None else max, "torch.clamp's bound")))
    if min is not None:
        return as_symtensor(x).map(lambda e: se.Piecewise((bound, e < bound), (e, True)))
    return as_symtensor(x).map(lambda e: se.Piecewise((bound, e > bound), (e, True)))


def _softmax(fn):
    def apply(x, dim=None, *args, **kwargs):
        if dim is None:
            dim = kwargs.get("dim")
        if dim is None:
            raise UnsupportedOp("softmax without dim= (torch's deprecated implicit dim); pass dim explicitly")
        return fn(x, dim)

    return apply


def _reduction(fn):
    def apply(x, dim=None, keepdim=False, dtype=None):
        return fn(as_symtensor(x), dim, keepdim)

    return apply


def _linear(x, weight, bias=None):
    out = as_symtensor(x) @ as_symtensor(weight).T
    return out + bias if bias is not None else out


def _shape_args(args):
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else tuple(args)


def _dropout(x, p=0.5, training=True, inplace=False):
    if training and p > 0:
        raise UnsupportedOp("F.dropout(..., training=True) makes the forward random: call model.eval() "
                            "(or pass training=False) before checking")
    return x


def _loss(fn, allowed: tuple[str, ...]):
    def apply(input, target, *args, **kwargs):  # noqa: A002
        for k in ("size_average", "reduce"):
            if kwargs.get(k) is not None:
                raise UnsupportedOp(f"the deprecated {k}= argument of {fn.__name__} is not supported; use reduction=")
        extra = {k: v for k, v in kwargs.items() if k not in ("size_average", "reduce") and v is not None}
        bad = [k for k in extra if k not in allowed]
        if bad or args:
            raise UnsupportedOp(f"{fn.__name__}: symgrad supports the arguments {', '.join(allowed)} "
                                f"(got {', '.join(bad) or 'positional extras'})")
        return fn(input, target, **extra)

    return apply


def _batchnorm(mod, get, x):
    if mod.training:
        raise UnsupportedOp(f"{type(mod).__name__} in training mode normalises with batch statistics and updates "
                            "running stats: call model.eval() before checking")
    if not mod.track_running_stats or mod.running_mean is None:
        raise UnsupportedOp(f"{type(mod).__name__} without running stats uses batch statistics; not supported")
    x = as_symtensor(x)
    extra = (1,) * (x.ndim - 2)
    mean = as_symtensor(mod.running_mean).reshape((-1,) + extra)
    var = as_symtensor(mod.running_var).reshape((-1,) + extra)
    scale = (var + float(number(mod.eps, f"{type(mod).__name__}.eps"))).map(lambda e: 1 / se.sqrt(e))
    out = (x - mean) * scale
    if mod.affine:
        out = out * get("weight").reshape((-1,) + extra) + get("bias").reshape((-1,) + extra)
    return out


def _activation_module(row_name: str, attrs: tuple[str, ...]):
    fn = _elementwise_fn(row_name)

    def apply(mod, get, x):
        return fn(x, **{a: getattr(mod, a) for a in attrs})

    return apply


def _fill():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    def f(target, sym, batch, notes="", form=""):
        register(target, sym, batch=batch, notes=notes, form=form)

    # arithmetic: operators, torch functions and tensor methods
    arith = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "truediv": operator.truediv,
             "pow": operator.pow}
    for name, opf in arith.items():
        f(opf, opf, "pointwise", form=f"a {dict(add='+', sub='-', mul='*', truediv='/', pow='**')[name]} b")
    f(operator.neg, operator.neg, "pointwise", form="-a")
    f(operator.matmul, lambda a, b: sgf.matmul(a, b), "matmul", form="Σ_k a[..., i, k] b[k, j]")
    f(torch.add, lambda a, b, alpha=1: a + alpha * b, "pointwise", form="a + alpha*b")
    f(torch.sub, lambda a, b, alpha=1: a - alpha * b, "pointwise", form="a - alpha*b")
    f(torch.mul, operator.mul, "pointwise", form="a * b")
    f(torch.div, operator.truediv, "pointwise", form="a / b")
    f(torch.pow, operator.pow, "pointwise", form="a ** b")
    f(torch.neg, operator.neg, "pointwise", form="-a")
    for t in (torch.matmul, torch.mm):
        f(t, lambda a, b: sgf.matmul(a, b), "matmul", form="Σ_k a[..., i, k] b[k, j]")
    for m, sym in {"add": lambda a, b, alpha=1: a + alpha * b, "sub": lambda a, b, alpha=1: a - alpha * b,
                   "mul": operator.mul, "div": operator.truediv, "pow": operator.pow,
                   "__add__": operator.add, "__radd__": lambda a, b: b + a, "__sub__": operator.sub,
                   "__rsub__": lambda a, b: b - a, "__mul__": operator.mul, "__rmul__": lambda a, b: b * a,
                   "__truediv__": operator.truediv, "__rtruediv__": lambda a, b: b / a,
                   "neg": operator.neg}.items():
        f(m, sym, "pointwise")
    for m in ("matmul", "mm"):
        f(m, lambda a, b: sgf.matmul(a, b), "matmul")

    # elementwise ops of the op table: torch.*, F.*, Tensor.* and nn modules
    for name, row in OPS.items():
        fn = _elementwise_fn(name)
        targets = {row.torch}
        short = row.torch.rpartition(".")[2]
        for mod in (torch, F):
            if hasattr(mod, short):
                targets.add(f"{mod.__name__}.{short}")
        for dotted in sorted(targets):
            module, _, attr = dotted.rpartition(".")
            obj = getattr(torch if module == "torch" else F, attr, None)
            if obj is not None and name not in ("gelu_tanh", "clamp"):
                f(obj, fn if name != "gelu" else _gelu, "pointwise", notes=row.doc, form=f"op table row {name!r}")
        if hasattr(torch.Tensor, short) and name not in ("gelu_tanh", "clamp", "gelu"):
            f(short, fn, "pointwise", notes=row.doc, form=f"op table row {name!r}")
        if row.module:
            cls = getattr(nn, row.module.rpartition(".")[2])
            attrs = tuple(a for a in row.params if hasattr(cls, "__constants__") and a in cls.__constants__)
            if name == "gelu":
                f(cls, lambda mod, get, x: _gelu(x, mod.approximate), "pointwise", notes=row.doc + "; approximate='tanh' too",
                  form="op table rows 'gelu', 'gelu_tanh'")
            else:
                f(cls, _activation_module(name, attrs), "pointwise", notes=row.doc, form=f"op table row {name!r}")
    for t in (torch.clamp, torch.clip, "clamp", "clip"):
        f(t, _clamp, "pointwise", notes=OPS["clamp"].doc, form="op table row 'clamp'")
    f(F.relu6, lambda x, inplace=False: _elementwise_fn("hardtanh")(x, 0, 6), "pointwise", form="hardtanh(x, 0, 6)")
    f(nn.ReLU6, lambda mod, get, x: _elementwise_fn("hardtanh")(x, 0, 6), "pointwise", form="hardtanh(x, 0, 6)")
    f(F.sigmoid, _elementwise_fn("sigmoid"), "pointwise", form="op table row 'sigmoid'")
    f(F.tanh, _elementwise_fn("tanh"), "pointwise", form="op table row 'tanh'")

    # linear layers
    f(F.linear, _linear, "linear", form="x @ W.T + b")
    f(nn.Linear, lambda mod, get, x: _linear(x, get("weight"), get("bias") if mod.bias is not None else None),
      "linear", form="x @ W.T + b", notes="parameters named <module>.weight[i, j], <module>.bias[i]")

    # softmax family
    for t in (F.softmax, torch.softmax, "softmax"):
        f(t, _softmax(sgf.softmax), "along_dim", form="exp(x) / Σ_dim exp(x)")
    for t in (F.log_softmax, torch.log_softmax, "log_softmax"):
        f(t, _softmax(sgf.log_softmax), "along_dim", form="x - log Σ_dim exp(x)")
    f(nn.Softmax, lambda mod, get, x: _softmax(sgf.softmax)(x, mod.dim), "along_dim", form="exp(x) / Σ_dim exp(x)")
    f(nn.LogSoftmax, lambda mod, get, x: _softmax(sgf.log_softmax)(x, mod.dim), "along_dim",
      form="x - log Σ_dim exp(x)")

    # reductions and shapes
    for t in (torch.sum, "sum"):
        f(t, _reduction(sgf.sum), "reduce", form="Σ over dim")
    for t in (torch.mean, "mean"):
        f(t, _reduction(sgf.mean), "reduce", form="Σ over dim / count")
    for m in ("view", "reshape"):
        f(m, lambda x, *shape: as_symtensor(x).reshape(_shape_args(shape)), "reshape", form="same elements, new shape")
    f(torch.reshape, lambda x, shape: as_symtensor(x).reshape(tuple(shape)), "reshape", form="same elements, new shape")
    for t in (torch.flatten, "flatten"):
        f(t, lambda x, start_dim=0, end_dim=-1: as_symtensor(x).flatten(start_dim, end_dim), "flatten")
    f(nn.Flatten, lambda mod, get, x: as_symtensor(x).flatten(mod.start_dim, mod.end_dim), "flatten",
      notes="start_dim=1 keeps samples apart")
    for t in (torch.transpose, "transpose"):
        f(t, lambda x, d0, d1: as_symtensor(x).transpose(d0, d1), "transpose")
    f("t", lambda x: as_symtensor(x).t(), "transpose")
    f("permute", lambda x, *dims: as_symtensor(x).permute(*dims), "permute")
    f("unsqueeze", lambda x, d: as_symtensor(x).unsqueeze(d), "unsqueeze")
    f(torch.unsqueeze, lambda x, d: as_symtensor(x).unsqueeze(d), "unsqueeze")
    f("squeeze", lambda x, d=None: as_symtensor(x).squeeze(d), "squeeze")
    f(torch.squeeze, lambda x, d=None: as_symtensor(x).squeeze(d), "squeeze")
    f(torch.cat, lambda ts, dim=0: SymTensor(__import__("numpy").concatenate([as_symtensor(t).data for t in ts], axis=dim)),
      "cat", form="concatenation")
    f("size", lambda x, d=None: as_symtensor(x).size(d), "size", notes="shape arithmetic is exact")
    f("dim", lambda x: as_symtensor(x).ndim, "size")
    f("contiguous", lambda x: x, "identity")
    f(operator.getitem, operator.getitem, "getitem", notes="indexing; a batched tensor indexed explodes the batch")
    f(getattr, lambda x, name: getattr(x, name) if name in ("shape", "T", "ndim") else None if name in ("dtype", "device")
      else _no_attr(name), "getattr", notes="shape, T, ndim; dtype and device only for casts")
    # comparisons (0/1 entries, as a bool tensor in arithmetic) and torch.where
    for op in ("gt", "lt", "ge", "le", "eq", "ne"):
        cmp = lambda a, b, _op=op: sgf.comparison(a, b, _op)  # noqa: E731
        for target in (getattr(operator, op), getattr(torch, op), op, f"__{op}__"):
            f(target, cmp, "pointwise", form=f"Piecewise((1, a {op} b), (0, True))",
              notes="a bool tensor; where a == b it is a kink" if target is getattr(operator, op) else "")
    f(torch.where, sgf.where, "pointwise", form="Piecewise((a, cond), (b, True))")
    f("where", lambda x, cond, other: sgf.where(cond, x, other), "pointwise", form="x.where(cond, other)")
    for m in ("float", "double", "half", "bool"):
        f(m, lambda x: x, "identity", notes="dtype casts do not change the symbolic value" if m == "float" else "")
    f("to", lambda x, *args, **kwargs: x, "identity", notes="dtype / device casts only")
    f("type_as", lambda x, other: x, "identity")
    for t, value in ((torch.zeros_like, 0), (torch.ones_like, 1)):
        f(t, lambda x, *args, _v=value, **kwargs: as_symtensor(x).map(lambda e, _w=_v: se.Integer(_w)), "pointwise",
          form=f"{value} everywhere")
    f(torch.maximum, sgf.maximum, "pointwise", notes="a tie splits the gradient in half, as torch")
    f(torch.minimum, sgf.minimum, "pointwise", notes="a tie splits the gradient in half, as torch")

    # state: dropout (eval mode only), batch norm (eval mode only), identity
    f(F.dropout, _dropout, "identity", notes="eval mode (training=False) only")
    for cls in (nn.Dropout, nn.AlphaDropout):
        f(cls, lambda mod, get, x: _dropout(x, mod.p, mod.training), "identity", notes="eval mode only")
    for cls in (nn.BatchNorm1d, nn.BatchNorm2d):
        f(cls, _batchnorm, "channelwise", form="(x - running_mean) / sqrt(running_var + eps) * w + b",
          notes="eval mode only (running stats)")
    f(nn.Identity, lambda mod, get, x: x, "identity")

    # losses: F.* and nn modules
    losses = [
        (F.mse_loss, nn.MSELoss, sgf.mse_loss, ("reduction",), ()),
        (F.l1_loss, nn.L1Loss, sgf.l1_loss, ("reduction",), ()),
        (F.binary_cross_entropy, nn.BCELoss, sgf.binary_cross_entropy, ("reduction", "weight"), ("weight",)),
        (F.binary_cross_entropy_with_logits, nn.BCEWithLogitsLoss, sgf.binary_cross_entropy_with_logits,
         ("reduction", "weight", "pos_weight"), ("weight", "pos_weight")),
        (F.cross_entropy, nn.CrossEntropyLoss, sgf.cross_entropy, ("reduction", "weight", "ignore_index", "label_smoothing"),
         ("weight", "ignore_index", "label_smoothing")),
    ]
    for fn, cls, sym, allowed, attrs in losses:
        f(fn, _loss(sym, allowed), "loss", form=f"sg.{sym.__name__}", notes="reduction mean/sum/none")
        f(cls, lambda mod, get, i, t, _s=sym, _a=allowed, _at=attrs: _loss(_s, _a)(i, t, **_module_kwargs(mod, _at)),
          "loss", form=f"sg.{sym.__name__}", notes="reduction mean/sum/none")


def _module_kwargs(mod, attrs):
    kwargs = {"reduction": mod.reduction}
    for a in attrs:
        value = getattr(mod, a, None)
        if value is not None:
            kwargs[a] = number(value, f"{type(mod).__name__}.{a}") if isinstance(value, (int, float, str)) \
                else as_symtensor(value)
    return kwargs


def _no_attr(name):
    raise UnsupportedOp(f"attribute Tensor.{name} is not supported by symgrad's importer (known: shape, T, ndim; "
                        "dtype and device for casts)")


def coverage_rows() -> list[dict[str, str]]:
    """The importer's coverage table: one row per torch op (``torch op``, ``symbolic form``, ``batch``, ``notes``)."""
    rows = []
    for rule in RULES.values():
        rows.append({
            "torch op": describe_target(rule.target) + ("(...)" if rule.kind == "module" else ""),
            "kind": rule.kind,
            "symbolic form": rule.form or "-",
            "batch": rule.batch or "unknown (explodes the batch)",
            "notes": rule.notes,
        })
    return rows


_fill()
