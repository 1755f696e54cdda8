"""The systematic-scale test (Note [Systematic scale] in scale.py) for the products reverse mode
does not give: forward-mode tangents (jvp records) and Hessian-vector products (order=2).

# Note [Scale of every product]
A jvp or a double backward off by 1 % is 2.6 units of bfloat16's roundoff, as a backward is, and no
entry alone resolves it (a custom Function's jvp times 1.01 passed in 17 of 17 patterns in
bfloat16, and so did its second derivative).  The reverse sweeps' records get the scale test from
the reruns of Note [Statistical allowance]; these products are reran here the same way: the forward
sweep and the product's own sweep with every rounding moved by its bound (``montecarlo.coherent_reruns``:
coherent sites held still, then moved one at a time, Note [Coherent roundings]), in SCALE_SAMPLES
reruns on a small graph, and each record's least-squares scale is allowed what those reruns give
it, then one scale over every record (Note [One scale over every gradient]).  Only in float16 and
bfloat16 checks without rtol/atol (``scale_wanted``), as for the reverse sweeps.
"""

from __future__ import annotations

import numpy as np

from . import scale as scale_test
from .engine import forward
from .montecarlo import SAMPLES, per_use_args, coherent_reruns, linear_moves, move_size

__all__ = ["scale_products", "product_spread"]


def scale_products(st, records: list, base: list, compute, directions: int) -> None:
    """Apply the scale test to ``records`` whose references are ``base`` (one array each, shaped as
    the record); ``compute(values)`` gives the same arrays from perturbed forward ``values``."""
    kept = scale_test.SCALE_SAMPLES * sum(int(np.size(b)) for b in base)
    if not records or not scale_test.scale_wanted(st.graph, st.dtype, st.rtol, st.atol, kept):
        return
    runs, constants = _reruns(st, compute, base, scale_test.samples_for(st.graph, directions, True), split=True)
    per_record = [[run[i] for run in runs] for i in range(len(records))]
    per_constant = [[c[i] for c in constants] for i in range(len(records))]
    for rec, moves, fixed in zip(records, per_record, per_constant):
        scale_test.apply_scale_test(rec, moves, st.dtype, fixed)
    if len(records) > 1:
        scale_test.apply_joint_scale_test(records, per_record, st.dtype, per_constant)


def product_spread(st, compute, base: list) -> list:
    """Note [Statistical tangents] (forward_records.py): each product's root-mean-square change (units
    of a move) over SAMPLES reruns with every rounding moved by its bound and a random sign."""
    runs, _ = _reruns(st, compute, base, SAMPLES, split=False, per_use=True)
    out = []
    for i in range(len(base)):
        moves = np.stack([run[i] for run in runs])
        with np.errstate(over="ignore", invalid="ignore"):
            out.append(np.sqrt(np.mean(np.where(np.isfinite(moves), moves, np.inf) ** 2, axis=0)))
    return out


def _reruns(st, compute, base: list, samples: int, split: bool, per_use: bool = False) -> tuple:
    """``per_use``: each rule of the product's sweep reads the forward moves with its own signs per
    argument (Note [Each use its own moves] in montecarlo.py: torch's var jvp, 2 Σ t (x - m) / (n - 1),
    carries the move of its mean m, which the graph's path through m cancels)."""
    from ..compare.accuracy import reference_mode

    still = (forward(st.graph, st.ctx), np.random.default_rng([0, 1])) if per_use else None
    token = reference_mode.set("float")  # no mpmath inside a rerun (Note [Certified pointwise values])
    try:
        with linear_moves(st.graph, st.ctx):
            return coherent_reruns(np.random.default_rng(0), samples,
                                   lambda kind: _changes(st, compute, base, still if kind == "still" else None),
                                   lambda run, extra: [x + y for x, y in zip(run, extra)], split=split)
    finally:
        reference_mode.reset(token)


def _changes(st, compute, base: list, per_use: tuple | None = None) -> list:
    """One perturbed sweep: each product's change from ``base``, in units of a move."""
    from . import engine

    values = forward(st.graph, st.ctx)
    saved = engine._RULE_ARGS
    if per_use is not None:
        engine._RULE_ARGS = per_use_args(values, *per_use)
    try:
        got = compute(values)
    finally:
        engine._RULE_ARGS = saved
    return [(np.asarray(g, np.float64).reshape(np.shape(b)) - b) / move_size() for g, b in zip(got, base)]
