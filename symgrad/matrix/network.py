"""The network: a matrix expression of an ``nn.Module`` and its loss (``fx_rules.from_module`` builds it).

The batch is the rows: a Linear layer is ``z = h Wᵀ + 1 bᵀ``.  Every Linear output and every
activation output becomes a named symbol (``z1``, ``h1``, … and ``yhat`` for the model's output)
with its definition in ``Network.defs``, so gradients print as short closed forms.  Dimensions
are symbols (``N`` for the batch, ``d1``, ``d2``, … for the other sizes; a size of 1 stays 1):
the same expression is evaluated at full size and cross-checked at a tiny one.

A 2-D tensor ``(a, b)`` is an ``a×b`` matrix; a 1-D tensor ``(n,)`` is a ``1×n`` row (a 1-D
parameter or input is stored as an ``n×1`` column symbol ``v`` and used as ``vᵀ``); a 0-D
tensor is a scalar.  Anything else raises ``UnsupportedOp`` naming the fx node.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import numpy as np
import sympy as sp
from sympy import MatrixSymbol, OneMatrix

from symgrad.matrix.errors import UnsupportedOp
from symgrad.matrix.nodes import Elementwise, LogSoftmaxRows, hadamard, hpow, sum_all
from symgrad.ops import OPS, resolve_torch

__all__ = ["Network", "loss_kind", "loss_spec", "LossSpec"]


@dataclass
class Network:
    """A model and loss as a scalar matrix expression over named intermediate symbols."""

    loss: sp.Basic
    defs: dict  # MatrixSymbol -> expression, in forward order
    params: dict  # torch parameter name -> MatrixSymbol
    inputs: dict  # input name -> MatrixSymbol
    values: dict  # symbol name -> float64 2-D array
    shapes: dict  # torch name (parameter or input) -> torch shape
    dims: dict  # dimension symbol -> int
    delta_names: dict = field(default_factory=dict)  # var -> name of its cotangent symbol
    legend: dict = field(default_factory=dict)  # symbol name -> torch name
    signature: tuple = ()  # layer kinds, activations, loss (a summary: caches key on the expressions)
    cacheable: bool = True  # False when the forward takes a target among its inputs
    loss_spec: "LossSpec | None" = None  # the loss and its options (None: the model's own scalar)

    def refreshed(self, model, inputs: dict, target=None, spec: "LossSpec | None" = None) -> dict:
        """``values`` for the same architecture at new parameter, input and target values (and the
        loss's current options, ``spec``: class weights are data)."""
        params = dict(model.named_parameters())
        vals = {sym.name: matrix_value(params[n]) for n, sym in self.params.items()}
        vals.update({sym.name: matrix_value(inputs[n]) for n, sym in self.inputs.items()})
        if "t" in self.values:
            vals["t"] = matrix_value(target).reshape(self.values["t"].shape)
        if "y_onehot" in self.values:
            vals["y_onehot"] = onehot(target, self.values["y_onehot"].shape)
        if "y_w" in self.values:
            vals["y_w"] = (spec or self.loss_spec).weighted_targets(target, self.values["y_w"].shape)
        return vals

    def wrt(self) -> dict:
        """Torch name -> symbol for every differentiable leaf (parameters, float inputs)."""
        return {**self.params, **self.inputs}


def matrix_value(tensor) -> np.ndarray:
    """A tensor as the float64 2-D array of its symbol (a 1-D tensor is a column)."""
    import torch

    arr = tensor.detach().to(dtype=torch.float64).cpu().numpy()
    return arr.reshape(-1, 1) if arr.ndim == 1 else arr


def _labels(labels, n_classes: int, ignore_index=None) -> np.ndarray:
    """Class-index targets as an int array; an index out of range (other than ``ignore_index``)
    raises ``InputError``, as torch's cross_entropy does."""
    from symgrad.errors import InputError

    t = np.asarray(labels.detach().cpu().numpy()).reshape(-1).astype(np.int64)
    bad = ((t < 0) | (t >= n_classes)) & (t != ignore_index if ignore_index is not None else True)
    if bad.any():
        raise InputError(f"cross_entropy target {int(t[bad][0])} is out of range for {n_classes} classes"
                         + (f" (and is not ignore_index={ignore_index})" if ignore_index is not None else ""))
    return t


def onehot(labels, shape) -> np.ndarray:
    t = _labels(labels, shape[1])
    out = np.zeros(shape)
    out[np.arange(t.size), t] = 1.0
    return out


@dataclass(frozen=True)
class LossSpec:
    """A loss and the options the matrix engine implements (everything else is refused)."""

    kind: str  # "none", "mse", "bce_with_logits", "cross_entropy"
    reduction: str = "mean"
    ignore_index: int = -100  # cross_entropy
    weight: object = None  # cross_entropy class weights (a tensor), or None
    label_smoothing: float = 0.0  # cross_entropy

    def weighted(self, target) -> bool:
        """Whether the cross-entropy target enters as a weighted matrix ``y_w`` rather than the
        plain one-hot ``y_onehot`` (class weights, label smoothing or an ignored label)."""
        if self.kind != "cross_entropy":
            return False
        if self.weight is not None or self.label_smoothing:
            return True
        t = np.asarray(target.detach().cpu().numpy()) if target is not None else np.zeros(0)
        return bool((t == self.ignore_index).any())

    def key(self, target) -> tuple:
        """What the symbolic structure depends on (not the weights' values, which are data)."""
        return (self.kind, self.reduction, self.weighted(target), self.weight is not None, bool(self.label_smoothing))

    def weighted_targets(self, target, shape) -> np.ndarray:
        """``y_w`` such that torch's cross-entropy is ``-1ᵀ (y_w ⊙ log_softmax(z)) 1``:
        ``y_w[i, c] = valid_i ((1 - ε) w_{y_i} [c = y_i] + (ε / C) w_c) / D``, with ``w`` the class
        weights (1 without), ``valid_i`` false for ``ignore_index``, ``ε`` the label smoothing and
        ``D = Σ_i valid_i w_{y_i}`` for reduction 'mean' (1 for 'sum'), as torch computes it."""
        n, c = shape
        t = _labels(target, c, self.ignore_index)
        valid = t != self.ignore_index
        w = np.ones(c) if self.weight is None else self.weight.detach().to(dtype=__import__("torch").float64).cpu().numpy().reshape(-1)
        if w.shape != (c,):
            from symgrad.errors import InputError

            raise InputError(f"cross_entropy weight has {w.size} entries for {c} classes")
        rows = np.nonzero(valid)[0]
        eps = float(self.label_smoothing)
        out = np.zeros(shape)
        out[rows, t[rows]] = (1.0 - eps) * w[t[rows]]
        if eps:
            out[rows, :] += (eps / c) * w[None, :]
        if self.reduction == "mean":
            out /= float(np.sum(w[t[rows]]))  # torch's mean: the weights of the counted samples (nan if none)
        return out


# positional parameters of the functional forms, in order
_FUNCTIONAL_PARAMS = {
    "leaky_relu": ["negative_slope"],
    "softplus": ["beta", "threshold"],
    "elu": ["alpha"],
    "celu": ["alpha"],
    "hardtanh": ["min_val", "max_val"],
    "clamp": ["min", "max"],
}


def _exact(v):
    """A python number as an exact SymPy number (``0.01 -> 1/100``), so prints stay readable."""
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int):
        return sp.Integer(v)
    if isinstance(v, float):
        return sp.oo if v == float("inf") else -sp.oo if v == float("-inf") else sp.Rational(repr(v))
    from symgrad.symbolic.numbers import number

    v = number(v, "a number in the model (an activation's parameter or a constant)")  # never a string
    return v if isinstance(v, sp.Basic) else _exact(v)


def _activation_functions() -> dict:
    """Callable -> op-row name for every torch function that computes a row."""
    import torch
    import torch.nn.functional as F

    table = {}
    for row in OPS.values():
        try:
            table[resolve_torch(row.torch)] = row.name
        except (ImportError, AttributeError):
            continue
        for ns in (torch, F):
            fn = getattr(ns, row.name, None)
            if fn is not None:
                table.setdefault(fn, row.name)
    table[F.gelu] = "gelu"  # approximate='tanh' picked up from kwargs
    return table


def _module_row(mod) -> tuple[str, dict] | None:
    """(row name, params) for an activation module, from the rows' ``module`` field."""
    qual = f"torch.nn.{type(mod).__name__}"
    for row in OPS.values():
        if row.module == qual:
            name = row.name
            if name == "gelu" and getattr(mod, "approximate", "none") == "tanh":
                name = "gelu_tanh"
            params = {k: _exact(getattr(mod, k)) for k in OPS[name].params if hasattr(mod, k)}
            return name, params
    return None


@dataclass
class _T:
    """A traced tensor: its matrix expression and its torch shape."""

    expr: sp.Basic
    shape: tuple


class _Builder:
    def __init__(self, model, inputs: dict):
        self.model = model
        self.inputs = inputs
        self.sizes: dict[int, sp.Basic] = {1: sp.Integer(1)}
        self.dims: dict = {}
        self.defs: dict = {}
        self.values: dict = {}
        self.params: dict = {}
        self.input_syms: dict = {}
        self.shapes: dict = {}
        self.legend: dict = {}
        self.delta_names: dict = {}
        self.layer = 0
        self.has_const = False
        self.next_dim = 1
        self.signature: list = []
        self.owners: dict = {}  # symbol name -> what it stands for (a torch name, "the target", ...)

    def reserve(self, sym_name: str, owner: str) -> None:
        """Claim a leaf symbol's name; two different things under one name would be one symbol."""
        prior = self.owners.get(sym_name)
        if prior is not None and prior != owner:  # UnsupportedOp: engine='auto' falls back to the elementwise engine
            raise UnsupportedOp(f"matrix engine: {prior} and {owner} would both be the symbol {sym_name!r} (one "
                             "symbol for two different values). Rename the input: pass inputs as a dict with "
                             "another name, e.g. {'x': tensor}")
        self.owners[sym_name] = owner

    # -- dimensions and leaves -------------------------------------------------------------
    def dim(self, n: int, name: str | None = None):
        """The symbol for size ``n`` (equal sizes share one symbol, so every shape equality of
        the real model holds at the tiny cross-check size too); a size of 1 stays 1."""
        if n not in self.sizes:
            if name is None:
                name = f"d{self.next_dim}"
                self.next_dim += 1
            sym = sp.Symbol(name, integer=True, positive=True)
            self.sizes[n] = sym
            self.dims[sym] = n
        return self.sizes[n]

    def leaf(self, sym_name: str, torch_name: str, tensor, kind: str) -> _T:
        self.reserve(sym_name, f"{kind} {torch_name!r}")
        shape = tuple(tensor.shape)
        val = matrix_value(tensor) if len(shape) in (1, 2) else None
        if len(shape) == 2:
            sym = MatrixSymbol(sym_name, self.dim(shape[0]), self.dim(shape[1]))
            expr = sym
        elif len(shape) == 1:
            sym = MatrixSymbol(sym_name, self.dim(shape[0]), 1)
            expr = sym.T
        else:
            raise UnsupportedOp(f"matrix engine: {kind} {torch_name!r} has shape {shape}; only 1-D and 2-D tensors are supported")
        self.values[sym_name] = val
        self.shapes[torch_name] = shape
        if sym_name != torch_name:
            self.legend[sym_name] = torch_name
        (self.params if kind == "parameter" else self.input_syms)[torch_name] = sym
        return _T(expr, shape)

    def var(self, expr, shape, kind: str, out: bool) -> _T:
        """A named intermediate: ``z<k>`` (pre-activation), ``h<k>`` (activation) or ``yhat``."""
        if kind == "z":
            self.layer += 1
        name = "yhat" if out else f"{kind}{self.layer}"
        while name in self.values or any(s.name == name for s in self.defs):
            name += "'"
        sym = MatrixSymbol(name, *expr.shape)
        self.defs[sym] = expr
        if kind == "z":
            self.delta_names[sym] = f"delta{self.layer}"
        return _T(sym, shape)


def _broadcast(a: _T, b: _T) -> tuple:
    """Bring two traced tensors to a common matrix shape (bias rows broadcast with ``1 bᵀ``)."""
    if not getattr(a.expr, "is_Matrix", False) or not getattr(b.expr, "is_Matrix", False):
        return a.expr, b.expr, a.shape if getattr(a.expr, "is_Matrix", False) else b.shape
    if a.expr.shape == b.expr.shape:
        return a.expr, b.expr, a.shape
    if len(b.shape) <= 1 and b.expr.shape[0] == 1 and a.expr.shape[1] == b.expr.shape[1]:
        return a.expr, OneMatrix(a.expr.shape[0], 1) * b.expr, a.shape
    if len(a.shape) <= 1 and a.expr.shape[0] == 1 and b.expr.shape[1] == a.expr.shape[1]:
        return OneMatrix(b.expr.shape[0], 1) * a.expr, b.expr, b.shape
    raise UnsupportedOp(f"matrix engine: cannot broadcast shapes {a.shape} and {b.shape}")


def _matmul(a: _T, b: _T) -> _T:
    """torch.matmul on 1-D/2-D operands (a 1-D operand is a row)."""
    if len(a.shape) == 2 and len(b.shape) == 2:
        return _T(a.expr * b.expr, (a.shape[0], b.shape[1]))
    if len(a.shape) == 1 and len(b.shape) == 2:
        return _T(a.expr * b.expr, (b.shape[1],))
    if len(a.shape) == 2 and len(b.shape) == 1:
        return _T((a.expr * b.expr.T).T, (a.shape[0],))
    if len(a.shape) == 1 and len(b.shape) == 1:
        return _T(a.expr * b.expr.T, ())
    raise UnsupportedOp(f"matrix engine: matmul of shapes {a.shape} and {b.shape}")


def _numel(b: _Builder, shape) -> sp.Basic:
    return sp.Mul(*(b.dim(n) for n in shape)) if shape else sp.Integer(1)


def loss_kind(loss) -> tuple[str, str]:
    """``(kind, reduction)`` of a loss given as a module, a functional or a string."""
    spec = loss_spec(loss)
    return spec.kind, spec.reduction


_LOSS_NAMES = {"mse": "mse", "mse_loss": "mse", "bce_with_logits": "bce_with_logits",
               "binary_cross_entropy_with_logits": "bce_with_logits", "cross_entropy": "cross_entropy",
               "ce": "cross_entropy"}


def _check_reduction(reduction, where: str) -> str:
    if reduction not in ("mean", "sum"):
        raise UnsupportedOp(f"matrix engine: {where} with reduction={reduction!r} gives no scalar loss; "
                            "use reduction 'mean' or 'sum', or engine='elementwise'")
    return reduction


def loss_spec(loss) -> LossSpec:
    """The ``LossSpec`` of a loss given as a module, a functional or a string.  Options the engine
    does not implement exactly raise ``UnsupportedOp``: BCEWithLogitsLoss's ``weight`` and
    ``pos_weight``, reduction 'none'."""
    if loss is None:
        return LossSpec("none", "none")
    if isinstance(loss, str):
        key = loss.lower().replace("-", "_")
        if key not in _LOSS_NAMES:
            raise UnsupportedOp(f"matrix engine: unknown loss {loss!r} (known: mse, bce_with_logits, cross_entropy)")
        return LossSpec(_LOSS_NAMES[key], "mean")
    import torch.nn as nn
    import torch.nn.functional as F

    funcs = {F.mse_loss: "mse", F.binary_cross_entropy_with_logits: "bce_with_logits", F.cross_entropy: "cross_entropy"}
    if loss in funcs:
        return LossSpec(funcs[loss], "mean")
    mods = {nn.MSELoss: "mse", nn.BCEWithLogitsLoss: "bce_with_logits", nn.CrossEntropyLoss: "cross_entropy"}
    for cls, kind in mods.items():
        if type(loss) is cls:
            reduction = _check_reduction(loss.reduction, cls.__name__)
            if kind == "cross_entropy":
                return LossSpec(kind, reduction, ignore_index=int(_num(loss.ignore_index, "ignore_index")),
                                weight=loss.weight, label_smoothing=float(_num(loss.label_smoothing, "label_smoothing")))
            for attr in ("weight", "pos_weight"):
                if getattr(loss, attr, None) is not None:
                    raise UnsupportedOp(f"matrix engine: {cls.__name__} with {attr}=... is not supported; "
                                        "use engine='elementwise'")
            return LossSpec(kind, reduction)
    raise UnsupportedOp(f"matrix engine: unsupported loss {loss!r} (nn.MSELoss, nn.BCEWithLogitsLoss, nn.CrossEntropyLoss, F.* or strings)")


def _num(value, name: str):
    from symgrad.symbolic.numbers import number

    return number(value, f"the cross-entropy loss's {name}")


def _is_default(value, default) -> bool:
    if value is default:
        return True
    return isinstance(value, (bool, int, float, str)) and isinstance(default, (bool, int, float, str)) and value == default


def functional_loss_spec(kind: str, fn, args, kwargs, where: str) -> LossSpec:
    """The ``LossSpec`` of a call ``fn(yhat, target, ...)`` met in the traced forward: every argument
    but ``reduction`` (and, for cross_entropy, ``ignore_index`` and ``label_smoothing``) must be
    left at its default, else ``UnsupportedOp``."""
    try:
        bound = inspect.signature(fn).bind(*args, **kwargs)
    except (TypeError, ValueError) as err:
        raise UnsupportedOp(f"matrix engine: cannot read the arguments of {where} ({err})") from None
    params = inspect.signature(fn).parameters
    names = list(params)
    allowed = {"reduction"} | ({"ignore_index", "label_smoothing"} if kind == "cross_entropy" else set())
    given = {}
    for name, value in bound.arguments.items():
        if name in names[:2]:
            continue
        if name in allowed:
            given[name] = value
        elif not _is_default(value, params[name].default):
            raise UnsupportedOp(f"matrix engine: {getattr(fn, '__name__', fn)} with {name}=... at {where} is not "
                                "supported; use engine='elementwise'")
    reduction = _check_reduction(given.get("reduction", "mean"), where)
    if kind == "cross_entropy":
        return LossSpec(kind, reduction, ignore_index=int(_num(given.get("ignore_index", -100), "ignore_index")),
                        label_smoothing=float(_num(given.get("label_smoothing", 0.0), "label_smoothing")))
    return LossSpec(kind, reduction)


def _loss_expr(b: _Builder, spec: LossSpec, yhat: _T, target) -> sp.Basic:
    kind, reduction = spec.kind, spec.reduction
    b.loss_spec = spec
    Y = yhat.expr
    if kind == "cross_entropy":
        t = np.asarray(target.detach().cpu().numpy())
        if len(yhat.shape) != 2 or t.ndim != 1 or t.dtype.kind not in "iu":
            raise UnsupportedOp("matrix engine: cross_entropy needs (N, C) logits and (N,) class-index targets")
        if spec.weighted(target):  # class weights, smoothing or ignored labels: the weights are data
            b.reserve("y_w", "the weighted cross-entropy targets")
            Ysym = MatrixSymbol("y_w", *Y.shape)
            b.values["y_w"] = spec.weighted_targets(target, yhat.shape)
            b.legend["y_w"] = ("the targets' weights: one-hot (smoothed), times class weights, 0 for ignore_index, "
                               + ("over the sum of the counted weights" if reduction == "mean" else "summed"))
            return -sum_all(hadamard(Ysym, LogSoftmaxRows(Y)))
        b.reserve("y_onehot", "the one-hot cross-entropy targets")
        Ysym = MatrixSymbol("y_onehot", *Y.shape)
        b.values["y_onehot"] = onehot(target, yhat.shape)
        c = 1 / b.dim(yhat.shape[0]) if reduction == "mean" else sp.Integer(1)
        return -c * sum_all(hadamard(Ysym, LogSoftmaxRows(Y)))
    tarr = target.detach().to(dtype=__import__("torch").float64).cpu().numpy()
    if tuple(tarr.shape) != tuple(yhat.shape):
        raise UnsupportedOp(f"matrix engine: target shape {tuple(tarr.shape)} differs from the output shape {yhat.shape}")
    b.reserve("t", "the loss's target")
    T = MatrixSymbol("t", *Y.shape)
    if tarr.ndim not in (1, 2):
        raise UnsupportedOp(f"matrix engine: a loss on an output of shape {yhat.shape} is not supported")
    b.values["t"] = tarr.reshape(1, -1) if tarr.ndim == 1 else tarr
    c = 1 / _numel(b, yhat.shape) if reduction == "mean" else sp.Integer(1)
    if kind == "mse":
        return c * sum_all(hpow(Y - T, 2))
    if kind == "bce_with_logits":
        sp_ = Elementwise("softplus", Y, {"beta": 1, "threshold": sp.oo}, 0)
        return c * sum_all(sp_ - hadamard(T, Y))
    raise UnsupportedOp(f"matrix engine: unknown loss kind {kind!r}")
