"""Functions of the symbolic tensor API, one name for both worlds.

Every function here accepts either ``SymTensor`` or ``torch.Tensor`` arguments: on symbolic
tensors it builds SymPy expressions, on torch tensors it calls the torch function named in the op
table.  A symbolic forward written with them therefore *is* its own torch lowering::

    def f(x, W):
        return sg.tanh(x @ W).sum()

    f(*symbolic_inputs)   # SymPy expressions, differentiated in closed form
    f(*torch_inputs)      # the same computation in torch, run through autograd

The elementwise functions are generated from ``symgrad.ops.OPS``; the rest (reductions, softmax,
losses) are written out below, each mirroring torch's definition including its reduction modes.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import symengine as se
import sympy as sp

from ..errors import ShapeMismatch
from ..ops import OPS, note_float32_reciprocal, op
from .numbers import number
from .tensor import SymTensor, as_symtensor, register_methods, to_element

__all__ = [
    "is_torch",
    "apply_op",
    "sum",
    "mean",
    "matmul",
    "softmax",
    "log_softmax",
    "maximum",
    "minimum",
    "comparison",
    "gt",
    "lt",
    "ge",
    "le",
    "eq",
    "ne",
    "where",
    "mse_loss",
    "l1_loss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "METHODS",
    *OPS,
]

_builtin_sum = sum


def is_torch(x) -> bool:
    return (type(x).__module__ or "").startswith("torch")


_SLOT = sp.Dummy("slot")


@lru_cache(maxsize=1024)  # one per (op, parameters): bounded, a sweep over slopes must not grow it forever
def _template(name: str, params: tuple):
    """The row's SymPy form at a placeholder, converted to symengine once per (op, params)."""
    row = op(name)
    form = row.sym(_SLOT, **{k: sp.sympify(v) for k, v in params})
    return to_element(form), to_element(_SLOT)


def apply_op(name: str, x, **params):
    """Apply the op-table row ``name`` to a symbolic or a torch tensor."""
    row = op(name)
    if is_torch(x):
        return row.torch_fn(**params)(x)
    unknown = set(params) - set(row.params)
    if unknown:
        raise TypeError(f"{name}() got unexpected parameter(s) {', '.join(sorted(unknown))}; it takes {', '.join(row.params) or 'none'}")
    full = {k: number(v, f"{name}()'s parameter {k!r}") for k, v in {**row.params, **params}.items()}
    form, slot = _template(name, tuple(sorted(full.items())))
    for p in row.float32_reciprocals:  # noted on every use: the template is cached across checks
        note_float32_reciprocal(full[p])
    return as_symtensor(x).map(lambda e: form.xreplace({slot: e}))


def _make_elementwise(name: str):
    row = OPS[name]
    names = list(row.params)

    def fn(x, *args, **kwargs):
        params = dict(zip(names, args))
        params.update({k: v for k, v in kwargs.items() if k != "inplace"})
        return apply_op(name, x, **params)

    fn.__name__ = name
    fn.__doc__ = f"{name} from the op table ({row.torch}); parameters: {', '.join(names) or 'none'}."
    return fn


for _name in OPS:
    globals()[_name] = _make_elementwise(_name)


def gelu(x, approximate: str = "none"):  # noqa: F811 - one name, two rows
    """``F.gelu``: the 'gelu' row, or 'gelu_tanh' for ``approximate='tanh'``."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', not {approximate!r}")
    return apply_op("gelu" if approximate == "none" else "gelu_tanh", x)


def clamp(x, min=None, max=None):  # noqa: A002 - torch's names
    """``torch.clamp``; a missing bound is +-infinity."""
    if is_torch(x):
        import torch

        return torch.clamp(x, min, max)
    lo = -sp.oo if min is None else min
    hi = sp.oo if max is None else max
    return apply_op("clamp", x, min=lo, max=hi)


def sum(x, dim=None, keepdim: bool = False):  # noqa: A001 - torch's name
    if is_torch(x):
        import torch

        return torch.sum(x) if dim is None else torch.sum(x, dim, keepdim=keepdim)
    return as_symtensor(x).sum(dim, keepdim)


def mean(x, dim=None, keepdim: bool = False):
    if is_torch(x):
        import torch

        return torch.mean(x) if dim is None else torch.mean(x, dim, keepdim=keepdim)
    return as_symtensor(x).mean(dim, keepdim)


def matmul(a, b):
    if is_torch(a) and is_torch(b):
        import torch

        return torch.matmul(a, b)
    return as_symtensor(a) @ as_symtensor(b)


def _pairwise(a, b, torch_name: str, pick):
    if is_torch(a) or is_torch(b):
        import torch

        return getattr(torch, torch_name)(torch.as_tensor(a), torch.as_tensor(b))
    return as_symtensor(a)._binary(b, pick)


def maximum(a, b):
    """``torch.maximum``; at a tie torch splits the gradient in half, and so does this form."""
    return _pairwise(a, b, "maximum", lambda u, v: se.Piecewise((u, u > v), ((u + v) / 2, se.Eq(u, v)), (v, True)))


def minimum(a, b):
    """``torch.minimum``; a tie splits the gradient in half, as in torch."""
    return _pairwise(a, b, "minimum", lambda u, v: se.Piecewise((u, u < v), ((u + v) / 2, se.Eq(u, v)), (v, True)))


_COMPARISONS = {"gt": se.Gt, "lt": se.Lt, "ge": se.Ge, "le": se.Le, "eq": se.Eq, "ne": se.Ne}


def comparison(a, b, op: str):
    """``a > b`` (``op`` one of gt, lt, ge, le, eq, ne) as 0/1 entries: torch's bool tensor in arithmetic.

    The relational stays visible, so where ``a == b`` the kink machinery sees it (``x * (x > 0)`` is
    relu, and has relu's kink).
    """
    if op not in _COMPARISONS:
        raise ValueError(f"comparison: op must be one of {', '.join(_COMPARISONS)}, not {op!r}")
    if is_torch(a) or is_torch(b):
        import torch

        return getattr(torch, op)(torch.as_tensor(a), torch.as_tensor(b))
    return as_symtensor(a)._binary(b, lambda u, v: se.Piecewise((1, _COMPARISONS[op](u, v)), (0, True)))


def gt(a, b):
    """``torch.gt`` / ``a > b`` (see ``comparison``)."""
    return comparison(a, b, "gt")


def lt(a, b):
    return comparison(a, b, "lt")


def ge(a, b):
    return comparison(a, b, "ge")


def le(a, b):
    return comparison(a, b, "le")


def eq(a, b):
    return comparison(a, b, "eq")


def ne(a, b):
    return comparison(a, b, "ne")


def where(cond, a, b):
    """``torch.where(cond, a, b)``: ``a`` where the condition holds (a comparison from ``gt`` etc.,
    or any non-zero entry), ``b`` elsewhere; the branch not taken never enters the value."""
    if is_torch(cond):
        import torch

        return torch.where(cond, torch.as_tensor(a), torch.as_tensor(b))
    cond = as_symtensor(cond)
    a, b = as_symtensor(a), as_symtensor(b)
    try:
        c, x, y = np.broadcast_arrays(cond.data, a.data, b.data)
    except ValueError:
        raise ShapeMismatch(f"where: shapes {cond.shape}, {a.shape} and {b.shape} cannot be broadcast together") from None
    out = np.empty(c.shape, dtype=object)
    for index in np.ndindex(c.shape):
        k = c[index]
        args = getattr(k, "args", ())
        is_indicator = type(k).__name__ == "Piecewise" and len(args) == 4 and args[0] == 1 and args[2] == 0
        rel = args[1] if is_indicator else se.Ne(k, 0)
        out[index] = se.Piecewise((x[index], rel), (y[index], True))
    return SymTensor(out)


def log_softmax(x, dim: int = -1):
    """``x - log(sum(exp(x), dim))``."""
    if is_torch(x):
        import torch

        return torch.log_softmax(x, dim)
    x = as_symtensor(x)
    return x - x.map(se.exp).sum(dim, keepdim=True).map(se.log)


def softmax(x, dim: int = -1):
    """``exp(x) / sum(exp(x), dim)``."""
    if is_torch(x):
        import torch

        return torch.softmax(x, dim)
    e = as_symtensor(x).map(se.exp)
    return e / e.sum(dim, keepdim=True)


def _reduce(loss: SymTensor, reduction: str, fn_name: str):
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"{fn_name}: reduction must be 'mean', 'sum' or 'none', not {reduction!r}")


def _check_same_shape(a: SymTensor, b: SymTensor, fn_name: str):
    if a.shape != b.shape:
        raise ShapeMismatch(f"{fn_name}: input shape {a.shape} and target shape {b.shape} differ")


def mse_loss(input, target, reduction: str = "mean"):  # noqa: A002
    """``F.mse_loss``: mean of (input - target)**2."""
    if is_torch(input):
        import torch.nn.functional as F

        return F.mse_loss(input, target, reduction=reduction)
    a, b = as_symtensor(input), as_symtensor(target)
    _check_same_shape(a, b, "mse_loss")
    return _reduce((a - b) ** 2, reduction, "mse_loss")


def l1_loss(input, target, reduction: str = "mean"):  # noqa: A002
    """``F.l1_loss``: mean of |input - target| (abs from the op table: torch's abs'(0) = 0)."""
    if is_torch(input):
        import torch.nn.functional as F

        return F.l1_loss(input, target, reduction=reduction)
    a, b = as_symtensor(input), as_symtensor(target)
    _check_same_shape(a, b, "l1_loss")
    return _reduce(apply_op("abs", a - b), reduction, "l1_loss")


def binary_cross_entropy_with_logits(input, target, weight=None, reduction: str = "mean", pos_weight=None):  # noqa: A002
    """``F.binary_cross_entropy_with_logits``: (1 - y) z + (1 + (p - 1) y) log(1 + exp(-z))."""
    if is_torch(input):
        import torch.nn.functional as F

        return F.binary_cross_entropy_with_logits(input, target, weight, reduction=reduction, pos_weight=pos_weight)
    z, y = as_symtensor(input), as_symtensor(target)
    _check_same_shape(z, y, "binary_cross_entropy_with_logits")
    softplus_neg = z.map(lambda e: se.log(1 + se.exp(-e)))
    log_weight = 1 if pos_weight is None else 1 + (as_symtensor(pos_weight) - 1) * y
    loss = (1 - y) * z + log_weight * softplus_neg
    if weight is not None:
        loss = loss * as_symtensor(weight)
    return _reduce(loss, reduction, "binary_cross_entropy_with_logits")


def binary_cross_entropy(input, target, weight=None, reduction: str = "mean"):  # noqa: A002
    """``F.binary_cross_entropy``: -(y log p + (1 - y) log(1 - p)), p in (0, 1)."""
    if is_torch(input):
        import torch.nn.functional as F

        return F.binary_cross_entropy(input, target, weight, reduction=reduction)
    p, y = as_symtensor(input), as_symtensor(target)
    _check_same_shape(p, y, "binary_cross_entropy")
    loss = -(y * p.map(se.log) + (1 - y) * (1 - p).map(se.log))
    if weight is not None:
        loss = loss * as_symtensor(weight)
    return _reduce(loss, reduction, "binary_cross_entropy")


def _class_indices(target) -> np.ndarray | None:
    """Integer class indices as a numpy array, or None when the target holds probabilities."""
    if is_torch(target):
        target = target.detach().cpu().numpy()
    if isinstance(target, SymTensor):
        if all(getattr(e, "is_Integer", False) for e in target.data.ravel()):
            return np.vectorize(int, otypes=[np.int64])(target.data) if target.data.size else np.zeros(target.shape, np.int64)
        return None
    arr = np.asarray(target)
    return arr.astype(np.int64) if np.issubdtype(arr.dtype, np.integer) else None


def cross_entropy(input, target, reduction: str = "mean", weight=None, ignore_index: int = -100,  # noqa: A002
                  label_smoothing: float = 0.0):
    """``F.cross_entropy`` over dim 1 (or 0 for an unbatched input), class indices or probabilities,
    with torch's ``weight``, ``ignore_index`` and ``label_smoothing``.

    Class indices: ``l_n = -(1 - e) w[y_n] logp[n, y_n] - (e / C) sum_c w[c] logp[n, c]``, 0 where
    ``y_n == ignore_index``; the mean divides by ``sum_n w[y_n]`` over the samples not ignored.
    Probabilities: ``l_n = -sum_c w[c] q[n, c] logp[n, c]`` with ``q = (1 - e) p + e / C``; the mean
    divides by the number of samples.
    """
    if is_torch(input):
        import torch.nn.functional as F

        return F.cross_entropy(input, target, weight=weight, reduction=reduction, ignore_index=ignore_index,
                               label_smoothing=label_smoothing)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', not {reduction!r}")
    logits = as_symtensor(input)
    dim = 0 if logits.ndim == 1 else 1
    n_classes = logits.shape[dim]
    logp = log_softmax(logits, dim)
    label_smoothing = number(label_smoothing, "cross_entropy's label_smoothing")
    eps = se.sympify(sp.nsimplify(label_smoothing)) if label_smoothing else se.Integer(0)
    w = None
    if weight is not None:
        w = as_symtensor(weight.detach().cpu().numpy() if is_torch(weight) else weight)
        if w.shape != (n_classes,):
            raise ShapeMismatch(f"cross_entropy: weight of shape {w.shape}, expected ({n_classes},)")
    moved = np.moveaxis(logp.data, dim, -1)  # (..., C)
    w_c = [1 if w is None else w.data[c] for c in range(n_classes)]
    indices = _class_indices(target)
    if indices is None:  # class probabilities, same shape as the input
        probs = as_symtensor(target)
        _check_same_shape(logits, probs, "cross_entropy")
        p = np.moveaxis(probs.data, dim, -1)
        out = np.empty(moved.shape[:-1], dtype=object)
        for index in np.ndindex(out.shape):
            out[index] = -se.Add(*[w_c[c] * ((1 - eps) * p[index + (c,)] + eps / n_classes) * moved[index + (c,)]
                                   for c in range(n_classes)])
        return _reduce(SymTensor(out), reduction, "cross_entropy")
    expected = logits.shape[:dim] + logits.shape[dim + 1:]
    if indices.shape != expected:
        raise ShapeMismatch(f"cross_entropy: class-index target of shape {indices.shape}, expected {expected}")
    out = np.empty(indices.shape, dtype=object)
    total_weight = 0
    for index in np.ndindex(indices.shape):
        c = int(indices[index])
        if c == ignore_index:
            out[index] = se.Integer(0)
            continue
        if not 0 <= c < n_classes:
            raise ValueError(f"cross_entropy: class index {c} at {index} is outside [0, {n_classes})")
        loss = -(1 - eps) * w_c[c] * moved[index + (c,)]
        if eps:
            loss = loss - eps / n_classes * se.Add(*[w_c[k] * moved[index + (k,)] for k in range(n_classes)])
        out[index] = loss
        total_weight = total_weight + w_c[c]
    loss = SymTensor(out)
    if reduction == "mean":
        return loss.sum() / total_weight  # torch: nan when every sample is ignored
    return _reduce(loss, reduction, "cross_entropy")


METHODS = frozenset(OPS) | {"softmax", "log_softmax", "clamp", "gelu"}
register_methods({_m: globals()[_m] for _m in METHODS if _m in globals()})
