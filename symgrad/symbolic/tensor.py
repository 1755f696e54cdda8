"""A small torch-like symbolic tensor: a numpy object array of SymPy expressions.

``SymTensor`` supports what a forward pass of a small model needs, with torch's semantics:
elementwise ``+ - * / **`` with broadcasting, ``@`` (``torch.matmul`` rules), ``.T``,
``sum``/``mean`` over ``dim``, indexing, ``reshape``/``view``/``flatten``/``transpose``, and the
op table's elementwise functions as methods (``x.tanh()``).  Each element is an ordinary SymPy
expression in the input symbols, so the elementwise engine can differentiate it exactly.

Input symbols are named after the input and the index, ``W[0, 2]`` (``layer1.weight[3, 2]`` for
an imported model), so that a worst element found later reads the same as the tensor it came from.

# Note [symengine elements]
Elements are symengine expressions (SymPy's C++ core), not SymPy ones.  SymPy's ``Piecewise``
rewrites a condition that contains another ``Piecewise`` into nested ``ITE`` terms, so a 3-layer
relu net grows exponentially (seed 000 never finished); symengine keeps it as written, and builds
and differentiates 100-200x faster.  SymPy objects handed in (plain SymPy forwards, the op
table's forms) are converted; ``to_sympy()``/``sympy.sympify`` convert back for printing.
"""

from __future__ import annotations

import itertools
import sys
from contextvars import ContextVar
from typing import Iterable, Sequence

import numpy as np
import symengine as se
import sympy as sp

from ..errors import ShapeMismatch, UnsupportedOp

# Note [Torch code on symbolic tensors]
# Small torch code with no symbolic twin runs on SymTensors (x.sin(), operators): its own twin.  What
# torch does outside the values -- a region under ``torch.no_grad()`` (or ``@torch.no_grad``,
# ``set_grad_enabled(False)``, ``inference_mode``), ``.item()`` -- is a stop-gradient that symbolic
# entries cannot carry: the twin differentiated through it and torch's correct gradient failed.
# While torch code runs here (``TORCH_CODE``; symbolic/forward.py), turning grad off from Python,
# building a tensor in inference mode or reading an entry out raises ``UnsupportedOp``, and the check
# goes to the op graph, which traces torch's own semantics.  (A custom Function's forward runs with
# grad off too, but torch turns it off in C++, not through ``torch._C._set_grad_enabled``.)
TORCH_CODE: ContextVar[bool] = ContextVar("symgrad_torch_code", default=False)


def _leaving_autograd(what: str) -> None:
    torch = sys.modules.get("torch")
    if TORCH_CODE.get() and (what != "grad" or (torch is not None and torch.is_inference_mode_enabled())):
        raise UnsupportedOp(f"the forward {'runs in inference mode' if what == 'grad' else 'reads ' + what}: "
                            "a stop-gradient, traced through the op graph")


__all__ = ["SymTensor", "symbols", "as_symtensor", "element_name"]


def element_name(name: str, index: tuple[int, ...]) -> str:
    """``("W", (0, 2)) -> "W[0, 2]"``; a 0-d input keeps its bare name."""
    return f"{name}[{', '.join(map(str, index))}]" if index else name


def symbols(name: str, shape: Sequence[int] = ()) -> "SymTensor":
    """A tensor of fresh symbols named ``name[i, j, ...]``."""
    shape = tuple(int(s) for s in shape)
    data = np.empty(shape, dtype=object)
    for index in itertools.product(*(range(s) for s in shape)):
        data[index] = se.Symbol(element_name(name, index))
    return SymTensor(data)


def _sum_terms(terms: Iterable):
    # One Add of all terms: chaining binary + re-flattens the sum each time (quadratic).
    terms = list(terms)
    return se.Add(*terms) if terms else se.Integer(0)


def to_element(value):
    """A number or SymPy/symengine expression as a symengine expression."""
    if isinstance(value, se.Basic):
        return value
    if not isinstance(value, sp.Basic):
        from .numbers import number

        value = number(value, "a tensor entry")  # never a string: symengine would parse it
    from ..lower.symengine_forms import to_symengine

    return to_symengine(value)


def as_symtensor(value) -> "SymTensor":
    """Wrap numbers, SymPy scalars/matrices/arrays and object arrays as a ``SymTensor``."""
    if isinstance(value, SymTensor):
        return value
    if isinstance(value, (sp.MatrixBase, sp.NDimArray)):
        arr = np.array(value.tolist(), dtype=object) if value.shape != (0,) else np.empty((0,), object)
        return SymTensor(arr.reshape(value.shape))
    if isinstance(value, np.ndarray):
        if value.dtype != object:
            value = value.tolist() if value.ndim else value.item()
            value = np.array(value, dtype=object) if isinstance(value, list) else np.array(value, dtype=object)
        return SymTensor(np.vectorize(to_element, otypes=[object])(value) if value.size else value.astype(object))
    if isinstance(value, (list, tuple)):
        return as_symtensor(np.array(value, dtype=object))
    if (type(value).__module__ or "").startswith("torch"):
        return as_symtensor(value.detach().cpu().numpy())
    out = np.empty((), dtype=object)
    out[()] = to_element(value)
    return SymTensor(out)


class SymTensor:
    """A tensor of SymPy expressions with torch semantics (see the module docstring)."""

    __array_priority__ = 1000  # numpy defers to our operators

    def __init__(self, data: np.ndarray):
        self.data = np.asarray(data, dtype=object)
        _leaving_autograd("grad")  # Note [Torch code on symbolic tensors]

    # -- shape ---------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def ndim(self) -> int:
        return self.data.ndim

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def numel(self) -> int:
        return int(self.data.size)

    def dim(self) -> int:
        return self.ndim

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        if self.ndim == 0:
            return f"SymTensor({self.data.item()})"
        return f"SymTensor(shape={self.shape})"

    def item(self):
        _leaving_autograd(".item()")
        if self.data.size != 1:
            raise ShapeMismatch(f"item() needs a tensor with one element, this one has shape {self.shape}")
        return self.data.reshape(()).item()

    def tolist(self):
        _leaving_autograd(".tolist()")
        return self.data.tolist()

    def to_sympy(self):
        """A ``sympy.Matrix`` (2-d), the scalar (0-d) or a ``sympy.Array``, in SymPy objects."""
        from ..lower.ties import untag  # a max's own conditions are the plain ones (lower/ties.py)

        conv = np.vectorize(lambda e: sp.sympify(untag(e)), otypes=[object])(self.data) if self.data.size else self.data
        if self.ndim == 0:
            return conv.reshape(()).item()
        if self.ndim == 2:
            return sp.Matrix(conv.tolist())
        return sp.Array(conv.tolist(), self.shape)

    # -- elementwise arithmetic with broadcasting ------------------------------------------
    def _binary(self, other, fn) -> "SymTensor":
        other = as_symtensor(other)
        try:
            a, b = np.broadcast_arrays(self.data, other.data)
        except ValueError:
            raise ShapeMismatch(f"shapes {self.shape} and {other.shape} cannot be broadcast together") from None
        out = np.empty(a.shape, dtype=object)
        for index in np.ndindex(a.shape):
            out[index] = fn(a[index], b[index])
        return SymTensor(out)

    def __add__(self, o):
        return self._binary(o, lambda a, b: a + b)

    def __radd__(self, o):
        return as_symtensor(o)._binary(self, lambda a, b: a + b)

    def __sub__(self, o):
        return self._binary(o, lambda a, b: a - b)

    def __rsub__(self, o):
        return as_symtensor(o)._binary(self, lambda a, b: a - b)

    def __mul__(self, o):
        return self._binary(o, lambda a, b: a * b)

    def __rmul__(self, o):
        return as_symtensor(o)._binary(self, lambda a, b: a * b)

    def __truediv__(self, o):
        return self._binary(o, lambda a, b: a / b)

    def __rtruediv__(self, o):
        return as_symtensor(o)._binary(self, lambda a, b: a / b)

    def __pow__(self, o):
        return self._binary(o, lambda a, b: a**b)

    def __rpow__(self, o):
        return as_symtensor(o)._binary(self, lambda a, b: a**b)

    # comparisons give 0/1 entries, as torch's bool tensors behave in arithmetic: x * (x > 0) is relu
    def __gt__(self, o):
        return self._binary(o, lambda a, b: se.Piecewise((1, se.Gt(a, b)), (0, True)))

    def __lt__(self, o):
        return self._binary(o, lambda a, b: se.Piecewise((1, se.Lt(a, b)), (0, True)))

    def __ge__(self, o):
        return self._binary(o, lambda a, b: se.Piecewise((1, se.Ge(a, b)), (0, True)))

    def __le__(self, o):
        return self._binary(o, lambda a, b: se.Piecewise((1, se.Le(a, b)), (0, True)))

    def __eq__(self, o):  # torch's elementwise ==, never Python's object equality (x * (x == c) is a mask)
        return self._binary(o, lambda a, b: se.Piecewise((1, se.Eq(a, b)), (0, True)))

    def __ne__(self, o):
        return self._binary(o, lambda a, b: se.Piecewise((1, se.Ne(a, b)), (0, True)))

    __hash__ = object.__hash__  # identity, as torch tensors hash

    def __bool__(self):  # as torch: only a one-entry tensor has a truth value (here: a number's)
        if self.numel() == 1:
            try:
                return float(self.data.ravel()[0]) != 0.0
            except (TypeError, RuntimeError, ValueError):
                pass
        raise TypeError(f"the truth value of a SymTensor of shape {self.shape} is ambiguous: its entries are "
                        "expressions (== and != compare entry by entry, as torch's do); use `is` for identity")

    def __neg__(self):
        return self.map(lambda a: -a)

    def __pos__(self):
        return self

    def pow(self, o):
        return self**o

    def map(self, fn) -> "SymTensor":
        """Apply a scalar function to every element."""
        out = np.empty(self.shape, dtype=object)
        for index in np.ndindex(self.shape):
            out[index] = fn(self.data[index])
        return SymTensor(out)

    # -- matmul ---------------------------------------------------------------------------
    def __matmul__(self, other) -> "SymTensor":
        return matmul(self, as_symtensor(other))

    def __rmatmul__(self, other) -> "SymTensor":
        return matmul(as_symtensor(other), self)

    def matmul(self, other):
        return self @ other

    def mm(self, other):
        return self @ other

    # -- reductions -----------------------------------------------------------------------
    def sum(self, dim=None, keepdim: bool = False) -> "SymTensor":
        if dim is None:
            return SymTensor(np.array(_sum_terms(self.data.ravel()), dtype=object))
        dims = tuple(d % self.ndim for d in ((dim,) if isinstance(dim, int) else dim))
        moved = np.moveaxis(self.data, dims, tuple(range(-len(dims), 0)))
        kept = moved.shape[: moved.ndim - len(dims)]
        flat = moved.reshape(kept + (-1,))
        out = np.empty(kept, dtype=object)
        for index in np.ndindex(kept):
            out[index] = _sum_terms(flat[index])
        if keepdim:
            out = out.reshape(tuple(1 if d in dims else s for d, s in enumerate(self.shape)))
        return SymTensor(out)

    def mean(self, dim=None, keepdim: bool = False) -> "SymTensor":
        if dim is None:
            count = self.numel()
        else:
            count = int(np.prod([self.shape[d] for d in ((dim,) if isinstance(dim, int) else dim)]))
        return self.sum(dim, keepdim) / se.Integer(count)

    # -- views ----------------------------------------------------------------------------
    @property
    def T(self) -> "SymTensor":
        return SymTensor(self.data.T)

    def t(self):
        return self.T

    def transpose(self, dim0: int, dim1: int) -> "SymTensor":
        return SymTensor(np.swapaxes(self.data, dim0, dim1))

    def permute(self, *dims) -> "SymTensor":
        dims = dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
        return SymTensor(np.transpose(self.data, dims))

    def reshape(self, *shape) -> "SymTensor":
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        try:
            data = self.data.reshape(tuple(shape))
        except ValueError:
            raise ShapeMismatch(f"cannot reshape a tensor of shape {self.shape} to {tuple(shape)}") from None
        return SymTensor(data)  # outside the try: its own errors are not shape errors

    view = reshape

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> "SymTensor":
        if self.ndim == 0:
            return self.reshape(1)
        start, end = start_dim % self.ndim, end_dim % self.ndim
        shape = self.shape[:start] + (-1,) + self.shape[end + 1 :]
        return self.reshape(shape)

    def unsqueeze(self, dim: int) -> "SymTensor":
        return SymTensor(np.expand_dims(self.data, dim if dim >= 0 else self.ndim + 1 + dim))

    def squeeze(self, dim: int | None = None) -> "SymTensor":
        return SymTensor(np.squeeze(self.data) if dim is None else np.squeeze(self.data, dim) if self.shape[dim] == 1 else self.data)

    def expand(self, *shape) -> "SymTensor":
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        shape = tuple(s if s != -1 else self.shape[i - len(shape) + self.ndim] for i, s in enumerate(shape))
        return SymTensor(np.broadcast_to(self.data, shape))

    def __getitem__(self, key) -> "SymTensor":
        if isinstance(key, SymTensor):
            raise TypeError("symbolic tensors cannot be used as indices")
        return SymTensor(np.asarray(self.data[key], dtype=object))

    def __iter__(self):
        for i in range(self.shape[0]):
            yield self[i]

    def __getattr__(self, name):
        # Elementwise methods (x.tanh(), x.relu(), ...) come from the op table.
        if name.startswith("_"):
            raise AttributeError(name)
        fn = _METHODS.get(name)
        if fn is None:
            raise AttributeError(f"SymTensor has no method {name!r}")
        return lambda *args, **kwargs: fn(self, *args, **kwargs)


# The elementwise methods are the functional API's functions: symgrad.symbolic.functional (which
# imports this module, never the reverse) registers them here when it is imported -- and the
# package imports it with this module.
_METHODS: dict = {}


def register_methods(table: dict) -> None:
    """``{method name: function of the tensor first}``: what ``x.name(...)`` calls."""
    _METHODS.update(table)


def matmul(a: SymTensor, b: SymTensor) -> SymTensor:
    """``torch.matmul`` semantics: 1-d operands are promoted and the added dim removed after."""
    if a.ndim == 0 or b.ndim == 0:
        raise ShapeMismatch("matmul needs operands with at least one dimension; use * for scalars")
    A = a.data[None, :] if a.ndim == 1 else a.data
    B = b.data[:, None] if b.ndim == 1 else b.data
    if A.shape[-1] != B.shape[-2]:
        raise ShapeMismatch(f"matmul: shapes {a.shape} and {b.shape} do not match ({A.shape[-1]} != {B.shape[-2]})")
    batch = np.broadcast_shapes(A.shape[:-2], B.shape[:-2])
    A = np.broadcast_to(A, batch + A.shape[-2:])
    B = np.broadcast_to(B, batch + B.shape[-2:])
    n, k, m = A.shape[-2], A.shape[-1], B.shape[-1]
    out = np.empty(batch + (n, m), dtype=object)
    for bi in np.ndindex(batch):
        Ab, Bb = A[bi], B[bi]
        for i in range(n):
            for j in range(m):
                out[bi + (i, j)] = _sum_terms(Ab[i, t] * Bb[t, j] for t in range(k))
    if a.ndim == 1:
        out = out[..., 0, :]
    if b.ndim == 1:
        out = out[..., 0]
    return SymTensor(out)
