"""Note [Nodes computed in a wider dtype] (graph/approx.py): a half-precision kernel that computes
in float32 inside is charged float32 roundings there, one half rounding at its casts."""

import math

import pytest
import torch
import torch.nn.functional as F

import symgrad as sg
from symgrad.testing_ops import custom

K, C = math.sqrt(2 / math.pi), 0.044715


def _gelu(x):
    z = x.float()
    return (0.5 * z * (1 + torch.tanh(K * (z + C * z**3)))).to(x.dtype)


def _gelu_backward(cubic):
    def backward(x, g):
        z = x.float()
        t = torch.tanh(K * (z + C * z**3))
        return (g.float() * (0.5 * (1 + t) + 0.5 * z * (1 - t * t) * K * (1 + cubic * z * z))).to(x.dtype)

    return backward


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_gelu_kernel_computing_in_float32(dtype):
    """The fused bias-GELU pattern: its cubic term's coefficient 10 % short (4.5 % of the gradient
    at z = -2, ten times the kernel's own bfloat16 error) passed in bfloat16: each float32 step was
    charged a bfloat16 rounding, and the cancellation in 1 + tanh(u) below 0 made the bound wide."""
    x = (2 * torch.randn(16, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)).to(dtype)
    assert sg.check(custom(_gelu, _gelu_backward(3 * C)), {"x": x}, quiet=True).passed
    assert not sg.check(custom(_gelu, _gelu_backward(2.7 * C)), {"x": x}, quiet=True).passed
    assert sg.check(_gelu, {"x": x}, quiet=True).passed  # torch's own backward of the same forward


def _rms(x):
    xf = x.float()
    return (xf * torch.rsqrt((xf * xf).mean(-1, keepdim=True) + 1e-6)).to(x.dtype)


def _rms_backward(x, g, full=True):
    xf, gf = x.float(), g.float()
    r = torch.rsqrt((xf * xf).mean(-1, keepdim=True) + 1e-6)
    return (gf * r - (xf * r**3 * (gf * xf).mean(-1, keepdim=True) if full else 0)).to(x.dtype)


@pytest.mark.parametrize("scale", [1.0, 300.0, 1e4])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_rmsnorm_kernel_computing_in_float32(dtype, scale):
    """An RMSNorm backward without its projection term (26 % off) passed in float16 at inputs of 300
    and more: x * x, a float32 value past float16's largest, was charged as a float16 one."""
    x = (torch.randn(4, 64, generator=torch.Generator().manual_seed(0)) * scale).to(dtype)
    assert sg.check(custom(_rms, _rms_backward), {"x": x}, quiet=True).passed
    assert sg.check(_rms, {"x": x}, quiet=True).passed
    bad = custom(_rms, lambda x, g: _rms_backward(x, g, full=False))
    assert not sg.check(bad, {"x": x}, quiet=True).passed


def test_casts_are_nodes_of_their_own():
    """A narrowing cast rounds once in its forward; a widening one is exact there and rounds the
    cotangent in its reverse rule."""
    from symgrad.graph.interpret import to_graph  # noqa: F401 - the reader the check uses
    from symgrad.graph.check import check_graph

    x = torch.randn(8, dtype=torch.bfloat16)
    report = check_graph(lambda x: (x.float() * 3.0).exp().to(torch.bfloat16), {"x": x})
    assert report.passed
    assert "pointwise 4" in report.meta["graph"]  # widen, mul, exp, narrow


_DECOMPOSED = {"std": (lambda x: x.std(-1), 1.0), "instance_norm": (lambda x: F.instance_norm(x[None]), 1.0),
               "glu": (lambda x: F.glu(x, -1), 2.0), "elu_inplace": (lambda x: F.elu(x * 1, inplace=True), 4.0),
               "batch_norm": (lambda x: F.batch_norm(x, None, None, training=True), 1.0)}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(_DECOMPOSED))
def test_a_decompositions_own_upcast_is_not_torchs_kernel(name, dtype):
    """glu, std, instance_norm and elu's decompositions upcast a half input to float32 inside; torch's
    kernels and backward formulas do not all do so, and charged float32 there torch's own ops failed
    on most seeds (the first version of the Note).  A decomposition's nodes keep the check's dtype."""
    fn, scale = _DECOMPOSED[name]
    for seed in (20, 21, 22):
        gen = torch.Generator().manual_seed(seed)
        x = (torch.randn(6, 8, generator=gen) * scale).to(dtype)
        v = torch.randn(fn(x.clone()).shape, generator=torch.Generator().manual_seed(seed + 100)).to(dtype)
        assert sg.check(fn, {"x": x}, v=v, quiet=True).passed


def test_a_value_stored_into_a_narrower_tensor_is_a_cast():
    """``buf.copy_(x.sin())`` and ``buf[:] = x.sin()`` into a bfloat16 buffer round as ``.to()`` does:
    the check stayed float32 with no rounding charged there, and torch's own code failed.  A sin
    backward 5 % off still fails."""
    from symgrad.testing_ops import vjp

    bad_sin = custom(torch.sin, lambda x, g: vjp(torch.sin, x, g) * 1.05)

    def stored(x, sin=torch.sin, setitem=False):
        buf = torch.zeros(x.shape, dtype=torch.bfloat16)
        if setitem:
            buf[:] = sin(x)
        else:
            buf.copy_(sin(x))
        return buf.float() * x

    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    v = torch.randn(6, 8, generator=torch.Generator().manual_seed(2))
    for setitem in (False, True):
        report = sg.check(lambda x: stored(x, setitem=setitem), {"x": x}, v=v, quiet=True)
        assert report.passed and report.meta["dtype"] == "bfloat16"
        assert not sg.check(lambda x: stored(x, bad_sin, setitem), {"x": x}, v=v, quiet=True).passed


def test_a_float32_model_with_a_bfloat16_island_is_resolved_in_float32():
    """An island of bfloat16 makes the check a bfloat16 one (Note [A forward that computes in a
    narrower dtype]), but the float32 parts keep float32's resolution: their nodes, the sum of a
    tensor's cotangents and each entry's own rounding are charged in the stored dtype.  An exp
    backward 1e-3 off beside ``1e-2 * tanh(x.to(bfloat16))`` passed (allowed 1.5 %)."""
    from symgrad.testing_ops import vjp

    bad_exp = custom(torch.exp, lambda x, g: vjp(torch.exp, x, g) * (1 + 1e-3))
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    v = torch.randn(6, 8, generator=torch.Generator().manual_seed(2))
    for exp, right in ((torch.exp, True), (bad_exp, False)):
        report = sg.check(lambda x: exp(x) + 1e-2 * torch.tanh(x.to(torch.bfloat16)).float(), {"x": x}, v=v, quiet=True)
        assert report.passed == right and report.meta["dtype"] == "bfloat16"
    assert sg.check(lambda x: torch.softmax(x @ x.T, -1).to(torch.bfloat16).float().sum(-1) * x.sum(-1),
                    {"x": x}, quiet=True).passed


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_float32_output_of_a_half_input_takes_its_cotangent_in_float32(dtype):
    """torch ran autograd with ``v`` cast to the first input's dtype while the closed form read it in
    the output's: ``softmax(x_half, dtype=float32)`` with a float32 v failed on every seed once its
    float32 node was charged float32 roundings."""
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(4, 16, generator=gen).to(dtype)
        v = torch.randn(4, 16, generator=gen)
        for fn in (lambda x: torch.softmax(x, -1, dtype=torch.float32),
                   lambda x: torch.log_softmax(x, -1, dtype=torch.float32)):
            assert sg.check(fn, {"x": x}, v=v, quiet=True).passed


def _reverse_cumsum(g):
    return g.flip(-1).cumsum(-1).flip(-1)


@pytest.mark.parametrize("n", [8, 300])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cumsum_to_a_wider_dtype_rounds_its_cotangent_first(dtype, n):
    """torch's ``cumsum(x_half, dtype=float32)`` backward rounds the float32 cotangent to the half
    dtype before its reverse running sum (``grad.to(self.scalar_type())``): errs by a half rounding of
    every term, not of the sum, and failed at 1.6 ulps where one was allowed, on most seeds."""
    fn = lambda x: torch.cumsum(x, -1, dtype=torch.float32)
    bad = custom(fn, lambda x, g: (1.02 * _reverse_cumsum(g.double())).to(x.dtype))
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        x = (2 * torch.randn(6, n, generator=gen)).to(dtype)
        v = torch.randn(6, n, generator=gen)
        assert sg.check(fn, {"x": x}, v=v, quiet=True).passed
        assert sg.check(lambda x: torch.cumprod(x, -1, dtype=torch.float32), {"x": 1 + x / 20}, v=v, quiet=True).passed
        assert not sg.check(bad, {"x": x}, v=v, quiet=True).passed


def _softmax_backward(k):
    def backward(x, g):
        y = torch.softmax(x.float(), -1)
        gf = g.float()
        return (y * (gf - k * (gf * y).sum(-1, keepdim=True))).to(x.dtype)

    return backward


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_softmax_computes_in_float32_from_its_rounded_output(dtype):
    """Note [A half softmax in float32] (aten_shift.py): a fused softmax backward whose sum term is
    2 % off passed in bfloat16, each step of the decomposition charged a bfloat16 rounding; torch's
    own softmax, backward and forward mode, passes at outputs below the normal range too."""
    fn = lambda x: torch.softmax(x, -1)
    for seed, scale in ((0, 1.0), (1, 5.0), (2, 30.0)):
        gen = torch.Generator().manual_seed(seed)
        x = (scale * torch.randn(8, 128, generator=gen)).to(dtype)
        v = torch.randn(8, 128, generator=gen).to(dtype)
        assert sg.check(fn, {"x": x}, v=v, quiet=True).passed
        assert sg.check(lambda x: fn(x) * 3, {"x": x}, quiet=True).passed  # vjps and jvps
        assert sg.check(custom(fn, _softmax_backward(1.0)), {"x": x}, v=v, quiet=True).passed
        assert not sg.check(custom(fn, _softmax_backward(1.02)), {"x": x}, v=v, quiet=True).passed


@pytest.mark.parametrize("layout", [lambda x: x.t(), lambda x: x.unsqueeze(0), lambda x: x.t().contiguous()])
def test_a_half_softmax_of_a_layout_rounds_its_input_cotangent(layout):
    """softmax's first node after ``x.t()`` read a layout node with no dtype of its own: its float32
    cotangent was passed to it unrounded, and torch's own bfloat16 softmax failed on most seeds."""
    for seed in range(4):
        gen = torch.Generator().manual_seed(seed)
        x = (3 * torch.randn(6, 20, generator=gen, dtype=torch.float64)).to(torch.bfloat16)
        assert sg.check(lambda x: torch.softmax(layout(x), -1), {"x": x}, quiet=True).passed


@pytest.mark.parametrize("dtype,wide", [(torch.bfloat16, torch.float32), (torch.float16, torch.float32),
                                        (torch.float32, torch.float64)])
def test_cumprod_to_a_wider_dtype_takes_its_tangent_in_the_narrow_one(dtype, wide):
    """torch's forward mode of ``cumprod(x, dtype=wide)`` is ``cumprod_jvp(...).to(wide)``: t / x
    and its running sum in x's dtype (the jvp row failed, 224 ulps where 5.5 were allowed)."""
    gen = torch.Generator().manual_seed(0)
    x = (1 + 0.1 * torch.randn(2, 8, generator=gen, dtype=torch.float64)).to(dtype)
    assert sg.check(lambda x: torch.cumprod(x, -1, dtype=wide), {"x": x}, quiet=True).passed
