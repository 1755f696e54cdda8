"""Robustness sweep of ``symgrad.check`` on nn.Module families the test suite does not cover.

Every family (``FAMILIES`` in ``tests/graph/families.py``) is a small model with its
inputs, checked in float64 and float32 over a few seeds:

* (a) correct: torch's own autograd; a failing verdict is a false alarm;
* (b) bugged: the same model with a forward hook on its first layer that owns parameters, passing
  that layer's output through a custom ``autograd.Function`` (``symgrad.testing_ops.with_backward``)
  whose backward scales the cotangent by ``1 + delta`` (``scaled``) or moves its largest entry by
  ``1 + delta`` (``entry``); delta = 1e-6 in float64 and 1e-3 in float32; a passing verdict is a
  missed bug;
* (c) a refusal (``SymgradError``) is counted apart and its message shown; any other exception is
  a crash.

    python benchmarks/model_families.py --quick                 # one seed, engine='graph'
    python benchmarks/model_families.py                         # 3 seeds, engine='graph' and 'auto'
    python benchmarks/model_families.py --only conv1d gru_deep  # some families
    python benchmarks/model_families.py --verbose               # failing rows and refusal messages

Cells of the table: ``P`` pass (right on a correct model), ``C`` caught (right on a bugged one),
``T`` torch's own derivative is wrong and said so (``TORCH_BUGS``), ``FA`` false alarm, ``MISS``
missed bug, ``R`` refused, ``X`` crash; several seeds are counted
(``3P``, ``2P1FA``).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's symgrad

import torch  # noqa: E402

import symgrad as sg  # noqa: E402
from tests.graph.families import FAMILIES, TORCH_BUGS, bugged  # noqa: E402
from symgrad.errors import SymgradError  # noqa: E402

DELTA = {torch.float64: 1e-6, torch.float32: 1e-3}


def run_one(name, dtype, seed, engine, bug, verbose):
    """One check: the outcome code and a short note."""
    torch.manual_seed(seed)
    model, inputs, kwargs = FAMILIES[name](dtype, seed)
    if bug is not None:
        model = bugged(model, bug, 1 + DELTA[dtype])
    try:
        report = sg.check(model, inputs, engine=engine, quiet=True, **kwargs)
    except SymgradError as e:
        return "R", f"{type(e).__name__}: {e}"
    except Exception as e:  # noqa: BLE001 -- the sweep counts crashes
        return "X", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-4) if verbose else ''}"
    if bug is None and name in TORCH_BUGS:  # torch itself is wrong here: FAIL is right
        return ("T", "") if not report.passed else ("MISS", TORCH_BUGS[name])
    if bug is None:
        return ("P", "") if report.passed else ("FA", _failing(report))
    return ("C", "") if not report.passed else ("MISS", _resolution(report))


def _failing(report):
    rows = [r for r in report.records if not r.passed][:3]
    return "; ".join(r.message()[:300] for r in rows)


def _resolution(report):
    text = report.to_text()
    lines = [ln for ln in text.splitlines() if "Resolution" in ln or "passes unseen" in ln]
    return " | ".join(lines[:2])[:300]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--quick", action="store_true", help="one seed, engine='graph' only")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--engines", nargs="+", default=["graph", "auto"])
    ap.add_argument("--dtypes", nargs="+", default=["float64", "float32"])
    ap.add_argument("--bugs", nargs="+", default=["scaled", "entry"])
    ap.add_argument("--only", nargs="+", default=None, help="family names")
    ap.add_argument("--list", action="store_true", help="list the families and exit")
    ap.add_argument("--verbose", action="store_true", help="print every non-expected outcome's note")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(FAMILIES))
        return 0
    if args.quick:
        args.seeds, args.engines = 1, ["graph"]
    names = args.only or list(FAMILIES)
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        ap.error(f"unknown families {unknown}; --list shows them")
    dtypes = [getattr(torch, d) for d in args.dtypes]
    modes = ["ok"] + args.bugs
    head = f"{'family':22} {'engine':6} {'dtype':8} " + " ".join(f"{m:>8}" for m in modes) + f" {'s':>6}"
    print(head)
    total, bad = Counter(), 0
    for name in names:
        for engine in args.engines:
            for dtype in dtypes:
                t0, cells = time.perf_counter(), []
                for mode in modes:
                    counts = Counter()
                    for seed in range(args.seeds):
                        code, note = run_one(name, dtype, seed, engine, None if mode == "ok" else mode, args.verbose)
                        counts[code] += 1
                        total[(mode == "ok", code)] += 1
                        if code not in ("P", "C", "T"):
                            bad += 1
                            if args.verbose:
                                print(f"   {name} {engine} {str(dtype)[6:]} {mode} seed {seed}: {code}: {note[:1500]}")
                    cells.append("".join(f"{v}{k}" for k, v in sorted(counts.items())))
                print(f"{name:22} {engine:6} {str(dtype)[6:]:8} " + " ".join(f"{c:>8}" for c in cells)
                      + f" {time.perf_counter() - t0:6.1f}", flush=True)
    print("correct models:", dict((k[1], v) for k, v in total.items() if k[0]),
          " bugged models:", dict((k[1], v) for k, v in total.items() if not k[0]))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
