"""Every non-linear node's reverse rule cross-checked against the exploded exact derivative, by default.

# Note [Node cross-check]
The adjoint cross-check (Note [Adjoint cross-check]) proves the *linear* rules right with no
tolerance at all.  The other kinds -- ``pointwise`` (with broadcasting arguments), ``reduce``
max/min, ``stop`` and ``linalg`` -- are checked here, one node at a time, against an independent
exact derivative, on every check (the whole-graph check of Note [Exploded cross-check] is the
opt-in deeper one: seconds to minutes on a real network).

For a node ``n``, a one-node graph is built whose arguments are fresh leaves holding the values
the forward gave ``n``'s arguments, *reduced*: neighbouring axes the rule treats alike merged into
one (Note [Merged axes]), each cut to its first ``POINTWISE_CUT`` entries (a reduced axis to
``CUT``), a size-1 (broadcast) axis kept at 1, a matrix of a ``linalg`` node cut to its leading
``MATRIX`` x ``MATRIX`` block and its batch to the first one.  The same rule code serves every
size, so the reduced node tests the rule the real node runs.

* The tensor side: ``engine.backward`` over that graph (``rules.vjp`` of the node, the code path of
  the real evaluation) in float64 with its Approx bound and kink band, the cotangent a random one
  at ``SAMPLES`` sampled output entries and 0 elsewhere.
* The exact side: the node exploded (``explode.py``'s scalar form of its kind; for ``linalg`` the
  textbook formulas -- cofactor inverse, Leibniz determinant, the Cholesky recurrence -- of
  ``node_cross_exact.py``), each sampled output entry differentiated by symengine with respect to the argument
  entries it holds, contracted with the same cotangent and evaluated at the argument values as
  exact rationals: rational parts exactly, the rest in MPFR at ``PRECISION`` bits and at twice
  that, whose difference (times 2) is the exact side's own error bound.  Piecewise conditions
  are decided at the exact values (a relu input of exactly 0 takes the branch the form says).

They agree when they differ by no more than ``ULPS`` units of each side's own bound, the rule of
Note [Exploded cross-check] (no allowance comes from torch).  A node that fails makes every
derivative record of the check unverified (it never passes) and the report names it.  A node the
exploded back end cannot take (a function symengine lacks, eigen- and singular vectors, a reduced
matrix that is singular) is reported as not cross-checked, with the reason -- never as a pass.
Results are kept for the process per node signature (``signature``: ``crosscheck._signature``'s
fields) and per reduced node, passes and reasons alike: a second check of the same graph does no
exploded work.  The cost is about 1-2 ms per distinct reduced node, once per process
(``benchmarks/bench_node_cross.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError, UnsupportedOp
from ..lower import numpy as _lower  # noqa: F401 - explode's forms need it: imported with the graph, not mid-check
from .approx import Approx
from .crosscheck import _MAX_ENTRIES, _linear
from .explode import _node, clean_derivative, exact_float, exact_number, has_steps
from .explode_cross import ExplodedCrossCheck, _compare
from .ir import Graph, Node
from .node_cross_exact import NotExact as _NoExact, evaluate as _evaluate, exact_linalg

__all__ = ["crosscheck_nodes", "NodeCrossCheck", "annotate", "CUT", "SAMPLES"]

CUT = 3  # entries kept per axis
POINTWISE_CUT = 2  # of a pointwise (and stop) node
MATRIX = 3  # a linalg node's matrices: their leading 3 x 3 block
SAMPLES = 4  # output entries differentiated
PRECISION = 120  # bits of the exact side's evaluation (and twice that, for its error bound)
LINALG_EXACT = ("inv", "solve", "det", "logabsdet", "cholesky")

_PASSED: set = set()
_SKIPPED: dict = {}  # signature -> why it is not cross-checked
counter = {"exploded": 0}  # one-node graphs exploded in this process (the tests count them)


@dataclass
class NodeCrossCheck:
    linear: int = 0  # linear nodes (adjoint cross-check, Note [Adjoint cross-check])
    linear_failed: list = field(default_factory=list)
    checked: int = 0  # non-linear nodes that agree (now or earlier in the process)
    failed: list = field(default_factory=list)  # (node, what disagrees)
    skipped: list = field(default_factory=list)  # (node, why not cross-checked)

    @property
    def failed_nodes(self) -> list:
        return [n for n, _ in self.failed]

    def __str__(self) -> str:
        text = (f"{self.linear} linear nodes (adjoint, exact), {self.checked} non-linear nodes (against the "
                "exploded exact derivative of each node, reduced sizes, sampled entries)")
        if self.skipped:
            reasons = sorted({f"{describe(n)}: {why}" for n, why in self.skipped})
            text += (f"; {len(self.skipped)} not cross-checked ("
                     + "; ".join(reasons[:3]) + ("; ..." if len(reasons) > 3 else "") + ")")
        return text

    def failures(self) -> str:
        parts = [f"{describe(n)} fails the adjoint cross-check (its rule is not the adjoint of its forward)"
                 for n in self.linear_failed]
        parts += [f"{describe(n)} fails the node cross-check: {why}" for n, why in self.failed]
        return "; ".join(parts)


def describe(node: Node) -> str:
    """A node named for a reader: its kind, what it computes and the torch op it came from."""
    what = node.attrs.get("op", "")
    if node.kind == "pointwise":
        what = str(node.attrs["expr"])[:60]
    where = f" from {node.origin}" if node.origin else (f" ({node.name})" if node.name else "")
    return f"the {node.kind} node {what}{where}, shape {node.shape}".replace("node  ", "node ")


def crosscheck_nodes(graph: Graph, values: dict, linear_failed: list = (), rng=None) -> NodeCrossCheck:
    """Every non-linear node's reverse rule against its exploded exact derivative (Note [Node
    cross-check]); ``values``: the tensor forward (node -> Approx); ``linear_failed``: what
    ``crosscheck`` returned (counted in the summary)."""
    from .exact import counter as certified

    rng = rng if rng is not None else np.random.default_rng(0)
    result = NodeCrossCheck(linear_failed=list(linear_failed))
    before = certified["certified"]  # the check's own mpmath re-evaluations are not the real check's
    for node in graph.nodes:
        if node.kind == "leaf" or node in result.linear_failed:
            continue
        if _linear(node):
            if node.size <= _MAX_ENTRIES:
                result.linear += 1
            else:
                result.skipped.append((node, f"beyond the adjoint check's {_MAX_ENTRIES:,} entries"))
            continue
        problem = _outcome(node, values, rng)
        if problem is None:
            result.checked += 1
        elif isinstance(problem, _Skip):
            result.skipped.append((node, str(problem)))
        else:
            result.failed.append((node, problem))
    certified["certified"] = before
    return result


def signature(node: Node) -> tuple:
    """What a node's rule depends on: ``crosscheck._signature``'s fields (kind, shapes, attributes)
    as a tuple -- a SymPy form is hashed, not printed (printing one cost as much as checking it)."""
    attrs = tuple((k, _hashable(v)) for k, v in sorted(node.attrs.items()) if not k.startswith("_"))
    return node.kind, tuple(a.shape for a in node.args), node.shape, attrs


def _hashable(v):
    if isinstance(v, np.ndarray):
        return v.shape, str(v.dtype), v.tobytes()
    if isinstance(v, (list, tuple)):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple((k, _hashable(x)) for k, x in sorted(v.items()))
    try:
        hash(v)
    except TypeError:
        return repr(v)
    return v


class _Skip(str):
    """Why a node is not cross-checked."""


def _outcome(node: Node, values: dict, rng):
    """None: the rule agrees (now or before, at this signature or at its reduced one); a ``_Skip``:
    not cross-checked, why; a str: what disagrees (never remembered: it fails every time)."""
    key = signature(node)
    if key in _PASSED or key in _SKIPPED:
        return _SKIPPED.get(key)
    try:
        graph, mini, leaves = _one_node_graph(node, [values[a].v for a in node.args])
    except (UnsupportedOp, InputError, _NoExact) as err:
        _SKIPPED[key] = _Skip(str(err)[:200])
        return _SKIPPED[key]
    reduced = signature(mini)  # nodes that reduce to the same node share one check
    if reduced in _PASSED or reduced in _SKIPPED:
        got = _SKIPPED.get(reduced)
    else:
        try:
            got = _check_node(graph, mini, leaves, rng) or None
        except (UnsupportedOp, InputError, _NoExact) as err:
            got = _Skip(str(err)[:200])
    if got is None:
        _PASSED.update((key, reduced))
    elif isinstance(got, _Skip):
        _SKIPPED[key] = _SKIPPED[reduced] = got
    return got


# ------------------------------------------------------------------------------- reduced nodes

def _take(v, shape: tuple) -> np.ndarray:
    return np.array(np.asarray(v, np.float64)[tuple(slice(0, d) for d in shape)])


# Note [Merged axes]
# A pointwise rule treats an axis by what each argument has there: the full axis, a size-1 axis
# (broadcast) or none (a lower rank: broadcast from the left); a reduction by whether the axis is
# reduced.  Neighbouring axes treated alike can be merged into one without changing what the rule
# computes (numpy's broadcasting and reductions act axis by axis), so the reduced node keeps one
# axis per run of alike axes: ``tanh`` of any shape is checked as ``tanh`` of 2 entries, ``x + b``
# with ``x`` (B, T, D) and ``b`` (D,) as (2, 2) + (2,), a max over the last axis of (B, C, H, W)
# as one over (2, 3).  Nodes that merge to the same node share one check.


def _groups(patterns: list) -> list:
    groups: list = []
    for i, p in enumerate(patterns):
        if groups and patterns[groups[-1][0]] == p:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _merge(v, rank: int, groups: list, reps: list, sizes: list) -> np.ndarray:
    """``v`` (right-aligned to ``rank`` axes) with each group of axes merged into its representative
    axis, cut to ``sizes`` entries (a size-1 axis stays 1; an axis ``v`` lacks stays absent)."""
    v = np.asarray(v, np.float64)
    lead = rank - v.ndim
    index, kept = [], []
    for group, rep, size in zip(groups, reps, sizes):
        for ax in group:
            j = ax - lead
            if j < 0:
                continue
            index.append(slice(0, min(v.shape[j], size)) if ax == rep else slice(0, 1))
            if ax == rep:
                kept.append(j)
    w = v[tuple(index)]
    return np.array(w.reshape([w.shape[j] for j in kept]))


def _reduced(node: Node, vals: list) -> tuple:
    """(attrs, reduced output shape, reduced argument values): Note [Merged axes], each merged axis
    cut to ``POINTWISE_CUT`` entries (a reduced one to ``CUT``)."""
    attrs = {k: v for k, v in node.attrs.items() if not k.startswith("_")}
    if node.kind == "linalg":
        return _reduced_linalg(node, attrs, vals)
    if node.kind not in ("pointwise", "stop", "reduce"):
        raise UnsupportedOp(f"no node cross-check for {node.kind} nodes")
    if node.size == 0:
        raise UnsupportedOp("the node has no entries")
    shapes = [np.shape(v) for v in vals]
    if node.kind == "reduce":
        shape = shapes[0]
        axes = {ax % len(shape) for ax in node.attrs["axes"]}
        patterns = [i in axes for i in range(len(shape))]
    else:
        shape = node.shape
        patterns = [tuple("none" if i < len(shape) - len(s) else
                          "one" if s[i - len(shape) + len(s)] == 1 and shape[i] > 1 else "full" for s in shapes)
                    for i in range(len(shape))]
    groups = _groups(patterns)
    reps = [max(g, key=lambda ax: shape[ax]) for g in groups]
    sizes = [CUT if node.kind == "reduce" and patterns[g[0]] else POINTWISE_CUT for g in groups]
    args = [_merge(v, len(shape), groups, reps, sizes) for v in vals]
    if node.kind != "reduce":
        out = tuple(min(shape[r], c) for r, c in zip(reps, sizes))
        return attrs, out, args
    new_axes = tuple(k for k, g in enumerate(groups) if patterns[g[0]])
    attrs["axes"] = new_axes
    a = args[0].shape
    out = tuple(1 if k in new_axes else d for k, d in enumerate(a)) if node.attrs["keepdim"] else \
        tuple(d for k, d in enumerate(a) if k not in new_axes)
    return attrs, out, args


def _reduced_linalg(node: Node, attrs: dict, vals: list) -> tuple:
    op = attrs["op"]
    if op not in LINALG_EXACT:
        raise _NoExact(f"linalg {op} has no exact scalar form to compare with (only {', '.join(LINALG_EXACT)} do)")
    a = np.asarray(vals[0], np.float64)
    n = min(a.shape[-1], MATRIX)
    batch = (1,) * (a.ndim - 2)
    args = [_take(a, batch + (n, n))]
    if op == "solve":
        b = np.asarray(vals[1], np.float64)
        args.append(_take(b, batch + ((n,) if b.ndim == a.ndim - 1 else (n, min(b.shape[-1], MATRIX)))))
        out = args[1].shape
    else:
        out = batch if op in ("det", "logabsdet") else batch + (n, n)
    return attrs, out, args


def _one_node_graph(node: Node, vals: list) -> tuple:
    from .ir import Graph

    attrs, out, args = _reduced(node, vals)
    g = Graph()
    leaves = []
    for i, v in enumerate(args):
        leaf = g.add(Node("leaf", (), {"value": v, "role": "input"}, v.shape, name=f"a{i}"))
        g.inputs[leaf.name] = leaf
        leaves.append(leaf)
    mini = g.add(Node(node.kind, tuple(leaves), attrs, out, origin=node.origin))
    g.outputs = [mini]
    return g, mini, leaves


# ---------------------------------------------------------------------------------- the check

def _check_node(graph: Graph, mini: Node, leaves: list, rng) -> str:
    """'' where the one-node graph's rule agrees with the exact derivative, else what disagrees."""
    from .engine import backward
    from .scalar import Ctx

    ctx = Ctx()
    values = {leaf: Approx(leaf.attrs["value"]) for leaf in leaves}  # no rule reads the node's own value
    outs = np.arange(mini.size) if mini.size <= SAMPLES else np.sort(rng.permutation(mini.size)[:SAMPLES])
    # at least 1 in size: a rule's float64 overflow (exp(711)) is the exact side's too, not rescued by |w| < 1
    w = rng.choice([-1.0, 1.0], len(outs)) * rng.uniform(1.0, 2.0, len(outs))
    counter["exploded"] += 1
    exact = _exact_vjp(graph, mini, leaves, values, outs, w)
    seed = np.zeros(mini.size)
    seed[outs] = w
    with np.errstate(all="ignore"):  # a reduced max-pooling row may be all -inf padding: never compared
        grads = backward(graph, values, {mini: Approx(seed.reshape(mini.shape))}, leaves, ctx)
    result = ExplodedCrossCheck(True)
    for leaf in leaves:
        x_v, x_bound = exact[leaf]
        # an infinite entry (a mask's -inf) is a constant of the exact form: its derivative is not compared
        entries = np.flatnonzero(np.isfinite(np.ravel(leaf.attrs["value"])))
        x_v, x_bound = x_v[entries], x_bound[entries]
        _compare(result, leaf.name, entries, grads.get(leaf), leaf.shape,
                 {"value": x_v, "bound": x_bound, "lower": x_v, "upper": x_v})
    if not result.failures:
        return ""
    name, j, t, x, tol = result.failures[0]
    return (f"{len(result.failures)} of {result.compared} derivative entries disagree (reduced to shape "
            f"{mini.shape}), first d/d{name}[{j}]: the rule gives {t!r}, the exact derivative {x!r} (allowed "
            f"{tol:.3g})")


def _exact_vjp(graph, mini: Node, leaves: list, values: dict, outs, w) -> dict:
    """{leaf: (value, bound)}: sum_o w_o d out_o / d leaf, exactly, for every leaf entry."""
    import symengine as se

    from ..lower.special import resolve_all

    syms, built_args, env = {}, [], {}
    for leaf in leaves:
        v = leaf.attrs["value"]
        arr = np.empty(leaf.shape, object)
        for j, f in enumerate(np.ravel(v).tolist()):
            if np.isfinite(f):  # a masked -inf is a constant of the form: no derivative, as in the graph
                s = se.Symbol(f"_{leaf.name}_{j}")
                syms[s] = (leaf, j)
                env[s] = exact_number(f)
                arr.flat[j] = s
            else:
                arr.flat[j] = exact_number(f)
        built_args.append(arr)
    if mini.kind == "linalg":
        built = exact_linalg(mini.attrs["op"], built_args, [leaf.attrs["value"] for leaf in leaves], env)
    else:
        built = np.asarray(_node(mini, built_args, values), object)
    flat = built.ravel()
    steps = has_steps(graph)
    exact = {leaf: [se.Integer(0)] * leaf.size for leaf in leaves}
    coarse = {leaf: [se.Integer(0)] * leaf.size for leaf in leaves}  # the same at PRECISION bits
    for o, wo in zip(outs, w):
        e, wo = flat[o], exact_number(wo)
        for s in getattr(e, "free_symbols", ()):
            leaf, j = syms[s]
            at = clean_derivative(resolve_all(e.diff(s)), steps).xreplace(env)  # erfinv', round' in closed form
            fine = _evaluate(at, 2 * PRECISION)
            exact[leaf][j] += wo * fine
            coarse[leaf][j] += wo * (fine if isinstance(fine, (se.Integer, se.Rational)) else _evaluate(at, PRECISION))
    out = {}
    for leaf in leaves:
        hi = np.array([exact_float(x) for x in exact[leaf]])
        lo = np.array([exact_float(x) for x in coarse[leaf]])
        out[leaf] = (hi, 2 * np.abs(hi - lo) + 2.0 ** (8 - 2 * PRECISION) * np.abs(hi))
    return out


# -------------------------------------------------------------------------------------- report

def annotate(report, result: NodeCrossCheck):
    """``report`` with what was cross-checked in its meta; where a node failed, every derivative
    record says which (they are unverified already: ``Reference.verified``)."""
    report.meta["cross-checked"] = str(result)
    bad = result.failures()
    if bad:
        report.meta["cross-check failures"] = bad
        for rec in report.records:
            if rec.quantity != "forward":
                rec.verified = False
                rec.note = (rec.note + " " if rec.note else "") + f"Cross-check: {bad}."
    return report
