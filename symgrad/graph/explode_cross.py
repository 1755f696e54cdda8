"""Every tensor-form derivative cross-checked against the exploded exact derivative (issue 9 item 3).

# Note [Exploded cross-check]
The adjoint cross-check (Note [Adjoint cross-check]) proves the *linear* rules right against their
own forward.  It cannot see a wrong pointwise rule, a max that routes its cotangent to the wrong
entry, or a gradient that leaks through ``detach``.  This check sees all of them: the same graph
is exploded (Note [Exploded back end]), a sample of output entries is differentiated exactly by
symengine with respect to a sample of each leaf's entries, and the result, contracted with random
cotangents, must equal the tensor back end's reverse sweep with the same cotangents.

Both sides are evaluated here, neither comes from torch.  The exploded side is evaluated in
numpy's extended precision with its own running bound (``symgrad.lower``); the tensor side in
float64 with its Approx bound ``e`` (units of eps).  An entry agrees when the two differ by no
more than ``ULPS`` units of each side's own evaluation error, ``ULPS * (2**-52 (e + |g|) +
eps_hp * bound)``, after the kink bands of both sides are allowed for.  A wrong rule changes an
entry by a fraction of its size, orders of magnitude beyond that, so a deliberately wrong rule
of any node kind is caught (``tests/graph/test_explode.py``).  A graph the exploded back end
cannot take (a ``linalg`` node, a function symengine lacks, beyond the memory budget) is reported
as not cross-checked, with the reason: never as a pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError, UnsupportedOp
from .approx import Approx
from .explode import clean_derivative, explode_nodes, has_steps, output_node
from .ir import Graph

__all__ = ["crosscheck_exploded", "ExplodedCrossCheck", "ULPS", "mark_report"]

ULPS = 8.0
EPS64 = 2.0**-52


@dataclass
class ExplodedCrossCheck:
    passed: bool | None  # None: not cross-checked (``reason`` says why)
    compared: int = 0  # derivative entries compared (summed over the cotangents)
    worst: float = 0.0  # the largest |tensor - exploded| / allowed
    failures: list = field(default_factory=list)  # (leaf, flat entry, tensor value, exploded value, allowed)
    reason: str = ""

    def __str__(self) -> str:
        if self.passed is None:
            return f"not cross-checked against the exploded back end ({self.reason})"
        head = f"exploded cross-check: {self.compared} entries, worst {self.worst:.3g} of the allowance"
        if self.passed:
            return head + ": the tensor rules agree"
        leaf, j, t, x, tol = self.failures[0]
        return (head + f": {len(self.failures)} disagree, first {leaf}[{j}]: tensor back end {t!r}, "
                f"exploded exact {x!r} (allowed {tol:.3g})")


def _sample(rng, n: int, k: int) -> np.ndarray:
    return np.arange(n) if n <= k else np.sort(rng.choice(n, size=k, replace=False))


def crosscheck_exploded(graph: Graph, values: dict | None = None, *, wrt=None, cotangents: int = 2,
                        sample_outputs: int = 16, sample_entries: int = 32, rng=None, budget: int | None = None,
                        method: str = "reverse") -> ExplodedCrossCheck:
    """The tensor back end's VJPs of ``graph`` against the exploded exact derivative, on sampled
    output entries and leaf entries (Note [Exploded cross-check]).  ``values``: the tensor forward
    in float64 (``engine.forward(graph, Ctx())``; computed when missing); ``wrt``: leaf names
    (default every input and parameter).  ``method``: how the exact derivative is taken: "reverse"
    (Note [Exploded reverse mode]: linear in the exploded size) or "diff" (symengine's ``diff`` of
    every sampled output entry by every sampled leaf entry: slower, no structure assumed at all)."""
    from .engine import backward, forward
    from .scalar import Ctx

    rng = rng if rng is not None else np.random.default_rng(0)
    out = output_node(graph)
    names = list(graph.inputs) if wrt is None else list(wrt)
    outs = _sample(rng, out.size, sample_outputs)
    picks = {n: _sample(rng, graph.inputs[n].size, sample_entries) for n in names}
    ws = rng.standard_normal((cotangents, len(outs)))
    n_syms = sum(len(p) for p in picks.values())
    try:
        built, symbols = explode_nodes(graph, values, out=out, n_wrt=n_syms, n_diff=len(outs), budget=budget,
                                       sweeps=0 if method == "diff" else 1)
        exact_of = _exact_by_diff if method == "diff" else _exact_by_reverse
        exact = exact_of(graph, built, out, symbols, outs, picks, ws)
    except (UnsupportedOp, InputError) as err:
        return ExplodedCrossCheck(None, reason=str(err))
    ctx = Ctx()
    values = values if values is not None else forward(graph, ctx)
    result = ExplodedCrossCheck(True)
    nodes = [graph.inputs[n] for n in names]
    for c, w in enumerate(ws):
        seed = np.zeros(out.size)
        seed[outs] = w
        grads = backward(graph, values, {out: Approx(seed.reshape(out.shape))}, nodes, ctx)
        start = 0
        for name, node in zip(names, nodes):
            cols = slice(start, start + len(picks[name]))
            start += len(picks[name])
            _compare(result, name, picks[name], grads.get(node), node.shape, {k: x[c, cols] for k, x in exact.items()})
    result.passed = not result.failures
    return result


def _evaluate(graph: Graph, exprs: list, symbols: dict, extra_args=(), extra_values=()) -> tuple:
    """(values, bounds, lower, upper) of ``exprs`` at the leaves' values, as float64 arrays."""
    from ..lower.numpy import high_precision, lower

    args = [s for arr in symbols.values() for s in arr.ravel()] + list(extra_args)
    vals = [v for n in symbols for v in np.ravel(graph.inputs[n].attrs["value"])] + list(extra_values)
    got = lower(exprs, args)(vals, dtype=high_precision(), kink_eps=EPS64)
    k = max([np.size(v) for v in extra_values] + [1])

    def floats(items):
        return np.stack([np.broadcast_to(np.asarray(x, np.float64), (k,)) for x in items], axis=1)

    value = floats(got.values)
    lo, hi = (floats(got.lower), floats(got.upper)) if got.lower is not None else (value, value)
    eps_hp = float(np.finfo(high_precision()).eps)
    return value, eps_hp * np.abs(floats(got.magnitudes)), np.minimum(lo, value), np.maximum(hi, value)


def _exact_by_reverse(graph, built, out, symbols, outs, picks, ws) -> dict:
    """One exploded reverse sweep with cotangent symbols at the sampled outputs, evaluated per cotangent."""
    import symengine as se

    from .explode_reverse import gradient_entries

    from ..inputs import fresh_name
    from ..symbolic.tensor import symbols as symbol_tensor

    seed = np.full(out.size, se.Integer(0), object)
    w_syms = list(symbol_tensor(fresh_name("w", graph.inputs), (len(outs),)).data)  # not an input's name
    seed[outs] = w_syms
    leaves = [graph.inputs[n] for n in picks]
    got = gradient_entries(graph, built, out, seed.reshape(out.shape), leaves)
    exprs = [got[leaf].ravel()[j] for leaf, js in zip(leaves, picks.values()) for j in js]
    value, bound, lo, hi = _evaluate(graph, exprs, symbols, w_syms, list(ws.T))
    return {"value": value, "bound": bound, "lower": lo, "upper": hi}


def _exact_by_diff(graph, built, out, symbols, outs, picks, ws) -> dict:
    """d out[o] / d leaf[j] for the sampled o and j by symengine's diff, contracted with each cotangent."""
    from ..differentiate.elementwise import diff_all

    targets = [symbols[n].ravel()[j] for n, js in picks.items() for j in js]
    flat = np.asarray(built[out], object).ravel()
    steps = has_steps(graph)
    derivs = [clean_derivative(d, steps) for o in outs for d in diff_all(flat[o], targets)]
    value, bound, lo, hi = (x[0].reshape(len(outs), len(targets)) for x in _evaluate(graph, derivs, symbols))
    ends = np.stack([ws[:, :, None] * lo[None], ws[:, :, None] * hi[None]])  # (2, k, outs, cols)
    return {"value": ws @ value, "bound": np.abs(ws) @ bound, "lower": ends.min(axis=0).sum(axis=1),
            "upper": ends.max(axis=0).sum(axis=1)}


def _compare(result: ExplodedCrossCheck, name: str, entries, g, shape, x: dict) -> None:
    if g is None:
        t_v = t_e = t_lo = t_hi = np.zeros(len(entries))
    else:
        full = lambda x: np.broadcast_to(np.asarray(x, np.float64), shape).ravel()[entries]  # noqa: E731
        lo_side, hi_side = g.sides()
        t_v, t_e, t_lo, t_hi = full(g.v), full(g.e), full(lo_side), full(hi_side)
    x_v, x_bound, x_lo, x_hi = x["value"], x["bound"], x["lower"], x["upper"]
    # a NaN bound of the exploded side (-inf * 0 in its propagation, at a masked score) counts as 0:
    # stricter, never a pass the tensor side's own bound does not grant
    x_bound = np.where(np.isfinite(x_bound), x_bound, 0.0)
    allowed = ULPS * (EPS64 * (t_e + np.abs(t_v)) + x_bound) + np.finfo(np.float64).tiny
    with np.errstate(invalid="ignore"):
        gap = np.maximum(np.maximum(x_lo - (t_v + t_hi), (t_v - t_lo) - x_hi), 0.0)
        same_nonfinite = ~np.isfinite(t_v) & (t_v == x_v)
        ratio = np.where(same_nonfinite | (gap == 0), 0.0, gap / allowed)
    ratio = np.where(np.isnan(ratio), np.inf, ratio)
    result.compared += len(entries)
    if len(entries):
        result.worst = max(result.worst, float(ratio.max()))
    for k in np.flatnonzero(ratio > 1):
        result.failures.append((name, int(entries[k]), float(t_v[k]), float(x_v[k]), float(allowed[k])))


def mark_report(report, result: ExplodedCrossCheck):
    """``report`` with the cross-check stated in its meta; where it failed, every derivative record
    is unverified (it never passes) and says why."""
    report.meta["exploded cross-check"] = str(result)
    if result.passed is False:
        for rec in report.records:
            if rec.quantity != "forward":
                rec.verified = False
                rec.note = (rec.note + " " if rec.note else "") + str(result)
    return report
