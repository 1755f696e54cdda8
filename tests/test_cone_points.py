"""Note [Cone points]: derivatives where the closed form is 0/0 (a norm at zero), both engines;
Note [Zero by cancellation]: an exactly-zero gradient is not called inaccurate."""

import pytest
import torch
import torch.nn.functional as F

import symgrad as sg
from symgrad.testing_ops import vjp, with_backward, with_jvp

norm = torch.linalg.vector_norm
ENGINES = ["auto", "elementwise"]
DTYPES = [torch.float64, torch.float32]


def _zero_grad(x, g):
    return torch.zeros_like(x)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fn", [
    lambda x: norm(x),
    lambda x: torch.linalg.matrix_norm(x.reshape(2, 2)),
    lambda x: torch.dist(x, x.detach().clone()),
], ids=["vector_norm", "frobenius", "dist"])
def test_torch_norms_at_zero_pass(fn, dtype, engine):
    report = sg.check(fn, {"x": torch.zeros(4, dtype=dtype)}, engine=engine)
    assert report.passed, str(report)
    assert "0/0 at this input" in str(report)


@pytest.mark.parametrize("engine", ENGINES)
def test_cdist_of_a_set_with_itself_passes(engine):
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0], [1.0, -1.0]], dtype=torch.float64)
    assert sg.check(lambda x: torch.cdist(x, x).sum(), {"x": x}, engine=engine).passed


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_structural_zero_through_cdist_has_a_bound(dtype):
    """The gradient of a kernel matrix's logdet with respect to a translation of every point is 0
    exactly; torch returns roundings of about 1e-17.  sqrt at the diagonal's exact 0 carries no
    error (its infinite slope times a zero bound), so the bound stays finite and covers them."""
    gen = torch.Generator().manual_seed(0)
    z, t = torch.randn(5, 2, generator=gen, dtype=dtype), torch.randn(1, 2, generator=gen, dtype=dtype)

    def f(z, t):
        d = torch.cdist(z + t, z + t)
        return torch.logdet(torch.exp(-d**2) + 0.1 * torch.eye(5, dtype=dtype))

    report = sg.check(f, {"z": z, "t": t}, wrt=["t"], quiet=True)
    assert report.passed, str(report)
    size = 1e-6 if dtype == torch.float64 else 1e-3
    moved = with_backward(lambda t: t, lambda t, g: g + size * t.abs().max())  # a bug off zero
    assert not sg.check(lambda z, t: f(z, moved(t)), {"z": z, "t": t}, wrt=["t"], symbolic=f, quiet=True).passed


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backward,passes", [
    (_zero_grad, True),  # torch's choice: the least-norm subgradient
    (lambda x, g: g * torch.full_like(x, 0.25), True),  # inside the unit ball: a subgradient too
    (lambda x, g: g * x / norm(x), False),  # the shipped bug: NaN
    (lambda x, g: g * torch.ones_like(x), False),  # outside every limit x / |x|
])
def test_norm_at_zero_backwards(backward, passes, dtype):
    f = with_backward(norm, backward)
    report = sg.check(f, {"x": torch.zeros(4, dtype=dtype)})
    assert report.passed is passes, str(report)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_a_half_norm_at_zero_is_judged_on_its_limits(dtype):
    """The limits are taken at inputs moved by 2**-18, subnormal in float16: charged the floor below
    the normal range there, a squared norm of 1e-10 widened the band by thousands and 10 in every
    entry passed (Note [Cone points])."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 8, generator=g, dtype=torch.float64).to(dtype)
    x[1] = 0
    v = torch.randn(3, generator=g, dtype=torch.float64).to(dtype)
    rows = lambda x: norm(x, dim=1)  # noqa: E731
    assert sg.check(rows, {"x": x}, v=v, quiet=True).passed
    ten = with_backward(rows, lambda x, g: torch.where(x == 0, 10.0, vjp(rows, x, g)).to(x.dtype))
    assert not sg.check(ten, {"x": x}, v=v, quiet=True).passed


def test_rows_at_zero_among_others_and_a_wrong_backward_there():
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]], dtype=torch.float64)
    right = with_backward(lambda x: norm(x, dim=1), lambda x, g: vjp(lambda x: norm(x, dim=1), x, g))
    assert sg.check(lambda x: right(x).sum(), {"x": x}).passed
    wrong = with_backward(lambda x: norm(x, dim=1), lambda x, g: vjp(lambda x: norm(x, dim=1), x, g) + 0.7)
    assert not sg.check(lambda x: wrong(x).sum(), {"x": x}).passed


def test_normalize_of_a_zero_row_in_a_module():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 3).double()

        def forward(self, x):
            return self.lin(F.normalize(x, dim=1) + torch.linalg.vector_norm(x, dim=1, keepdim=True))

    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]], dtype=torch.float64)
    assert sg.check(M(), {"x": x}).passed


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradient_zero_by_cancellation_is_not_inaccurate(dtype):
    def layer_norm(x):
        return (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-5)

    torch.manual_seed(0)
    x = torch.randn(6, dtype=dtype)
    f = with_backward(layer_norm, lambda x, g: vjp(layer_norm, x, g))
    report = sg.check(lambda x: f(x).sum(), {"x": x}, engine="elementwise", strict=True)
    assert report.passed and not any(r.inaccurate for r in report.records), str(report)
    bad = with_backward(layer_norm, lambda x, g: vjp(layer_norm, x, g) + 1e-3)
    assert not sg.check(lambda x: bad(x).sum(), {"x": x}, engine="elementwise").passed


@pytest.mark.parametrize("engine", ENGINES)
def test_power_at_a_zero_base_uses_the_side_where_it_is_defined(engine):
    """d(x**y)/dy = x**y log x is 0 * -inf at x = 0; only x > 0 is defined for non-integer y."""
    inputs = {"x": torch.tensor([0.0, 2.0], dtype=torch.float64), "y": torch.tensor([2.0, 3.0], dtype=torch.float64)}
    assert sg.check(lambda x, y: torch.pow(x, y).sum(), inputs, engine=engine).passed

    class Pow(torch.autograd.Function):  # d/dy wrong at the zero base: 1 instead of the limit 0
        @staticmethod
        def forward(ctx, x, y):
            ctx.save_for_backward(x, y)
            return torch.pow(x, y)

        @staticmethod
        def backward(ctx, g):
            x, y = ctx.saved_tensors
            gy = torch.where(x > 0, torch.pow(x, y) * torch.log(x.clamp_min(1e-300)), torch.ones_like(x))
            return g * y * torch.pow(x, y - 1), g * gy

    assert not sg.check(lambda x, y: Pow.apply(x, y).sum(), inputs).passed


@pytest.mark.parametrize("kw", [{}, {"via": "jacrev"}, {"tangents": {"x": torch.ones(2, 3, dtype=torch.float64)},
                                                        "via": "func.jvp"}], ids=["vjp+jvp", "jacobian", "jvp"])
def test_rows_at_zero_in_every_quantity_of_the_op_graph(kw):
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]], dtype=torch.float64)
    assert sg.check(lambda x: norm(x, dim=1), {"x": x}, **kw).passed


def test_jacobian_by_columns_at_zero():
    a = torch.arange(1.0, 11.0, dtype=torch.float64)[:, None]
    report = sg.check(lambda x: norm(x * a, dim=1), {"x": torch.zeros(1, 3, dtype=torch.float64)}, via="jacrev")
    assert report.passed and "one jvp per input entry" in report.meta["quantity"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [8, 64])
def test_torch_norm_of_a_long_zero_vector_passes(n, dtype):
    """Eight directions alone gave some entry limits of one sign only (a band without torch's 0);
    with their opposites the band is symmetric."""
    assert sg.check(norm, {"x": torch.zeros(n, dtype=dtype)}, quiet=True).passed
    x = torch.randn(6, 9, dtype=dtype, generator=torch.Generator().manual_seed(0))
    x[[1, 4]] = 0
    rows = lambda x: norm(x, dim=1)  # noqa: E731
    assert sg.check(rows, {"x": x}, v=torch.randn(6, dtype=dtype), quiet=True).passed
    wrong = with_backward(norm, lambda x, g: g * torch.ones_like(x))
    assert not sg.check(wrong, {"x": torch.zeros(n, dtype=dtype)}, quiet=True).passed


def _norm_with_jvp(factor: float):
    """vector_norm with a custom jvp giving ``factor * ||t||`` at 0 (``f'(0; t)`` for factor 1)."""
    def jvp(x, t):
        n = norm(x)
        return torch.where(n == 0, factor * norm(t), (x * t).sum() / n.clamp_min(1e-300))

    return with_jvp(norm, lambda x, g: g * x / norm(x).clamp_min(1e-300), jvp, vmap=True)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("via", ["forward_ad", "func.jvp", "jacfwd"])
@pytest.mark.parametrize("factor,passes", [(1.0, True), (0.0, True), (1.5, False)])
def test_a_jvp_at_a_cone_point_is_the_directional_derivative(factor, passes, via, dtype, engine):
    """A norm's jvp at 0 along ``t`` has limits up to ``||t||`` (the one-sided derivative), reached
    only along ``t`` itself: sampled along random directions alone, the band stopped short and the
    exact ``||t||`` was called a bug (Note [Moves along the tangent])."""
    x = torch.zeros(2, 2, dtype=dtype)
    extra = {} if via == "jacfwd" else {"tangents": {"x": torch.tensor([[0.3, -1.2], [0.5, 2.0]], dtype=dtype)}}
    report = sg.check(lambda x: _norm_with_jvp(factor)(x), {"x": x}, via=via, symbolic=norm, quiet=True,
                      engine=engine, **extra)
    assert report.passed is passes, str(report)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_zero_initialised_parameter_through_normalize_and_a_norm(dtype):
    """normalize(B) is B / 1e-12 near B = 0 and the norm is a cone point there: the limits were taken
    at moves that left normalize's clamp, and torch's exact gradient failed (Note [Cone points])."""
    B = torch.zeros(2, 3, dtype=dtype)
    w = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]], dtype=dtype)

    def f(B):
        return (F.normalize(B, dim=0) * w).sum() + 0.01 * norm(B)

    assert sg.check(f, {"B": B}, quiet=True).passed
    if dtype == torch.float64:  # in float32, 0.01 is far below the rounding of entries of 1e12
        ones = with_backward(f, lambda B, g: vjp(f, B, g) + 0.01 * g)  # the norm's part: 0.01 in every entry
        assert not sg.check(ones, {"B": B}, symbolic=f, quiet=True).passed
