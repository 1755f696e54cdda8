"""torch.fx graph -> symbolic twin: run a traced model on ``SymTensor``s, and find its sample axes.

``trace(fn)`` records an ``nn.Module`` or a plain function of tensors with ``torch.fx`` (modules
with an importer rule stay leaves of the trace; everything else is traced through, including a
custom ``autograd.Function``'s forward: the twin follows the forward, never the backward under
test).  ``run_symbolic(gm, args, params)`` then evaluates the graph with the importer table's
symbolic forms, parameters given as tensors of symbols named after the module's parameter names
(``layer1.weight[3, 2]``).  ``batch_axes(gm, args, infos)`` runs it in torch once more and applies
every node's batch rule (Note [Per-sample derivation] in ``batch.py``).
"""

from __future__ import annotations

from typing import Callable, Mapping

from ..symbolic.tensor import SymTensor, as_symtensor
from ..errors import InputError, SymgradError, UnsupportedOp
from .batch import Ctx, Mixing, batch_info
from .table import describe_target, lookup

__all__ = ["trace", "run_symbolic", "batch_axes", "refuse_stateful", "graph_parameters", "overwrites_input",
           "parameter_aliases"]


def _fx():
    import torch.fx as fx

    return fx


def refuse_stateful(model) -> None:
    """Training-mode dropout and batch norm change the forward from call to call: refuse them."""
    import torch.nn as nn
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.dropout import _DropoutNd

    for name, m in model.named_modules():
        where = f"module {name!r} ({type(m).__name__})" if name else type(m).__name__
        if isinstance(m, (_DropoutNd, nn.AlphaDropout)) and m.training and m.p > 0:
            raise UnsupportedOp(f"{where} is in training mode: dropout makes the forward random, so no closed form "
                                "describes it. Call model.eval() before checking (dropout is then the identity).")
        if isinstance(m, _BatchNorm) and m.training:
            raise UnsupportedOp(f"{where} is in training mode: it normalises with batch statistics and updates its "
                                "running stats on every call. Call model.eval() before checking (it then uses the "
                                "running stats, which symgrad supports).")


def trace(fn: Callable):
    """``torch.fx`` graph module of an ``nn.Module`` or a plain function of tensors."""
    import torch.nn as nn

    fx = _fx()

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            if lookup("module", m) is not None:
                return True
            return super().is_leaf_module(m, qualname)

    root = fn if isinstance(fn, nn.Module) else None
    try:
        graph = _Tracer().trace(fn)
    except Exception as err:
        if "not installed as a submodule" in str(err):
            raise UnsupportedOp(
                f"{getattr(fn, '__name__', type(fn).__name__)} calls an nn.Module that is not one of its submodules, "
                "which torch.fx cannot trace: check the module itself (symgrad.check(model, ...)), or make it an "
                "attribute of an nn.Module whose forward does the rest"
            ) from err
        raise UnsupportedOp(
            f"torch.fx cannot trace {getattr(fn, '__name__', type(fn).__name__)} ({type(err).__name__}: {err}). "
            "Data-dependent Python control flow (if/for on tensor values) cannot be traced: rewrite it with "
            "torch.where, or pass symbolic=... written with sg.* functions."
        ) from err
    return fx.GraphModule(root if root is not None else nn.Module(), graph)


def parameter_aliases(module) -> dict:
    """``{name: canonical name}`` for every parameter name, tied ones included: ``lin2.weight`` ->
    ``lin1.weight`` after ``lin2.weight = lin1.weight`` (the canonical name is the first, as in
    ``named_parameters()``).  Both uses then read one symbol, so the closed form sums them, as
    torch does."""
    first: dict = {}
    out = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        out[name] = first.setdefault(id(p), name)
    return out


def graph_parameters(gm) -> dict:
    """``{qualified name: tensor}`` of every parameter the graph reads (through modules or get_attr)."""
    return dict(gm.named_parameters())


def _fetch(gm, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _constant(value):
    if (type(value).__module__ or "").startswith("torch") and hasattr(value, "detach"):
        return as_symtensor(value.detach().cpu())
    return value


def _unsupported(node, kind: str, target) -> UnsupportedOp:
    name = describe_target(target if kind != "module" else type(target))
    hint = (f"symgrad.importer.register({name}, lambda mod, get, x: ...)  # get('weight') gives its parameters"
            if kind == "module" else
            f"symgrad.importer.register({name if kind != 'method' else repr(target)}, lambda x, ...: ...)")
    return UnsupportedOp(
        f"symgrad's importer has no rule for {kind} {name} (fx node {node.name!r}: `{node.format_node()}`). "
        f"Add one with {hint}, written with sg.* functions; pass batch='pointwise' if it acts on each "
        "sample alone. The coverage table (symgrad.importer.coverage_rows()) lists what is known."
    )


def _rule_for(gm, node, modules):
    if node.op == "call_module":
        mod = modules[node.target]
        return lookup("module", mod), mod
    kind = "function" if node.op == "call_function" else "method"
    return lookup(kind, node.target), None


def overwrites_input(node, mod) -> bool:
    """Whether the node overwrites its first argument (``inplace=True``, ``x.relu_()``, ``nn.ReLU(inplace=True)``)."""
    if node.kwargs.get("inplace") is True:
        return True
    if mod is not None:
        return getattr(mod, "inplace", False) is True
    name = str(node.target) if node.op == "call_method" else getattr(node.target, "__name__", "")
    return node.op in ("call_method", "call_function") and name.endswith("_") and not name.startswith("_")


def run_symbolic(gm, args, params: Mapping[str, SymTensor] | None = None):
    """Evaluate the graph on symbolic arguments; ``params`` maps qualified parameter names to symbols."""
    fx = _fx()
    params = dict(params or {})
    aliases = parameter_aliases(gm)
    params.update({alias: params[name] for alias, name in aliases.items() if name in params and alias not in params})
    modules = dict(gm.named_modules())
    env: dict = {}
    args = list(args)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(args) > len(placeholders):
        raise UnsupportedOp(f"the traced graph takes {len(placeholders)} inputs, got {len(args)}")
    for node in gm.graph.nodes:
        load = lambda a: fx.node.map_arg(a, lambda n: env[n])  # noqa: E731
        if node.op == "placeholder":
            k = placeholders.index(node)
            if k < len(args):
                env[node] = args[k]
            elif node.args:
                env[node] = node.args[0]
            else:
                raise UnsupportedOp(f"input {node.target!r} of the traced graph was not given")
            continue
        if node.op == "get_attr":
            env[node] = params[node.target] if node.target in params else _constant(_fetch(gm, node.target))
            continue
        if node.op == "output":
            return load(node.args[0])
        rule, mod = _rule_for(gm, node, modules)
        if rule is None:
            raise _unsupported(node, "module" if mod is not None else node.op.replace("call_", ""), mod or node.target)
        a, kw = load(node.args), load(node.kwargs)
        a = tuple(_constant(x) for x in a)
        try:
            if mod is not None:
                prefix = node.target

                def get(name, _prefix=prefix, _mod=mod):
                    full = f"{_prefix}.{name}"
                    return params[full] if full in params else _constant(getattr(_mod, name))

                env[node] = rule.symbolic(mod, get, *a, **kw)
            else:
                env[node] = rule.symbolic(*a, **kw)
            if overwrites_input(node, mod) and node.args and isinstance(node.args[0], fx.Node):
                # relu(z, inplace=True), z.add_(y): later uses of z see the result (fx keeps the name z)
                env[node.args[0]] = env[node]
        except SymgradError as err:
            raise type(err)(f"{err} (at fx node {node.name!r}: `{node.format_node()}`)") from err
        except (TypeError, AttributeError, IndexError) as err:
            raise UnsupportedOp(f"the symbolic form of {describe_target(rule.target)} failed at fx node {node.name!r} "
                                f"(`{node.format_node()}`): {type(err).__name__}: {err}") from err
    raise UnsupportedOp("the traced graph has no output")  # pragma: no cover


def _infos(value, info):
    """Batch infos in the shape of an fx argument: a node's info, ``None`` for every literal."""
    fx = _fx()
    if isinstance(value, fx.Node):
        return info[value]
    if isinstance(value, (list, tuple)):
        return type(value)(_infos(v, info) for v in value) if not hasattr(value, "_fields") else tuple(
            _infos(v, info) for v in value)
    if isinstance(value, dict):
        return {k: _infos(v, info) for k, v in value.items()}
    return None


def batch_axes(gm, args, infos) -> tuple[object, object]:
    """Run the graph in torch on ``args`` and propagate batch infos; returns ``(output, its info)``.

    Raises ``Mixing`` (with the node) when an op may mix samples or has no batch rule.
    """
    fx = _fx()
    modules = dict(gm.named_modules())
    env, info = {}, {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            k = placeholders.index(node)
            env[node] = args[k] if k < len(args) else node.args[0]
            info[node] = infos[k] if k < len(infos) else None
            continue
        if node.op == "get_attr":
            env[node], info[node] = _fetch(gm, node.target), None
            continue
        if node.op == "output":
            out = fx.node.map_arg(node.args[0], lambda n: env[n])
            out_info = _infos(node.args[0], info)
            return out, out_info
        a, kw = fx.node.map_arg(node.args, lambda n: env[n]), fx.node.map_arg(node.kwargs, lambda n: env[n])
        ia, ikw = _infos(node.args, info), _infos(node.kwargs, info)
        rule, mod = _rule_for(gm, node, modules)
        try:
            if node.op == "call_module":
                value = mod(*a, **kw)
                name = type(mod).__name__
            elif node.op == "call_function":
                value = node.target(*a, **kw)
                name = describe_target(node.target)
            else:
                value = getattr(a[0], node.target)(*a[1:], **kw)
                name = f"Tensor.{node.target}"
        except Exception as err:  # noqa: BLE001 - the model does not run in torch at all
            raise InputError(f"the model raised in torch itself at fx node {node.name!r} (`{node.format_node()}`): "
                             f"{type(err).__name__}: {str(err)[:300]}. Fix the model so that it runs in torch; "
                             "symgrad checks what torch computes.") from err
        env[node] = value
        ctx = Ctx(name, tuple(a), dict(kw), tuple(ia), dict(ikw), value, mod)
        try:
            info[node] = batch_info(rule.batch if rule is not None else None, ctx)
        except Mixing as err:
            raise Mixing(f"{err} (fx node {node.name!r})") from None
    raise Mixing("the graph has no output")  # pragma: no cover
