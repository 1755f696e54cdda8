"""What the default node cross-check (Note [Node cross-check]) costs on bench_graph.py's rows.

Each row runs in a fresh process, on one torch thread, after the same untimed start-up as
``bench_graph.py`` (torch's tracer, the op graph's modules, SymPy's first use).  Columns, in CPU
seconds of that process (``time.process_time``: less sensitive than wall time to a shared machine):

* ``cold s``: the first check of the row (every cache empty), the node cross-check included;
* ``cross-check ms``: the time spent in ``crosscheck_nodes`` during it;
* ``sympy.diff ms``: of that, the rules' ``sympy.diff`` of forms first met there, which the check's
  own reverse sweep would otherwise pay right after (``rules.derivatives`` is cached per form);
* ``own ms`` / ``own %``: the difference, the cross-check's own cost, and its share of ``cold s``;
* ``warm ms``: the cross-check's time in a second check of the same row (0: every node remembered);
* ``nodes``, ``exploded``: non-linear nodes cross-checked, and one-node graphs actually exploded
  (nodes that merge to the same reduced node share one, Note [Merged axes]).

Run: ``python benchmarks/bench_node_cross.py`` (``--cases mlp-1k encoder`` for some rows).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from tabulate import tabulate

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # this checkout's symgrad, not an installed one

from bench_graph import CASES, build  # noqa: E402


def child(name: str) -> dict:
    import sympy
    import torch
    from torch.fx.experimental.proxy_tensor import make_fx

    import symgrad as sg
    import symgrad.graph.check as graph_check
    from symgrad.graph import node_cross, rules

    torch.set_num_threads(1)
    fn, inputs, _, via, extra = build(name)
    make_fx(lambda x: x.sin())(torch.ones(2))
    s = sympy.Symbol("s")
    sympy.diff(s * s + 1, s)
    spent = {"total": 0.0, "diff": 0.0, "inside": False}
    real_derivatives, real_cross = rules.derivatives, graph_check.crosscheck_nodes

    def derivatives(expr, k):
        misses = real_derivatives.cache_info().misses
        start = time.process_time()
        got = real_derivatives(expr, k)
        if spent["inside"] and real_derivatives.cache_info().misses > misses:
            spent["diff"] += time.process_time() - start
        return got

    def crosscheck_nodes(*args, **kwargs):
        spent["inside"], start = True, time.process_time()
        try:
            return real_cross(*args, **kwargs)
        finally:
            spent["inside"] = False
            spent["total"] += time.process_time() - start

    derivatives.cache_info = real_derivatives.cache_info
    rules.derivatives, graph_check.crosscheck_nodes = derivatives, crosscheck_nodes
    start = time.process_time()
    report = sg.check(fn, inputs, engine="graph", via=via, **extra)
    cold = time.process_time() - start
    first, exploded = dict(spent), node_cross.counter["exploded"]
    spent["total"] = 0.0
    sg.check(fn, inputs, engine="graph", via=via, **extra)
    own = first["total"] - first["diff"]
    return {"cold": cold, "total": 1e3 * first["total"], "diff": 1e3 * first["diff"], "own": 1e3 * own,
            "share": 100 * own / cold, "warm": 1e3 * spent["total"], "exploded": exploded,
            "meta": report.meta.get("cross-checked", ""), "passed": report.passed}


def main(only: list | None = None) -> None:
    rows = []
    for name in only or list(CASES):
        out = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True, text=True,
                             env={**os.environ, "SYMGRAD_CACHE": "0",  # cold means cold, as in bench_graph.py
                                  "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1")})
        if out.returncode:
            rows.append([name, "error: " + out.stderr.strip().splitlines()[-1][:80]] + [""] * 7)
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        nodes = r["meta"].split(" non-linear nodes")[0].split(", ")[-1]
        rows.append([name, f"{r['cold']:.3f}", f"{r['total']:.0f}", f"{r['diff']:.0f}", f"{r['own']:.0f}",
                     f"{r['share']:.1f}", f"{r['warm']:.1f}", nodes, r["exploded"]])
    print(tabulate(rows, headers=["case", "cold s", "cross-check ms", "sympy.diff ms", "own ms", "own %", "warm ms",
                                  "nodes", "exploded"]))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2])))
    else:
        args = sys.argv[1:]
        main(args[args.index("--cases") + 1:] if "--cases" in args else None)
