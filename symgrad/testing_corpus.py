"""A kept corpus of custom ``autograd.Function`` backwards, seeded bugs beside correct twins.

Each :class:`Case` is a function under test (a custom Function whose forward is torch's and whose
backward is hand-written), the exact math as plain torch ops (``reference``: what symgrad traces
for its closed form, and what gradcheck's and the 2x rule's references run), inputs in one dtype,
and ``bug``: ``None`` for a correct backward, else the kind of bug seeded.  The bugs:

* ``scaled``: the whole gradient times 1 + delta (delta = 1e-8 in float64, 1e-3 in float32, 1e-2 in
  float16 and bfloat16: the issue's "bugs of 1 %");
* ``one entry``: one entry off by 10 delta; ``ignores g``: correct only for a cotangent of ones;
* ``low precision``: a float64 backward computed in float32, a float32 one in bfloat16 (and in
  float16), a float16 one in bfloat16;
* ``missing term`` / ``sign`` / ``transposed``: a formula wrong in one of its terms;
* autodiff bugs that shipped in public libraries, rebuilt: a softplus backward that ignores beta,
  an ``exp(x) / (1 + exp(x))`` softplus backward (NaN where exp overflows), a logsumexp backward
  ``exp(x) / exp(lse)`` (the same), a cumprod backward that divides by its input (NaN at a zero),
  an atan2 backward with a term's sign swapped, a sinc backward that loses its digits near 0.

# Note [Correct half-precision kernels]
What a correct float16/bfloat16 backward may do, as the corpus writes them and as symgrad's bound
allows (Note [Half-precision allowance] in symgrad/compare/half.py): every elementwise operation
in the half dtype, each rounded once (a backward written in plain torch ops on half tensors, the
usual way), or any part of it in float32 with one rounding at the end (a fused kernel, the
"float32 accumulation" twins here); sums and matrix products through torch's own reductions,
which accumulate in float32.  A kernel that accumulates a long sum in half precision, one rounded
addition at a time, is less accurate than that by up to n roundings and may fail: FlashAttention,
xformers and torch all accumulate in float32, and so must a kernel symgrad is to vouch for.

``corpus()`` builds every case; ``run_case`` checks one with symgrad, gradcheck (float64 only) and
the FlashAttention-style rule (``benchmarks/corpus.py`` prints the table).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = ["Case", "corpus", "run_case", "DTYPES", "DELTA", "KERNELS"]

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
DELTA = {torch.float64: 1e-8, torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 1e-2}
LOW = {torch.float64: [torch.float32], torch.float32: [torch.bfloat16, torch.float16], torch.float16: [torch.bfloat16]}
SHAPE = (3, 6)


@dataclass
class Case:
    name: str
    bug: str | None
    dtype: torch.dtype
    fn: object = field(repr=False)
    reference: object = field(repr=False)
    inputs: dict = field(repr=False, default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name} [{str(self.dtype).replace('torch.', '')}]"


def custom(forward, backward, name: str):
    """A custom Function: ``forward(x)``, and ``backward(x, y, g)`` with its saved input and output."""

    class Hand(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            y = forward(x)
            ctx.save_for_backward(x, y)
            return y

        @staticmethod
        def backward(ctx, g):
            x, y = ctx.saved_tensors
            return backward(x, y, g)

    Hand.__name__ = Hand.__qualname__ = name
    return Hand.apply


def upcast(backward):
    """The same backward computed in float32 and rounded once (a fused half kernel)."""
    return lambda x, y, g: backward(x.float(), y.float(), g.float()).to(x.dtype)


def _ln(x):
    return F.layer_norm(x, x.shape[-1:])


def _ln_backward(x, y, g, sign=1.0, mean_term=True):
    mu = x.mean(-1, keepdim=True)
    rstd = torch.rsqrt((x - mu).pow(2).mean(-1, keepdim=True) + 1e-5)
    xhat = (x - mu) * rstd
    inner = g - xhat * (g * xhat).mean(-1, keepdim=True) * sign
    if mean_term:
        inner = inner - g.mean(-1, keepdim=True)
    return rstd * inner


def _gelu_backward(x, y, g):
    cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    return g * (cdf + x * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi))


def _softmax_backward(x, y, g):
    return y * (g - (g * y).sum(-1, keepdim=True))


# Note [An accurate sinc backward]
# With t = pi x, d/dx sinc(x) = pi (t cos t - sin t) / t**2.  Written so, the numerator is a small
# difference of two terms of size t: near 0 it is -t**3/3, and the subtraction leaves about
# 3 / t**2 ulps of error (1e6 ulps at t = 2e-3); the conditioning of sinc' allows a few (cond ~ 2).
# The series has no cancellation: (t cos t - sin t) / t**2 = t * sum_{k>=1} (-1)^k 2k t**(2k-2) / (2k+1)!
# (from t cos t = sum (-1)^k t**(2k+1)/(2k)!, sin t = sum (-1)^k t**(2k+1)/(2k+1)!).  Its terms fall
# fast and alternate without cancelling (at |t| = 1: -1/3 + 1/30 - 1/840 ...); through k = 9 the
# next term is below 1e-18 of the first for |t| < 1.  For |t| >= 1 the direct form cancels by at
# most a factor 3 (t cos t - sin t = -0.30 at t = 1, where the terms are 0.54 and 0.84): measured
# against mpmath over |x| in [1/pi, 1], it errs by at most 4 ulps in float32 and float64.
_SINC_SERIES = [(-1) ** k * 2 * k / math.factorial(2 * k + 1) for k in range(1, 10)]


def _sinc_stable(x, y, g):
    t = math.pi * x
    small = t.abs() < 1
    s = t * t
    poly = torch.full_like(s, _SINC_SERIES[-1])
    for c in reversed(_SINC_SERIES[:-1]):  # Horner in t**2
        poly = poly * s + c
    safe = torch.where(small, torch.ones_like(x), x)  # the direct form only where it does not cancel
    ps = math.pi * safe
    direct = (torch.cos(ps) * ps - torch.sin(ps)) / (ps * safe)
    return g * torch.where(small, math.pi * (t * poly), direct)


def _sinc_naive(x, y, g):
    px = math.pi * x
    return g * (torch.cos(px) * px - torch.sin(px)) / (px * x)


def _cumprod_naive(x, y, g):
    return torch.flip(torch.cumsum(torch.flip(g * y, [-1]), -1), [-1]) / x


def _cumprod_exact(x, y, g):
    n = x.shape[-1]
    cols = []
    for i in range(n):  # d y_j / d x_i = prod_{k <= j, k != i} x_k for j >= i
        others = x.clone()
        others[..., i] = 1
        prods = torch.cumprod(others, -1)
        cols.append((g[..., i:] * prods[..., i:]).sum(-1))
    return torch.stack(cols, -1)


def _atan2(x):
    return torch.atan2(x[0], x[1])


def _atan2_backward(x, y, g, swapped=False):
    a, b = x[0], x[1]
    r2 = a * a + b * b
    db = (a if swapped else -a) / r2
    return torch.stack([g * b / r2, g * db])


def _matmul_weight(dtype):
    return torch.linspace(-1, 1, SHAPE[1] ** 2, dtype=torch.float64).reshape(SHAPE[1], SHAPE[1]).to(dtype)


# name -> (forward, correct backward, input maker(dtype, gen), wrong-formula bugs {kind: backward})
KERNELS = {
    "tanh": (torch.tanh, lambda x, y, g: g * (1 - y * y), "normal", {"missing term": lambda x, y, g: g * (1 - y)}),
    "sigmoid": (torch.sigmoid, lambda x, y, g: g * y * (1 - y), "normal", {"sign": lambda x, y, g: g * y * (1 + y)}),
    "exp": (torch.exp, lambda x, y, g: g * y, "normal", {}),
    "log": (torch.log, lambda x, y, g: g / x, "positive", {}),
    "sin": (torch.sin, lambda x, y, g: g * torch.cos(x), "normal", {"sign": lambda x, y, g: -g * torch.cos(x)}),
    "erf": (torch.erf, lambda x, y, g: g * (2 / math.sqrt(math.pi)) * torch.exp(-x * x), "normal",
            {"missing term": lambda x, y, g: g * (2 / math.sqrt(math.pi)) * torch.exp(-x)}),
    "gelu": (F.gelu, _gelu_backward, "normal", {}),
    "silu": (F.silu, lambda x, y, g: g * torch.sigmoid(x) * (1 + x * (1 - torch.sigmoid(x))), "normal",
             {"missing term": lambda x, y, g: g * torch.sigmoid(x)}),
    "softplus(beta=2)": (lambda x: F.softplus(x, beta=2), lambda x, y, g: g * torch.sigmoid(2 * x), "normal",
                         {"ignores beta (shipped)": lambda x, y, g: g * torch.sigmoid(x)}),
    "softplus": (F.softplus, lambda x, y, g: g * torch.sigmoid(x), "large",
                 {"exp overflow (shipped)": lambda x, y, g: g * torch.exp(x) / (1 + torch.exp(x))}),
    "softmax": (lambda x: torch.softmax(x, -1), _softmax_backward, "normal",
                {"missing term": lambda x, y, g: y * g,
                 "sign": lambda x, y, g: y * (g + (g * y).sum(-1, keepdim=True))}),
    "log_softmax": (lambda x: torch.log_softmax(x, -1), lambda x, y, g: g - torch.exp(y) * g.sum(-1, keepdim=True),
                    "normal", {"missing term": lambda x, y, g: g - torch.exp(y) * g}),
    "logsumexp": (lambda x: torch.logsumexp(x, -1, keepdim=True), lambda x, y, g: g * torch.exp(x - y), "large",
                  {"exp overflow (shipped)": lambda x, y, g: g * torch.exp(x) / torch.exp(y)}),
    "layer_norm": (_ln, _ln_backward, "normal",
                   {"sign": lambda x, y, g: _ln_backward(x, y, g, sign=-1.0),
                    "missing term": lambda x, y, g: _ln_backward(x, y, g, mean_term=False)}),
    "normalize": (lambda x: F.normalize(x, dim=-1),
                  lambda x, y, g: (g - y * (g * y).sum(-1, keepdim=True)) / x.norm(dim=-1, keepdim=True), "normal",
                  {"missing term": lambda x, y, g: g / x.norm(dim=-1, keepdim=True)}),
    "cumprod": (lambda x: torch.cumprod(x, -1), _cumprod_exact, "zero",
                {"divides by x (shipped)": _cumprod_naive}),
    "atan2": (_atan2, _atan2_backward, "pair", {"sign (shipped)": lambda x, y, g: _atan2_backward(x, y, g, True)}),
    "sinc": (torch.sinc, _sinc_stable, "small", {"cancellation (shipped)": _sinc_naive}),
}
MATMUL_BUGS = {"transposed": lambda w: (lambda x, y, g: g @ w.to(g.dtype))}
GENERIC = ("tanh", "softmax", "layer_norm", "gelu", "matmul")  # kernels that get every generic bug
UPCAST = ("softmax", "layer_norm", "gelu", "tanh")  # half kernels also written with float32 accumulation
HALF_UNSUPPORTED: set = set()


def _inputs(kind: str, dtype, seed: int, scale: float) -> dict:
    gen = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(SHAPE, generator=gen, dtype=torch.float64)
    if kind == "positive":
        x = x.abs() + 0.2
    elif kind == "large":  # one entry where exp overflows the dtype
        x[0, 0] = {torch.float64: 800.0, torch.float16: 15.0}.get(dtype, 100.0)
    elif kind == "zero":
        x = x.clamp(-1.5, 1.5)
        x[1, 2] = 0.0
    elif kind == "pair":
        x = x.reshape(2, -1)
    elif kind == "small":  # near 0, where sinc's naive derivative cancels
        x = x * 1e-2
    return {"x": x.to(dtype)}


def _generic_bug(forward, backward, kind: str, dtype):
    delta = DELTA[dtype]
    if kind == "scaled":
        return lambda x, y, g: backward(x, y, g) * (1 + delta)
    if kind == "ignores g":
        return lambda x, y, g: backward(x, y, torch.ones_like(g))
    if kind == "one entry":
        def one(x, y, g):
            out = backward(x, y, g).clone()
            k = int(out.abs().argmax())
            out.view(-1)[k] = out.view(-1)[k] * (1 + 10 * delta)
            return out
        return one
    low = LOW[dtype][int(kind.endswith("float16"))]  # "low precision" / "low precision float16"
    return lambda x, y, g: backward(x.to(low), forward(x.to(low)), g.to(low)).to(x.dtype)


def _kernels(dtype):
    table = dict(KERNELS)
    w = _matmul_weight(dtype)
    table["matmul"] = (lambda x: x @ w.to(x.dtype), lambda x, y, g: g @ w.to(g.dtype).T, "normal",
                       {k: f(w) for k, f in MATMUL_BUGS.items()})
    return table


def corpus(dtypes=DTYPES, seed: int = 0, scale: float = 1.0) -> list[Case]:
    """Every case, in every dtype of ``dtypes`` (inputs from ``seed`` at ``scale``)."""
    cases = []
    for dtype in dtypes:
        half = dtype in (torch.float16, torch.bfloat16)
        for i, (name, (forward, backward, kind, bugs)) in enumerate(_kernels(dtype).items()):
            inputs = _inputs(kind, dtype, seed * 1000 + i, scale)

            def add(label, bug, bwd, fwd=forward):
                cases.append(Case(label, bug, dtype, custom(fwd, bwd, label.split(":")[0]), forward, inputs))

            add(f"{name}: correct", None, backward)
            if half and name in UPCAST:
                add(f"{name}: correct, float32 accumulation", None, upcast(backward))
            for bug, bwd in bugs.items():
                add(f"{name}: {bug}", bug, bwd)
            generic = ["scaled"] + (["one entry", "ignores g"] if name in GENERIC else [])
            if name in GENERIC and dtype in LOW:
                generic += ["low precision"] + (["low precision float16"] if len(LOW[dtype]) > 1 else [])
            for bug in generic:
                label = bug if not bug.startswith("low") else f"computed in {str(LOW[dtype][int(bug.endswith('16'))]).replace('torch.', '')}"
                add(f"{name}: {label}", bug, _generic_bug(forward, backward, bug, dtype))
    return cases


def _autograd(fn, x, w, dtype=None):
    with torch.enable_grad():
        xx = x.detach().to(dtype or x.dtype).requires_grad_()
        (g,) = torch.autograd.grad((w.to(xx.dtype) * fn(xx)).sum(), xx)
    return g.double()


def flash_rule(case: Case) -> bool:
    """FlashAttention's test rule: flagged where max|gradient - float64 reference| exceeds twice
    max|torch's same-dtype gradient - float64 reference| (a random cotangent)."""
    x = case.inputs["x"]
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(case.reference(x.double()).shape, generator=gen, dtype=torch.float64)
    ref = _autograd(case.reference, x, w, torch.float64)
    own = (_autograd(case.reference, x, w) - ref).abs().nan_to_num(nan=math.inf).max()
    got = (_autograd(case.fn, x, w) - ref).abs().nan_to_num(nan=math.inf).max()
    return bool(got > 2 * own) if torch.isfinite(got) or not torch.isfinite(own) else True


def gradcheck_flags(case: Case) -> bool | None:
    """``torch.autograd.gradcheck``'s verdict (True: flagged); None outside float64, where it cannot run."""
    if case.dtype != torch.float64:
        return None
    x = case.inputs["x"].detach().clone().requires_grad_()
    try:
        return not torch.autograd.gradcheck(case.fn, (x,), raise_exception=False)
    except Exception:  # noqa: BLE001 - a crash inside gradcheck counts as flagged
        return True


def run_case(case: Case, baselines: bool = True) -> dict:
    """symgrad's report (op graph, the reference traced), and the baselines' verdicts."""
    import symgrad as sg

    report = sg.check(case.fn, case.inputs, symbolic=case.reference, engine="graph", quiet=True)
    out = {"passed": bool(report.passed), "inaccurate": len(getattr(report, "inaccurate", []) or []),
           "report": report}
    if baselines:
        out["gradcheck"] = gradcheck_flags(case)
        out["flash"] = flash_rule(case)
    return out
