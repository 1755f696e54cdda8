"""The weight Jacobian (seed 004): d output / d every parameter, as one matrix with named columns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tabulate import tabulate

from ..report.report import Report

__all__ = ["WeightJacobian", "weight_jacobian"]


@dataclass
class WeightJacobian:
    """``closed_form`` and ``autograd``: (outputs × parameters) matrices; ``columns``: parameter element names."""

    closed_form: np.ndarray
    autograd: np.ndarray
    columns: list[str]
    report: Report

    @property
    def shape(self) -> tuple[int, int]:
        return self.closed_form.shape

    @property
    def passed(self) -> bool:
        """Whether autograd's Jacobian matched the closed form (``self.report`` has the details)."""
        return self.report.passed

    def to_markdown(self, rows: int = 5, cols: int = 8) -> str:
        """The first ``rows`` × ``cols`` block of the closed-form matrix, columns named."""
        head = ["output", *self.columns[:cols]]
        body = [[f"out[{i}]", *(f"{x:.6g}" for x in self.closed_form[i, :cols])] for i in range(min(rows, self.shape[0]))]
        return tabulate(body, headers=head, tablefmt="github", disable_numparse=True)


def _element_names(name: str, shape: tuple) -> list[str]:
    return [f"{name}[{', '.join(map(str, i))}]" if shape else name for i in np.ndindex(shape)]


def weight_jacobian(model, inputs, *, via: str = "functional.jacobian", wrt=None, **kwargs) -> WeightJacobian:
    """The Jacobian of ``model(inputs)`` (flattened) w.r.t. every parameter, closed form beside autograd.

    ``via``: ``"functional.jacobian"``, ``"jacrev"``, ``"jacfwd"`` or ``"onehot-vjp"`` (one
    ``backward(v)`` per output element, v one-hot).  The check itself is ``report``.
    """
    from ..check import check

    report = check(model, inputs, via=via, wrt=wrt, **kwargs)
    params = dict(model.named_parameters())
    records = [r for r in report.records if r.quantity == "jacobian"]
    if not records:
        raise ValueError("the check computed no Jacobian rows (is the output a scalar?)")
    n_out = None
    blocks_e, blocks_a, columns = [], [], []
    for r in records:
        pshape = tuple(params[r.name].shape) if r.name in params else tuple(r.shape[-1:])
        k = int(np.prod(pshape)) if pshape else 1
        n_out = r.expected.size // k
        blocks_e.append(r.expected.reshape(n_out, k))
        blocks_a.append(r.actual.reshape(n_out, k))
        columns += _element_names(r.name, pshape)
    return WeightJacobian(np.hstack(blocks_e), np.hstack(blocks_a), columns, report)
