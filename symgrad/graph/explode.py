"""The exploded back end of the op graph: one exact symengine expression per entry.

# Note [Exploded back end]
The tensor back end (``engine.py``, ``rules.py``) evaluates the graph with numpy at full size.  The
exploded back end takes the *same* graph and writes every entry of every node as one exact scalar
expression over per-entry symbols of the graph's float leaves (``x[0, 1]``, ``fc.weight[2, 0]``):

==============  ==========================================================================
kind            exploded entry
==============  ==========================================================================
``leaf``        a symbol per entry (inputs, parameters); constants and buffers: their exact
                value (a float64 is a dyadic rational: ``Rational(p, q)``, no rounding)
``pointwise``   the node's SymPy form, converted once to symengine, with its symbols
                replaced by the (broadcast) argument entries
``contract``    sum over the einsum's summed indices of the operands' products
``reduce``      sum: one ``Add``; max/min: the n-ary form of ``lower.numpy`` whose Piecewise
                conditions are the kinks (a tie splits evenly, as torch's amax does); the
                -inf fill of a padded max pooling is left out of the row
``layout``      numpy's reshape / transpose / broadcast of the object array (entries move)
``select``      entry moves; an index 0 is the node's constant fill (its derivative is 0)
``stop``        a fresh constant: the argument's float64 value from the tensor forward
``linalg``      refused (UnsupportedOp): the tensor back end's rules serve those
==============  ==========================================================================

SymPy forms holding symgrad's own functions (``expm1``, ``log1p``, ``sigmoid``) are replaced by
their elementary definitions first: symengine would wrap an unknown SymPy function and give it a
derivative of 0, silently.  Any function left opaque is refused, but erfinv and round, which
symengine lacks and the lowering evaluates and differentiates itself (Note [Special functions on the
exploded engine] in symgrad/lower/special.py).  Step functions (floor, ceil, trunc, round) keep their
values and get derivative 0 (``clean_derivative``), as their tensor rule does.

A pointwise node reading a mask through ``Ne(s, 0)`` gets the mask's own condition instead (Note
[Indicators in conditions]).

Exploding costs what the scalar expressions cost (every product of a contraction is a node; a
Jacobian is one reverse sweep per output entry; ``diff`` by every symbol rebuilds the chain rule
per symbol), far above numpy's, so the size is estimated before anything is built (``estimate``;
Note [Memory guard] in ``budget.py``) and a graph beyond the budget is refused with the size, the
budget and the alternative.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import sympy as sp

from ..errors import InputError, UnsupportedOp
from .explode_size import Estimate, cone, estimate, refuse_if_too_big
from .explode_linalg import LINALG, MAX_LINALG_N, linalg_entries
from .ir import Graph, Node

__all__ = ["explode", "explode_nodes", "cone", "einsum_plan", "extreme_columns", "estimate", "Estimate",
           "clean_derivative", "has_steps", "exact_number", "output_node", "refuse_if_too_big", "substitute"]


def output_node(graph: Graph) -> Node:
    outs = [o for o in graph.outputs if isinstance(o, Node)]
    if len(outs) != 1:
        raise UnsupportedOp(f"the exploded back end needs one tensor output; the graph has {len(graph.outputs)}")
    return outs[0]


# ------------------------------------------------------------------------------------ numbers

def exact_float(x) -> float:
    """An exact symengine number as the nearest float64.  symengine's own ``float`` of a Rational
    divides its numerator and denominator as floats: 1/1e-300 (a numerator past 1e308) came out as
    inf, and the node cross-check called log's right rule wrong at x = 1e-300."""
    import symengine as se

    if isinstance(x, se.Rational):
        p, q = (int(t) for t in x.get_num_den())
        try:
            return p / q  # Python divides integers correctly rounded
        except OverflowError:
            return float("inf") if (p > 0) == (q > 0) else float("-inf")
    return float(x)


def exact_number(v: float):
    """A float64 as an exact symengine number (never through a string)."""
    import symengine as se

    f = float(v)
    if f != f:
        return se.nan
    if f in (float("inf"), float("-inf")):
        return se.oo if f > 0 else -se.oo
    if f.is_integer():
        return se.Integer(int(f))
    p, q = f.as_integer_ratio()
    return se.Rational(p, q)


def _numbers(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, np.float64)
    out = np.empty(values.shape, object)
    cache: dict = {}
    for j, f in enumerate(values.ravel().tolist()):
        got = cache.get(f)
        if got is None:
            got = cache[f] = exact_number(f)
        out.flat[j] = got
    return out


# ------------------------------------------------------------------------------ pointwise forms

def _elementary(expr: sp.Expr) -> sp.Expr:
    """symgrad's own SymPy functions replaced by what they compute (Note [Exploded back end])."""
    from . import functions as F

    from ..lower.special import OPAQUE

    table = {**{f: d for f, d in F.DEFINITIONS.items() if f.__name__ not in OPAQUE}, F.floor: sp.floor, F.ceil: sp.ceiling,
             F.trunc: lambda a: sp.Piecewise((sp.floor(a), a >= 0), (sp.ceiling(a), True))}
    present = {type(a) for a in expr.atoms(sp.Function)}  # one walk, not one per function of the table
    for f, build in table.items():
        if f in present and expr.has(f):
            expr = expr.replace(lambda e, f=f: isinstance(e, f), lambda e, b=build: b(*e.args))
            present = {type(a) for a in expr.atoms(sp.Function)}
    # exact constants: a float of the form is a float64, i.e. a dyadic rational
    return expr.xreplace({c: sp.Rational(float(c)) for c in expr.atoms(sp.Float) if np.isfinite(float(c))})


@lru_cache(maxsize=2048)
def _form(expr: sp.Expr, k: int) -> tuple:
    """(symengine form, its symbols s0..s{k-1}): the pointwise node's scalar function."""
    import symengine as se

    from ..lower.symengine_forms import to_symengine
    from .rules import symbols_for

    from ..lower.special import OPAQUE
    from ..lower.ties import OWN

    form = to_symengine(_elementary(expr))
    opaque = sorted({type(f).__name__ if not hasattr(f, "get_name") else f.get_name()
                     for f in form.atoms(se.FunctionSymbol)} - set(OPAQUE) - {OWN})  # erfinv, round: lower/special.py
    if opaque:
        raise UnsupportedOp(f"the pointwise form {sp.sstr(expr)[:80]} holds {', '.join(opaque)}, which the exploded "
                            "back end cannot differentiate exactly; use the tensor back end (engine='graph') for it")
    return form, tuple(se.Symbol(s.name) for s in symbols_for(k))


def _pointwise(node: Node, args: list) -> np.ndarray:
    form, syms = _form(node.attrs["expr"], len(args))
    out = np.empty(node.shape, object)
    if not form.free_symbols:
        out.fill(form)
        return out
    flat = [np.broadcast_to(a, node.shape).ravel() for a in args]
    for j in range(out.size):
        out.flat[j] = substitute(form, syms, [a[j] for a in flat])
    return out


# Note [Indicators in conditions]
# torch's ``where(x > 20, a, b)`` reaches the graph as a mask node (``Piecewise((1, s0 > 20), (0,
# True))``) read by ``Piecewise((s1, Ne(s0, 0)), (s2, True))``.  Substituted as it is, the condition
# becomes ``Ne(Piecewise((1, x > 20), (0, True)), 0)``, whose gap is exactly 0 wherever the mask is 0:
# the evaluation (Note [Kinks at evaluation time]) would call every such entry a kink and give it a
# band spanning both branches -- wide enough to let a wrong derivative pass.  So a test of an
# indicator against 0 is replaced by the indicator's own condition (``x > 20``), whose gap is real.


def _zero_tests(form) -> dict:
    """``{Ne(s, 0) or Eq(s, 0) found in form: (s, is_ne)}``."""
    import symengine as se

    found = {}
    for s in form.free_symbols:
        for rel, is_ne in ((se.Ne(s, 0), True), (se.Eq(s, 0), False)):
            if form.has(rel):
                found[rel] = (s, is_ne)
    return found


def substitute(form, syms: tuple, entries: list):
    """``form`` with its symbols replaced by ``entries`` (Note [Indicators in conditions])."""
    import symengine as se

    tests = _ZERO_TESTS.get(form)
    if tests is None:
        tests = _ZERO_TESTS[form] = _zero_tests(form)
    env = {s: e for s, e in zip(syms, entries) if s in form.free_symbols}
    try:
        out = form.xreplace(env)
    except RuntimeError:  # symengine compares a NaN inside a condition (an inf - inf entry): the entry is NaN
        return se.nan
    swap = {}
    for rel, (s, is_ne) in tests.items():
        e = env.get(s)
        a = e.args if type(e).__name__ == "Piecewise" else ()
        if len(a) == 4 and a[0] == 1 and a[2] == 0 and a[3] == se.true:
            swap[rel.xreplace(env)] = a[1] if is_ne else se.Not(a[1])
    return out.xreplace(swap) if swap else out


_ZERO_TESTS: dict = {}


# ------------------------------------------------------------------------------ the other kinds

def einsum_plan(spec: str, shapes: list) -> tuple:
    """The index space of an einsum, output letters first: ``(full shape, n_out, numbers)`` where
    ``numbers[i]`` gives, at every point of the space, the flat entry of operand ``i`` it reads (a
    size-1 axis broadcasts, as numpy's einsum does)."""
    ins, out = spec.split("->")
    subs = ins.split(",")
    sizes: dict = {}
    for sub, shape in zip(subs, shapes):
        for c, d in zip(sub, shape):
            sizes[c] = max(sizes.get(c, 1), d)
    letters = list(out) + sorted(set(ins.replace(",", "")) - set(out))
    full = tuple(sizes[c] for c in letters)
    grid = np.indices(full)
    numbers = []
    for sub, shape in zip(subs, shapes):
        if not sub:
            numbers.append(np.zeros(full, np.int64))
            continue
        at = tuple(grid[letters.index(c)] if d > 1 else np.zeros(full, np.int64) for c, d in zip(sub, shape))
        numbers.append(np.ravel_multi_index(at, shape))
    return full, int(np.prod([sizes[c] for c in out])) if out else 1, numbers


def _contract(spec: str, args: list, shape: tuple) -> np.ndarray:
    import symengine as se

    full, n_out, numbers = einsum_plan(spec, [a.shape for a in args])
    terms = None
    for a, at in zip(args, numbers):
        got = np.asarray(a, object).ravel()[at]
        terms = got if terms is None else terms * got
    rows = terms.reshape(n_out, -1)
    result = np.empty(n_out, object)
    for j in range(n_out):
        result[j] = se.Add(*rows[j]) if rows.shape[1] > 1 else rows[j, 0]
    return result.reshape(shape)


def extreme_columns(row, op: str) -> list:
    """The entries of a max (min) row that can be its extreme: all but the fill -inf (+inf) of a
    padded max pooling, whose product with its 0 indicator would be NaN in the n-ary form."""
    import symengine as se

    neutral = -se.oo if op == "max" else se.oo
    return [c for c, e in enumerate(row) if e != neutral]


def _reduce(node: Node, a: np.ndarray) -> np.ndarray:
    import symengine as se

    from ..lower.symengine_forms import extreme

    axes = tuple(node.attrs["axes"])
    kept = [i for i in range(a.ndim) if i not in axes]
    rows = np.transpose(a, kept + list(axes)).reshape(int(np.prod([a.shape[i] for i in kept])), -1)
    op = node.attrs["op"]
    result = np.empty(rows.shape[0], object)
    for j in range(rows.shape[0]):
        if op == "sum":
            result[j] = se.Add(*rows[j])
            continue
        keep = extreme_columns(rows[j], op)
        result[j] = extreme("Ge" if op == "max" else "Le")(*rows[j][keep]) if keep else rows[j][0]
    return result.reshape(node.shape)


def _layout(node: Node, a: np.ndarray) -> np.ndarray:
    op, arg = node.attrs["op"], node.attrs["arg"]
    if op == "reshape":
        return np.reshape(a, arg)
    if op == "permute":
        return np.transpose(a, arg)
    if op == "expand":
        return np.broadcast_to(a, arg)
    raise ValueError(f"unknown layout op {op!r}")


def _select(node: Node, args: list) -> np.ndarray:
    idx = node.attrs["idx"]
    flat = np.concatenate([np.ravel(a) for a in args]) if len(args) > 1 else np.ravel(args[0])
    out = np.empty(idx.shape, object)
    out.fill(exact_number(node.attrs.get("fill", 0.0)))
    pick = idx > 0
    out[pick] = flat[idx[pick] - 1]
    return out


def _node(node: Node, args: list, values: dict | None) -> np.ndarray:
    kind = node.kind
    if kind == "pointwise":
        return _pointwise(node, args)
    if kind == "contract":
        return _contract(node.attrs["spec"], args, node.shape)
    if kind == "reduce":
        return _reduce(node, args[0])
    if kind == "layout":
        return _layout(node, args[0])
    if kind == "select":
        return _select(node, args)
    if kind == "stop":
        return _numbers(np.broadcast_to(values[node.args[0]].v, node.shape))
    if kind == "linalg" and node.attrs.get("op") in LINALG and node.args[0].shape[-1] <= MAX_LINALG_N:
        return linalg_entries(node, args)
    raise UnsupportedOp(f"the exploded back end has no scalar form for the {kind} node "
                        f"{node.attrs.get('op', '')} ({node.origin or node.name}); the tensor back end "
                        "(engine='graph') checks it")


# ----------------------------------------------------------------------------------- explode

def explode(graph: Graph, values: dict | None = None, *, leaves=None, out: Node | None = None,
            n_wrt: int | None = None, n_diff: int = 1, budget: int | None = None, sweeps: int = 0) -> tuple:
    """``(exprs, symbols)``: the output's entries as an object array of symengine expressions, and
    ``{leaf name: object array of its entry symbols}``.

    ``leaves``: the names of the leaves written as symbols (default: every input and parameter);
    the others are their exact values.  ``values``: the tensor forward (node -> Approx), needed for
    ``stop`` nodes (computed here when missing).  ``n_wrt``/``n_diff`` size the derivative the caller
    will take by ``diff``, for the memory guard (default: every symbol, one expression); ``sweeps``:
    by that many reverse sweeps instead (``estimate``).
    """
    out = out if out is not None else output_node(graph)
    built, symbols = explode_nodes(graph, values, leaves=leaves, out=out, n_wrt=n_wrt, n_diff=n_diff, budget=budget,
                                   sweeps=sweeps)
    return np.asarray(built[out], object).reshape(out.shape), symbols


def explode_nodes(graph: Graph, values: dict | None = None, *, leaves=None, out: Node | None = None,
                  n_wrt: int | None = None, n_diff: int = 1, budget: int | None = None, sweeps: int = 0,
                  forward_ad: bool = False) -> tuple:
    """``explode``'s work: ``({node: object array of its entries}, symbols)`` for every node that
    the output reads (``symgrad.graph.explode_reverse`` differentiates through them).  ``forward_ad``:
    the expressions are differentiated for torch's forward-mode AD, which passes the stops of
    reverse mode alone (Note [Grad mode inside forward] in trace.py)."""
    from ..symbolic.tensor import symbols as symbol_tensor

    out = out if out is not None else output_node(graph)
    names = list(graph.inputs) if leaves is None else list(leaves)
    for n in names:
        if n not in graph.inputs:
            raise InputError(f"{n!r} is not a float leaf of the graph; its leaves are {', '.join(graph.inputs)}")
    chosen = {graph.inputs[n] for n in names}
    read = cone(graph, out)
    for node in read:
        if node.kind == "linalg" and not (node.attrs.get("op") in LINALG and node.args[0].shape[-1] <= MAX_LINALG_N):
            _node(node, [], values)  # refuses, naming it
    wrt_size = sum(graph.inputs[n].size for n in names) if n_wrt is None else n_wrt
    refuse_if_too_big(estimate(graph, out, wrt_size, n_diff, sweeps), budget)
    if values is None and any(n.kind == "stop" for n in read):
        from .engine import forward
        from .scalar import Ctx

        values = forward(graph, Ctx())
    symbols: dict = {}
    built: dict = {}
    for node in read:
        if node.kind == "leaf":
            if node in chosen:
                symbols[node.name] = built[node] = symbol_tensor(node.name, node.shape).data
            else:
                built[node] = _numbers(node.attrs["value"])
            continue
        if forward_ad and node.kind == "stop" and node.attrs.get("reverse_only"):
            built[node] = np.broadcast_to(built[node.args[0]], node.shape)
            continue
        built[node] = np.asarray(_node(node, [built[a] for a in node.args], values), object)
    return built, symbols


def has_steps(graph: Graph) -> bool:
    """Whether a pointwise form holds a step function (then derivatives need ``clean_derivative``)."""
    from . import functions as F

    steps = (F.floor, F.ceil, F.trunc, F.round_even, sp.floor, sp.ceiling)
    return any(n.kind == "pointwise" and n.attrs["expr"].has(*steps) for n in graph.nodes)


def clean_derivative(expr, steps: bool = True):
    """A derivative with the step functions' derivatives set to 0 (their tensor rule's value); any
    other unevaluated derivative is refused.  ``steps=False`` (``has_steps`` said none): as it is
    (walking a large DAG's atoms costs more than differentiating it)."""
    import symengine as se

    from ..lower.special import OPAQUE

    if not steps:
        return expr
    left = expr.atoms(se.Subs, se.Derivative)
    if not left:
        return expr
    zero = {}
    for d in left:
        text = str(d)
        if any(f"Derivative({name}(" in text for name in OPAQUE if name != "round_even"):
            continue  # in closed form when evaluated (symgrad/lower/special.py)
        if not any(f in text for f in ("Derivative(floor(", "Derivative(ceiling(", "Derivative(round_even(")):
            raise UnsupportedOp(f"symengine left an unevaluated derivative ({str(d)[:80]}); the exploded back end "
                                "cannot differentiate this form: use the tensor back end (engine='graph')")
        zero[d] = se.Integer(0)
    return expr.xreplace(zero)
