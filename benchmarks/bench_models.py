"""Models people write, checked whole in float32 with the loss inside ``forward``, beside gradcheck and
one torch forward+backward: a ResNet for 32x32 images, a GPT-style decoder, an LSTM language model.

Each row runs in a fresh process (its peak memory is its own) on one torch thread:

* ``check s``: one ``symgrad.check(model, inputs)`` (op graph, float32: the statistical allowance's
  16 random-rounding reruns included), cold: every symgrad cache empty, the disk cache off;
* ``peak MiB``: the process's peak resident memory after the check;
* ``torch fwd+bwd s``: one forward and backward of the same model;
* ``gradcheck s``: ``torch.autograd.gradcheck`` (float64, fast_mode=False) costs two forwards per
  parameter entry; it is run on 256 entries of the last layer's first parameter (every other entry
  held) and its time scaled to all of them, marked ``~`` (hours at these sizes).

Run: ``python benchmarks/bench_models.py`` (about five minutes here; ``--cases resnet`` for one row).
Run it under ``prlimit --as=8000000000``: the largest row peaks near 2.5 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from tabulate import tabulate

CASES = {
    "resnet": "ResNet (3 stages x 3 basic blocks, 16-64 channels, BatchNorm eval), 32x32x3, batch 8",
    "gpt": "GPT-style decoder: 4 pre-norm layers, d=128, 4 heads, vocab 1000, seq 32, batch 4",
    "lstm-lm": "LSTM language model: embedding 128, 2-layer LSTM 128, vocab 1000, seq 24, batch 4",
}


def build(name: str):
    """(module, inputs, name of the last layer's module for gradcheck)."""
    import torch

    torch.manual_seed(0)
    return {"resnet": _resnet, "gpt": _gpt, "lstm-lm": _lstm}[name]()


def _resnet():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
            self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
            self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            return F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))) + self.skip(x))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.bn = nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
            blocks, cin = [], 16
            for cout, stride in ((16, 1), (32, 2), (64, 2)):
                for k in range(3):
                    blocks.append(Block(cin, cout, stride if k == 0 else 1))
                    cin = cout
            self.blocks, self.head = nn.Sequential(*blocks), nn.Linear(64, 10)

        def forward(self, x, y):
            h = self.blocks(F.relu(self.bn(self.stem(x))))
            return F.cross_entropy(self.head(h.mean((2, 3))), y)

    model = ResNet()
    for m in model.modules():  # running statistics as after training, not the initial 0 and 1
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval(), {"x": torch.randn(8, 3, 32, 32), "y": torch.randint(0, 10, (8,))}, "head"


def _gpt():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class GPT(nn.Module):
        def __init__(self, vocab=1000, d=128, layers=4, seq=32):
            super().__init__()
            self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(seq, d)
            layer = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True, norm_first=True,
                                               activation="gelu")
            self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.norm, self.lm_head = nn.LayerNorm(d), nn.Linear(d, vocab)
            self.register_buffer("mask", torch.triu(torch.full((seq, seq), float("-inf")), 1))

        def forward(self, tokens):
            h = self.tok(tokens[:, :-1]) + self.pos.weight[: tokens.shape[1] - 1]
            n = h.shape[1]
            h = self.body(h, mask=self.mask[:n, :n], is_causal=True)
            logits = self.lm_head(self.norm(h))
            return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())

    return GPT().eval(), {"tokens": torch.randint(0, 1000, (4, 33))}, "lm_head"


def _lstm():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class LM(nn.Module):
        def __init__(self, vocab=1000, d=128):
            super().__init__()
            self.emb, self.rnn = nn.Embedding(vocab, d), nn.LSTM(d, d, 2, batch_first=True)
            self.out = nn.Linear(d, vocab)

        def forward(self, tokens):
            h, _ = self.rnn(self.emb(tokens[:, :-1]))
            return F.cross_entropy(self.out(h).flatten(0, 1), tokens[:, 1:].flatten())

    return LM().eval(), {"tokens": torch.randint(0, 1000, (4, 25))}, "out"


def child(name: str) -> dict:
    import resource
    import time

    import torch

    import symgrad as sg

    torch.set_num_threads(1)
    model, inputs, _ = build(name)
    start, cpu = time.perf_counter(), time.process_time()
    report = sg.check(model, inputs, engine="graph", quiet=True)
    took, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    model(**inputs).backward()
    fwd_bwd = time.perf_counter() - start
    return {"check": took, "cpu": cpu, "peak": peak, "fwd_bwd": fwd_bwd, "verdict": "pass" if report.passed else "FAIL",
            "params": sum(p.numel() for p in model.parameters()), "stat": _statistical_rows(report)}


def _statistical_rows(report) -> str:
    """How many records used the statistical allowance (the report's notes say so)."""
    rows = [r for r in report.records if r.note and "statistical bound" in r.note]
    return f"{len(rows)}/{len(report.records)}"


GRADCHECK_ENTRIES = 256  # gradcheck is timed on this many parameter entries and scaled to all


def child_gradcheck(name: str) -> dict:
    import time

    import torch

    torch.set_num_threads(1)
    model, inputs, last = build(name)
    model = model.double()
    inputs = {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}
    params = dict(model.named_parameters())
    name = next(n for n in params if n.startswith(last + "."))  # the last layer's first parameter
    held = {n: p.detach() for n, p in params.items() if n != name}
    full = params[name].detach().reshape(-1)
    k = min(GRADCHECK_ENTRIES, full.numel())  # its first k entries free, the rest held

    def flat(head):
        value = torch.cat([head, full[k:]]).reshape(params[name].shape)
        return torch.func.functional_call(model, {**held, name: value}, tuple(inputs.values()))

    start = time.perf_counter()
    ok = torch.autograd.gradcheck(flat, (full[:k].clone().requires_grad_(),))
    took = time.perf_counter() - start
    total = sum(p.numel() for p in params.values())
    return {"gradcheck": took * total / k, "gradcheck_ok": bool(ok), "entries": k}


def _spawn(mode: str, name: str) -> dict:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1"),
           "SYMGRAD_CACHE": "0"}
    out = subprocess.run([sys.executable, __file__, f"--{mode}", name], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1][:120]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-gradcheck", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child)))
        return
    if args.child_gradcheck:
        print(json.dumps(child_gradcheck(args.child_gradcheck)))
        return
    rows = []
    for name in args.cases:
        got, gc = _spawn("child", name), _spawn("child-gradcheck", name)
        if "error" in got:
            rows.append([name, CASES[name], "-", got["error"], "", "", "", ""])
            continue
        gradcheck = (f"~{gc['gradcheck'] / 3600:.1f} h" if "gradcheck" in gc else gc.get("error", "-"))
        rows.append([name, CASES[name], f"{got['params']:,}", got["verdict"], f"{got['check']:.1f}",
                     f"{got['peak']:.0f}", f"{got['fwd_bwd']:.3f}", gradcheck])
    print(tabulate(rows, headers=["row", "model (float32, loss inside forward)", "params", "verdict", "check s",
                                  "peak MiB", "torch fwd+bwd s", "gradcheck s"], tablefmt="github"))


if __name__ == "__main__":
    main()
