"""Forward mode (JVP) of the ``linalg`` node kind, and its vectors (symgrad/graph/linalg_vectors.py).

The op table's linalg rows already compare the op graph's JVP with torch's forward mode (random
tangents) in both dtypes; here a seeded wrong JVP (torch's own tangent times 1 + 1e-6 in float64,
1 + 1e-3 in float32, from a new-style ``autograd.Function`` whose ``jvp`` is wrong) must FAIL, and
the forward rules' bounds are compared with a float64 central difference of the factors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import symgrad as sg
from symgrad.graph.approx import Approx
from symgrad.graph.linalg import forward, jvp

FACTOR = {torch.float64: 1e-6, torch.float32: 1e-3}


def _spd(x):
    return x @ x.mT + torch.eye(x.shape[-1], dtype=x.dtype)


def _spread(x):
    return 0.3 * x + torch.diag(torch.arange(x.shape[-1], 0, -1, dtype=x.dtype))[: x.shape[-2]] if x.shape[-2] <= x.shape[-1] \
        else 0.3 * x + torch.cat([torch.diag(torch.arange(x.shape[-1], 0, -1, dtype=x.dtype)),
                                  torch.zeros(x.shape[-2] - x.shape[-1], x.shape[-1], dtype=x.dtype)])


OPS = {
    "inv": (lambda x: torch.linalg.inv(x + 3 * torch.eye(3, dtype=x.dtype)), (3, 3)),
    "det": (lambda x: torch.linalg.det(x + 2 * torch.eye(3, dtype=x.dtype)), (3, 3)),
    "slogdet": (lambda x: torch.linalg.slogdet(_spd(x))[1], (3, 3)),
    "solve": (lambda x: torch.linalg.solve(x + 3 * torch.eye(3, dtype=x.dtype), x[:, :2].sin()), (3, 3)),
    "cholesky": (lambda x: torch.linalg.cholesky(_spd(x)), (3, 3)),
    "eigvalsh": (lambda x: torch.linalg.eigvalsh(x + x.mT), (3, 3)),
    "svdvals": (lambda x: torch.linalg.svdvals(x), (4, 3)),
    "eigh vectors": (lambda x: torch.linalg.eigh(_spread(x) + _spread(x).mT)[1].abs(), (3, 3)),
    "svd U diag Vh": (lambda x: (lambda u, s, vh: u @ torch.diag_embed(s.sqrt()) @ vh)(
        *torch.linalg.svd(_spread(x), full_matrices=False)), (4, 3)),
    "qr R": (lambda x: torch.linalg.qr(0.3 * x + 2 * torch.eye(4, 3, dtype=x.dtype))[1], (4, 3)),
    "qr Q": (lambda x: torch.linalg.qr(0.3 * x + 2 * torch.eye(4, 3, dtype=x.dtype))[0], (4, 3)),
}


def _wrong_jvp(fn, rel):
    """``fn`` whose forward-mode rule is torch's own tangent times ``1 + rel`` (a seeded bug)."""

    class WrongJvp(torch.autograd.Function):
        @staticmethod
        def forward(x):
            return fn(x)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.x = inputs[0].detach()

        @staticmethod
        def backward(ctx, g):
            with torch.enable_grad():
                x = ctx.x.clone().requires_grad_()
                return torch.autograd.grad(fn(x), x, g)[0]

        @staticmethod
        def jvp(ctx, t):
            _, tangent = torch.func.jvp(fn, (ctx.x,), (t,))
            return tangent * (1 + rel)

    return WrongJvp.apply


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(OPS))
def test_jvp_passes_on_torch_and_catches_a_wrong_jvp(name, dtype):
    fn, shape = OPS[name]
    gen = torch.Generator().manual_seed(len(name))
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    t = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    good = sg.check(fn, {"x": x}, engine="graph", via="func.jvp", tangents={"x": t})
    assert good.passed and good.meta["quantity"] == "jvp", good.to_text()
    bad = sg.check(_wrong_jvp(fn, FACTOR[dtype]), {"x": x}, engine="graph", via="func.jvp", tangents={"x": t},
                   symbolic=fn)  # the reference forward traced: the custom Function itself is not traceable
    assert not bad.passed, bad.to_text()


def _central(fn, a, t, h=1e-6):
    return (fn(a + h * t) - fn(a - h * t)) / (2 * h)


@pytest.mark.parametrize("op", ["inv", "det", "logabsdet", "eigvalsh", "svdvals", "cholesky", "qr_q", "qr_r",
                                "svd_u", "svd_v", "eigh_vectors"])
def test_forward_rules_match_a_central_difference(op):
    """The JVP rule's value (float64, no torch involved) against a central difference of the forward
    rule itself; and its rounding bound is finite and small beside the value."""
    rng = np.random.default_rng(7)
    a = rng.standard_normal((4, 3)) if op in ("svdvals", "qr_q", "qr_r", "svd_u", "svd_v") else rng.standard_normal((3, 3))
    if op in ("cholesky", "eigvalsh", "eigh_vectors"):
        a = a @ a.T + np.eye(3)
    elif op not in ("svdvals", "qr_q", "qr_r", "svd_u", "svd_v"):
        a = a + 3 * np.eye(3)
    t = rng.standard_normal(a.shape)
    if op in ("cholesky", "eigvalsh", "eigh_vectors"):
        t = t + t.T
    got = jvp(op, [Approx(a)], [Approx(t)], {})
    ref = _central(lambda m: forward(op, [Approx(m)], {}).v, a, t)
    assert np.allclose(got.v, ref, rtol=1e-6, atol=1e-7), (got.v, ref)
    assert np.all(np.isfinite(got.e)) and np.max(got.e) * 2.0**-52 < 1e-10 * max(1.0, np.max(np.abs(got.v)))


def test_solve_jvp_with_a_tangent_on_either_side():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((3, 3)) + 3 * np.eye(3), rng.standard_normal((3, 2))
    ta, tb = rng.standard_normal((3, 3)), rng.standard_normal((3, 2))
    both = jvp("solve", [Approx(a), Approx(b)], [Approx(ta), Approx(tb)]).v
    ref = _central(lambda s: np.linalg.solve(a + s * ta, b + s * tb), 0.0, 1.0)
    assert np.allclose(both, ref, rtol=1e-6)
    only_b = jvp("solve", [Approx(a), Approx(b)], [None, Approx(tb)]).v
    assert np.allclose(only_b, np.linalg.solve(a, tb))
    assert jvp("solve", [Approx(a), Approx(b)], [None, None]) is None


def test_eigenvectors_need_distinct_eigenvalues():
    from symgrad.errors import InputError

    with pytest.raises(InputError, match="repeated"):
        sg.check(lambda x: torch.linalg.eigh(x)[1].abs(), {"x": torch.eye(3, dtype=torch.float64)}, engine="graph")


def test_full_matrices_svd_of_a_non_square_matrix_is_refused():
    from symgrad.errors import UnsupportedOp

    with pytest.raises(UnsupportedOp, match="full_matrices=False"):
        sg.check(lambda x: torch.linalg.svd(x)[0].abs(), {"x": torch.randn(4, 3, dtype=torch.float64)}, engine="graph")


def test_a_sign_dependent_use_of_the_vectors_compares_on_torchs_branch():
    """U itself (not gauge invariant): the op graph takes torch's signs, so the check passes on torch
    and a seeded bug fails."""
    from symgrad.graph.optable import wrong_backward

    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    fn = (lambda x: torch.linalg.svd(_spread(x), full_matrices=False)[0])
    assert sg.check(fn, {"x": x}, engine="graph").passed
    assert not sg.check(wrong_backward(fn, 1e-6), {"x": x}, engine="graph").passed


def test_a_matrix_given_to_cholesky_directly_says_why_it_fails():
    """Note [One triangle read]: cholesky of the input itself differs from torch's symmetric
    convention, and the report says so; built symmetric, the same matrix passes."""
    x = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = x @ x.mT + 3 * torch.eye(3, dtype=torch.float64)
    v = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    report = sg.check(torch.linalg.cholesky, {"A": a}, v=v)
    assert not report.passed and "reads one triangle" in str(report), str(report)
    assert sg.check(lambda a: torch.linalg.cholesky((a + a.mT) / 2), {"A": a}, v=v).passed
