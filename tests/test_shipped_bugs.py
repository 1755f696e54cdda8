"""Autodiff bugs of the kinds that shipped in public libraries, each beside its fixed twin, as
custom Functions (the forward is torch's own): the bug fails, the fix passes, on both engines and
in float64 and float32."""

import math

import pytest
import torch

import symgrad as sg
from symgrad.testing_ops import custom, vjp, with_backward

norm = torch.linalg.vector_norm


def _cumprod_dividing(x, g):  # the gradient of cumprod by dividing the products by x: NaN at a zero
    y = torch.cumprod(x, 0)
    return torch.flip(torch.cumsum(torch.flip(g * y, [0]), 0), [0]) / x


def _gelu_tanh_backward(x, g):  # exact gelu forward, the tanh approximation's derivative
    c = math.sqrt(2 / math.pi)
    t = torch.tanh(c * (x + 0.044715 * x**3))
    return g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x))


def _layer_norm(x):
    return (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-5)


def _layer_norm_without_mean_term(x, g):
    s = torch.sqrt(x.var(unbiased=False) + 1e-5)
    y = (x - x.mean()) / s
    return (g - y * (g * y).mean()) / s


def _norm_fixed(x, g):  # torch's fix: 0 where the norm is 0
    n = norm(x)
    return g * x / n if n > 0 else torch.zeros_like(x)


WITH_ZERO = [1.5, 0.0, 2.0, -0.7]
PAIRS = [  # (name, forward, buggy backward, fixed backward, input)
    ("cumprod at a zero", lambda x: torch.cumprod(x, 0), _cumprod_dividing,
     lambda x, g: vjp(lambda x: torch.cumprod(x, 0), x, g), WITH_ZERO),
    ("prod at a zero", torch.prod, lambda x, g: g * torch.prod(x) / x, lambda x, g: vjp(torch.prod, x, g), WITH_ZERO),
    ("gelu with the tanh derivative", torch.nn.functional.gelu, _gelu_tanh_backward,
     lambda x, g: vjp(torch.nn.functional.gelu, x, g), [-3.0, -1.0, -0.5, 0.5, 1.0, 3.0]),
    ("layer norm without the mean term", _layer_norm, _layer_norm_without_mean_term,
     lambda x, g: vjp(_layer_norm, x, g), [0.3, -1.2, 2.0, 0.1, -0.4, 0.9]),
    ("norm at zero: NaN", norm, lambda x, g: g * x / norm(x), _norm_fixed, [0.0, 0.0, 0.0]),
    ("median at a tie: twice the cotangent", lambda x: x.median(),
     lambda x, g: g * (x == x.median()).to(x.dtype), lambda x, g: vjp(lambda x: x.median(), x, g), [3.0, 1.0, 1.0, 5.0]),
]


@pytest.mark.parametrize("engine", ["auto", "elementwise"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name,forward,buggy,fixed,values", PAIRS, ids=[p[0] for p in PAIRS])
def test_the_bug_fails_and_its_fix_passes(name, forward, buggy, fixed, values, dtype, engine):
    x = torch.tensor(values, dtype=dtype)
    bug = with_backward(forward, buggy)
    fix = with_backward(forward, fixed)
    assert not sg.check(lambda x: bug(x).sum(), {"x": x}, engine=engine).passed
    assert sg.check(lambda x: fix(x).sum(), {"x": x}, engine=engine).passed


def _logaddexp_routing_to_the_max(x, y, g):  # keras#23616: the max's side for both terms at x == y
    d = x - y
    k = torch.sigmoid(-d.abs())
    m = (x >= y).to(x.dtype)
    return g * (m - k * torch.sign(d)), g * (1 - m + k * torch.sign(d))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_logaddexp_at_a_tie_is_smooth(dtype):
    """Note [One step, one side] (kinklog.py): at x == y torch's logaddexp traces to two wheres on one
    comparison; their sides were chosen apart, and a backward giving (1, 0) instead of (1/2, 1/2)
    passed on the op graph."""
    x = torch.tensor([1.0, -0.5, 3.0, 0.0], dtype=dtype)
    y = torch.tensor([1.0, -0.5, 2.0, 0.0], dtype=dtype)
    v = torch.tensor([1.0, -2.0, 0.5, 1.5], dtype=dtype)
    bug = custom(torch.logaddexp, _logaddexp_routing_to_the_max)
    assert sg.check(torch.logaddexp, {"x": x, "y": y}, v=v, quiet=True).passed
    assert not sg.check(bug, {"x": x, "y": y}, v=v, quiet=True).passed
    assert not sg.check(lambda x, y: bug(x, y).sum(), {"x": x, "y": y}, engine="elementwise", quiet=True).passed


def _lae_not(x, y):  # logaddexp written by hand, its min selected by the comparison's negation
    c = x >= y
    m, n = torch.where(c, x, y), torch.where(~c, x, y)
    return m + torch.log1p(torch.exp(n - m))


def _relu_split(x):  # where(x > 0, x, 0) + where(x > 0, -x, x / 2): x/2 below 0, 0 above, one comparison
    c = x > 0
    return torch.where(c, x, 0.0) + torch.where(c, -x, 0.5 * x)


def _lae_max_min(x, y):  # the usual stable logaddexp, written with maximum and minimum
    return torch.maximum(x, y) + torch.log1p(torch.exp(torch.minimum(x, y) - torch.maximum(x, y)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_maximum_and_minimum_of_one_pair_take_one_region(dtype):
    """maximum(x, y) and minimum(x, y) at x == y are one choice of region (Note [One step, one side]):
    chosen apart, a backward giving (1, 0) instead of (1/2, 1/2) passed (found by a regression helper)."""
    x = torch.tensor([1.0, -0.5, 3.0, 0.0], dtype=dtype)
    y = torch.tensor([1.0, -0.5, 2.0, 0.0], dtype=dtype)
    v = torch.tensor([1.0, -2.0, 0.5, 1.5], dtype=dtype)
    assert sg.check(_lae_max_min, {"x": x, "y": y}, v=v, quiet=True).passed
    assert not sg.check(custom(_lae_max_min, _logaddexp_routing_to_the_max), {"x": x, "y": y}, v=v, quiet=True).passed


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_selections_of_one_comparison_through_its_negation_and_at_repeated_points(dtype):
    """Note [One step, one side]: a where reading ~c is driven by c; entries at one exact point
    (repeated zeros) are one unit whose driver is every entry's comparison."""
    x = torch.tensor([1.0, -0.5, 3.0], dtype=dtype)
    y = torch.tensor([1.0, -0.5, 2.0], dtype=dtype)
    v = torch.tensor([1.0, -2.0, 0.5], dtype=dtype)
    assert sg.check(_lae_not, {"x": x, "y": y}, v=v, quiet=True).passed
    assert not sg.check(custom(_lae_not, _logaddexp_routing_to_the_max), {"x": x, "y": y}, v=v, quiet=True).passed
    z = torch.tensor([0.0, 0.0, 1.3], dtype=dtype)  # the valid derivatives at 0: 0 and 1/2
    assert sg.check(_relu_split, {"z": z}, v=torch.ones(3, dtype=dtype), quiet=True).passed
    wrong = custom(_relu_split, lambda z, g: g * torch.where(z > 0, 0.0, torch.where(z < 0, 0.5, 1.5)).to(dtype))
    assert not sg.check(wrong, {"z": z}, v=torch.ones(3, dtype=dtype), quiet=True).passed


@pytest.mark.parametrize("via", ["forward_ad", "jacfwd"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_logaddexp_at_a_tie_in_forward_mode(dtype, via):
    """Forward mode takes one side per node and per comparison too (Note [One step, one side]): a
    where whose two branches are both banded was left to entrywise bands, and a jvp giving the max's
    tangent alone at x == y, tx instead of (tx + ty) / 2, passed forward_ad."""
    from symgrad.testing_ops import with_jvp

    z = torch.tensor([[1.0, -0.5, 3.0, 0.0], [1.0, -0.5, 2.0, 0.0]], dtype=dtype)
    t = torch.tensor([[1.0, 0.3, -0.4, 2.0], [0.2, -1.0, 0.5, 0.7]], dtype=dtype)

    def lae(z):
        return torch.logaddexp(z[0], z[1])

    def max_side_jvp(z, t):
        s = torch.where(z[0] == z[1], 1.0, torch.sigmoid(z[0] - z[1]))
        return t[0] * s + t[1] * (1 - s)

    kw = {"tangents": {"z": t}} if via == "forward_ad" else {}
    assert sg.check(lae, {"z": z}, via=via, quiet=True, **kw).passed
    bug = with_jvp(lae, lambda z, g: torch.stack([g * 0.5, g * 0.5]), max_side_jvp, vmap=True)
    assert not sg.check(bug, {"z": z}, via=via, quiet=True, **kw).passed
