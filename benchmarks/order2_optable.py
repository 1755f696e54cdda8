"""order=2 over the op table: torch's own double backward must pass (no false alarm), and a seeded
wrong second derivative (``symgrad.testing_ops.wrong_second``: the first backward right in value,
its derivative off by ``1 + 1e-6`` in float64, ``1 + 1e-3`` in float32, ``1 + 1e-2`` in float16 and
bfloat16) must fail.  Prints one line per row and dtype, then the counts.

    python benchmarks/order2_optable.py [float64 float32]
    python benchmarks/order2_optable.py bfloat16      # the float32 rows, in bfloat16

"refused": the op graph has no Hessian-vector rule (linalg) or torch itself has no double backward
(hardsigmoid, cdist, sdpa, ...): a clear error, no verdict.  xfail and torch_differs rows are left out.
"torch differs": torch's double backward is documented (in its source) to differ from the exact one.
A seeded bug in a row whose second derivative is zero everywhere is still right ("zero Hessian").
"""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np
import torch

import symgrad as sg
from symgrad.errors import SymgradError
from symgrad.graph.optable import FACTOR, as_function, cases
from symgrad.graph.order2 import TORCH_DIFFERS
from symgrad.testing_ops import wrong_second

HALF_FACTOR = 1e-2  # a 1 % bug in float16 and bfloat16


def _check(fn, inputs, case):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sg.check(fn, inputs, engine="graph", wrt=list(case.wrt) or None, order=2, quiet=True)


def _row(case, dt) -> tuple[str, str, str]:
    """(verdict on torch's own double backward, verdict on the seeded bug, detail)."""
    fn, inputs = as_function(case, getattr(torch, dt))
    try:
        rep = _check(fn, inputs, case)
    except SymgradError as err:
        return "refused", "-", str(err).splitlines()[0][:140]
    except Exception as err:  # noqa: BLE001 - counted and printed
        return "error", "-", f"{type(err).__name__}: {str(err)[:140]}"
    verdict = "pass" if rep.passed else "FALSE ALARM"
    detail = "" if rep.passed else rep.to_text().splitlines()[0]
    if case.name in TORCH_DIFFERS and dt == "float64":  # 1e-11 relative: below float32's ulp
        verdict = "torch differs" if not rep.passed else "MISSED"
        detail = TORCH_DIFFERS[case.name]
    zero = all(not np.any(r.expected) for r in rep.records if r.quantity == "hvp")
    try:
        bug = _check(wrong_second(fn, FACTOR.get(dt, HALF_FACTOR)), inputs, case)
        # "H=0 unwrapped": a detach or setitem inside a custom Function's forward is no stop (the forward
        # runs without a graph), so the wrapped function's Hessian is not the row's zero one
        seeded = ("zero Hessian" if bug.passed else "caught (H=0 unwrapped)") if zero else \
            ("caught" if not bug.passed else "missed")
    except Exception as err:  # noqa: BLE001 - counted and printed
        seeded, detail = "error", f"seeded: {type(err).__name__}: {str(err)[:120]}"
    return verdict, seeded, detail


def main(dtypes) -> int:
    counts: dict = {}
    for case in cases():
        if case.xfail or case.torch_differs:
            continue
        for dt in dtypes:
            if dt not in case.dtypes and not (dt in ("float16", "bfloat16") and "float32" in case.dtypes):
                continue
            start = time.perf_counter()
            verdict, seeded, detail = _row(case, dt)
            for key in ((dt, verdict), (dt, "seeded " + seeded)):
                counts[key] = counts.get(key, 0) + 1
            print(f"{case.name:28s} {dt:8s} {verdict:13s} {seeded:13s} {time.perf_counter() - start:6.2f}s {detail}",
                  flush=True)
    print()
    for dt in dtypes:
        print(dt, ", ".join(f"{k}: {n}" for (d, k), n in sorted(counts.items()) if d == dt))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["float64", "float32"]))
