"""Why a 1 % bug passes LeNet-5 in half precision: how many relu units count as near their kink.

A relu unit whose pre-activation lies within rounding of 0 is a kink (Note [Kinks in the scalar
evaluator] in symgrad/graph/scalar.py): every gradient entry it reaches is checked against both
one-sided derivatives, and the one-scale test (Note [Systematic scale]) leaves such entries out.
For each relu of LeNet-5 (tests/graph/test_models.py) this prints the share of units within the
worst-case slack (KINK_ULPS * eps * bound, what the check uses) and the share that would stay
within LAMBDA standard deviations of the pre-activation's random-rounding reruns (Note
[Statistical allowance]: the same moves, the forward only), beside the median of each relative to
the pre-activation.  Nothing here changes a verdict: it measures what a statistical kink slack
could gain.

    python benchmarks/half_kinks.py --dtype bfloat16 --seed 0 --samples 32
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's symgrad

import numpy as np  # noqa: E402
import sympy as sp  # noqa: E402
import torch  # noqa: E402

import symgrad as sg  # noqa: E402
from symgrad.compare.half import rounding_ulps  # noqa: E402
from symgrad.graph import engine, montecarlo  # noqa: E402
from symgrad.graph.scalar import KINK_ULPS  # noqa: E402
from tests.graph.test_models import LeNet  # noqa: E402


def _graph_of_check(model, inputs) -> tuple:
    """(graph, ctx) of the op graph the check builds (caught where the reruns start)."""
    caught = {}
    real = montecarlo.spread

    def spy(graph, ctx, *args, **kw):
        caught.setdefault("graph", (graph, ctx))
        return real(graph, ctx, *args, **kw)

    montecarlo.spread = spy
    try:
        report = sg.check(model, inputs, engine="graph", quiet=True)
    finally:
        montecarlo.spread = real
    if "graph" not in caught:
        raise SystemExit("the check ran no random-rounding reruns: nothing to measure")
    return caught["graph"], report


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=32)
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    model = LeNet().to(dtype)
    inputs = {"x": torch.randn(2, 1, 28, 28, dtype=dtype), "y": torch.tensor([3, 7])}
    (graph, ctx), report = _graph_of_check(model, inputs)
    print(f"LeNet-5 {args.dtype} seed {args.seed}: {'pass' if report.passed else 'FAIL'}; gradient entries on kinks: "
          + ", ".join(f"{r.name} {r.kinks}/{r.total}" for r in report.records if r.quantity != "forward"))
    base = engine.forward(graph, ctx)
    total = {n: 0.0 for n in graph.nodes}
    with np.errstate(all="ignore"), montecarlo.perturbing(np.random.default_rng(args.seed)):
        for _ in range(args.samples):
            values = engine.forward(graph, ctx)
            for n in graph.nodes:
                total[n] = total[n] + ((values[n].v - base[n].v) / montecarlo.DELTA) ** 2
    unit = rounding_ulps(args.dtype) * ctx.eps
    print(f"{'relu':6} {'units':>6} {'worst-case near kink':>21} {'8 sigma near kink':>18} "
          f"{'median bound/|x|':>17} {'median sigma/|x|':>17}")
    k = 0
    for n in graph.nodes:
        if n.kind != "pointwise" or not isinstance(n.attrs["expr"], sp.Piecewise) or "relu" not in n.origin:
            continue
        k += 1
        pre = base[n.args[0]]
        x = np.abs(pre.v)
        worst = KINK_ULPS * ctx.eps * np.asarray(pre.e)
        sigma = unit * np.sqrt(total[n.args[0]] / args.samples)
        stat = np.minimum(worst, montecarlo.LAMBDA * sigma)
        with np.errstate(divide="ignore", invalid="ignore"):
            print(f"{k:<6} {x.size:>6} {np.mean(x <= worst):>21.1%} {np.mean(x <= stat):>18.1%} "
                  f"{np.median(unit * pre.e / x):>17.3g} {np.median(sigma / x):>17.3g}")


if __name__ == "__main__":
    main()
