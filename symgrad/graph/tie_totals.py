"""The total a banded tie of max/min must hand on: one linear functional per cotangent.

# Note [A tie's total]
# A tie too large to be a kink unit (Note [Ties as kink units] in kinklog.py; a global max over a
# saturated image, ``amax`` over thousands of equal entries) is judged entry by entry: each tied
# entry anywhere from none of the cotangent to all of it.  A backward that lost the whole cotangent
# (tinygrad's float16 tie count overflowed to inf: every entry 0) or gave every entry all of it
# passed at any size past the sweeps' budget.  Whatever the split, the tied entries receive the
# cotangent δ in total: s >= 0, Σ s = δ.  The gradient is linear in the shares, G = R + A s, so for
# any direction u of the differentiated leaves uᵀG = uᵀR + tᵀs with t = Aᵀu, the tangent that u
# gives the tie's entries (one forward sweep); tᵀs lies between δ min t and δ max t.  So with u the
# gradient a cotangent of 1 on every tied entry produces (one reverse sweep; t = AᵀA 1 is then the
# same at every entry when the tied entries are the leaves themselves, and the bound is exact),
#     uᵀ(G_torch - G_sweep) ∈ Σ_T δ_T [min_T t - wᵀt, max_T t - wᵀt],
# summed over every differentiated leaf (t is the tangent of all of them together; taken leaf by
# leaf, a float64 near-tie of 410 entries failed torch's own gradient), G_sweep the reference at the
# sweep's own split w (even over its exact ties), within Σ |u| times each entry's rounding allowance
# plus the rounding of torch's own spread of the cotangent (log2 n roundings on each entry's band
# over n).  It is a necessary condition only (no choice of s is fitted), checked where the banded
# ties are the only bands of the sweep (one sweep with them unbanded shows it) and all lie at one
# max/min node, so that no other kink or tie upstream moves A.
"""

from __future__ import annotations

import math

import numpy as np

from ..compare.half import rounding_ulps
from .approx import Approx
from .engine import backward, tangent_sweep
from .kinklog import KinkLog

__all__ = ["tie_total_failures"]


def _direction(st, live, arg, members):
    """u: the leaves' gradient when every tied entry gets a cotangent of 1; t: u's tangent at ``arg``."""
    seed = np.zeros(arg.size)
    seed[members] = 1.0
    got = backward(st.graph, st.values, {arg: Approx(seed.reshape(arg.shape))}, live, st.ctx)
    u = {leaf: np.broadcast_to(g.v, leaf.shape) for leaf, g in got.items() if g is not None}
    if not u:
        return None, None
    t = tangent_sweep(st.graph, st.values, {leaf: Approx(np.array(v)) for leaf, v in u.items()}, st.ctx).get(arg)
    if t is None or t.banded:
        return None, None
    return u, t


def _only_bands(st, live, seeds) -> bool:
    """Whether the sweeps' bands all come from the banded ties: with those at their even split, unbanded."""
    log = KinkLog(members=1)
    log.even_ties = True
    got = backward(st.graph, st.values, {st.out: Approx(seeds[0])}, live, st.ctx, kinks=log)
    return not len(log) and not any(g is not None and g.banded for g in got.values())


def tie_total_failures(st, live, nodes, seeds, logs, records, refs, scale: float = 1.0) -> list:
    """``(records, got, lo, hi, slack)`` where autograd's values break the banded ties' total (the
    Note): the functional sums over every differentiated leaf, since t is the tangent of all of
    them together; empty where it holds or does not apply."""
    ties = [getattr(log, "banded_ties", []) for log in logs]
    if not ties or not all(ties) or any(len(log) for log in logs):
        return []
    args = {id(tie[0]) for tie in ties[0]}
    if len(args) != 1 or any(len(t) != len(ties[0]) for t in ties) or not _only_bands(st, live, seeds):
        return []
    arg = ties[0][0][0]
    members = np.concatenate([tie[1] for tie in ties[0]])
    u, t = _direction(st, live, arg, members)
    if u is None:
        return []
    used = [i for i, node in enumerate(nodes) if node is not None and node in u]
    if any(not records[i].passed or records[i].actual is None or records[i].allowed is None for i in used):
        return []  # a record failed already: the verdict stands without the functional
    tv, te = np.ravel(np.broadcast_to(t.v, arg.shape)), np.ravel(np.broadcast_to(t.e, arg.shape))
    # torch's own split (even over its own ties) rounds as it spreads the cotangent: log2 of the tied
    # entries' count roundings on each entry's reach (its band) over the count, which the reference's
    # split does not carry
    spreads = st.ctx.eps * rounding_ulps(st.dtype) * max(1.0, math.log2(len(members))) / len(members)
    got, slack = np.zeros(len(seeds)), np.zeros(len(seeds))
    for i in used:
        w = np.asarray(u[nodes[i]], np.float64)
        full = (len(seeds),) + w.shape
        diff = (np.asarray(records[i].actual, np.float64) - np.asarray(records[i].expected, np.float64)).reshape(full)
        allowed = np.asarray(records[i].allowed, np.float64).reshape(full)
        reach = np.zeros(full) if refs[i].kink is None else np.abs(refs[i].upper - refs[i].lower).reshape(full)
        axes = tuple(range(1, len(full)))
        got += np.sum(w * diff, axis=axes)
        slack += np.sum(np.abs(w) * (allowed + spreads * reach), axis=axes)
    for k, found in enumerate(ties):
        lo = hi = 0.0
        for _, mem, share, delta, delta_e in found:
            delta, taken = scale * delta, float(np.dot(share, tv[mem]))  # the sweep's own split
            span = (tv[mem].min() - taken, tv[mem].max() - taken)
            lo += min(delta * span[0], delta * span[1])
            hi += max(delta * span[0], delta * span[1])
            slack[k] += st.ctx.eps * (abs(delta) * float(te[mem].max()) + delta_e * float(np.abs(tv[mem]).max()))
        if not lo - slack[k] <= got[k] <= hi + slack[k]:
            return [([records[i] for i in used], float(got[k]), lo, hi, float(slack[k]))]
    return []
