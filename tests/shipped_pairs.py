"""Shipped autodiff bugs of public libraries, each rebuilt beside its fixed twin (custom Functions whose
forward is the library's forward; the derivative is the code under test).  Expected: bug fails, fix passes.

PAIRS: name -> dict(url, fn(dtype) -> (bug_callable, fix_callable, inputs dict), kw(dtype, inputs, f) -> check kwargs,
dtypes, expect_bug (False = must fail; True = control pair, both valid)).
"""
import math

import torch
import torch.nn.functional as F

from symgrad.testing_ops import custom, vjp, with_jvp

F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
T = lambda vals, dt: torch.tensor(vals, dtype=dt)


def one(forward, bug_bwd, fix_bwd):
    return custom(forward, bug_bwd), custom(forward, fix_bwd)


# 1 smooth_l1 with beta=0 at zero residual: NaN (d/beta) -- pytorch#96813, fix pytorch#97022 (route to l1)
def smooth_l1_beta0(dt):
    t = T([0.5, -1.0, 2.0, 0.25, 0.0, 3.0], dt)
    x = t.clone(); x[0] += 0.75; x[2] -= 1.5; x[5] += 0.1   # entries 1, 3, 4: residual exactly 0
    fwd = lambda x: F.smooth_l1_loss(x, t, beta=0.0, reduction="none")
    beta = 0.0
    bug = lambda x, g: g * torch.where((x - t).abs() <= beta, (x - t) / beta, torch.sign(x - t))
    fix = lambda x, g: g * torch.sign(x - t)
    return (*one(fwd, bug, fix), {"x": x})


# 2 softplus backward tests the threshold on the OUTPUT (out*beta > thr) -- pytorch#55587 (fix #56484)
def softplus_threshold(dt):
    beta, thr = 3.0, 1.0
    x = T([0.2736, -0.5, 0.05, 0.31, 1.5, -2.0], dt)   # 0.2736, 0.31: out*beta > 1 > x*beta
    fwd = lambda x: F.softplus(x, beta=beta, threshold=thr)
    bug = lambda x, g: torch.where(fwd(x) * beta > thr, g, g * torch.sigmoid(beta * x))
    fix = lambda x, g: torch.where(x * beta > thr, g, g * torch.sigmoid(beta * x))
    return (*one(fwd, bug, fix), {"x": x})


# 3 ELU with negative alpha: backward from the output's sign -- pytorch#47671
def elu_negative_alpha(dt):
    a = -2.0
    x = T([-2.0, -1.0, -0.3, 0.7, 2.0, -0.05], dt)
    fwd = lambda x: torch.where(x > 0, x, a * torch.expm1(x))
    bug = lambda x, g: (lambda y: torch.where(y > 0, g, g * (y + a)))(fwd(x))
    fix = lambda x, g: torch.where(x > 0, g, g * a * torch.exp(x))
    return (*one(fwd, bug, fix), {"x": x})


# 4 renorm(p=2, maxnorm=0): the function is 0, torch's backward is the identity on zero rows -- pytorch#80804
def renorm_maxnorm0(dt):
    x = T([[0.1, 0.0], [0.0, 0.0], [0.3, -0.4]], dt)
    fwd = lambda x: torch.renorm(x, 2, 0, 0.0)
    bug = lambda x, g: vjp(fwd, x, g)        # torch's own: identity where the row norm is 0
    fix = lambda x, g: torch.zeros_like(x)
    return (*one(fwd, bug, fix), {"x": x})


# 5 logaddexp(-inf, -inf) feeding a finite logaddexp: NaN backward -- pytorch#49724
def logaddexp_neginf(dt):
    x = T([[-math.inf, -math.inf, 2.0], [0.5, -1.0, 0.25]], dt)
    def fwd(x):
        return torch.logaddexp(torch.logaddexp(x[:, 0], x[:, 1]), x[:, 2])
    def lae_bwd(a, b, out, g, safe):
        ea, eb = torch.exp(a - out), torch.exp(b - out)
        if safe:
            ea, eb = torch.where(out == -math.inf, 0.0, ea), torch.where(out == -math.inf, 0.0, eb)
        return g * ea, g * eb
    def make(safe):
        def bwd(x, g):
            inner = torch.logaddexp(x[:, 0], x[:, 1]); out = torch.logaddexp(inner, x[:, 2])
            gi, g2 = lae_bwd(inner, x[:, 2], out, g, safe)
            g0, g1 = lae_bwd(x[:, 0], x[:, 1], inner, gi, safe)
            return torch.stack([g0, g1, g2], 1)
        return bwd
    return (*one(fwd, make(False), make(True)), {"x": x})


# 6 logaddexp at equal inputs: (1, 0) instead of (1/2, 1/2) -- tensorflow/keras#23616 (tf#127232)
def logaddexp_tie(dt):
    x = T([1.0, -0.5, 3.0, 0.0], dt); y = T([1.0, -0.5, 2.0, 0.0], dt)
    fwd = torch.logaddexp
    def bug(x, y, g):   # amax routes all to x at a tie, |delta|' = 0 at 0
        d = x - y
        m = torch.where(x >= y, 1.0, 0.0).to(x.dtype)
        s = torch.sign(d)
        e = torch.exp(-d.abs()); k = e / (1 + e)      # d/d|d| of log1p(exp(-|d|)) = -k
        return g * (m - k * s), g * ((1 - m) + k * s)
    fix = lambda x, y, g: (g * torch.sigmoid(x - y), g * torch.sigmoid(y - x))
    return (*one(fwd, bug, fix), {"x": x, "y": y})


# 7 max backward counts ties in the gradient's dtype: fp16 count of 70000 overflows -> 0 -- tinygrad#12296
def max_fp16_count(dt):
    n = 80000                      # 68571 tied maxima: more than float16's 65504
    x = torch.ones(n, dtype=dt); x[::7] = 0.5
    fwd = lambda x: x.max()
    def bug(x, g):
        m = (x == x.max()).to(x.dtype)
        return g * m / m.sum(dtype=x.dtype)
    def fix(x, g):
        m = (x == x.max())
        return (g.float() * m.float() / m.float().sum()).to(x.dtype)
    return (*one(fwd, bug, fix), {"x": x})


# 8 quaternion_exp_to_log: acos(clamp(w)) * v / |v|: NaN w-gradient at the identity -- kornia#4007, fix #4228
def quat_log_identity(dt):
    q = T([[1.0, 0.0, 0.0, 0.0], [0.6, 0.48, 0.0, 0.64]], dt)
    def fwd(q):
        w, v = q[:, :1], q[:, 1:]
        n = v.norm(dim=1, keepdim=True).clamp_min(1e-8)
        return v * torch.acos(w.clamp(-1.0, 1.0)) / n
    bug = lambda q, g: vjp(fwd, q, g)
    def fix(q, g):
        gq = vjp(fwd, q, g)
        zero_v = (q[:, 1:] == 0).all(1, keepdim=True)
        gq[:, :1] = torch.where(zero_v, 0.0, gq[:, :1])
        return gq
    return (*one(fwd, bug, fix), {"q": q})


# 9 k2 get_tot_scores backward ignores grad_output -- k2-fsa/k2#341
def k2_ignores_grad(dt):
    s = T([[0.3, -1.2, 2.0, 0.1], [1.0, 0.5, -0.4, 0.9]], dt)
    fwd = lambda s: torch.logsumexp(s, 1)
    bug = lambda s, g: torch.exp(s - fwd(s)[:, None])
    fix = lambda s, g: g[:, None] * torch.exp(s - fwd(s)[:, None])
    return (*one(fwd, bug, fix), {"s": s})


# 10 arcface cos(theta + m) backward without top_diff -- xialuxi/arcface-caffe#19
def arcface_missing_topdiff(dt):
    m = 0.5
    c = T([0.3, -0.2, 0.8, 0.55], dt)
    fwd = lambda c: torch.cos(torch.acos(c) + m)
    d = lambda c: math.cos(m) + math.sin(m) * c / torch.sqrt(1 - c * c)
    return (*one(fwd, lambda c, g: d(c), lambda c, g: g * d(c)), {"c": c})


# 11 3DGS conic off-diagonal gradient -0.5*dx*dy instead of -dx*dy -- graphdeco-inria/gaussian-splatting#551
def gs_conic(dt):
    conic = T([[1.2, 0.3, 0.9], [0.5, -0.1, 0.7]], dt)
    dx = T([[0.4, -0.8, 0.3], [1.1, 0.2, -0.5]], dt); dy = T([[0.7, 0.25, -0.6], [-0.3, 0.9, 0.4]], dt)
    def fwd(c):
        a, b, cc = c[:, :1], c[:, 1:2], c[:, 2:]
        return torch.exp(-0.5 * (a * dx * dx + cc * dy * dy) - b * dx * dy)
    def make(coef):
        def bwd(c, g):
            G = g * fwd(c)
            return torch.stack([(-0.5 * dx * dx * G).sum(1), (coef * dx * dy * G).sum(1), (-0.5 * dy * dy * G).sum(1)], 1)
        return bwd
    return (*one(fwd, make(-0.5), make(-1.0)), {"c": conic})


# 12 chainer NormalizeL2 backward wrong for non-negligible eps -- chainer/chainer#4190
def normalize_l2_eps(dt):
    eps = 1e-5
    x = T([[3e-4, -4e-4, 1e-4], [0.6, 0.8, -0.2]], dt)
    fwd = lambda x: x / (x.norm(dim=1, keepdim=True) + eps)
    def bug(x, g):
        n = x.norm(dim=1, keepdim=True) + eps; y = x / n
        return (g - y * (y * g).sum(1, keepdim=True)) / n
    return (*one(fwd, bug, lambda x, g: vjp(fwd, x, g)), {"x": x})


# 13 Stan bernoulli_logit_lpmf n=1 upper tail: gradient sign flipped for theta > 20 -- stan-dev/math#3397
def bernoulli_logit_tail(dt):
    th = T([0.5, -3.0, 21.0, 25.0, 5.0], dt)
    fwd = F.logsigmoid
    bug = lambda th, g: g * torch.where(th > 20, -torch.exp(-th), torch.sigmoid(-th))
    fix = lambda th, g: g * torch.sigmoid(-th)
    return (*one(fwd, bug, fix), {"theta": th})


# 14 tt-metal softplus_bw: exp(beta*x) overflows in the tail below threshold -> gradient 0 -- tenstorrent/tt-metal#56397
def softplus_overflow(dt):
    x = T([0.5, 85.0, 90.0, 95.0, -3.0], dt)
    fwd = lambda x: torch.relu(x) + torch.log1p(torch.exp(-x.abs()))   # softplus(beta=1, threshold=100), stable
    def bug(x, g):
        e = torch.exp(x)
        return torch.nan_to_num(g * e * torch.reciprocal(e + 1), nan=0.0)   # inf * 0 observed as 0.0
    fix = lambda x, g: g * torch.sigmoid(x)
    return (*one(fwd, bug, fix), {"x": x})


# 15 logit(eps) backward ignoring the clamp: nonzero gradient outside [eps, 1-eps] -- flagos-ai/FlagGems#3571
def logit_eps(dt):
    eps = 0.05
    x = T([0.01, 0.3, 0.7, 0.99, 0.5], dt)
    fwd = lambda x: torch.logit(x, eps)
    bug = lambda x, g: g / (x * (1 - x))
    fix = lambda x, g: torch.where((x < eps) | (x > 1 - eps), 0.0, g / (x * (1 - x)))
    return (*one(fwd, bug, fix), {"x": x})


def i0_series():
    """symgrad has no aten.i0 rule: the tests register it by its power series (exact to float64 for
    |x| <= 3) for the i0 pairs (test_shipped_pairs.py's fixture, undone after)."""
    def series(x):
        q = x * x / 4
        term, total = torch.ones_like(x), torch.ones_like(x)
        for k in range(1, 30):
            term = term * q / (k * k)
            total = total + term
        return total
    return series


# --- forward mode --------------------------------------------------------------------------------
def _cumprod_jvp_exact(x, t):
    n = x.shape[0]; out = []
    for i in range(n):
        s = 0
        for k in range(i + 1):
            p = t[k]
            for j in range(i + 1):
                if j != k:
                    p = p * x[j]
            s = s + p
        out.append(s)
    return torch.stack(out)


# 16 cumprod jvp dividing by x: NaN at a zero factor -- pytorch#198017 (umbrella) / #196701
def cumprod_jvp_zero(dt):
    x = T([1.5, 0.0, 2.0, -0.7, 1.2], dt)
    fwd = lambda x: torch.cumprod(x, 0)
    bwd = lambda x, g: vjp(fwd, x, g)
    bug = with_jvp(fwd, bwd, lambda x, t: torch.cumsum(t / x, 0) * torch.cumprod(x, 0))
    fix = with_jvp(fwd, bwd, _cumprod_jvp_exact)
    return bug, fix, {"x": x}


# 17 i0 jvp at 0: exp(|x|) i0e(x) with |x|' = 1 but sign(0) = 0 inside i0e' -> 1 instead of 0 -- jax#40628
def i0_jvp_zero(dt):
    x = T([0.0, 0.5, -1.2, 2.0], dt)
    fwd = torch.special.i0
    bwd = lambda x, g: g * torch.special.i1(x)
    def bug_jvp(x, t):
        s_abs = torch.where(x >= 0, 1.0, -1.0).to(x.dtype)   # abs' taken as +1 at 0
        s = torch.sign(x)                                     # sign(0) = 0 in i0e's rule
        e = torch.exp(x.abs())
        return t * (s_abs * e * torch.special.i0e(x) + e * (torch.special.i1e(x) - s * torch.special.i0e(x)))
    bug = with_jvp(fwd, bwd, bug_jvp)
    fix = with_jvp(fwd, bwd, lambda x, t: t * torch.special.i1(x))
    return bug, fix, {"x": x}


# 18 sinc jvp near 0 by (cos(pi x) - sinc x) / x: cancellation -- jax#40629
def sinc_jvp_cancel(dt):
    x = T([-1.1102230246251565e-16, 1e-9, 3e-6, 0.4, -1.3], dt)
    fwd = torch.sinc
    bwd = lambda x, g: vjp(torch.sinc, x, g)
    bug = with_jvp(fwd, bwd, lambda x, t: t * torch.where(x == 0, 0.0, (torch.cos(math.pi * x) - torch.sinc(x)) / x))
    fix = with_jvp(fwd, bwd, lambda x, t: t * vjp(torch.sinc, x, torch.ones_like(x)))
    return bug, fix, {"x": x}


# --- second order ---------------------------------------------------------------------------------
# 19 i0 second derivative at 0 dropped (a where-guard at 0 in the first derivative) -- jax#40627
def i0_second_zero(dt):
    x = T([0.0, 0.7, -1.1], dt)
    fwd = torch.special.i0
    bug = custom(fwd, lambda x, g: g * torch.where(x == 0, torch.zeros_like(x), torch.special.i1(x)))
    fix = custom(fwd, lambda x, g: g * torch.special.i1(x))
    return bug, fix, {"x": x}


# 20 sinc even-order derivatives at 0 wrong (first derivative guarded to 0 at 0) -- jax#5054
def sinc_second_zero(dt):
    x = T([0.0, 0.3, -0.8], dt)
    fwd = torch.sinc
    def bug_b(x, g):
        safe = torch.where(x == 0, torch.ones_like(x), x)
        return g * torch.where(x == 0, torch.zeros_like(x), (torch.cos(math.pi * safe) - torch.sinc(safe)) / safe)
    fix = custom(fwd, lambda x, g: g * _sinc_d(x))
    return custom(fwd, bug_b), fix, {"x": x}


def _sinc_d(x):  # sinc'(x), differentiable, with its Taylor series near 0
    px = math.pi * x
    small = px.abs() < 1e-2
    ps = torch.where(small, torch.ones_like(px), px)
    far = math.pi * (ps * torch.cos(ps) - torch.sin(ps)) / (ps * ps)
    near = math.pi * (-px / 3 + px ** 3 / 30 - px ** 5 / 840)
    return torch.where(small, near, far)


# 21 binary_cross_entropy(reduction='sum') double backward wrong -- pytorch#59477
#    (rebuilt: the grad-of-grad w.r.t. the input scaled as for reduction='mean')
class _BceGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, p, y, g, scale):
        ctx.save_for_backward(p, y, g); ctx.scale = scale
        return g * (p - y) / (p * (1 - p))

    @staticmethod
    def backward(ctx, gg):
        p, y, g = ctx.saved_tensors
        d2 = g * (p * p - 2 * p * y + y) / (p * p * (1 - p) ** 2)
        return gg * d2 * ctx.scale, None, (gg * (p - y) / (p * (1 - p))).sum(), None


def _bce_sum(scale):
    class Bce(torch.autograd.Function):
        @staticmethod
        def forward(ctx, p, y):
            ctx.save_for_backward(p, y)
            return F.binary_cross_entropy(p, y, reduction="sum")

        @staticmethod
        def backward(ctx, g):
            p, y = ctx.saved_tensors
            return _BceGrad.apply(p, y, g, scale(p)), None
    return Bce.apply


def bce_sum_double(dt):
    p = T([0.2, 0.7, 0.45, 0.9, 0.35, 0.6], dt); y = T([0.0, 1.0, 0.3, 1.0, 0.5, 0.0], dt)
    bug, fix = _bce_sum(lambda p: 1.0 / p.numel()), _bce_sum(lambda p: 1.0)
    return (lambda p: bug(p, y)), (lambda p: fix(p, y)), {"p": p}


# --- control: both sides of a kink ------------------------------------------------------------------
# 22 hardswish at +-3: torch (-0.5, 1.5) vs attorch (0, 1): both one-sided derivatives -- pytorch#147801, attorch#16
def hardswish_kink_control(dt):
    x = T([-3.0, 3.0, -2.0, 2.0, 4.0, -4.0], dt)
    fwd = F.hardswish
    a = lambda x, g: g * torch.where(x < -3, 0.0, torch.where(x <= 3, x / 3 + 0.5, 1.0))
    b = lambda x, g: g * torch.where(x <= -3, 0.0, torch.where(x < 3, x / 3 + 0.5, 1.0))
    return (*one(fwd, a, b), {"x": x})


def _rand_like(t, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)


def kw_backward(dt, inputs, f):
    out = f(**inputs)
    return {"via": "backward", "v": _rand_like(out, 1)} if out.dim() else {"via": "backward"}


def kw_fwd(via):
    def kw(dt, inputs, f):
        (x,) = inputs.values()
        return {"via": via, "tangents": _rand_like(x, 2)}
    return kw


def kw_order2(dt, inputs, f):
    out = f(**inputs)
    k = {"order": 2}
    if out.dim():
        k["v"] = _rand_like(out, 1)
    return k


FULL = [F64, F32]
URL = "https://github.com/"
PAIRS = {
    "smooth_l1 beta=0 at zero residual": (URL + "pytorch/pytorch/issues/96813", smooth_l1_beta0, kw_backward, FULL, False),
    "softplus threshold on output": (URL + "pytorch/pytorch/issues/55587", softplus_threshold, kw_backward, FULL, False),
    "elu negative alpha from output": (URL + "pytorch/pytorch/issues/47671", elu_negative_alpha, kw_backward, FULL, False),
    "renorm maxnorm=0 identity": (URL + "pytorch/pytorch/issues/80804", renorm_maxnorm0, kw_backward, FULL, False),
    "logaddexp(-inf,-inf) NaN": (URL + "pytorch/pytorch/issues/49724", logaddexp_neginf, kw_backward, FULL, False),
    "logaddexp tie (1,0)": (URL + "keras-team/keras/pull/23616", logaddexp_tie, kw_backward, FULL + [BF16], False),
    "max fp16 tie count overflow": (URL + "tinygrad/tinygrad/issues/12296", max_fp16_count, kw_backward, [F16], False),
    "quaternion_exp_to_log NaN at identity": (URL + "kornia/kornia/issues/4007", quat_log_identity, kw_backward, FULL, False),
    "k2 tot_scores ignores grad": (URL + "k2-fsa/k2/issues/341", k2_ignores_grad, kw_backward, FULL, False),
    "arcface backward without top_diff": (URL + "xialuxi/arcface-caffe/issues/19", arcface_missing_topdiff, kw_backward, FULL, False),
    "3DGS conic -0.5 coefficient": (URL + "graphdeco-inria/gaussian-splatting/issues/551", gs_conic, kw_backward, FULL, False),
    "NormalizeL2 eps backward": (URL + "chainer/chainer/pull/4190", normalize_l2_eps, kw_backward, FULL, False),
    "bernoulli_logit tail sign": (URL + "stan-dev/math/pull/3397", bernoulli_logit_tail, kw_backward, FULL, False),
    "softplus_bw exp overflow (bf16)": (URL + "tenstorrent/tt-metal/pull/56397", softplus_overflow, kw_backward, [F32, BF16], False),
    "logit eps ignored in backward": (URL + "flagos-ai/FlagGems/pull/3571", logit_eps, kw_backward, FULL, False),
    "cumprod jvp at zero (forward_ad)": (URL + "pytorch/pytorch/issues/198017", cumprod_jvp_zero, kw_fwd("forward_ad"), FULL, False),
    "cumprod jvp at zero (func.jvp)": (URL + "pytorch/pytorch/issues/198017", cumprod_jvp_zero, kw_fwd("func.jvp"), [F64], False),
    "i0 jvp at zero": (URL + "jax-ml/jax/issues/40628", i0_jvp_zero, kw_fwd("forward_ad"), FULL, False),
    "sinc jvp cancellation": (URL + "jax-ml/jax/issues/40629", sinc_jvp_cancel, kw_fwd("forward_ad"), FULL, False),
    "i0 second derivative at zero": (URL + "jax-ml/jax/issues/40627", i0_second_zero, kw_order2, FULL, False),
    "sinc second derivative at zero": (URL + "jax-ml/jax/issues/5054", sinc_second_zero, kw_order2, FULL, False),
    "bce sum double backward": (URL + "pytorch/pytorch/issues/59477", bce_sum_double, kw_order2, FULL, False),
    "hardswish +-3 control (both valid)": (URL + "pytorch/pytorch/issues/147801", hardswish_kink_control, kw_backward, FULL, True),
}

# Still missed or failed (test_shipped_pairs.py: strict xfails); logaddexp's tie and the fp16 tie count pass
# since Note [One step, one side] and Note [A tie's total]:
KNOWN_DEFECTS = {
    "renorm maxnorm=0 identity": "missed (both engines): a branch true only at a point (norm <= 0) read as a side",
    "sinc jvp cancellation": "missed: the allowance is the naive cancelling form's rounding; forward mode has no accuracy oracle",
}
