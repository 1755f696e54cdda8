"""Regressions of the vision and misc model families (``tests/graph/families_vision.py``): grad mode
inside forward, upsampling scales of a kept size, ordering and integer-sum exactness of forward
values (spatial transformers), the torch-op forwards of kernels torch does not decompose, refusals.
Every family's correct and seeded-bug runs are in ``test_model_families.py`` (slow)."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch
import torch.nn as nn
import torch.nn.functional as F

import symgrad as sg
from symgrad.errors import UnsupportedOp
from symgrad.graph.approx import Approx
from symgrad.graph.decomp_vision import VISION_DECOMPOSITIONS
from symgrad.graph.scalar import Ctx, evaluate
from symgrad.graph.trace import trace_callable
from symgrad.testing_ops import scaled, with_backward

from .families import FAMILIES, bugged
from .families_vision import REFUSED_VISION

A = torch.ops.aten
F64 = torch.float64


# --- Note [Grad mode inside forward] -----------------------------------------------------------

def _normalised(x, w):
    h = torch.tanh(x * w)
    with torch.no_grad():
        s = h.abs().mean() + 1  # a constant to torch's backward, not to its forward-mode AD
    return h / s - 0.3 * (h * h).detach()


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(3, 4, generator=g, dtype=F64), "w": torch.randn(4, generator=g, dtype=F64)}


@pytest.mark.parametrize("engine", ["graph", "elementwise"])
@pytest.mark.parametrize("via", ["backward", "jacrev", "functional.jacobian", "jacfwd", "func.jvp", "functional.jvp"])
def test_no_grad_region_follows_torchs_convention_of_each_mode(engine, via):
    """torch's reverse mode (and functional.jvp, built on it) treats the no_grad value as a constant,
    its forward-mode AD (jacfwd, func.jvp) differentiates through it: each is right, and passes."""
    inputs = _inputs()
    kw = {"tangents": _inputs(1)} if via.endswith("jvp") else {}
    kw.update({"v": torch.ones(3, 4, dtype=F64)} if via == "backward" else {})
    assert sg.check(_normalised, inputs, engine=engine, via=via, quiet=True, **kw).passed


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_no_grad_family_passes_and_its_seeded_bug_is_caught(dtype):
    model, inputs, _ = FAMILIES["nograd_detach"](dtype, 0)
    assert sg.check(model, inputs, engine="graph", quiet=True).passed  # a false alarm before
    delta = 1e-6 if dtype == F64 else 1e-3
    assert not sg.check(bugged(model, "scaled", 1 + delta), inputs, engine="graph", quiet=True).passed


def test_a_custom_function_keeps_its_forward_and_a_no_grad_call_of_it_is_constant():
    """torch runs a Function's forward under no_grad: its ops are the function checked; called
    inside a no_grad block it is a constant like any other op there."""
    square = with_backward(lambda t: t * t, lambda t, g: 2 * t * g)

    def inside(x):
        with torch.no_grad():
            c = square(x).sum()
        return square(x) * c

    x = torch.randn(3, dtype=F64)
    report = sg.check(inside, {"x": x}, engine="graph", quiet=True)
    assert report.passed and "no path" not in report.to_text()
    wrong = with_backward(lambda t: t * t, lambda t, g: 2.001 * t * g)
    assert not sg.check(lambda x: wrong(x) * 2, {"x": x}, engine="graph", quiet=True).passed


def test_detach_stays_a_stop_without_functionalization():
    gm = trace_callable(lambda x: x - (x * x).detach(), (torch.randn(3, dtype=F64),), functional=False)
    assert any("detach" in str(n.target) for n in gm.graph.nodes)


# --- Note [Scales of a kept size] ----------------------------------------------------------------

@pytest.mark.parametrize("mode, shape", [("linear", (1, 2, 3)), ("bilinear", (1, 2, 4, 3)), ("bicubic", (1, 2, 4, 3)),
                                         ("trilinear", (1, 2, 4, 3, 2)), ("nearest", (1, 2, 4, 3)),
                                         ("nearest", (1, 2, 4, 3, 2)), ("nearest-exact", (1, 2, 4, 3))])
def test_upsampling_with_a_kept_size_traces_to_torchs_kernel(mode, shape):
    """3 * 1.3 rounds to 3: torch's linear-family and 2-d nearest kernels copy that axis, its
    decompositions rescaled it (the forward row disagreed: a false alarm)."""
    x = torch.randn(*shape, dtype=F64)
    ac = {} if "nearest" in mode else {"align_corners": False}

    def f(t):
        return F.interpolate(t, scale_factor=1.3, mode=mode, recompute_scale_factor=False, **ac)

    assert torch.allclose(trace_callable(f, (x,))(x), f(x), atol=1e-12)


def test_fractional_scale_family_passes_and_catches():
    model, inputs, _ = FAMILIES["interp_bilinear_frac"](F64, 0)
    assert sg.check(model, inputs, engine="graph", quiet=True).passed
    assert not sg.check(bugged(model, "scaled", 1 + 1e-6), inputs, engine="graph", quiet=True).passed


# --- Note [Exact orderings of values], Note [Exact integer sums] ---------------------------------

def test_an_ordering_of_exact_equal_values_is_certain_but_a_derivatives_is_not():
    s0 = sp.Symbol("s0")
    step = sp.Piecewise((1, s0 >= 0), (0, True))
    at_zero = {s0: Approx(np.zeros(3))}
    assert not evaluate(step, at_zero, Ctx(values=True)).banded
    assert np.all(evaluate(step, at_zero, Ctx()).band() > 0)  # relu'(0): a convention, kept uncertain
    moving = {s0: Approx(np.zeros(3), np.ones(3))}  # rounded: either side in a correct evaluation
    assert np.all(evaluate(step, moving, Ctx(values=True)).band() > 0)


def test_a_sum_of_exact_integers_is_exact():
    s0 = sp.Symbol("s0")
    corner = sp.floor(s0) + 1
    out = evaluate(corner, {s0: Approx(np.array([2.5, -0.5, 3.25]))}, Ctx(values=True))
    assert np.array_equal(out.v, [3.0, 0.0, 4.0]) and not np.any(out.e) and not out.banded
    big = evaluate(s0 + 1, {s0: Approx(np.array([2.0**60]))}, Ctx())
    assert np.all(big.e > 0)  # past 2**53 a sum of integers rounds


@pytest.mark.slow
def test_spatial_transformer_bug_is_caught_in_float32():
    """Before: grid_sample's in-bounds masks made every sample a kinked unit, the check fell back
    to entrywise bands and a 1e-3 scaled backward passed."""
    model, inputs, _ = FAMILIES["stn_nearest_zeros_ac"](torch.float32, 0)
    assert sg.check(model, inputs, engine="graph", quiet=True).passed
    model, inputs, _ = FAMILIES["stn_bilinear_zeros_nac"](torch.float32, 0)
    report = sg.check(bugged(model, "scaled", 1 + 1e-3), inputs, engine="graph", quiet=True)
    assert not report.passed and "Too many kinked units" not in report.to_text()


# --- torch-op forwards of kernels torch does not decompose ---------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_vision_forwards_match_torchs_kernels(dtype):
    d, g = VISION_DECOMPOSITIONS(), torch.Generator().manual_seed(0)
    tol = 1e-12 if dtype == F64 else 1e-5
    for op in (A._upsample_bilinear2d_aa.default, A._upsample_bicubic2d_aa.default):
        for hw, o in [((6, 5), (3, 2)), ((4, 4), (7, 5)), ((7, 3), (3, 5))]:
            for ac in (False, True):
                x = torch.randn(1, 2, *hw, generator=g, dtype=dtype)
                assert torch.allclose(op(x, list(o), ac, None, None), d[op](x, list(o), ac, None, None), atol=tol)
    x = torch.randn(2, 3, 7, 6, generator=g, dtype=dtype)
    for k, o in [((2, 2), (3, 3)), ((3, 2), (4, 3)), ((2, 2), (1, 2))]:
        s = torch.rand(2, 3, 2, generator=g, dtype=dtype)
        want, got = A.fractional_max_pool2d.default(x, k, o, s), d[A.fractional_max_pool2d.default](x, k, o, s)
        assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])
    x = torch.randn(2, 2, 3, 4, 5, generator=g, dtype=dtype)
    grid = torch.rand(2, 3, 2, 4, 3, generator=g, dtype=dtype) * 2.6 - 1.3
    for mode in (0, 1):
        for pad in (0, 1, 2):
            for ac in (False, True):
                op = A.grid_sampler_3d.default
                assert torch.allclose(op(x, grid, mode, pad, ac), d[op](x, grid, mode, pad, ac), atol=tol)
    a, tau = torch.randn(2, 5, 3, generator=g, dtype=dtype), torch.rand(2, 3, generator=g, dtype=dtype)
    op = A.linalg_householder_product.default
    assert torch.allclose(op(a, tau), d[op](a, tau), atol=tol)


def test_antialiased_resize_is_checked():
    model, inputs, _ = FAMILIES["interp_bilinear_aa"](F64, 0)
    assert sg.check(model, inputs, engine="graph", quiet=True).passed
    assert not sg.check(bugged(model, "entry", 1 + 1e-6), inputs, engine="graph", quiet=True).passed


# --- refusals and the float32 limit ---------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(REFUSED_VISION))
def test_refused_families_name_the_fix(name):
    model, inputs, kwargs = FAMILIES[name](F64, 0)
    with pytest.raises(UnsupportedOp, match=REFUSED_VISION[name].replace("(", r"\(").replace(")", r"\)")):
        sg.check(model, inputs, engine="graph", quiet=True, **kwargs)


def test_dropout_in_training_mode_is_refused_not_judged():
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5)).double().train()
    with pytest.raises(UnsupportedOp, match="random"):
        sg.check(model, {"x": torch.randn(2, 4, dtype=F64)}, engine="graph", quiet=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_an_in_place_op_under_no_grad_passes_the_gradient_straight_through(dtype):
    """A clamp in place under no_grad (cosine_similarity clamps its norms so, under NoGradGuard):
    torch's gradient passes as if the in-place op were the identity (the clamp is active here)."""
    def clamped(x):
        n = x.norm(dim=1, keepdim=True).clone()
        with torch.no_grad():
            n.clamp_min_(1.5)  # active on some rows
        return x / n

    x = torch.tensor([[0.3, -0.4], [2.0, 1.0], [0.5, 0.2]], dtype=dtype)
    assert sg.check(clamped, {"x": x}, engine="graph", quiet=True).passed
    a, b = torch.tensor([[0.3, 1e-9], [2.0, 1.0]], dtype=dtype), torch.tensor([[1e-10, 0.0], [1.0, 3.0]], dtype=dtype)
    assert sg.check(lambda a, b: F.cosine_similarity(a, b), {"a": a, "b": b}, engine="graph", quiet=True).passed


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_embedding_max_norm_renorms_through_a_detached_alias(dtype):
    """F.embedding(max_norm=) renorms ``weight.detach()`` in place: the values change, the gradient
    passes straight through to the weight; a gaussian_nll_loss clamps its variance in place under
    no_grad (both were a false alarm: no path from the weight / the variance)."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 3, generator=g, dtype=dtype) * 2
    emb = lambda w: torch.tanh(F.embedding(torch.tensor([1, 4, 1, 5]), w, max_norm=1.0))  # noqa: E731
    assert sg.check(emb, {"w": w}, engine="graph", quiet=True).passed
    x, v = torch.randn(3, 2, generator=g, dtype=dtype), torch.tensor([[1e-8, 0.5], [2.0, 1e-9], [0.3, 1.0]], dtype=dtype)
    nll = lambda x, v: F.gaussian_nll_loss(x, torch.zeros_like(x), v)  # noqa: E731
    assert sg.check(nll, {"x": x, "v": v}, engine="graph", quiet=True).passed


@pytest.mark.parametrize("bug", [False, True])
def test_float32_samples_on_pixel_boundaries(bug):
    """Note [Bilinear grid sampling as tents]: sample points within rounding of a pixel boundary, where
    torch's float32 floor picks the other cell, failed: the other side of the floor kept reading this
    cell's pixels.  Torch's own sampling passes; a theta gradient 1e-3 off still fails."""
    theta = torch.tensor([[0.9, 0.1, 0.05], [-0.1, 0.8, 0.02]]).repeat(2, 1, 1)
    torch.manual_seed(0)
    x, w = torch.randn(2, 2, 8, 8), torch.randn(2, 2, 8, 8)

    def sampled(theta, x, w):
        th = scaled(torch.clone, 1 + 1e-3)(theta) if bug else theta
        grid = F.affine_grid(th, x.shape, align_corners=False)
        return (F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False) * w).sum()

    report = sg.check(sampled, {"theta": theta, "x": x, "w": w}, wrt="theta", engine="graph", quiet=True)
    assert report.passed != bug, report.to_text()
