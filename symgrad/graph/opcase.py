"""One row of the op table (:class:`OpCase`) and its input factories, below the rows that use them
(``optable_rows``, ``optable_nn``) and the table that collects them (``optable``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

__all__ = ["OpCase", "Input", "normal", "uniform", "positive", "ints", "mask", "fixed", "DTYPES"]

DTYPES = ("float64", "float32")


@dataclass(frozen=True)
class Input:
    """One argument's factory: ``kind`` normal / uniform / int / mask / fixed."""

    kind: str
    shape: tuple = ()
    lo: float = 0.0
    hi: float = 1.0
    values: tuple | None = None

    def describe(self) -> str:
        dims = "x".join(str(d) for d in self.shape) or "scalar"
        if self.kind == "normal":
            return f"N(0,1) {dims}" if self.hi == 1.0 else f"N(0,{self.hi:g}) {dims}"
        if self.kind == "uniform":
            return f"U({self.lo:g},{self.hi:g}) {dims}"
        if self.kind == "int":
            return f"int[{int(self.lo)},{int(self.hi)}) {dims}"
        if self.kind == "mask":
            return f"bool {dims}"
        return "fixed " + ("x".join(str(d) for d in _shape_of(self.values)) or "scalar")

    def make(self, gen, dtype):
        import torch

        if self.kind == "normal":
            return (torch.randn(self.shape, generator=gen, dtype=torch.float64) * self.hi).to(dtype)
        if self.kind == "uniform":
            u = torch.rand(self.shape, generator=gen, dtype=torch.float64)
            return (self.lo + (self.hi - self.lo) * u).to(dtype)
        if self.kind == "int":
            return torch.randint(int(self.lo), int(self.hi), self.shape, generator=gen)
        if self.kind == "mask":
            return torch.rand(self.shape, generator=gen) > 0.5
        t = torch.tensor(self.values)
        return t.to(dtype) if t.is_floating_point() else t


def _shape_of(values) -> tuple:
    shape = []
    while isinstance(values, (list, tuple)):
        shape.append(len(values))
        values = values[0] if values else None
    return tuple(shape)


def normal(*shape, std: float = 1.0) -> Input:
    return Input("normal", shape, hi=std)


def uniform(lo: float, hi: float, *shape) -> Input:
    return Input("uniform", shape, lo, hi)


def positive(*shape) -> Input:
    return Input("uniform", shape, 0.5, 2.0)


def ints(high: int, *shape, low: int = 0) -> Input:
    return Input("int", shape, low, high)


def mask(*shape) -> Input:
    return Input("mask", shape)


def fixed(values) -> Input:
    def freeze(v):
        return tuple(freeze(x) for x in v) if isinstance(v, (list, tuple)) else v

    return Input("fixed", values=freeze(values))


@dataclass(frozen=True)
class OpCase:
    """One row of the op table (see the module docstring)."""

    name: str
    fn: Callable
    inputs: dict
    kind: str
    dtypes: tuple = DTYPES
    notes: str = ""
    xfail: str = ""  # why the op graph cannot check it yet (a strict xfail in the tests)
    zero_grad: bool = False  # the true derivative is 0 everywhere: a scaled backward is still right
    slow: bool = False
    wrt: tuple = ()  # the inputs to differentiate (default: every float input)
    torch_differs: str = ""  # why torch's backward is not the derivative of its forward here (it must FAIL)
    module: Callable | None = None  # a factory of an nn.Module checked with the inputs (fn unused)
    sweep_dtypes: tuple = DTYPES  # the dtypes of the slow seed sweep (a row loose in float32 for some draws)

    @property
    def domain(self) -> str:
        return "; ".join(f"{k}: {v.describe()}" for k, v in self.inputs.items())
