"""Bugs caught and false alarms on the kept corpus (``symgrad/testing_corpus.py``), per dtype.

For every case of the corpus (seeded bugs and correct custom ``autograd.Function`` backwards, in
float64, float32, float16 and bfloat16) it runs ``symgrad.check`` (the op graph, the exact math traced
as the reference), ``torch.autograd.gradcheck`` (float64 only: it cannot run in the others) and the
FlashAttention-style rule (a bug is flagged where the backward's error against a float64 reference
exceeds twice torch's own same-dtype error), and prints, per dtype: bugs caught, false alarms and
``inaccurate`` reports.

    python benchmarks/corpus.py              # seed 0, input scale 1
    python benchmarks/corpus.py --seeds 3    # seeds 0..2
    python benchmarks/corpus.py --list       # every case that went wrong, named
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's symgrad, not an installed one

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

from symgrad.testing_corpus import DTYPES, corpus, run_case  # noqa: E402


def tally(seeds: int = 1, scale: float = 1.0, dtypes=DTYPES) -> tuple[dict, list]:
    rows, wrong = {}, []
    for seed in range(seeds):
        for case in corpus(dtypes, seed=seed, scale=scale):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                got = run_case(case)
            row = rows.setdefault(case.dtype, dict.fromkeys(
                ["bugs", "caught", "correct", "alarms", "inaccurate", "gc_caught", "gc_alarms", "fa_caught", "fa_alarms"], 0))
            row["inaccurate"] += got["inaccurate"] > 0
            if case.bug is None:
                row["correct"] += 1
                row["alarms"] += not got["passed"]
                row["gc_alarms"] += bool(got["gradcheck"])
                row["fa_alarms"] += got["flash"]
                if not got["passed"]:
                    wrong.append(f"false alarm: {case.label} seed={seed}")
            else:
                row["bugs"] += 1
                row["caught"] += not got["passed"]
                row["gc_caught"] += bool(got["gradcheck"])
                row["fa_caught"] += got["flash"]
                if got["passed"]:
                    wrong.append(f"missed: {case.label} seed={seed}")
    return rows, wrong


def table(rows: dict) -> str:
    out = []
    for dtype, r in rows.items():
        f64 = dtype == torch.float64
        out.append([str(dtype).replace("torch.", ""), f"{r['caught']}/{r['bugs']}", f"{r['alarms']}/{r['correct']}",
                    r["inaccurate"],
                    f"{r['gc_caught']}/{r['bugs']}" if f64 else "cannot run",
                    f"{r['gc_alarms']}/{r['correct']}" if f64 else "cannot run",
                    f"{r['fa_caught']}/{r['bugs']}", f"{r['fa_alarms']}/{r['correct']}"])
    return tabulate(out, headers=["dtype", "symgrad caught", "symgrad false alarms", "inaccurate",
                                  "gradcheck caught", "gradcheck false alarms", "2x rule caught", "2x rule false alarms"],
                    tablefmt="github")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--list", action="store_true", help="name every missed bug and false alarm")
    args = ap.parse_args(argv)
    t0 = time.time()
    rows, wrong = tally(args.seeds, args.scale)
    n = sum(r["bugs"] + r["correct"] for r in rows.values())
    print(f"{n} cases ({args.seeds} seed(s), input scale {args.scale}), {time.time() - t0:.0f} s")
    print(table(rows))
    if args.list:
        for line in wrong:
            print(" ", line)


if __name__ == "__main__":
    main()
