"""Gradients of a ``Network`` in closed form, evaluated, kink-banded and cross-checked:
``module_references`` is what ``symgrad.check(..., engine="matrix")`` calls.

# Note [Once-per-architecture cross-check]
The closed forms are built with symbolic dimensions, so the very expressions evaluated at full
size can be made concrete at a tiny size (batch 2, widths 2-3) where the loss is exploded into
scalars and differentiated entry by entry, independently of the engine's rules (``explode.py``).
The verdict is cached per *computation*: the key is the network's loss and definitions and the
gradient expressions themselves (SymPy trees compare structurally, dimension symbols included),
so two models that differ in any op -- a softmax, a product, a transpose -- never share a verdict
or a printed closed form.  A failed cross-check is an internal symgrad bug: ``module_references``
raises ``ClosedFormUnverified`` rather than hand out references it cannot vouch for.

# Note [Matrix references in the checked dtype]
Each ``Reference`` carries, beside the float64 ``value``: ``value_lowp``, the same closed form
evaluated with arrays of the checked dtype (float32 when torch ran float32; the value itself for
float64), and ``rounding``, the per-entry running rounding-error bound of the closed form (Note
[Rounding bound of a matrix expression] in ``rounding.py``), so that ``compare`` judges each entry
on its own scale: a wrong small entry beside large ones fails, and a correct float32 gradient that
is the small difference of large terms (a last layer that fits the batch) passes.  A forward
``Reference`` (the loss from the closed form's own forward) is returned with them on request, so
an importer that misreads the model shows as a failing forward row.  In ``value_lowp`` the entries
of derivative nodes on a kink keep their float64 values (``_low_evaluator``): float32 may round a
pre-activation there to the other side, and that jump is a choice of side for the kink check,
not rounding noise (``compare`` allows eight times the noise).

# Note [Kink bands]
A unit whose pre-activation z sits on a kink of its op (relu at 0, hardtanh at ±1 …) — exactly,
or within ``KINK_C · eps(dtype) · scale`` where ``scale`` is the same expression evaluated with
absolute values (|X||W|ᵀ + 1|b|ᵀ) — may legitimately get either one-sided derivative: in
float32 the sign of z can differ from the float64 one, and a custom backward may pick either side
(or a subgradient between them) at z = 0.  A choice of side is made once per unit and holds for
every entry the unit touches, so the check is joint (Note [Joint kinks in the matrix engine] in
``kinks.py``): each unit's effect on every gradient is evaluated on its own, and each Reference
carries ``kink_generators``, one group per independent choice, for ``compare``'s joint fit.
``lower`` / ``upper`` are the entrywise hull of what those choices give, together with the two
whole-batch extremes (every unit left, every unit right: also the evaluations ``kink_rounding``
is bounded on), and ``kink`` marks the entries where they differ.  Past the bounds of that note
the generators are left out (the band is then that hull, or past the bounds on the work that of
the two extremes only), and ``Reference.note`` says so.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections import OrderedDict

import numpy as np
import sympy as sp
from sympy import HadamardProduct, MatAdd, MatMul, MatrixSymbol, Transpose, ZeroMatrix

from symgrad.compare.kinks import MAX_GENERATOR_ENTRIES, stack_generators
from symgrad.matrix.diff import vjp
from symgrad.matrix.errors import ClosedFormUnverified
from symgrad.matrix.evaluate import Evaluator, matrix_symbols
from symgrad.matrix.explode import compare, compare_values, concrete, exploded_grad, exploded_grad_values
from symgrad.matrix.kinks import analyse
from symgrad.matrix.fx_rules import from_module
from symgrad.matrix.network import Network
from symgrad.matrix.nodes import Elementwise, scalar_function
from symgrad.matrix.printing import to_latex, to_text
from symgrad.matrix.rounding import NoBound, RoundingBound, prepare
from symgrad.reference import Reference

__all__ = ["clear_caches", "network_gradients", "module_references", "verify_network", "closed_forms", "kink_bands",
           "inline", "KINK_C", "computation_key"]

KINK_C = 16.0
CACHE_SIZE = 8  # architectures remembered (least recently used forgotten first); no parameter values kept


class _LRU(OrderedDict):
    """A dict that keeps the ``CACHE_SIZE`` most recently used entries."""

    def get(self, key, default=None):
        if key in self:
            self.move_to_end(key)
            return self[key]
        return default

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > CACHE_SIZE:
            self.popitem(last=False)


_VERIFIED: dict = _LRU()
_FORMS: dict = _LRU()
_STRUCTURES: dict = _LRU()


def clear_caches(*, everything: bool = False) -> None:
    """Forget cached structures, closed forms and cross-check verdicts (benchmarks, tests).
    ``everything``: also the per-op functions cached in ``symgrad.matrix`` (lambdified forms,
    rounding rules, opaque functions) and SymPy's own cache, so that the next check costs what a
    first one in a fresh process does, imports aside."""
    _VERIFIED.clear()
    _FORMS.clear()
    _STRUCTURES.clear()
    _TRACES.clear()
    if everything:
        from sympy.core.cache import clear_cache

        import importlib

        _ev, _ex, _nd, _rd = (importlib.import_module(f"symgrad.matrix.{m}")
                              for m in ("evaluate", "explode", "nodes", "rounding"))
        for fn in (_ev._numpy_fn, _ev._scalar_fn, _ex.opaque, _ex._opaque_value, _nd.scalar_function,
                   _rd._error_fn, _rd._generic_partials, _nd.one_sided):
            fn.cache_clear()
        clear_cache()


def _structure_key(model, gm, inputs: dict, loss, target, wrt) -> tuple:
    """Everything the symbolic structure depends on: the traced code, the modules (types,
    hyper-parameters, train/eval), the shapes and dtypes, the loss and its options (whether the
    cross-entropy target is weighted: class weights, smoothing, ignored labels) and ``wrt``."""
    from symgrad.matrix.network import loss_spec

    def sig(t):
        return None if t is None else (tuple(t.shape), str(t.dtype))

    return (
        type(model),
        gm.code,
        repr(model),
        tuple(m.training for m in model.modules()),
        tuple((n, sig(p)) for n, p in model.named_parameters()),
        tuple((k, sig(v)) for k, v in inputs.items()),
        loss_spec(loss).key(target),
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


def kink_bands(grads: dict, net: Network, cot_defs: dict, ev: Evaluator, dtype_eps: float, *,
               with_evaluators: bool = False, joint: bool = True):
    """``{name: (lower, upper, kink)}`` for gradients touched by a unit on a kink (Note [Kink bands]);
    ``with_evaluators``: the whole analysis instead (``symgrad.matrix.kinks.KinkAnalysis``: also the
    joint check's generators, the two one-sided evaluators and a note when the joint check fell back)."""
    mag_memo: dict = {}
    found = analyse(grads, net, cot_defs, ev, dtype_eps, lambda e: _magnitude(e, ev, net.defs, mag_memo),
                    kink_c=KINK_C, joint=joint)
    return found if with_evaluators else found.bands


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
        # the exact derivative: symengine's diff of the exploded loss (SymPy's where it cannot)
        wanted = exploded_grad_values(loss, {name: concrete(leaves[name], dims) for name in grads}, values)
        try:
            ev = Evaluator(values, defs, symbols=matrix_symbols(*defs.values(), *defs, loss))
        except ValueError as err:  # shapes that do not fit: a wrong form
            return False, f"the cotangent definitions cannot be evaluated at the tiny size ({err})"
        for name, g in grads.items():
            label = f"grad wrt {name}"
            if wanted is None:
                res = compare(concrete(g, dims), exploded_grad(loss, concrete(leaves[name], dims)), values, label=label, defs=defs)
            else:
                try:
                    got = ev(concrete(g, dims))
                except ValueError as err:  # shapes that do not fit: a wrong form
                    return False, f"{label}: the matrix form cannot be evaluated at the tiny size ({err})"
                res = compare_values(got, wanted[name], label=label)
            worst = max(worst, res.max_abs)
            if not res.ok:
                return False, res.message(1e-9, 1e-11)
    return True, f"cross-checked against the exact elementwise derivative at dims {{{', '.join(f'{k}={v}' for k, v in dims.items())}}} (max abs diff {worst:.1e})"


def computation_key(net: Network, grads: dict, cot_defs: dict) -> tuple:
    """The whole computation, for the caches (Note [Once-per-architecture cross-check]): loss,
    definitions, cotangent definitions and gradients, as SymPy trees."""
    return (net.loss, tuple(net.defs.items()), tuple(cot_defs.items()), tuple(grads.items()))


def _low_dtype(dtype):
    """The numpy dtype the closed form is evaluated in for ``value_lowp`` (None: float64 itself)."""
    import torch

    return {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.float32}.get(dtype)


def _low_evaluator(values: dict, net: Network, defs: dict, symbols, low, kinked: dict) -> Evaluator:
    """The closed form evaluated in the checked dtype, with the derivative nodes' entries on a kink
    held at the float64 evaluation's values: in float32 a pre-activation within rounding of a kink
    may round to the other side, and the jump that gives is a choice of side, for the kink check
    (Note [Kink bands]) to judge, not rounding noise (which ``compare`` allows eight times over)."""
    if not kinked:
        return Evaluator(values, defs, symbols=symbols, dtype=low)
    forward = Evaluator(values, net.defs, symbols=symbols, dtype=low)
    pinned = {}
    for node, (mask, base) in kinked.items():
        arr = np.array(np.broadcast_to(np.asarray(forward(node), dtype=low), mask.shape))
        arr[mask] = base[mask]
        pinned[node] = arr
    return Evaluator(values, defs, overrides={**forward.memo, **pinned}, symbols=symbols, dtype=low)


def _unverified(vnote: str) -> ClosedFormUnverified:
    return ClosedFormUnverified(
        "the matrix engine's closed form for this model disagrees with the exact elementwise derivative in its "
        "once-per-architecture cross-check. This is an internal symgrad bug (please report it with the model); "
        "the matrix engine's gradients cannot be trusted here, so none are compared. Use engine='elementwise'.\n"
        + vnote)


def _without_values(net: Network) -> Network:
    """``net`` for the cache: every value array replaced by a zero-stride view of its shape (what
    ``Network.refreshed`` reads), so the cache holds no copy of a parameter, input or target."""
    shapes = {k: None if v is None else np.broadcast_to(np.float64(0.0), np.shape(v)) for k, v in net.values.items()}
    return dataclasses.replace(net, values=shapes)


_TRACES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _traced(model):
    """``torch.fx.symbolic_trace(model)``, kept while the model's class, forward and modules
    (their repr and train/eval flags) stay the same: a repeat check skips the trace."""
    import torch.fx as fx

    sig = (type(model), getattr(type(model).forward, "__code__", None), id(model.__dict__.get("forward")),
           repr(model), tuple(m.training for m in model.modules()))
    hit = _TRACES.get(model)
    if hit is not None and hit[0] == sig:
        return hit[1]
    gm = fx.symbolic_trace(model)
    _TRACES[model] = (sig, gm)
    return gm


def module_references(model, inputs: dict, *, loss=None, target=None, wrt: list[str] | None = None, dtype=None,
                      with_forward: bool = False):
    """One ``Reference`` per parameter / input of ``model`` (default: every parameter and every
    floating input), each the matrix-form gradient of the scalar loss evaluated in float64, with
    its closed form, kink bands, ``value_lowp`` and ``rounding`` (Note [Matrix references in the
    checked dtype]).  ``with_forward``: return ``(forward, refs)``, ``forward`` the loss from the
    closed form's own forward.  Raises ``ClosedFormUnverified`` when the once-per-architecture
    cross-check fails (Note [Once-per-architecture cross-check])."""
    import torch

    from symgrad.matrix.network import loss_spec

    gm = _traced(model)
    key = _structure_key(model, gm, inputs, loss, target, wrt)
    hit = _STRUCTURES.get(key)
    if hit is not None:  # same architecture, shapes and loss: only the values are new
        net, grads, cot_defs, forms, symbols, verdict = hit
        values = net.refreshed(model, inputs, target, spec=loss_spec(loss) if loss is not None else None)
    else:
        net = from_module(model, inputs, loss=loss, target=target, traced=gm)
        grads, cot_defs = network_gradients(net, wrt)
        vkey = computation_key(net, grads, cot_defs)
        if vkey not in _VERIFIED:
            _VERIFIED[vkey] = verify_network(net, grads, cot_defs)
        verdict = _VERIFIED[vkey]
        if not verdict[0]:
            raise _unverified(verdict[1])
        forms_key = (vkey, tuple(sorted(net.legend.items())))
        if forms_key not in _FORMS:  # the text does not depend on sizes: dimensions are symbols
            forms = {name: closed_forms(g, net, cot_defs) for name, g in grads.items()}
            forms[None] = closed_forms(net.loss, net, cot_defs)
            _FORMS[forms_key] = forms
        forms = _FORMS[forms_key]
        symbols = matrix_symbols(net.loss, *net.defs.values(), *grads.values())
        prepare(net.loss, *net.defs.values(), *cot_defs.values(), *grads.values())
        values = net.values
        if net.cacheable:  # the structure only: values are refreshed from the model on every hit
            _STRUCTURES[key] = (_without_values(net), grads, cot_defs, forms, symbols, verdict)
    verified, vnote = verdict
    if not verified:
        raise _unverified(vnote)
    defs = {**net.defs, **cot_defs}
    ev = Evaluator(values, defs, symbols=symbols)
    if dtype is None:
        dtype = next((p.dtype for p in model.parameters()), torch.float64)
    eps = float(torch.finfo(dtype).eps) if dtype.is_floating_point else float(np.finfo(np.float64).eps)
    low = _low_dtype(dtype)
    bound = RoundingBound(ev, defs, eps)
    kinks = kink_bands(grads, net, cot_defs, ev, eps, with_evaluators=True)
    ev_low = _low_evaluator(values, net, defs, symbols, low, kinks.nodes) if low is not None else ev
    side_bounds = [RoundingBound(e, defs, eps) for e in kinks.evaluators]
    note = "matrix engine; " + vnote

    def evaluated(expr, shape):
        value = np.broadcast_to(np.asarray(ev(expr), dtype=np.float64), np.shape(ev(expr))).reshape(shape).copy()
        value_lowp = value if ev_low is ev else np.asarray(ev_low(expr), dtype=np.float64).reshape(shape).copy()
        try:
            rounding = np.broadcast_to(np.asarray(bound(expr), dtype=np.float64), np.shape(ev(expr))).reshape(shape).copy()
        except NoBound:
            rounding = None
        return value, value_lowp, rounding

    refs = []
    for name, g in grads.items():
        shape = net.shapes[name]
        text, latex = forms[name]
        value, value_lowp, rounding = evaluated(g, shape)
        lower, upper, kink = (b.reshape(shape) for b in kinks.bands[name]) if name in kinks.bands else (None, None, None)
        ref = Reference(name=name, value=value, closed_form=text, closed_form_latex=latex, lower=lower, upper=upper,
                        kink=kink, value_lowp=value_lowp, rounding=rounding, verified=True, note=note)
        if kink is not None:
            # Note [Joint kinks in the matrix engine]: one group per independent choice of side
            groups = kinks.generators.get(name)
            if groups == []:  # no choice of side moves this gradient (its band is rounding): nothing to explain
                ref.kink_generators = np.zeros((1, 1) + tuple(shape))
            elif groups is not None:
                ref.kink_generators = stack_generators([[gen.reshape(shape) for gen in grp] for grp in groups], shape)
            if ref.kink_generators is None:
                why = kinks.notes.get(name) or (
                    f"The kink check fell back to entrywise bands: the generators of {name} would hold more than "
                    f"{MAX_GENERATOR_ENTRIES:,} entries; entries on a kink were checked against the band only, not "
                    "jointly (Note [Joint kinks in the matrix engine]).")
                ref.note = f"{note} {why}"
        if kink is not None and rounding is not None:
            # the rounding on whichever side of the kinks torch took: the largest of the three
            try:
                sides = [np.broadcast_to(np.asarray(b(g), dtype=np.float64), np.shape(ev(g))).reshape(shape) for b in side_bounds]
                ref.kink_rounding = np.maximum.reduce([rounding, *sides])
            except NoBound:
                pass
        refs.append(ref)
    if not with_forward:
        return refs
    value, value_lowp, rounding = evaluated(net.loss, ())
    text, latex = forms[None]
    head = "output" if net.loss_spec is None or net.loss_spec.kind == "none" else "loss"
    forward = Reference(name="output", value=value, closed_form=f"{head} = {text.splitlines()[0]}",
                        closed_form_latex=latex, value_lowp=value_lowp, rounding=rounding, verified=True, note=note)
    return forward, refs
