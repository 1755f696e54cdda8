"""Matrix engine vs torch.autograd.gradcheck on a 3-layer tanh MLP, batch 64, MSE, float64.

    python benchmarks/bench_matrix_mlp.py           # 1k, 10k, 100k, 1M parameters (< 3 minutes)
    python benchmarks/bench_matrix_mlp.py --quick   # 1k and 10k only

Each row is a cold run for that size: every cache is cleared first (symgrad.matrix's closed
forms and cross-check verdicts, its per-op lambdified functions and SymPy's own cache:
``clear_caches(everything=True)``), so "symbolic" includes tracing, the reverse pass over the
matrix expression, the closed-form prints and the tiny-size cross-check.  "evaluation" is the
numpy closed form with what the comparison needs beside it (forward + backward, the per-entry
rounding bound, the kink scan, the loss), "autograd" one torch forward/backward, "compare" the
entrywise comparison.  "symgrad total" is the wall time of
``symgrad.check(model, {"x": X}, loss=nn.MSELoss(), target=T, engine="matrix")`` from model to
verdict: "cold" is a genuinely first call (every cache cleared again; only the imports are
warm), "warm" the best of 20 repeat calls once the architecture's closed forms are cached.
gradcheck runs at 1k and 10k only: it takes ≈126 s at 100k parameters on this 2-core CPU.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from tabulate import tabulate  # noqa: E402

from symgrad.matrix import references as R  # noqa: E402
from symgrad.matrix.evaluate import Evaluator, matrix_symbols  # noqa: E402
from symgrad.matrix.network import from_module  # noqa: E402
from symgrad.matrix.rounding import RoundingBound, prepare  # noqa: E402

D_IN, BATCH = 32, 64


def width_for(params: int) -> int:
    """w with w² + 35w + 1 ≈ params (Linear(32,w), Linear(w,w), Linear(w,1))."""
    return round((-35 + math.sqrt(35**2 + 4 * (params - 1))) / 2)


def make(width: int, seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(D_IN, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1)).double()
    X = torch.randn(BATCH, D_IN, dtype=torch.float64)
    T = torch.randn(BATCH, 1, dtype=torch.float64)
    return model, X, T


def pieces(model, X, T) -> dict:
    R.clear_caches(everything=True)
    t0 = time.perf_counter()
    net = from_module(model, {"x": X}, loss=nn.MSELoss(), target=T)
    grads, cot = R.network_gradients(net, [n for n, _ in model.named_parameters()])
    verified, _ = R.verify_network(net, grads, cot)
    forms = {n: R.closed_forms(g, net, cot) for n, g in grads.items()}
    prepare(net.loss, *net.defs.values(), *cot.values(), *grads.values())  # per-op rounding rules
    t1 = time.perf_counter()
    eps = float(np.finfo(np.float64).eps)
    defs = {**net.defs, **cot}
    ev = Evaluator(net.values, defs, symbols=matrix_symbols(net.loss, *net.defs.values(), *grads.values()))
    values = {n: np.asarray(ev(g)).reshape(net.shapes[n]) for n, g in grads.items()}
    bound = RoundingBound(ev, defs, eps)
    for g in [net.loss, *grads.values()]:
        bound(g)
    R.kink_bands(grads, net, cot, ev, eps)
    t2 = time.perf_counter()
    model.zero_grad()
    nn.MSELoss()(model(X), T).backward()
    auto = {n: p.grad.numpy() for n, p in model.named_parameters()}
    t3 = time.perf_counter()
    worst = max(float(np.abs(values[n] - auto[n]).max()) for n in auto)
    ok = all(np.allclose(values[n], auto[n], rtol=1e-7, atol=1e-12) for n in auto)
    t4 = time.perf_counter()
    assert verified and forms
    return {"symbolic": t1 - t0, "evaluation": t2 - t1, "autograd": t3 - t2, "compare": t4 - t3, "ok": ok, "worst": worst}


def end_to_end(model, X, T) -> tuple[float, float, bool]:
    """(cold, warm, passed): cold with caches cleared, warm the best of 20 repeat calls (the
    architecture's closed forms and cross-check cached; trace, values, evaluation, autograd and
    comparison redone each time)."""
    import symgrad

    R.clear_caches(everything=True)  # a genuinely first call: only the imports are warm
    t0 = time.perf_counter()
    report = symgrad.check(model, {"x": X}, loss=nn.MSELoss(), target=T, engine="matrix")
    cold = time.perf_counter() - t0
    passed = bool(report.passed)
    warm = float("inf")
    for _ in range(20):
        t0 = time.perf_counter()
        report = symgrad.check(model, {"x": X}, loss=nn.MSELoss(), target=T, engine="matrix")
        warm = min(warm, time.perf_counter() - t0)
        passed &= bool(report.passed)
    return cold, warm, passed


def gradcheck_time(model, X, T) -> float:
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for _, p in model.named_parameters())

    def f(*ps):
        out = torch.func.functional_call(model, dict(zip(names, ps)), (X,))
        return nn.functional.mse_loss(out, T)

    t0 = time.perf_counter()
    assert torch.autograd.gradcheck(f, params)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1k and 10k parameters only")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: on a shared 2-core machine two threads make "
                         "small torch ops, and so gradcheck, up to 25x slower)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000, 1_000_000]
    rows = []
    all_ok = True
    for target in sizes:
        width = width_for(target)
        model, X, T = make(width)
        n = sum(p.numel() for p in model.parameters())
        p = pieces(model, X, T)
        cold, warm, passed = end_to_end(model, X, T)
        gc = gradcheck_time(model, X, T) if target <= 10_000 else None
        all_ok &= p["ok"] and passed
        rows.append(
            [
                f"{n:,} (w={width})",
                f"{p['symbolic']:.3f}",
                f"{p['evaluation']:.3f}",
                f"{p['autograd']:.3f}",
                f"{p['compare']:.3f}",
                f"{cold:.3f} / {warm:.4f}" + ("" if passed else " FAIL"),
                f"{gc:.2f}" if gc is not None else "skipped (≈126 s at 100k)",
                f"{gc / cold:.1f}× / {gc / warm:.0f}×" if gc is not None else "-",
                f"{p['worst']:.1e}",
            ]
        )
    print(f"3-layer tanh MLP Linear({D_IN},w)-Tanh-Linear(w,w)-Tanh-Linear(w,1), batch {BATCH}, MSE, float64; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(tabulate(rows, headers=["params", "symbolic s", "evaluation s", "autograd s", "compare s", "symgrad total s (cold / warm)",
                                  "gradcheck s", "speed-up (cold / warm)", "max |Δ| vs autograd"]))
    print("symbolic/evaluation/autograd/compare: symgrad.matrix's pieces, timed on their own (cold: symbolic "
          "includes the tiny-size cross-check). symgrad total: symgrad.check(engine='matrix') wall time, model to "
          "verdict; cold = first call (every cache cleared, imports warm), warm = best of 20 repeat calls.")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
