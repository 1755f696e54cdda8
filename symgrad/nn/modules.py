"""Networks built symbolically, mirroring ``torch.nn`` names.

::

    net = sgnn.Sequential(sgnn.Linear(6, 4), sgnn.Tanh(), sgnn.Linear(4, 1))
    net(x_symbols)          # SymTensor: parameters are symbols "0.weight[i, j]", "2.bias[0]", ...
    net.to_torch()          # the equivalent torch.nn.Sequential, with identical weights
    net.check(x, loss=sgnn.MSELoss(), target=y)   # the torch twin checked through symgrad.check

A module holds its parameter *values* (float64 numpy arrays, initialised as torch initialises the
module it mirrors) and builds its output from *symbols* named by the parameter's qualified name,
exactly as the op graph names the parameters of the torch twin, so both give the same closed form.
The activations are generated from the op table (rows with a ``module``).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ..symbolic import functional as sgf
from ..symbolic.tensor import SymTensor, as_symtensor, symbols
from ..errors import InputError, ShapeMismatch
from ..ops import OPS

__all__ = ["Module", "Linear", "Sequential", "Softmax", "LogSoftmax", "Flatten", "Identity",
           "MSELoss", "BCEWithLogitsLoss", "BCELoss", "CrossEntropyLoss", "L1Loss"]


class Module:
    """Base class: parameters (values), children, a symbolic ``forward(x, get)`` and ``to_torch()``."""

    def __init__(self):
        object.__setattr__(self, "_params", {})
        object.__setattr__(self, "_children", {})

    def __setattr__(self, name, value):
        if isinstance(value, Module):
            self._children[name] = value
        object.__setattr__(self, name, value)

    def register_parameter(self, name: str, value) -> None:
        """A parameter (stored as a float64 array); ``None`` registers nothing (a layer without bias)."""
        if value is not None:
            self._params[name] = np.array(value.detach().cpu().numpy() if hasattr(value, "detach") else value,
                                          dtype=np.float64)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        for name, value in self._params.items():
            yield prefix + name, value
        for cname, child in self._children.items():
            yield from child.named_parameters(f"{prefix}{cname}.")

    def parameter_symbols(self) -> dict[str, SymTensor]:
        """``{qualified name: tensor of symbols}``, e.g. ``{"0.weight": W}`` with ``W[i, j]`` named ``0.weight[i, j]``."""
        return {name: symbols(name, value.shape) for name, value in self.named_parameters()}

    def forward(self, x, get):
        raise NotImplementedError(f"{type(self).__name__} must define forward(x, get)")

    def __call__(self, x, params: dict | None = None, _prefix: str = ""):
        params = self.parameter_symbols() if params is None else params

        def get(name):
            key = _prefix + name
            if key not in params:
                raise InputError(f"no symbols for parameter {key!r}; params has {', '.join(params)}")
            return params[key]

        return self.forward(as_symtensor(x), get)

    def symbolic_forward(self, *inputs, params: dict | None = None):
        """The same as calling the module; the form ``symgrad.check(..., symbolic=module)`` uses."""
        return self(*inputs, params=params)

    def torch_module(self):
        raise NotImplementedError(f"{type(self).__name__} has no torch counterpart")

    def to_torch(self, dtype=None):
        """The equivalent torch module, its parameters set to this module's values."""
        import torch

        dtype = dtype or torch.float64
        mod = self.torch_module().to(dtype)
        own = dict(self.named_parameters())
        with torch.no_grad():
            theirs = dict(mod.named_parameters())
            if set(theirs) != set(own):
                raise ShapeMismatch(f"{type(self).__name__}.to_torch: parameters {sorted(theirs)} != {sorted(own)}")
            for name, p in theirs.items():
                p.copy_(torch.as_tensor(own[name], dtype=dtype))
        return mod

    def check(self, inputs, **kwargs):
        """``symgrad.check`` of the torch twin (in the inputs' dtype), imported back through fx."""
        from ..check import check

        import torch

        first = inputs if isinstance(inputs, torch.Tensor) else next(iter(inputs.values() if isinstance(inputs, dict) else inputs))
        loss = kwargs.get("loss")
        if isinstance(loss, Module):
            kwargs["loss"] = loss.torch_module()
        return check(self.to_torch(first.dtype), inputs, **kwargs)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        if not self._children:
            return f"{type(self).__name__}({self.extra_repr()})"
        inner = "\n".join(f"  ({k}): {v!r}".replace("\n", "\n  ") for k, v in self._children.items())
        return f"{type(self).__name__}(\n{inner}\n)"


class Linear(Module):
    """``y = x Wᵀ + b``; initial values drawn as ``torch.nn.Linear`` draws them (torch's global RNG)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, weight=None, bias_value=None):
        super().__init__()
        self.in_features, self.out_features, self.has_bias = in_features, out_features, bias
        if weight is None:
            import torch

            init = torch.nn.Linear(in_features, out_features, bias=bias, dtype=torch.float64)
            weight = init.weight
            bias_value = init.bias if bias and bias_value is None else bias_value
        self.register_parameter("weight", weight)
        if np.shape(self._params["weight"]) != (out_features, in_features):
            raise ShapeMismatch(f"Linear weight must have shape ({out_features}, {in_features})")
        self.register_parameter("bias", bias_value if bias else None)

    def forward(self, x, get):
        out = x @ get("weight").T
        return out + get("bias") if self.has_bias else out

    def torch_module(self):
        import torch

        return torch.nn.Linear(self.in_features, self.out_features, bias=self.has_bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.has_bias}"


class Sequential(Module):
    """Children applied in order; parameters named ``"<index>.<name>"`` as in ``torch.nn.Sequential``."""

    def __init__(self, *modules: Module):
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise InputError(f"Sequential item {i} is a {type(m).__name__}, not a symgrad.nn module")
            setattr(self, str(i), m)

    def __call__(self, x, params: dict | None = None, _prefix: str = ""):
        params = self.parameter_symbols() if params is None else params
        for name, child in self._children.items():
            x = child(x, params, f"{_prefix}{name}.")
        return x

    def __getitem__(self, i: int) -> Module:
        return list(self._children.values())[i]

    def __len__(self) -> int:
        return len(self._children)

    def torch_module(self):
        import torch

        return torch.nn.Sequential(*(c.torch_module() for c in self._children.values()))


def _activation(row_name: str):
    row = OPS[row_name]
    cls_name = row.module.rpartition(".")[2]
    param_names = list(row.params)

    def __init__(self, *args, **kwargs):
        Module.__init__(self)
        values = {k: float(v) if hasattr(v, "is_Number") else v for k, v in row.params.items()}
        values.update(dict(zip(param_names, args)))
        values.update({k: v for k, v in kwargs.items() if k != "inplace"})
        object.__setattr__(self, "options", values)

    def forward(self, x, get):
        return sgf.apply_op(row_name, x, **self.options)

    def torch_module(self):
        import torch

        return getattr(torch.nn, cls_name)(**self.options)

    def extra_repr(self):
        return ", ".join(f"{k}={v}" for k, v in self.options.items())

    doc = f"``torch.nn.{cls_name}``: op table row {row_name!r} ({row.doc or row.torch})."
    return type(cls_name, (Module,), {"__init__": __init__, "forward": forward, "torch_module": torch_module,
                                      "extra_repr": extra_repr, "__doc__": doc})


for _row in OPS.values():
    if _row.module and _row.name != "gelu":
        globals()[_row.module.rpartition(".")[2]] = _activation(_row.name)
        __all__.append(_row.module.rpartition(".")[2])


class GELU(Module):
    """``torch.nn.GELU``: the exact (erf) form, or ``approximate='tanh'``."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x, get):
        return sgf.gelu(x, approximate=self.approximate)

    def torch_module(self):
        import torch

        return torch.nn.GELU(approximate=self.approximate)


__all__.append("GELU")


class _DimModule(Module):
    fn = None
    torch_name = ""

    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def forward(self, x, get):
        return type(self).fn(x, self.dim)

    def torch_module(self):
        import torch

        return getattr(torch.nn, self.torch_name)(dim=self.dim)


class Softmax(_DimModule):
    """``exp(x) / Σ_dim exp(x)``."""

    fn, torch_name = staticmethod(sgf.softmax), "Softmax"


class LogSoftmax(_DimModule):
    """``x - log Σ_dim exp(x)``."""

    fn, torch_name = staticmethod(sgf.log_softmax), "LogSoftmax"


class Flatten(Module):
    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x, get):
        return x.flatten(self.start_dim, self.end_dim)

    def torch_module(self):
        import torch

        return torch.nn.Flatten(self.start_dim, self.end_dim)


class Identity(Module):
    def forward(self, x, get):
        return x

    def torch_module(self):
        import torch

        return torch.nn.Identity()


class _Loss(Module):
    fn = None
    torch_name = ""

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction

    def __call__(self, input, target, params=None, _prefix=""):  # noqa: A002
        return type(self).fn(as_symtensor(input), target if not hasattr(target, "shape") or isinstance(target, SymTensor)
                             else as_symtensor(target) if not hasattr(target, "dtype") or target.is_floating_point()
                             else target, reduction=self.reduction)

    def torch_module(self):
        import torch

        return getattr(torch.nn, self.torch_name)(reduction=self.reduction)


def _loss_class(name: str, fn, torch_name: str):
    return type(name, (_Loss,), {"fn": staticmethod(fn), "torch_name": torch_name,
                                 "__doc__": f"``torch.nn.{torch_name}`` (``sg.{fn.__name__}``)."})


MSELoss = _loss_class("MSELoss", sgf.mse_loss, "MSELoss")
L1Loss = _loss_class("L1Loss", sgf.l1_loss, "L1Loss")
BCELoss = _loss_class("BCELoss", sgf.binary_cross_entropy, "BCELoss")
BCEWithLogitsLoss = _loss_class("BCEWithLogitsLoss", sgf.binary_cross_entropy_with_logits, "BCEWithLogitsLoss")
CrossEntropyLoss = _loss_class("CrossEntropyLoss", sgf.cross_entropy, "CrossEntropyLoss")
