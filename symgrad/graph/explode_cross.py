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
from .explode import clean_derivative, explode, has_steps, output_node
from .ir import Graph

__all__ = ["crosscheck_exploded", "ExplodedCrossCheck", "ULPS"]

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
                        sample_outputs: int = 16, sample_entries: int = 32, rng=None,
                        budget: int | None = None) -> ExplodedCrossCheck:
    """The tensor back end's VJPs of ``graph`` against the exploded exact derivative, on sampled
    output entries and leaf entries (Note [Exploded cross-check]).  ``values``: the tensor forward
    in float64 (``engine.forward(graph, Ctx())``; computed when missing); ``wrt``: leaf names
    (default every input and parameter)."""
    from .engine import backward, forward
    from .scalar import Ctx

    rng = rng if rng is not None else np.random.default_rng(0)
    out = output_node(graph)
    names = list(graph.inputs) if wrt is None else list(wrt)
    outs = _sample(rng, out.size, sample_outputs)
    picks = {n: _sample(rng, graph.inputs[n].size, sample_entries) for n in names}
    n_syms = sum(len(p) for p in picks.values())
    try:
        exprs, symbols = explode(graph, values, out=out, n_wrt=n_syms, n_diff=len(outs), budget=budget)
        exact = _exact_jacobian(graph, exprs, symbols, outs, picks)
    except (UnsupportedOp, InputError) as err:
        return ExplodedCrossCheck(None, reason=str(err))
    ctx = Ctx()
    values = values if values is not None else forward(graph, ctx)
    result = ExplodedCrossCheck(True)
    nodes = [graph.inputs[n] for n in names]
    for _ in range(cotangents):
        w = rng.standard_normal(len(outs))
        seed = np.zeros(out.size)
        seed[outs] = w
        grads = backward(graph, values, {out: Approx(seed.reshape(out.shape))}, nodes, ctx)
        start = 0
        for name, node in zip(names, nodes):
            cols = slice(start, start + len(picks[name]))
            start += len(picks[name])
            _compare(result, name, picks[name], grads.get(node), node.shape, w, exact, cols)
    result.passed = not result.failures
    return result


def _exact_jacobian(graph: Graph, exprs: np.ndarray, symbols: dict, outs: np.ndarray, picks: dict) -> dict:
    """d out[o] / d leaf[j] for the sampled o and j, evaluated with its bound and kink band."""
    from ..differentiate.elementwise import diff_all
    from ..lower.numpy import high_precision, lower

    targets = [symbols[n].ravel()[j] for n, js in picks.items() for j in js]
    flat = exprs.ravel()
    steps = has_steps(graph)
    rows = [[clean_derivative(d, steps) for d in diff_all(flat[o], targets)] for o in outs]
    derivs = [d for row in rows for d in row]
    args = [s for arr in symbols.values() for s in arr.ravel()]
    leaf_values = [v for n in symbols for v in np.ravel(graph.inputs[n].attrs["value"])]
    evaluated = lower(derivs, args)(leaf_values, dtype=high_precision(), kink_eps=EPS64)
    shape = (len(outs), len(targets))
    value = np.array([float(v) for v in evaluated.values], np.float64).reshape(shape)
    mag = np.abs(np.array([float(m) for m in evaluated.magnitudes], np.float64)).reshape(shape)
    if evaluated.lower is not None:
        lo = np.array([float(v) for v in evaluated.lower], np.float64).reshape(shape)
        hi = np.array([float(v) for v in evaluated.upper], np.float64).reshape(shape)
    else:
        lo = hi = value
    eps_hp = float(np.finfo(high_precision()).eps)
    return {"value": value, "bound": eps_hp * mag, "lower": np.minimum(lo, value), "upper": np.maximum(hi, value)}


def _compare(result: ExplodedCrossCheck, name: str, entries, g, shape, w, exact: dict, cols: slice) -> None:
    if g is None:
        t_v = t_e = t_lo = t_hi = np.zeros(len(entries))
    else:
        full = lambda x: np.broadcast_to(np.asarray(x, np.float64), shape).ravel()[entries]  # noqa: E731
        lo_side, hi_side = g.sides()
        t_v, t_e, t_lo, t_hi = full(g.v), full(g.e), full(lo_side), full(hi_side)
    x_v = w @ exact["value"][:, cols]
    x_bound = np.abs(w) @ exact["bound"][:, cols]
    ends = np.stack([w[:, None] * exact["lower"][:, cols], w[:, None] * exact["upper"][:, cols]])
    x_lo, x_hi = ends.min(axis=0).sum(axis=0), ends.max(axis=0).sum(axis=0)
    allowed = ULPS * (EPS64 * (t_e + np.abs(t_v)) + x_bound) + np.finfo(np.float64).tiny
    with np.errstate(invalid="ignore"):
        gap = np.maximum(np.maximum(x_lo - (t_v + t_hi), (t_v - t_lo) - x_hi), 0.0)
        same_nonfinite = ~np.isfinite(t_v) & (t_v == x_v)
        ratio = np.where(same_nonfinite, 0.0, gap / allowed)
    ratio = np.where(np.isnan(ratio), np.inf, ratio)
    result.compared += len(entries)
    if len(entries):
        result.worst = max(result.worst, float(ratio.max()))
    for k in np.flatnonzero(ratio > 1):
        result.failures.append((name, int(entries[k]), float(t_v[k]), float(x_v[k]), float(allowed[k])))
