"""Every row of the importer's coverage table, imported through fx and checked in float64 and float32.

Each case is a tiny torch module or function using the op; the check must pass (forward and every
gradient).  ``test_every_rule_has_a_case`` keeps this list complete: a new importer rule without
a case fails it.  ``test_a_wrong_rule_is_caught`` shows the cases can fail.
"""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import symgrad
from symgrad.importer import coverage_rows, register
from symgrad.importer.table import RULES, describe_target
from symgrad.nn import check_function, check_module
from symgrad.ops import OPS

N = 3


def _x(shape=(N, 4), lo=-2.0, hi=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float64)).requires_grad_()


def _row_domain(target):
    for row in OPS.values():
        names = {row.torch.rpartition(".")[2], row.name}
        if getattr(target, "__name__", target if isinstance(target, str) else "") in names:
            return row.domain
    return (-2.0, 2.0)


def _seq(*mods):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), *mods).double()


def _fn(f, **inputs):
    return ("fn", f, inputs, {})


def _mod(m, x=None, **kw):
    return ("module", m, {"x": _x() if x is None else x}, kw)


W = lambda: _x((4, 2), seed=1)  # noqa: E731
TGT = lambda: torch.rand(N, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)  # noqa: E731

HAND = {
    "operator.add": _fn(lambda x, y: x + y, x=_x(), y=_x((4,), seed=2)),
    "operator.sub": _fn(lambda x, y: x - y, x=_x(), y=_x((4,), seed=2)),
    "operator.mul": _fn(lambda x, y: x * y, x=_x(), y=_x((4,), seed=2)),
    "operator.truediv": _fn(lambda x, y: x / y, x=_x(), y=_x((4,), 0.5, 2.0, seed=2)),
    "operator.pow": _fn(lambda x: x ** 3 + x ** 2, x=_x()),
    "operator.neg": _fn(lambda x: -x, x=_x()),
    "operator.matmul": _fn(lambda x, w: x @ w, x=_x(), w=W()),
    "torch.add": _fn(lambda x, y: torch.add(x, y, alpha=2.0), x=_x(), y=_x((4,), seed=2)),
    "torch.sub": _fn(lambda x, y: torch.sub(x, y), x=_x(), y=_x((4,), seed=2)),
    "torch.mul": _fn(lambda x, y: torch.mul(x, y), x=_x(), y=_x((4,), seed=2)),
    "torch.div": _fn(lambda x, y: torch.div(x, y), x=_x(), y=_x((4,), 0.5, 2.0, seed=2)),
    "torch.pow": _fn(lambda x: torch.pow(x, 2), x=_x()),
    "torch.neg": _fn(lambda x: torch.neg(x), x=_x()),
    "torch.matmul": _fn(lambda x, w: torch.matmul(x, w), x=_x(), w=W()),
    "torch.mm": _fn(lambda x, w: torch.mm(x, w), x=_x(), w=W()),
    "Tensor.add": _fn(lambda x, y: x.add(y), x=_x(), y=_x((4,), seed=2)),
    "Tensor.sub": _fn(lambda x, y: x.sub(y), x=_x(), y=_x((4,), seed=2)),
    "Tensor.mul": _fn(lambda x, y: x.mul(y), x=_x(), y=_x((4,), seed=2)),
    "Tensor.div": _fn(lambda x, y: x.div(y), x=_x(), y=_x((4,), 0.5, 2.0, seed=2)),
    "Tensor.pow": _fn(lambda x: x.pow(2), x=_x()),
    "Tensor.neg": _fn(lambda x: x.neg(), x=_x()),
    "Tensor.matmul": _fn(lambda x, w: x.matmul(w), x=_x(), w=W()),
    "Tensor.mm": _fn(lambda x, w: x.mm(w), x=_x(), w=W()),
    "Tensor.__add__": _fn(lambda x: x.__add__(1.5), x=_x()),
    "Tensor.__radd__": _fn(lambda x: x.__radd__(1.5), x=_x()),
    "Tensor.__sub__": _fn(lambda x: x.__sub__(1.5), x=_x()),
    "Tensor.__rsub__": _fn(lambda x: x.__rsub__(1.5), x=_x()),
    "Tensor.__mul__": _fn(lambda x: x.__mul__(1.5), x=_x()),
    "Tensor.__rmul__": _fn(lambda x: x.__rmul__(1.5), x=_x()),
    "Tensor.__truediv__": _fn(lambda x: x.__truediv__(1.5), x=_x()),
    "Tensor.__rtruediv__": _fn(lambda x: x.__rtruediv__(1.5), x=_x((N, 4), 0.5, 2.0)),
    "torch.clamp": _fn(lambda x: torch.clamp(x, -0.5, 0.7) + torch.clamp(x, min=0.1) + torch.clamp(x, max=0.2), x=_x()),
    "torch.clip": _fn(lambda x: torch.clip(x, -0.5, 0.7), x=_x()),
    "Tensor.clamp": _fn(lambda x: x.clamp(min=-0.3), x=_x()),
    "Tensor.clip": _fn(lambda x: x.clip(-0.5, 0.7), x=_x()),
    "torch.nn.functional.relu6": _fn(lambda x: F.relu6(3 * x), x=_x()),
    "torch.nn.ReLU6(...)": _mod(_seq(nn.ReLU6())),
    "torch.nn.functional.linear": _fn(lambda x, w, b: F.linear(x, w, b), x=_x(), w=_x((2, 4), seed=1), b=_x((2,), seed=2)),
    "torch.nn.Linear(...)": _mod(_seq(nn.Linear(4, 2))),
    "torch.nn.functional.softmax": _fn(lambda x: F.softmax(x, dim=1), x=_x()),
    "torch.softmax": _fn(lambda x: torch.softmax(x, -1), x=_x()),
    "Tensor.softmax": _fn(lambda x: x.softmax(1), x=_x()),
    "torch.nn.functional.log_softmax": _fn(lambda x: F.log_softmax(x, dim=1), x=_x()),
    "torch.log_softmax": _fn(lambda x: torch.log_softmax(x, 1), x=_x()),
    "Tensor.log_softmax": _fn(lambda x: x.log_softmax(-1), x=_x()),
    "torch.nn.Softmax(...)": _mod(_seq(nn.Softmax(dim=1))),
    "torch.nn.LogSoftmax(...)": _mod(_seq(nn.LogSoftmax(dim=1))),
    "torch.sum": _fn(lambda x: torch.sum(x * x), x=_x()),
    "Tensor.sum": _fn(lambda x: x.sum(1, keepdim=True) * x, x=_x()),
    "torch.mean": _fn(lambda x: torch.mean(x, 1), x=_x()),
    "Tensor.mean": _fn(lambda x: (x * x).mean(), x=_x()),
    "Tensor.view": _fn(lambda x: x.view(x.size(0), 2, 2).tanh().view(-1, 4), x=_x()),
    "Tensor.reshape": _fn(lambda x: x.reshape(-1, 2, 2).sum(2), x=_x()),
    "torch.reshape": _fn(lambda x: torch.reshape(x, (-1, 2, 2)).sin(), x=_x()),
    "torch.flatten": _fn(lambda x: torch.flatten(x.view(-1, 2, 2), 1), x=_x()),
    "Tensor.flatten": _fn(lambda x: x.view(-1, 2, 2).flatten(1).exp(), x=_x()),
    "torch.nn.Flatten(...)": _mod(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).double(), x=_x((N, 2, 2))),
    "torch.transpose": _fn(lambda x, w: torch.transpose(w, 0, 1) @ torch.transpose(x, 0, 1), x=_x(), w=W()),
    "Tensor.transpose": _fn(lambda x: x.view(-1, 2, 2).transpose(1, 2).reshape(-1, 4) * x, x=_x()),
    "Tensor.t": _fn(lambda x, w: (x @ w).t(), x=_x(), w=W()),
    "Tensor.permute": _fn(lambda x: x.view(-1, 2, 2).permute(0, 2, 1).flatten(1) * x, x=_x()),
    "Tensor.unsqueeze": _fn(lambda x: x.unsqueeze(1).tanh().sum(1), x=_x()),
    "torch.unsqueeze": _fn(lambda x: torch.unsqueeze(x, -1).sin().flatten(1), x=_x()),
    "Tensor.squeeze": _fn(lambda x, w: (x @ w[:, :1]).squeeze(1), x=_x(), w=W()),
    "torch.squeeze": _fn(lambda x: torch.squeeze(x.sum(1, keepdim=True), 1), x=_x()),
    "torch.cat": _fn(lambda x: torch.cat([x.tanh(), x * x], dim=1), x=_x()),
    "Tensor.size": _fn(lambda x: x.view(x.size(0), -1) * x.size(1), x=_x()),
    "Tensor.dim": _fn(lambda x: x * x.dim(), x=_x()),
    "Tensor.contiguous": _fn(lambda x: x.t().contiguous().t().sin(), x=_x()),
    "operator.getitem": _fn(lambda x: x[:, 1:3].exp() + x.shape[1], x=_x()),
    "builtins.getattr": _fn(lambda x, w: (x @ w).T.sum(1) + x.shape[0], x=_x(), w=W()),
    "torch.maximum": _fn(lambda x, y: torch.maximum(x, y), x=_x(), y=_x((4,), seed=2)),
    "torch.where": _fn(lambda x: torch.where(x > 0.3, x * x, torch.sin(x)), x=_x()),
    "Tensor.where": _fn(lambda x: (x * x).where(x < 0.1, x.exp()), x=_x()),
    "torch.zeros_like": _fn(lambda x: torch.where(x > 0, x, torch.zeros_like(x)), x=_x()),
    "torch.ones_like": _fn(lambda x: x * torch.ones_like(x) * 2, x=_x()),
    "Tensor.float": _fn(lambda x: x * (x > 0).float(), x=_x()),
    "Tensor.double": _fn(lambda x: x * (x > 0).double(), x=_x()),
    "Tensor.half": _fn(lambda x: x * (x < 1).half(), x=_x()),
    "Tensor.bool": _fn(lambda x: torch.where((x > 0).bool(), x, -x), x=_x()),
    "Tensor.to": _fn(lambda x: x * (x > 0).to(x.dtype), x=_x()),
    "Tensor.type_as": _fn(lambda x: x * (x > 0.5).type_as(x), x=_x()),
    "torch.minimum": _fn(lambda x, y: torch.minimum(x, y), x=_x(), y=_x((4,), seed=2)),
    "operator.gt": _fn(lambda x: x * operator.gt(x, 0.2), x=_x()),
    "torch.gt": _fn(lambda x: x * torch.gt(x, 0.2), x=_x()),
    "Tensor.gt": _fn(lambda x: x * x.gt(0.2), x=_x()),
    "Tensor.__gt__": _fn(lambda x: x * x.__gt__(0.2), x=_x()),
    "operator.lt": _fn(lambda x: x * operator.lt(x, 0.2), x=_x()),
    "torch.lt": _fn(lambda x: x * torch.lt(x, 0.2), x=_x()),
    "Tensor.lt": _fn(lambda x: x * x.lt(0.2), x=_x()),
    "Tensor.__lt__": _fn(lambda x: x * x.__lt__(0.2), x=_x()),
    "operator.ge": _fn(lambda x: x * operator.ge(x, 0.2), x=_x()),
    "torch.ge": _fn(lambda x: x * torch.ge(x, 0.2), x=_x()),
    "Tensor.ge": _fn(lambda x: x * x.ge(0.2), x=_x()),
    "Tensor.__ge__": _fn(lambda x: x * x.__ge__(0.2), x=_x()),
    "operator.le": _fn(lambda x: x * operator.le(x, 0.2), x=_x()),
    "torch.le": _fn(lambda x: x * torch.le(x, 0.2), x=_x()),
    "Tensor.le": _fn(lambda x: x * x.le(0.2), x=_x()),
    "Tensor.__le__": _fn(lambda x: x * x.__le__(0.2), x=_x()),
    "operator.eq": _fn(lambda x: x * operator.eq(x, 0.2), x=_x()),
    "torch.eq": _fn(lambda x: x * torch.eq(x, 0.2), x=_x()),
    "Tensor.eq": _fn(lambda x: x * x.eq(0.2), x=_x()),
    "Tensor.__eq__": _fn(lambda x: x * x.__eq__(0.2), x=_x()),
    "operator.ne": _fn(lambda x: x * operator.ne(x, 0.2), x=_x()),
    "torch.ne": _fn(lambda x: x * torch.ne(x, 0.2), x=_x()),
    "Tensor.ne": _fn(lambda x: x * x.ne(0.2), x=_x()),
    "Tensor.__ne__": _fn(lambda x: x * x.__ne__(0.2), x=_x()),
    "torch.nn.functional.dropout": _fn(lambda x: F.dropout(x.tanh(), 0.5, training=False), x=_x()),
    "torch.nn.Dropout(...)": _mod(_seq(nn.Dropout(0.3)).eval()),
    "torch.nn.AlphaDropout(...)": _mod(_seq(nn.AlphaDropout(0.3)).eval()),
    "torch.nn.Identity(...)": _mod(_seq(nn.Identity())),
    "torch.nn.functional.mse_loss": _fn(lambda x, t: F.mse_loss(x.tanh(), t), x=_x(), t=TGT()),
    "torch.nn.MSELoss(...)": _mod(_seq(nn.Tanh()), loss=nn.MSELoss(reduction="sum"), target=TGT()),
    "torch.nn.functional.l1_loss": _fn(lambda x, t: F.l1_loss(x, t), x=_x(), t=TGT()),
    "torch.nn.L1Loss(...)": _mod(_seq(), loss=nn.L1Loss(), target=TGT()),
    "torch.nn.functional.binary_cross_entropy": _fn(lambda x, t: F.binary_cross_entropy(x.sigmoid(), t), x=_x(), t=TGT()),
    "torch.nn.BCELoss(...)": _mod(_seq(nn.Sigmoid()), loss=nn.BCELoss(), target=TGT()),
    "torch.nn.functional.binary_cross_entropy_with_logits": _fn(
        lambda x, t: F.binary_cross_entropy_with_logits(x, t, reduction="sum"), x=_x(), t=TGT()),
    "torch.nn.BCEWithLogitsLoss(...)": _mod(_seq(), loss=nn.BCEWithLogitsLoss(), target=TGT()),
    "torch.nn.functional.cross_entropy": _fn(lambda x, t: F.cross_entropy(x, t), x=_x(), t=TGT().softmax(1)),
    "torch.nn.CrossEntropyLoss(...)": _mod(_seq(), loss=nn.CrossEntropyLoss(), target=torch.tensor([0, 3, 1])),
}


def _bn(cls, x):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 4), nn.Unflatten(1, (4, 1)) if cls is nn.BatchNorm2d else nn.Identity(), cls(4))
    if cls is nn.BatchNorm2d:
        m = nn.Sequential(cls(4))
        x = _x((N, 4, 1, 1))
    m.double().train()
    with torch.no_grad():
        m(_x((8,) + tuple(x.shape[1:]), seed=5))  # running stats away from 0/1
    return _mod(m.eval(), x=x)


HAND["torch.nn.BatchNorm1d(...)"] = _bn(nn.BatchNorm1d, _x())
HAND["torch.nn.BatchNorm2d(...)"] = _bn(nn.BatchNorm2d, None)


def _case(rule):
    name = describe_target(rule.target) + ("(...)" if rule.kind == "module" else "")
    if name in HAND:
        return HAND[name]
    if rule.form.startswith("op table row"):
        lo, hi = _row_domain(rule.target)
        if rule.kind == "module":
            return _mod(_seq(rule.target()))
        if rule.kind == "method":
            return _fn(lambda x: getattr(x, rule.target)(), x=_x(lo=lo, hi=hi))
        return _fn(lambda x: rule.target(x), x=_x(lo=lo, hi=hi))
    return None


RULE_NAMES = sorted({describe_target(r.target) + ("(...)" if r.kind == "module" else "") for r in RULES.values()})
CASES = {describe_target(r.target) + ("(...)" if r.kind == "module" else ""): r for r in list(RULES.values())}


def test_every_rule_has_a_case():
    missing = [name for name, rule in CASES.items() if _case(rule) is None]
    assert not missing, f"importer rules without a test case: {missing}"
    assert {r["torch op"] for r in coverage_rows()} == set(CASES)


def _run(case, dtype):
    kind, obj, inputs, kw = case
    inputs = {k: (v.detach().to(dtype).requires_grad_(v.requires_grad) if v.is_floating_point() else v)
              for k, v in inputs.items()}
    kw = {k: (v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in kw.items()}
    if kind == "fn":
        return check_function(obj, inputs, **kw)
    model = obj.to(dtype)
    return check_module(model, inputs, **kw)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", RULE_NAMES)
def test_op_imports_and_checks(name, dtype):
    report = _run(_case(CASES[name]), dtype)
    assert report.passed, report.to_text()
    assert len(report.records) >= 2


def test_a_wrong_rule_is_caught():
    """Map torch.sigmoid to tanh: the forward row fails, so the op tests above can fail."""
    good = RULES[("function", torch.sigmoid)]
    try:
        register(torch.sigmoid, lambda x: symgrad.tanh(x), batch="pointwise")
        report = check_function(lambda x: torch.sigmoid(x), {"x": _x()})
        assert not report.passed
        assert report["output"].verdict == "FAIL"
    finally:
        RULES[("function", torch.sigmoid)] = good
    assert check_function(lambda x: torch.sigmoid(x), {"x": _x()}).passed


def test_unknown_op_names_op_node_and_fix():
    with pytest.raises(symgrad.UnsupportedOp) as err:
        check_function(lambda x: torch.erfinv(x * 0.5), {"x": _x()})
    msg = str(err.value)
    assert "torch.erfinv" in msg and "fx node" in msg and "symgrad.importer.register" in msg


def cube(x):
    return x * x * x


torch.fx.wrap("cube")


class Square(nn.Module):
    """A user module made a leaf of the trace by registering it."""

    def forward(self, x):
        return x * x


def test_register_hook_for_a_user_op():
    register(cube, lambda x: x * x * x, batch="pointwise", notes="test op")
    report = check_function(lambda x: cube(x).sum(), {"x": _x()})
    assert report.passed and "elementwise" in report.meta["engine"]
    register(Square, lambda mod, get, x: x * x)  # no batch rule: sound fallback to the whole batch
    report = check_module(nn.Sequential(nn.Linear(4, 2), Square()).double(), {"x": _x()}, engine="elementwise")
    assert report.passed and "whole batch" in report.meta["engine"]


def test_operator_table_is_data():
    assert RULES[("function", operator.add)].batch == "pointwise"
    rows = coverage_rows()
    assert all({"torch op", "symbolic form", "notes"} <= set(r) for r in rows)
