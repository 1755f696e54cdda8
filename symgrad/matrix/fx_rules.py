"""The torch.fx interpreter behind ``from_module``: one small handler per supported call.

Handlers take the builder, the fx node and its evaluated arguments (``_T`` values or python
constants) and return a ``_T``.  Anything without a handler raises ``UnsupportedOp`` naming the
call and the fx node.
"""

from __future__ import annotations

import operator

import sympy as sp

from sympy import OneMatrix

from symgrad.matrix.errors import UnsupportedOp
from symgrad.matrix.network import (
    _FUNCTIONAL_PARAMS,
    Network,
    _Builder,
    loss_spec,
    _T,
    _activation_functions,
    _broadcast,
    _exact,
    _loss_expr,
    _matmul,
    _module_row,
    _numel,
    functional_loss_spec,
)
from symgrad.matrix.nodes import Elementwise, LogSoftmaxRows, SoftmaxRows, hadamard, hpow, sum_all
from symgrad.ops import OPS

__all__ = ["interpret", "from_module"]


def _is_t(v) -> bool:
    return isinstance(v, _T)


def _where(node) -> str:
    return f"fx node {node.name!r} ({node.op} {getattr(node.target, '__name__', node.target)})"


def _op_params(name: str, args, kwargs) -> dict:
    """An op-table row's parameters from a call's positional and keyword arguments.

    ``None`` for a clamp bound means no bound (+-oo), not the row's default.
    """
    names = _FUNCTIONAL_PARAMS.get(name) or list(OPS[name].params)
    given = {"min": None, "max": None} if name == "clamp" else {}  # torch.clamp: a missing bound is none
    given.update(zip(names, args))
    given.update({k: v for k, v in kwargs.items() if k in names})
    params = {}
    for k, v in given.items():
        if v is None and name == "clamp":
            v = -sp.oo if k == "min" else sp.oo
        elif v is None:
            continue
        params[k] = v if v in (sp.oo, -sp.oo) else _exact(v)
    return params


def _activation(b, node, name: str, x: _T, params: dict) -> _T:
    full = {**{k: _exact(v) for k, v in OPS[name].params.items()}, **params}
    expr = Elementwise(name, x.expr, full, 0)
    b.signature.append(("act", name, tuple(sorted((k, str(v)) for k, v in full.items()))))
    return b.var(expr, x.shape, "h", node is b.out_node)


def _linear(b, node, x: _T, W: _T, bias: _T | None) -> _T:
    z = _matmul(x, _T(W.expr.T, W.shape[::-1]))
    expr = z.expr
    if bias is not None:
        lhs, rhs, _ = _broadcast(z, bias)
        expr = lhs + rhs
    b.signature.append(("linear", bias is not None))
    return b.var(expr, z.shape, "z", node is b.out_node)


def _add(a, c, sign=1):
    if _is_t(a) and _is_t(c):
        x, y, shape = _broadcast(a, c)
        return _T(x + sign * y, shape)
    t, k = (a, c) if _is_t(a) else (c, a)
    if not isinstance(k, (int, float)):
        raise UnsupportedOp(f"matrix engine: cannot add {type(k).__name__}")
    if not getattr(t.expr, "is_Matrix", False):
        return _T(t.expr + sign * _exact(k) if t is a else _exact(k) + sign * t.expr, t.shape)
    ones = OneMatrix(*t.expr.shape)
    return _T(t.expr + sign * _exact(k) * ones if t is a else _exact(k) * ones + sign * t.expr, t.shape)


def _mul(a, c):
    if _is_t(a) and _is_t(c):
        if getattr(a.expr, "is_Matrix", False) and getattr(c.expr, "is_Matrix", False):
            x, y, shape = _broadcast(a, c)
            return _T(hadamard(x, y), shape)
        return _T(a.expr * c.expr, a.shape if getattr(a.expr, "is_Matrix", False) else c.shape)
    t, k = (a, c) if _is_t(a) else (c, a)
    return _T(_exact(k) * t.expr, t.shape)


def _reduce(t: _T, mean: bool, b) -> _T:
    s = sum_all(t.expr) if getattr(t.expr, "is_Matrix", False) else t.expr
    return _T((1 / _numel(b, t.shape)) * s if mean else s, ())


def _softmax(t: _T, dim, log: bool) -> _T:
    if len(t.shape) != 2 or dim not in (1, -1):
        raise UnsupportedOp("matrix engine: softmax only along the last dim of a 2-D tensor")
    return _T(LogSoftmaxRows(t.expr) if log else SoftmaxRows(t.expr), t.shape)


def _transpose(t: _T) -> _T:
    if len(t.shape) != 2:
        raise UnsupportedOp(f"matrix engine: transpose of a {len(t.shape)}-D tensor")
    return _T(t.expr.T, t.shape[::-1])


def _functional_loss(b, node, kind, args, kwargs):
    if len(args) < 2:
        raise UnsupportedOp(f"matrix engine: {_where(node)} needs its input and target as positional arguments")
    yhat, target = args[0], args[1]
    spec = functional_loss_spec(kind, node.target, args, kwargs, _where(node))
    if not isinstance(target, _Const):
        raise UnsupportedOp(f"matrix engine: the target of {_where(node)} must be an input tensor")
    return _T(_loss_expr(b, spec, yhat, target.tensor), ())


class _Const:
    """A placeholder the engine does not differentiate (integer class targets)."""

    def __init__(self, tensor):
        self.tensor = tensor


def _call_function(b, node, args, kwargs):
    import torch
    import torch.nn.functional as F

    fn = node.target
    acts = b.activation_table
    if fn in acts and _is_t(args[0]):
        name = acts[fn]
        if name == "gelu" and kwargs.get("approximate", "none") == "tanh":
            name = "gelu_tanh"
        return _activation(b, node, name, args[0], _op_params(name, args[1:], kwargs))
    if fn is F.linear:
        return _linear(b, node, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("bias"))
    if fn in (torch.matmul, torch.mm, operator.matmul):
        z = _matmul(args[0], args[1])
        return b.var(z.expr, z.shape, "z", node is b.out_node) if z.shape else z
    if fn in (operator.add, torch.add):
        return _add(args[0], args[1])
    if fn in (operator.sub, torch.sub):
        return _add(args[0], args[1], -1)
    if fn in (operator.mul, torch.mul):
        return _mul(args[0], args[1])
    if fn in (operator.truediv, torch.div) and not _is_t(args[1]):
        return _mul(args[0], 1 / _exact(args[1]))
    if fn is operator.neg:
        return _mul(args[0], -1)
    if fn in (operator.pow, torch.pow) and not _is_t(args[1]):
        return _T(hpow(args[0].expr, _exact(args[1])), args[0].shape)
    if fn in (torch.sum, torch.mean) and len(args) == 1 and not kwargs:
        return _reduce(args[0], fn is torch.mean, b)
    if fn is torch.t:
        return _transpose(args[0])
    if fn is getattr and args[1] == "T":
        return _transpose(args[0])
    if fn in (F.softmax, torch.softmax, F.log_softmax, torch.log_softmax):
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        return _softmax(args[0], dim, fn in (F.log_softmax, torch.log_softmax))
    losses = {F.mse_loss: "mse", F.binary_cross_entropy_with_logits: "bce_with_logits", F.cross_entropy: "cross_entropy"}
    if fn in losses:
        return _functional_loss(b, node, losses[fn], args, kwargs)
    raise UnsupportedOp(f"matrix engine: unsupported call {getattr(fn, '__name__', fn)} at {_where(node)}; use engine='elementwise'")


_METHOD_AS_FUNCTION = {"matmul": operator.matmul, "mm": operator.matmul, "add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv, "pow": operator.pow}


def _call_method(b, node, args, kwargs):
    name = node.target
    if name in OPS and _is_t(args[0]):
        return _activation(b, node, name, args[0], _op_params(name, args[1:], kwargs))
    if name in ("t",):
        return _transpose(args[0])
    if name in ("sum", "mean") and len(args) == 1 and not kwargs:
        return _reduce(args[0], name == "mean", b)
    if name in ("double", "float", "contiguous"):
        return args[0]
    if name in ("softmax", "log_softmax"):
        return _softmax(args[0], args[1] if len(args) > 1 else kwargs.get("dim"), name == "log_softmax")
    if name in _METHOD_AS_FUNCTION:
        node_fn = _METHOD_AS_FUNCTION[name]
        return _call_function(b, _Shim(node, node_fn), args, kwargs)
    raise UnsupportedOp(f"matrix engine: unsupported method .{name}() at {_where(node)}; use engine='elementwise'")


class _Shim:
    def __init__(self, node, target):
        self.name, self.op, self.target = node.name, node.op, target


def _call_module(b, node, args, kwargs):
    import torch.nn as nn

    mod = b.model.get_submodule(node.target)
    if isinstance(mod, nn.Linear):
        W = _param(b, f"{node.target}.weight", f"W{b.layer + 1}")
        bias = _param(b, f"{node.target}.bias", f"b{b.layer + 1}") if mod.bias is not None else None
        return _linear(b, node, args[0], W, bias)
    if isinstance(mod, nn.Identity) or (isinstance(mod, nn.Dropout) and (not mod.training or mod.p == 0)):
        return args[0]
    found = _module_row(mod)
    if found is not None:
        name, params = found
        return _activation(b, node, name, args[0], params)
    raise UnsupportedOp(
        f"matrix engine: unsupported module {type(mod).__name__} at {_where(node)} "
        "(supported: Linear, activations of the op table, Identity, eval-mode Dropout); use engine='elementwise'"
    )


def _param(b, torch_name: str, sym_name: str) -> _T:
    if not hasattr(b, "aliases"):
        from symgrad.importer.interpret import parameter_aliases

        b.aliases = parameter_aliases(b.model)
    torch_name = b.aliases.get(torch_name, torch_name)  # a tied weight: one symbol for every use
    if torch_name in b.leaves:
        return b.leaves[torch_name]
    try:
        p = b.model.get_parameter(torch_name)
    except AttributeError:
        raise UnsupportedOp(f"matrix engine: {torch_name!r} is a buffer or constant tensor, not a parameter; "
                            "use engine='elementwise'") from None
    t = b.leaf(sym_name, torch_name, p, "parameter")
    b.leaves[torch_name] = t
    return t


def interpret(b, gm) -> _T:
    """Run the fx graph ``gm`` symbolically on the builder ``b``; returns the output ``_T``."""
    import torch

    from symgrad.importer.interpret import overwrites_input

    graph = gm.graph
    out_node = next(n for n in graph.nodes if n.op == "output")
    b.out_node = out_node.args[0] if not isinstance(out_node.args[0], (tuple, list)) else None
    b.activation_table = _activation_functions()
    b.leaves = {}
    env: dict = {}
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    for k, n in enumerate(placeholders):
        name = n.target
        if name in b.inputs:
            tensor = b.inputs[name]
        elif len(b.inputs) == len(placeholders):  # positional: the user's name wins (Sequential's is 'input')
            name, tensor = list(b.inputs.items())[k]
        else:
            raise ValueError(f"no input given for the model's argument {n.target!r} (inputs: {list(b.inputs)})")
        if not torch.is_floating_point(tensor):
            env[n] = _Const(tensor)
            b.has_const = True
            continue
        if tensor.dim() == 2 and "N" not in map(str, b.dims):
            b.dim(tensor.shape[0], "N")
        env[n] = b.leaf(name, name, tensor, "input")
    load = lambda a: env[a] if isinstance(a, torch.fx.Node) else a  # noqa: E731
    for n in graph.nodes:
        if n.op in ("placeholder", "output"):
            continue
        args = tuple(torch.fx.node.map_aggregate(n.args, load))
        kwargs = dict(torch.fx.node.map_aggregate(n.kwargs, load))
        if n.op == "get_attr":
            sym = n.target.replace(".", "_")
            env[n] = _param(b, n.target, sym)
        elif n.op == "call_module":
            env[n] = _call_module(b, n, args, kwargs)
        elif n.op == "call_function":
            env[n] = _call_function(b, n, args, kwargs)
        elif n.op == "call_method":
            env[n] = _call_method(b, n, args, kwargs)
        else:
            raise UnsupportedOp(f"matrix engine: unsupported fx op {n.op} at {_where(n)}")
        mod = gm.get_submodule(n.target) if n.op == "call_module" else None
        if overwrites_input(n, mod) and n.args and isinstance(n.args[0], torch.fx.Node):
            env[n.args[0]] = env[n]  # relu(z, inplace=True): later uses of z see the result
    out = env[b.out_node] if b.out_node is not None else None
    if not _is_t(out):
        raise UnsupportedOp("matrix engine: the model must return one tensor")
    return out


def from_module(model, inputs: dict, *, loss=None, target=None, traced=None) -> Network:
    """Trace ``model`` with ``torch.fx`` at ``inputs`` (``{placeholder name: tensor}``) into a
    ``Network`` whose ``loss`` is ``loss(model(**inputs), target)`` as a matrix expression (the
    model's own output when ``loss`` is None and that output is a scalar)."""
    import torch.fx as fx

    from symgrad.symbolic.numbers import refuse_string_attributes

    refuse_string_attributes(model, loss)
    gm = traced if traced is not None else fx.symbolic_trace(model)
    from symgrad.validate import refuse_non_tensor_output

    refuse_non_tensor_output(gm, f"{type(model).__name__}.forward")
    b = _Builder(model, inputs)
    out = interpret(b, gm)
    spec = loss_spec(loss)
    if spec.kind == "none":
        if out.shape not in ((), (1,), (1, 1)):
            raise UnsupportedOp("matrix engine needs a scalar loss; pass loss=... or use engine='elementwise'")
        loss_expr = out.expr
    else:
        if target is None:
            raise ValueError(f"loss {spec.kind} needs a target")
        loss_expr = _loss_expr(b, spec, out, target)
    b.signature.append(("loss", spec.kind, spec.reduction, out.shape == ()))
    return Network(
        loss=loss_expr,
        defs=b.defs,
        params=b.params,
        inputs=b.input_syms,
        values=b.values,
        shapes=b.shapes,
        dims=dict(b.dims),
        delta_names=b.delta_names,
        legend=b.legend,
        signature=tuple(b.signature),
        cacheable=not b.has_const,
        loss_spec=getattr(b, "loss_spec", spec),
    )
