"""The op graph's tensor back end beside gradcheck and one torch forward+backward, one table.

Each row runs in a fresh process (so its peak memory is its own), on one torch thread:

* ``start-up s``: the process's one-time start-up, before any check: torch's tracer start-up
  (``make_fx`` imports ``torch._dynamo``), the import of the op graph's modules and SymPy's own
  modules that it loads on first use (no symgrad cache is filled: nothing is traced or evaluated);
  the first check in a process costs start-up + cold;
* ``cold s``: the first check of the architecture after the start-up (every symgrad cache empty,
  the disk cache off);
* ``warm s``: the best of 5 repeat checks;
* ``gradcheck s``: ``torch.autograd.gradcheck`` in float64 on the same function (fast_mode=False,
  the default; every parameter an input, through ``torch.func.functional_call``), skipped where it
  would take minutes (LeNet-5, the encoder layer) unless ``--gradcheck-all`` is given, and always on
  the two float32 CNN rows (25,578 parameters: a gradcheck there is of the float64 copy, minutes long,
  and says nothing of float32);
* ``torch fwd+bwd s``: one forward and backward of the same function;
* ``peak MiB``: the process's peak resident memory after the symgrad checks (gradcheck runs in a
  process of its own).

numpy's BLAS runs on one thread too (``OPENBLAS_NUM_THREADS=1`` unless set): on a shared machine
a multi-threaded BLAS waiting for a busy core was ten times slower.

Run: ``python benchmarks/bench_graph.py`` (about two minutes here; ``--quick`` skips the largest;
``--cases mlp-1k mlp-1m`` runs only those rows; ``--gradcheck-all`` also runs gradcheck on LeNet-5 and
the encoder layer, minutes each: run it under ``prlimit --as=8000000000`` and ``timeout``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tabulate import tabulate

CASES = {
    "mlp-1k": "1k-param 3-layer tanh MLP, batch 64, MSE inside forward",
    "mlp-10k": "10k-param 3-layer tanh MLP, batch 64, MSE inside forward",
    "mlp-1m": "1M-param 3-layer tanh MLP, batch 64, MSE inside forward",
    "jac-10k": "output Jacobian (jacrev) of a 10k-param MLP, batch 8",
    "jac-100k": "output Jacobian (jacrev) of a 100k-param MLP, batch 8",
    "lenet": "LeNet-5 (61.7k params), batch 8, cross-entropy inside forward",
    "encoder": "TransformerEncoderLayer d=64, 4 heads, seq 16, batch 4",
    "cnn-loss": "2-conv CNN, 32x32x3, batch 8, float32, loss=cross_entropy",
    "cnn-inside": "2-conv CNN, 32x32x3, batch 8, float32, cross-entropy inside forward",
    "layernorm-fn": "custom LayerNorm Function, 256x1024 float32, 3 random VJPs",
    "rmsnorm-fn": "custom RMSNorm Function, 256x1024 float32, 3 random VJPs",
    "softmax-fn": "custom softmax Function, 256x1024 float32, 3 random VJPs",
}
GRADCHECK_MAX_PARAMS = 12_000
GRADCHECK_ALL = ("lenet", "encoder")  # gradcheck takes minutes on these: only with --gradcheck-all
GRADCHECK_HELD = {"lenet": ("f1.weight",)}  # Note [gradcheck's memory on LeNet-5]


def build(name: str):
    """(module or function, inputs dict, torch function of the inputs for gradcheck, via, extra keyword
    arguments of the check: ``loss=`` and ``target=``)."""
    import torch

    torch.manual_seed(0)
    if name.startswith("cnn"):
        return _cnn(name)
    return (*_build(name), {})


def _cnn(name: str):
    """Conv2d(3,16,3,pad 1)-ReLU-MaxPool(2)-Conv2d(16,32,3,pad 1)-ReLU-MaxPool(2)-Linear(2048,10) in
    float32 (25,578 parameters): the loss given as ``loss=`` or computed inside ``forward``."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 8 * 8, 10))
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    if name == "cnn-loss":
        return net, {"x": x}, None, None, {"loss": "cross_entropy", "target": y}

    class WithLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x, y):
            return F.cross_entropy(self.net(x), y)

    return WithLoss(), {"x": x, "y": y}, None, None, {}


def _build(name: str):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    if name.startswith("mlp") or name.startswith("jac"):
        width = {"mlp-1k": 19, "mlp-10k": 84, "mlp-1m": 983, "jac-10k": 84, "jac-100k": 299}[name]
        mlp = nn.Sequential(nn.Linear(32, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                            nn.Linear(width, 1)).double()
        batch = 64 if name.startswith("mlp") else 8
        x = torch.randn(batch, 32, dtype=torch.float64)
        if name.startswith("jac"):
            return mlp, {"x": x}, mlp, "jacrev"
        t = torch.randn(batch, 1, dtype=torch.float64)

        class WithLoss(nn.Module):
            def __init__(self):
                super().__init__()
                self.mlp = mlp

            def forward(self, x, t):
                return F.mse_loss(self.mlp(x), t)

        return WithLoss(), {"x": x, "t": t}, None, None
    if name == "lenet":
        class LeNet(nn.Module):
            def __init__(self):
                super().__init__()
                self.c1, self.c2 = nn.Conv2d(1, 6, 5, padding=2), nn.Conv2d(6, 16, 5)
                self.f1, self.f2, self.f3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)

            def forward(self, x, y):
                h = F.max_pool2d(F.relu(self.c1(x)), 2)
                h = F.max_pool2d(F.relu(self.c2(h)), 2).flatten(1)
                return F.cross_entropy(self.f3(F.relu(self.f2(F.relu(self.f1(h))))), y)

        return LeNet().double(), {"x": torch.randn(8, 1, 28, 28, dtype=torch.float64),
                                  "y": torch.randint(0, 10, (8,))}, None, None
    if name == "encoder":
        layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True).double().eval()

        class Enc(nn.Module):
            def __init__(self):
                super().__init__()
                self.layer = layer

            def forward(self, x):
                return self.layer(x).pow(2).mean()

        return Enc(), {"x": torch.randn(4, 16, 64, dtype=torch.float64)}, None, None
    return _custom_fn(name)


def _custom_fn(name: str):
    import torch

    def layer_norm(x):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) * torch.rsqrt(var + 1e-5)

    def rms_norm(x):
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-6)

    forward = {"layernorm-fn": layer_norm, "rmsnorm-fn": rms_norm, "softmax-fn": lambda x: torch.softmax(x, -1)}[name]

    class Fused(torch.autograd.Function):  # a hand-written backward, as in a fused kernel
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return forward(x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            with torch.enable_grad():
                xx = x.detach().requires_grad_()
                return torch.autograd.grad(forward(xx), xx, g)[0]

    x = torch.randn(256, 1024, dtype=torch.float32)
    return Fused.apply, {"x": x}, None, None


def child(name: str) -> dict:
    """One row, measured in this process."""
    import resource
    import time

    import torch

    import symgrad as sg

    torch.set_num_threads(1)
    fn, inputs, _, via, extra = build(name)
    from torch.fx.experimental.proxy_tensor import make_fx

    start = time.perf_counter()
    make_fx(lambda x: x.sin())(torch.ones(2))  # torch's one-time tracer start-up
    import sympy

    import symgrad.graph.check  # noqa: F401 - the op graph's modules, imported on a first check
    import symgrad.nn.check  # noqa: F401

    s = sympy.Symbol("s")
    sympy.diff(s * s + 1, s)  # SymPy's modules that it imports on first use (sympy.tensor, ...)
    tracer = time.perf_counter() - start

    def run():
        return sg.check(fn, inputs, engine="graph", via=via, **extra)

    start, cpu = time.perf_counter(), time.process_time()
    report = run()
    cold, cold_cpu = time.perf_counter() - start, time.process_time() - cpu
    warm = min(_timed(run) for _ in range(5))
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs.values()]
    params = list(fn.parameters()) if isinstance(fn, torch.nn.Module) else []
    start = time.perf_counter()
    out = fn(*leaves)
    if "loss" in extra:  # loss="cross_entropy" (the only loss= row)
        out = torch.nn.functional.cross_entropy(out, extra["target"])
    (out.sum() if out.dim() else out).backward()
    fwd_bwd = time.perf_counter() - start
    n_params = sum(p.numel() for p in params) or sum(t.numel() for t in inputs.values() if t.is_floating_point())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"tracer": tracer, "cold": cold, "cold_cpu": cold_cpu, "warm": warm, "fwd_bwd": fwd_bwd, "params": n_params,
            "peak": peak, "verdict": "pass" if report.passed else "FAIL", "quantity": report.meta.get("quantity", "")}


def child_gradcheck(name: str) -> dict:
    import time

    import torch

    torch.set_num_threads(1)
    fn, inputs, plain, _, _ = build(name)
    names = list(inputs)
    params = dict(fn.named_parameters()) if isinstance(fn, torch.nn.Module) else {}
    held = {n: p.detach() for n, p in params.items() if n in GRADCHECK_HELD.get(name, ())}
    free = [n for n in params if n not in held]

    def flat(*ps):
        return torch.func.functional_call(fn, {**held, **dict(zip(free, ps))}, tuple(inputs[n] for n in names))

    args = tuple(params[n].detach().clone().requires_grad_() for n in free)
    start, cpu = time.perf_counter(), time.process_time()
    ok = torch.autograd.gradcheck(flat, args)
    took, cpu = time.perf_counter() - start, time.process_time() - cpu
    checked, total = sum(a.numel() for a in args), sum(p.numel() for p in params.values())
    return {"gradcheck": took * total / checked, "gradcheck_ok": bool(ok), "measured": took, "entries": checked,
            "gradcheck_cpu": cpu * total / checked}


# Note [gradcheck's memory on LeNet-5]
# gradcheck(fast_mode=False) on LeNet-5 with every parameter an input died of memory under
# prlimit --as=8000000000 (7.4 GB resident after 13 minutes; it holds about 0.24 MB per parameter
# entry in torch 2.13, so 61,706 entries would need some 15 GB).  So that row runs gradcheck on every
# parameter but f1.weight (13,610 of 61,706 entries; f1.weight held as a constant) and scales its time
# by 61,706 / 13,706: gradcheck's cost is two forwards per entry.  The table marks such a time "~".


def _timed(fn) -> float:
    import time

    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _spawn(mode: str, name: str) -> dict:
    env = {**os.environ, "SYMGRAD_CACHE": "0"}  # cold means cold: no graph from an earlier run's disk cache
    env.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's BLAS on one thread, as torch is
    out = subprocess.run([sys.executable, __file__, mode, name], capture_output=True, text=True, timeout=1800, env=env)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _wants_gradcheck(name: str, params: int, gradcheck_all: bool) -> bool:
    if gradcheck_all and name in GRADCHECK_ALL:
        return True
    return params <= GRADCHECK_MAX_PARAMS and name.startswith(("mlp", "jac"))


def main(quick: bool, gradcheck_all: bool = False, only: list | None = None) -> None:
    import torch

    rows, notes = [], []
    for name, label in CASES.items():
        if (quick and name in ("mlp-1m", "jac-100k")) or (only and name not in only):
            continue
        r = _spawn("--child", name)
        if "error" in r:
            rows.append([label, "-", "-", "-", "-", "-", "-", "-", "-", r["error"][:60]])
            continue
        g: dict = {}
        if _wants_gradcheck(name, r["params"], gradcheck_all):
            g = _spawn("--gradcheck", name)
        gc = g.get("gradcheck")
        if g.get("gradcheck_cpu"):  # wall time on a shared machine inflates with load: CPU seconds too
            notes.append(f"  {name}: CPU seconds, symgrad cold {r['cold_cpu']:.2f}, gradcheck {g['gradcheck_cpu']:.1f}"
                         f" ({g['gradcheck_cpu'] / r['cold_cpu']:.0f}×)")
        speed = f"{gc / r['cold']:.0f}× / {gc / r['warm']:.0f}×" if gc else "-"
        scaled = gc and g.get("entries", r["params"]) < r["params"]
        gc_text = (f"~{gc:.0f} ({g['measured']:.0f} s on {g['entries']:,})" if scaled else f"{gc:.2f}") if gc else None
        rows.append([label, f"{r['params']:,}", f"{r['tracer']:.2f}", f"{r['cold']:.3f}", f"{r['warm']:.3f}",
                     gc_text or ("error: " + g["error"][:40] if "error" in g else "skipped"), speed, f"{r['fwd_bwd']:.4f}", f"{r['peak']:.0f}",
                     r["verdict"] + f" ({r['quantity']})"])
    print(f"op graph tensor back end; torch {torch.__version__}, 1 thread, float64 unless stated")
    for line in notes:
        print(line)
    print(tabulate(rows, headers=["case", "params", "start-up s", "cold s", "warm s", "gradcheck s",
                                  "speed-up (cold / warm)", "torch fwd+bwd s", "peak MiB", "verdict"]))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] in ("--child", "--gradcheck"):
        result = child(sys.argv[2]) if sys.argv[1] == "--child" else child_gradcheck(sys.argv[2])
        print(json.dumps(result))
    else:
        only = [a for a in sys.argv[sys.argv.index("--cases") + 1:] if not a.startswith("--")] if "--cases" in sys.argv else None
        unknown = set(only or ()) - set(CASES)
        if unknown:
            sys.exit(f"unknown case(s) {', '.join(sorted(unknown))}; the cases are {', '.join(CASES)}")
        main(quick="--quick" in sys.argv, gradcheck_all="--gradcheck-all" in sys.argv, only=only)
