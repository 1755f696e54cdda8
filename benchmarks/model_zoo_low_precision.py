"""False alarms and small seeded bugs on the op graph's model families in float32 and half precision.

Every model of ``tests/graph/test_models.py`` with torch's own autograd (a failing verdict is a false
alarm), over several seeds, and LeNet-5 with a custom tanh layer whose backward is scaled by
1 + 1e-3 or wrong by 1e-3 at one entry (a passing verdict is a missed bug).  Note [Statistical
allowance] in ``symgrad/graph/montecarlo.py`` says why float32 deep networks need it.

    python benchmarks/model_zoo_low_precision.py [--seeds 4] [--dtypes float32 float16 bfloat16]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's symgrad

import torch  # noqa: E402

import symgrad as sg  # noqa: E402
from tests.graph.test_models import LeNet, _models  # noqa: E402
from tests.graph.test_statistical import _tanh_layer  # noqa: E402

MODELS = ["lenet", "transformer", "lstm", "gru", "embedding", "resblock", "tcn"]
BUGS = {"scaled 1e-3": (1.001, None), "one entry 1e-3": (1.001, 3), "scaled 1e-2": (1.01, None)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float16", "bfloat16"])
    args = ap.parse_args()
    print(f"{'dtype':9} {'case':34} {'checks':>6} {'failing':>7} {'seconds':>8}")
    for name in args.dtypes:
        dtype = getattr(torch, name)
        for model_name in MODELS:
            failing, t0 = 0, time.perf_counter()
            for s in range(args.seeds):
                torch.manual_seed(100 + s)
                model, inputs = _models(dtype)[model_name]
                failing += not sg.check(model.to(dtype), inputs, engine="graph").passed
            print(f"{name:9} {'torch autograd, ' + model_name:34} {args.seeds:>6} {failing:>7} "
                  f"{time.perf_counter() - t0:>8.1f}", flush=True)
        for bug, (factor, entry) in BUGS.items():
            failing, t0 = 0, time.perf_counter()
            for s in range(args.seeds):
                torch.manual_seed(s)
                model = LeNet(act=_tanh_layer(factor, entry)).to(dtype)
                inputs = {"x": torch.randn(2, 1, 28, 28, dtype=dtype), "y": torch.tensor([3, 7])}
                failing += not sg.check(model, inputs, engine="graph").passed
            print(f"{name:9} {'LeNet-5, tanh backward ' + bug:34} {args.seeds:>6} {failing:>7} "
                  f"{time.perf_counter() - t0:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
