"""Gradients of a ``Network`` in closed form, evaluated, kink-banded and cross-checked:
``module_references`` is what ``symgrad.check(..., engine="matrix")`` calls.

# Note [Once-per-architecture cross-check]
The closed forms are built with symbolic dimensions, so the very expressions evaluated at full
size can be made concrete at a tiny size (batch 2, widths 2-3) where the loss is exploded into
SymPy scalars and differentiated by ``sympy.diff``.  The result is cached per architecture
signature (layer kinds, activations and their parameters, loss) and sets ``Reference.verified``.

# Note [Kink bands]
A unit whose pre-activation z sits on a kink of its op (relu at 0, hardtanh at ±1 …) — exactly,
or within ``KINK_C · eps(dtype) · scale`` where ``scale`` is the same expression evaluated with
absolute values (|X||W|ᵀ + 1|b|ᵀ) — may legitimately get either one-sided derivative: in
float32 the sign of z can differ from the float64 one.  The gradient is evaluated twice more
with those units' derivatives set to the left and to the right one-sided values; ``lower`` /
``upper`` are the entrywise min / max of the three evaluations and ``kink`` marks the entries
where they differ.  With several kinked units in different layers this is the band of the two
extreme assignments, not of every combination.
"""

from __future__ import annotations

import numpy as np
import sympy as sp
from sympy import HadamardProduct, MatAdd, MatMul, MatrixSymbol, Transpose, ZeroMatrix

from symgrad.matrix.diff import vjp
from symgrad.matrix.evaluate import Evaluator, matrix_symbols
from symgrad.matrix.explode import compare, concrete, exploded_grad
from symgrad.matrix.network import Network, from_module
from symgrad.matrix.nodes import Elementwise, scalar_function
from symgrad.matrix.printing import to_latex, to_text
from symgrad.reference import Reference

__all__ = ["clear_caches", "network_gradients", "module_references", "verify_network", "closed_forms", "kink_bands", "inline", "KINK_C"]

KINK_C = 16.0
_VERIFIED: dict = {}
_FORMS: dict = {}
_STRUCTURES: dict = {}


def clear_caches() -> None:
    """Forget cached structures, closed forms and cross-check verdicts (benchmarks, tests)."""
    _VERIFIED.clear()
    _FORMS.clear()
    _STRUCTURES.clear()


def _structure_key(model, gm, inputs: dict, loss, target, wrt) -> tuple:
    """Everything the symbolic structure depends on: the traced code, the modules (types,
    hyper-parameters, train/eval), the shapes and dtypes, the loss and ``wrt``."""
    from symgrad.matrix.network import loss_kind

    def sig(t):
        return None if t is None else (tuple(t.shape), str(t.dtype))

    return (
        type(model),
        gm.code,
        repr(model),
        tuple(m.training for m in model.modules()),
        tuple((n, sig(p)) for n, p in model.named_parameters()),
        tuple((k, sig(v)) for k, v in inputs.items()),
        loss_kind(loss),
        sig(target),
        tuple(wrt) if wrt is not None else None,
    )


def inline(expr, defs: dict):
    """``expr`` with every defined symbol replaced by its definition (last definition first)."""
    for sym in reversed(list(defs)):
        expr = expr.xreplace({sym: defs[sym]})
    return expr


def network_gradients(net: Network, wrt: list[str] | None = None) -> tuple[dict, dict]:
    """Reverse mode over the network's definitions: ``({torch name: gradient}, cotangent defs)``.
    The cotangent of every pre-activation ``z<k>`` becomes a named symbol ``delta<k>``."""
    leaves = net.wrt()
    names = list(leaves) if wrt is None else list(wrt)
    missing = [n for n in names if n not in leaves]
    if missing:
        raise KeyError(f"matrix engine: no parameter or input named {missing} (known: {list(leaves)})")
    targets = [leaves[n] for n in names]
    order = list(net.defs)
    acc: dict = {}

    def add(contribs):
        for v, g in contribs.items():
            if isinstance(g, ZeroMatrix) or g == 0:
                continue
            acc[v] = acc[v] + g if v in acc else g

    seed = sp.Identity(1) if getattr(net.loss, "is_Matrix", False) else sp.Integer(1)
    add(vjp(net.loss, seed, targets + order))
    cot_defs: dict = {}
    for k in range(len(order) - 1, -1, -1):
        v = order[k]
        g = acc.pop(v, None)
        if g is None:
            continue
        if v in net.delta_names:
            delta = MatrixSymbol(net.delta_names[v], *v.shape)
            cot_defs[delta] = g
            g = delta
        add(vjp(net.defs[v], g, targets + order[:k]))
    grads = {n: acc.get(leaves[n], ZeroMatrix(*leaves[n].shape)) for n in names}
    return grads, cot_defs


def _push_transpose(expr):
    """``(c M)ᵀ -> c Mᵀ`` without distributing over sums (for prints)."""
    if isinstance(expr, MatMul):
        coeff = [a for a in expr.args if not a.is_Matrix]
        mats = [a for a in expr.args if a.is_Matrix]
        if coeff and len(mats) == 1:
            return MatMul(*coeff, Transpose(mats[0]))
    return Transpose(expr)


def _flatten_matmul(e):
    """Nested products written as one (``(2 Mᵀ) h -> 2 Mᵀ h``), without SymPy's canonicalisation."""

    def flat(n):
        args = []
        for a in n.args:
            args.extend(a.args if isinstance(a, MatMul) else [a])
        return MatMul(*args)

    return e.replace(lambda n: isinstance(n, MatMul) and any(isinstance(a, MatMul) for a in n.args), flat)


def closed_forms(expr, net: Network, cot_defs: dict, *, short: int = 40) -> tuple[str, str]:
    """(text, LaTeX) of a gradient: the expression, then ``where`` the named quantities it uses.
    Cotangents whose own form prints in at most ``short`` characters are written inline."""
    inl = {d: e for d, e in cot_defs.items() if len(to_text(e)) <= short and not (matrix_symbols(e) & set(cot_defs))}

    def shorten(e):
        if not inl:
            return e
        e = e.replace(lambda n: isinstance(n, Transpose) and n.arg in inl, lambda n: _push_transpose(inl[n.arg]))
        return _flatten_matmul(e.xreplace(inl))

    named = {**{d: shorten(e) for d, e in cot_defs.items() if d not in inl}, **net.defs}
    main = shorten(expr)
    used, todo = [], [main]
    while todo:
        for s in sorted(matrix_symbols(todo.pop()), key=lambda s: s.name):
            if s in named and s not in used:
                used.append(s)
                todo.append(named[s])
    order = [s for s in named if s in used]
    text, latex = to_text(main), to_latex(main)
    if order:
        text += "\n  where " + "\n        ".join(f"{s.name} = {to_text(named[s])}" for s in order)
        latex += r",\quad\text{where } " + r",\ ".join(f"{to_latex(s)} = {to_latex(named[s])}" for s in order)
    legend = sorted({s.name for s in matrix_symbols(main, *(named[s] for s in order))} & set(net.legend))
    if legend:
        text += "\n  with " + ", ".join(f"{n} = {net.legend[n]}" for n in legend)
    return text, latex


def _one_sided(name: str, params, point, side: int) -> float:
    """The one-sided derivative of row ``name`` at ``point`` from the ``side`` (-1 left, +1 right):
    the value at ``point`` of the Piecewise branch active just beside it (``sympy.limit`` gets
    Piecewise one-sided limits wrong)."""
    x = sp.Symbol("x", real=True)
    d = scalar_function(name, params, 1)(x)
    near = sp.Rational(point) + side * sp.Rational(1, 10**30)
    if isinstance(d, sp.Piecewise):
        for e, c in d.args:
            if c.xreplace({x: near}) == sp.true:
                return float(e.xreplace({x: sp.Rational(point)}))
    return float(d.xreplace({x: sp.Rational(point)}))


def _magnitude(expr, ev: Evaluator, defs: dict, memo: dict):
    """``expr`` evaluated with absolute values at the leaves and through products and sums."""
    if expr in memo:
        return memo[expr]
    if isinstance(expr, MatrixSymbol) and expr in defs and not isinstance(defs[expr], Elementwise):
        out = _magnitude(defs[expr], ev, defs, memo)
    elif isinstance(expr, MatMul):
        out = 1.0
        mats = [_magnitude(a, ev, defs, memo) for a in expr.args if a.is_Matrix]
        coeff = abs(float(np.prod([ev(a) for a in expr.args if not a.is_Matrix]))) if len(mats) < len(expr.args) else 1.0
        out = coeff * (mats[0] if len(mats) == 1 else np.linalg.multi_dot(mats) if len(mats) > 2 else mats[0] @ mats[1])
    elif isinstance(expr, (MatAdd, HadamardProduct)):
        parts = [_magnitude(a, ev, defs, memo) for a in expr.args]
        out = sum(parts) if isinstance(expr, MatAdd) else np.prod(parts, axis=0)
    elif isinstance(expr, Transpose):
        out = _magnitude(expr.arg, ev, defs, memo).T
    else:
        out = np.abs(ev(expr))
    memo[expr] = out
    return out


def kink_bands(grads: dict, net: Network, cot_defs: dict, ev: Evaluator, dtype_eps: float) -> dict:
    """``{name: (lower, upper, kink)}`` for gradients touched by a unit on a kink (Note [Kink bands])."""
    nodes = set()
    for e in [*grads.values(), *cot_defs.values()]:
        nodes |= {n for n in e.atoms(Elementwise) if n.order >= 1 and n.row.kinks}
    left, right, mag_memo = {}, {}, {}
    for node in nodes:
        points = node.row.kink_points(**node.params)
        z = ev(node.arg)
        scale = _magnitude(node.arg, ev, net.defs, mag_memo)
        tol = KINK_C * dtype_eps * np.maximum(scale, 1.0)
        base = np.array(ev(node), dtype=np.float64)
        lo, hi, hit = base.copy(), base.copy(), False
        for p in points:
            mask = np.abs(z - float(p)) <= tol
            if mask.any():
                hit = True
                lo[mask] = _one_sided(node.name, node.args[2], p, -1)
                hi[mask] = _one_sided(node.name, node.args[2], p, +1)
        if hit:
            left[node], right[node] = lo, hi
    if not left:
        return {}
    forward = {s: ev.memo[s] for s in net.defs}
    # dimensions are bound from every symbol the side evaluations can meet, definitions included
    symbols = matrix_symbols(*grads.values(), *cot_defs.values(), *net.defs.values())
    evs = [Evaluator(ev.values, cot_defs, overrides={**forward, **side}, symbols=symbols) for side in (left, right)]
    out = {}
    for name, g in grads.items():
        main = np.asarray(ev(g), dtype=np.float64)
        a, b = (np.broadcast_to(np.asarray(e(g), dtype=np.float64), main.shape) for e in evs)
        lower, upper = np.minimum(main, np.minimum(a, b)), np.maximum(main, np.maximum(a, b))
        kink = (a != main) | (b != main)
        if kink.any():
            out[name] = (lower, upper, kink)
    return out


def _tiny_dims(net: Network) -> dict:
    sizes = [2, 3]
    out = {}
    for k, d in enumerate(sorted(net.dims, key=lambda s: (s.name != "N", s.name))):
        out[d] = 2 if d.name == "N" else sizes[k % 2]
    return out


def verify_network(net: Network, grads: dict, cot_defs: dict, *, trials: int = 1, seed: int = 0) -> tuple[bool, str]:
    """Cross-check every closed form at a tiny size (Note [Once-per-architecture cross-check])."""
    dims = _tiny_dims(net)
    defs = {concrete(s, dims): concrete(e, dims) for s, e in {**net.defs, **cot_defs}.items()}
    loss = concrete(inline(net.loss, net.defs), dims)
    rng = np.random.default_rng(seed)
    leaves = net.wrt()
    worst = 0.0
    for _ in range(trials):
        values = {}
        for s in matrix_symbols(loss):
            shape = tuple(int(n) for n in s.shape)
            if s.name == "y_onehot":
                values[s.name] = np.eye(shape[1])[rng.integers(0, shape[1], shape[0])]
            elif s.name == "t":
                values[s.name] = rng.uniform(0, 1, shape)
            else:
                values[s.name] = rng.standard_normal(shape)
        for name, g in grads.items():
            X = concrete(leaves[name], dims)
            res = compare(concrete(g, dims), exploded_grad(loss, X), values, label=f"grad wrt {name}", defs=defs)
            worst = max(worst, res.max_abs)
            if not res.ok:
                return False, res.message(1e-9, 1e-11)
    return True, f"cross-checked against the exact elementwise derivative at dims {{{', '.join(f'{k}={v}' for k, v in dims.items())}}} (max abs diff {worst:.1e})"


def module_references(model, inputs: dict, *, loss=None, target=None, wrt: list[str] | None = None, dtype=None) -> list[Reference]:
    """One ``Reference`` per parameter / input of ``model`` (default: every parameter and every
    floating input), each the matrix-form gradient of the scalar loss evaluated in float64, with
    its closed form, kink bands and the once-per-architecture cross-check as ``verified``."""
    import torch

    import torch.fx as fx

    gm = fx.symbolic_trace(model)
    key = _structure_key(model, gm, inputs, loss, target, wrt)
    hit = _STRUCTURES.get(key)
    if hit is not None:  # same architecture, shapes and loss: only the values are new
        net, grads, cot_defs, forms, symbols = hit
        values = net.refreshed(model, inputs, target)
    else:
        net = from_module(model, inputs, loss=loss, target=target, traced=gm)
        grads, cot_defs = network_gradients(net, wrt)
        vkey = (net.signature, tuple(grads))
        if vkey not in _VERIFIED:
            _VERIFIED[vkey] = verify_network(net, grads, cot_defs)
        forms_key = (vkey, tuple(sorted(net.legend.items())), tuple(net.shapes))
        if forms_key not in _FORMS:  # the text does not depend on sizes: dimensions are symbols
            _FORMS[forms_key] = {name: closed_forms(g, net, cot_defs) for name, g in grads.items()}
        forms = _FORMS[forms_key]
        symbols = matrix_symbols(net.loss, *net.defs.values(), *grads.values())
        values = net.values
        if net.cacheable:
            _STRUCTURES[key] = (net, grads, cot_defs, forms, symbols)
    verified, vnote = _VERIFIED[(net.signature, tuple(grads))]
    ev = Evaluator(values, {**net.defs, **cot_defs}, symbols=symbols)
    if dtype is None:
        dtype = next((p.dtype for p in model.parameters()), torch.float64)
    eps = float(torch.finfo(dtype).eps) if dtype.is_floating_point else float(np.finfo(np.float64).eps)
    bands = kink_bands(grads, net, cot_defs, ev, eps)
    refs = []
    for name, g in grads.items():
        value = np.asarray(ev(g), dtype=np.float64)
        shape = net.shapes[name]
        text, latex = forms[name]
        lower, upper, kink = (b.reshape(shape) for b in bands[name]) if name in bands else (None, None, None)
        refs.append(
            Reference(
                name=name,
                value=np.broadcast_to(value, value.shape).reshape(shape).copy(),
                closed_form=text,
                closed_form_latex=latex,
                lower=lower,
                upper=upper,
                kink=kink,
                verified=verified,
                note=("matrix engine; " + vnote) if verified else ("matrix engine: closed form NOT verified: " + vnote),
            )
        )
    return refs
