"""order=2 over the op table: torch's own double backward must pass (no false alarm).  Prints one
line per row and dtype, then the counts (seeded second-derivative bugs: tests/test_order2.py).

    python benchmarks/order2_optable.py [float64 float32]

"refused": the op graph has no Hessian-vector rule (linalg) or torch itself has no double backward
(hardsigmoid, cdist, sdpa, ...): a clear error, no verdict.  xfail and torch_differs rows are left out.
"torch differs": torch's double backward is documented (in its source) to differ from the exact one.
"""

from __future__ import annotations

import sys
import time
import warnings

import torch

import symgrad as sg
from symgrad.errors import SymgradError
from symgrad.graph.optable import as_function, cases
from symgrad.graph.order2 import TORCH_DIFFERS


def main(dtypes) -> int:
    counts = {}
    for case in cases():
        if case.xfail or getattr(case, "torch_differs", False):
            continue
        for dt in dtypes:
            if dt not in case.dtypes:
                continue
            fn, inputs = as_function(case, getattr(torch, dt))
            start = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    rep = sg.check(fn, inputs, engine="graph", wrt=list(case.wrt) or None, order=2, quiet=True)
                verdict = "pass" if rep.passed else "FALSE ALARM"
                detail = "" if rep.passed else rep.to_text().splitlines()[0]
                if case.name in TORCH_DIFFERS and dt == "float64":  # 1e-11 relative: below float32's ulp
                    verdict = "torch differs" if not rep.passed else "MISSED"
                    detail = TORCH_DIFFERS[case.name] if not rep.passed else "torch differs, but the check passed"
            except SymgradError as err:
                verdict, detail = "refused", str(err).splitlines()[0][:140]
            except Exception as err:  # noqa: BLE001 - counted and printed
                verdict, detail = "error", f"{type(err).__name__}: {str(err)[:140]}"
            counts[(dt, verdict)] = counts.get((dt, verdict), 0) + 1
            print(f"{case.name:28s} {dt:8s} {verdict:12s} {time.perf_counter() - start:6.2f}s {detail}", flush=True)
    print()
    for dt in dtypes:
        row = {v: counts.get((dt, v), 0) for v in ("pass", "FALSE ALARM", "torch differs", "MISSED",
                                                             "refused", "error")}
        print(dt, ", ".join(f"{k}: {n}" for k, n in row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["float64", "float32"]))
