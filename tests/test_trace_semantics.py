"""What the trace reads as torch's autograd does: ``detach``/``.data`` inside a custom Function's
forward (Note [Inside a custom Function's forward]), ``.data`` in plain code (Note [.data in the
trace]), boolean masks as indices, and a cotangent given per tensor of a tuple output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import symgrad as sg
from symgrad.errors import ShapeMismatch, UnsupportedOp

DTYPES = [torch.float64, torch.float32]


def _xexp(how: str, wrong: bool):
    """y = x * exp(x), with exp taken of a detached alias of x: the Function's map is still x exp(x)."""

    class XExp(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            alias = x.detach() if how == "detach" else x.data
            return x * torch.exp(alias)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * x.exp() if wrong else g * x.exp() * (1 + x)  # wrong: forgets d exp(x)/dx

    return XExp.apply


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("how", ["detach", "data"])
def test_detach_inside_a_functions_forward_is_the_identity(how, dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, generator=gen, dtype=torch.float64).to(dtype)
    v = torch.randn(3, 4, generator=gen, dtype=torch.float64).to(dtype)
    assert sg.check(_xexp(how, wrong=False), {"x": x}, v=v, quiet=True).passed
    assert not sg.check(_xexp(how, wrong=True), {"x": x}, v=v, quiet=True).passed


def test_values_leaving_torch_inside_a_function_are_refused():
    class HostExp(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            e = torch.from_numpy(np.exp(x.detach().cpu().numpy()))
            ctx.save_for_backward(x, e)
            return x * e

        @staticmethod
        def backward(ctx, g):
            x, e = ctx.saved_tensors
            return g * e  # wrong, and the trace would see e as a constant

    x = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(UnsupportedOp, match="out of torch.*symbolic="):
        sg.check(HostExp.apply, {"x": x}, v=torch.randn(3, 4, dtype=torch.float64), quiet=True)
    # with the forward written in torch ops as symbolic=, the wrong backward fails
    report = sg.check(HostExp.apply, {"x": x}, symbolic=lambda x: x * torch.exp(x),
                      v=torch.randn(3, 4, dtype=torch.float64), quiet=True)
    assert not report.passed


def test_data_in_a_module_is_a_constant_as_in_torch():
    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, x):
            return torch.tanh(self.lin(x) * self.lin.weight.data.sum())

    torch.manual_seed(0)
    model = Scaled().double()
    x, t = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    assert sg.check(model, {"x": x}, loss="mse", target=t, quiet=True).passed


class _Square(torch.autograd.Function):
    scale = 1.0

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 2 * x * _Square.scale


def _masked_sum(x):
    return _Square.apply(x)[x > 0.3].sum()


def _masked_write(x):
    y = x * 2
    y[x > 0] += _Square.apply(x[x > 0])
    return y


def _masked_scale(x):
    y = x * 2
    y[y > 0.5] *= 0.5
    return y


def _masked_accumulate(x):
    return torch.zeros(3, 4, dtype=x.dtype).index_put((x > 0,), _Square.apply(x[x > 0]) * 3, accumulate=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fn", [_masked_sum, _masked_write, _masked_scale, _masked_accumulate],
                         ids=lambda f: f.__name__)
def test_a_boolean_mask_selects_entries_not_rows(fn, dtype, monkeypatch):
    """A bool mask computed from the values is an index of entries (read as 0/1 integers it picked
    rows 0 and 1: the forward itself disagreed)."""
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    assert sg.check(fn, {"x": x}, quiet=True).passed
    if fn is not _masked_scale:
        monkeypatch.setattr(_Square, "scale", 1.001)
        assert not sg.check(fn, {"x": x}, quiet=True).passed


class _AddRMS(torch.autograd.Function):
    """A tuple output (normalised sum, the sum), as fused residual + RMS-norm kernels return."""

    scale = 1.0

    @staticmethod
    def forward(ctx, x, res):
        h = x + res
        r = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        ctx.save_for_backward(h, r)
        return h * r, h

    @staticmethod
    def backward(ctx, gy, gh):
        h, r = ctx.saved_tensors
        hh = h * r
        gx = r * (gy - hh * (gy * hh).mean(-1, keepdim=True)) + gh
        return gx * _AddRMS.scale, gx


def test_a_cotangent_per_tensor_of_a_tuple_output(monkeypatch):
    gen = torch.Generator().manual_seed(2)
    x, res = (torch.randn(3, 4, generator=gen, dtype=torch.float64) for _ in range(2))
    v = (torch.randn(3, 4, generator=gen, dtype=torch.float64), torch.randn(3, 4, generator=gen, dtype=torch.float64))
    assert sg.check(_AddRMS.apply, {"x": x, "res": res}, v=v, quiet=True).passed
    with pytest.raises(ShapeMismatch, match="one cotangent per output tensor"):
        sg.check(_AddRMS.apply, {"x": x, "res": res}, v=(v[0],), quiet=True)
    monkeypatch.setattr(_AddRMS, "scale", 1.001)
    assert not sg.check(_AddRMS.apply, {"x": x, "res": res}, v=v, quiet=True).passed


class _SinCos(torch.autograd.Function):
    sign = -1.0

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sin(x), torch.cos(x)

    @staticmethod
    def backward(ctx, g_sin, g_cos):
        (x,) = ctx.saved_tensors
        return g_sin * torch.cos(x) + _SinCos.sign * g_cos * torch.sin(x)


@pytest.mark.parametrize("with_v", [False, True])
def test_a_symbolic_twin_with_a_tuple_output(with_v, monkeypatch):
    """A twin written with sg.* returning a tuple is checked on the op graph, as a torch twin is."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, generator=gen, dtype=torch.float64)
    v = (torch.randn(5, generator=gen, dtype=torch.float64), torch.randn(5, generator=gen, dtype=torch.float64))
    kw = {"v": v} if with_v else {}
    twin = lambda x: (sg.sin(x), sg.cos(x))  # noqa: E731
    assert sg.check(_SinCos.apply, {"x": x}, symbolic=twin, quiet=True, **kw).passed
    monkeypatch.setattr(_SinCos, "sign", 1.0)  # d cos/dx taken as +sin
    assert not sg.check(_SinCos.apply, {"x": x}, symbolic=twin, quiet=True, **kw).passed
    with pytest.raises(UnsupportedOp, match="several outputs"):
        sg.check(None, {"x": x}, symbolic=twin, quiet=True)


def test_a_sparse_gradient_is_compared_dense():
    """nn.Embedding(sparse=True) gives a sparse gradient (a TypeError from numpy before)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(6, 3, sparse=True), torch.nn.Flatten(),
                                torch.nn.Linear(9, 2)).double()
    tokens = torch.tensor([[1, 2, 1], [0, 5, 4]])  # token 1 twice: its two rows add up
    assert sg.check(model, {"input": tokens}, quiet=True).passed


@pytest.mark.parametrize("fn", [
    lambda w: torch.fft.irfft(torch.fft.rfft(torch.ones(2, 8, dtype=torch.float64)) * w, n=8),
    lambda w: (torch.fft.rfft(w).abs() ** 2).sum(),
    lambda w: torch.view_as_real(torch.complex(w, 2 * w) * torch.complex(w, -w)),
], ids=["rfft_irfft", "rfft_abs", "complex_mul"])
def test_complex_paths_are_refused_by_name(fn):
    """A complex intermediate was read as a constant ("does not depend on any of its inputs", or a
    failing gradient of 0): refused, naming complex numbers and the fix."""
    with pytest.raises(UnsupportedOp, match="complex numbers"):
        sg.check(fn, {"w": torch.randn(5, dtype=torch.float64)}, quiet=True)


def test_a_complex_refusal_names_the_fft_not_the_cast():
    """FNet's ``fft2(h).real``: the first complex value is the cast of h to complex; the refusal
    names the FFT that follows it."""
    with pytest.raises(UnsupportedOp, match="fft_c2c"):
        sg.check(lambda w: torch.fft.fft2(w).real.sum(), {"w": torch.randn(3, 4, dtype=torch.float64)}, quiet=True)


def test_a_buffer_written_in_forward_is_a_constant_as_written():
    """A running average updated in place under no_grad: functionalization cannot follow the write
    (it was refused, first with a hint about numpy and .item(), then by name); traced without
    functionalization it is read as written, a constant to the derivative as it is to torch's, and
    put back after the check."""
    from tests.graph.families import bugged

    class RunningCentre(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 4)
            self.register_buffer("centre", torch.zeros(4, dtype=torch.float64))

        def forward(self, x):
            h = self.lin(x)
            with torch.no_grad():
                self.centre.mul_(0.9).add_(0.1 * h.mean(0))
            return torch.tanh(h - self.centre)

    torch.manual_seed(0)
    model = RunningCentre().double()
    x, t = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    assert sg.check(model, {"x": x}, loss="mse", target=t, quiet=True).passed
    assert torch.equal(model.centre, torch.zeros(4, dtype=torch.float64))
    assert not sg.check(bugged(model, "scaled", 1 + 1e-6), {"x": x}, loss="mse", target=t, quiet=True).passed


@pytest.mark.parametrize("engine", ["auto", "elementwise", "graph"])
def test_data_in_a_small_function_is_a_constant(engine):
    """A small function runs on symgrad's symbolic tensors, whose .data is their entries: w * w.data
    was differentiated as w * w (a false alarm) there."""
    w = torch.randn(3, dtype=torch.float64)
    assert sg.check(lambda w: (w * w.data).sum(), {"w": w}, engine=engine, quiet=True).passed


def test_torch_distributions_with_argument_validation():
    """Normal(...).log_prob validates its arguments with comparisons read by ``all``: the graph's 0/1
    values go back to bool for it (they were float64 and torch asserted)."""
    import torch.distributions as D

    class GaussHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(4, 4)

        def forward(self, x, y):
            mu, log_std = self.net(x).chunk(2, -1)
            return -D.Normal(mu, log_std.exp()).log_prob(y).mean()

    torch.manual_seed(0)
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    assert sg.check(GaussHead().double(), {"x": x, "y": y}, quiet=True).passed


def test_a_scripted_submodule_is_refused_by_name():
    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh()))

        def forward(self, x):
            return self.body(x)

    with pytest.raises(UnsupportedOp, match="TorchScript submodule .'body'"):
        sg.check(Wrapper(), {"x": torch.randn(4, 5)}, quiet=True)


@pytest.mark.parametrize("detach_trick", [True, False])
def test_a_gradient_penalty_inside_forward_is_refused_by_name(detach_trick):
    class Critic(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

        def forward(self, real, fake):
            xh = 0.5 * (real + fake)
            if detach_trick:
                xh = xh.detach().requires_grad_()
            (g,) = torch.autograd.grad(self.net(xh).sum(), xh, create_graph=True)
            return self.net(fake).mean() - self.net(real).mean() + ((g.norm(dim=1) - 1) ** 2).mean()

    torch.manual_seed(0)
    with pytest.raises(UnsupportedOp, match="takes a derivative itself"):
        sg.check(Critic(), {"real": torch.randn(4, 3), "fake": torch.randn(4, 3)}, quiet=True)


class _Sin(torch.autograd.Function):
    generate_vmap_rule = True
    SCALE = 1.0

    @staticmethod
    def forward(x):
        return torch.sin(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        return g * torch.cos(ctx.saved_tensors[0]) * _Sin.SCALE


def _pinn(sin):
    """A PINN-style residual loss of (x, w): du/dx by vmap(grad(u)) inside the function."""
    def loss(x, w):
        k = torch.arange(1.0, 5.0, dtype=x.dtype)
        du = torch.func.vmap(torch.func.grad(lambda xx: (sin(xx * k) * w).sum()))(x)
        return ((du - torch.cos(x)) ** 2).mean()
    return loss


def test_a_custom_function_differentiated_inside_the_forward_is_not_read_into_the_reference():
    """Note [A custom Function differentiated inside the forward]: the trace ran the Function's
    backward under torch.func.grad and read it into the reference; a backward 1e-3 off passed with
    the loss itself 1e-3 off.  Refused with the fix, and the fix (symbolic= the same function in torch
    ops) passes the right backward and fails the wrong one."""
    x = torch.rand(6, dtype=torch.float64)
    w = torch.randn(4, dtype=torch.float64)
    try:
        with pytest.raises(UnsupportedOp, match="differentiates through the custom autograd.Function _Sin"):
            sg.check(_pinn(_Sin.apply), {"x": x, "w": w}, quiet=True)
        assert sg.check(_pinn(_Sin.apply), {"x": x, "w": w}, symbolic=_pinn(torch.sin), quiet=True).passed
        assert sg.check(lambda x: torch.func.vmap(_Sin.apply)(x).sum(), {"x": x}, quiet=True).passed  # vmap alone
        _Sin.SCALE = 1 + 1e-3
        assert not sg.check(_pinn(_Sin.apply), {"x": x, "w": w}, symbolic=_pinn(torch.sin), quiet=True).passed
        assert not sg.check(lambda x: torch.func.vmap(_Sin.apply)(x).sum(), {"x": x}, quiet=True).passed
    finally:
        _Sin.SCALE = 1.0


def test_forward_mode_inside_the_forward_is_refused_with_the_reverse_mode_fix():
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()

    def hutchinson(x, eps):
        out, jv = torch.func.jvp(net, (x,), (eps,))
        return ((out ** 2).sum(1) + (eps * jv).sum(1)).mean()

    x, eps = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(UnsupportedOp, match=r"forward mode \(torch.func.jvp or jacfwd\) inside the function"):
        sg.check(hutchinson, {"x": x, "eps": eps}, wrt="x", quiet=True)


def test_an_identity_of_256_or_more_rows_inside_forward():
    """A dense GCN adds torch.eye(n) to its adjacency: torch 2.13's decomposition of eye takes a
    uint16 arange from n = 256, which CPU lacks, and the check was refused as code leaving torch."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2).double()
    a = (torch.rand(300, 300) < 0.05).double()
    gcn = lambda x, a: ((a + torch.eye(a.shape[0], dtype=a.dtype)) @ lin(x)).tanh().sum()  # noqa: E731
    assert sg.check(gcn, {"x": torch.randn(300, 3, dtype=torch.float64), "a": a}, wrt="x", quiet=True).passed
