"""``from_module`` / ``module_references`` against torch autograd (float64), the closed forms in
the report, the once-per-architecture cross-check, kink bands and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from symgrad.matrix import UnsupportedOp, from_module, module_references, network_gradients, verify_network
from symgrad.matrix import diff as mdiff


def _autograd(model, x, loss_fn, target):
    x = x.clone().requires_grad_(True)
    model.zero_grad()
    out = model(x)
    loss = loss_fn(out, target) if loss_fn is not None else out
    loss.backward()
    grads = {n: p.grad.detach().numpy().copy() for n, p in model.named_parameters()}
    grads["x"] = x.grad.numpy().copy()
    return grads


def _check(model, x, loss, target, loss_fn=None, rtol=1e-10):
    refs = module_references(model, {"x": x}, loss=loss, target=target)
    want = _autograd(model, x, loss_fn or (loss if callable(loss) else None), target)
    assert {r.name for r in refs} == set(want)
    for r in refs:
        assert r.verified, r.note
        np.testing.assert_allclose(r.value, want[r.name], rtol=rtol, atol=1e-12, err_msg=r.name)
    return {r.name: r for r in refs}


class Stacked(nn.Module):
    """Seed 000: Linear-relu-Linear-relu-Linear, torch.relu in forward."""

    def __init__(self, act=torch.relu, out=1):
        super().__init__()
        self.layer1, self.layer2, self.layer3 = nn.Linear(4, 8), nn.Linear(8, 5), nn.Linear(5, out)
        self.act = act

    def forward(self, x):
        x = self.act(self.layer1(x))
        x = self.act(self.layer2(x))
        return self.layer3(x)


def test_seed000_mse_closed_form_and_values():
    torch.manual_seed(0)
    model = Stacked().double()
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 2.0, 0.0], [1.0, 1.0, -3.0, 2.0]], dtype=torch.float64)
    t = torch.tensor([[5.0], [1.0], [-2.0]], dtype=torch.float64)
    refs = _check(model, x, nn.MSELoss(), t)
    # ∂L/∂W₃ = 2/N (ŷ − t)ᵀ h₂   (batch as rows)
    w3 = refs["layer3.weight"].closed_form
    assert w3.splitlines()[0] == "(2/N)*(yhat - t).T*h2"
    assert "h2 = relu(z2)" in w3 and "W3 = layer3.weight" in w3
    assert refs["layer3.weight"].closed_form_latex.startswith(r"\frac{2}{N} \left(\hat{y} - t\right)^{T} h_{2}")
    # deeper layers name the backpropagated error δ
    w1 = refs["layer1.weight"].closed_form
    assert w1.splitlines()[0] == "delta1.T*x"
    assert "delta1 = (delta2*W2) ∘ relu'(z1)" in w1


@pytest.mark.parametrize("act", [nn.Tanh(), nn.ReLU(), nn.Sigmoid(), nn.Softplus(beta=2.0), nn.CELU(alpha=0.7), nn.ELU(alpha=0.5), nn.LeakyReLU(0.2), nn.GELU(), nn.Hardtanh(-0.5, 0.5)], ids=lambda m: type(m).__name__)
def test_activation_modules(act):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 6), act, nn.Linear(6, 4), act, nn.Linear(4, 2)).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    t = torch.randn(5, 2, dtype=torch.float64)
    refs = module_references(model, {"x": x}, loss=nn.MSELoss(), target=t)
    want = _autograd(model, x, nn.MSELoss(), t)
    # torch's float64 celu backward with alpha != 1 is off by ~5e-9 relative (exp(-0.5/0.7):
    # torch 0.48954166194, exact 0.48954165956), amplified by cancellation in the sums
    loose = isinstance(act, nn.CELU)
    for r in refs:
        assert r.verified, r.note
        w = want[r.name]
        atol = 1e-7 * np.abs(w).max() if loose else 1e-12
        np.testing.assert_allclose(r.value, w, rtol=1e-6 if loose else 1e-9, atol=atol)


def test_bce_with_logits_and_cross_entropy_heads():
    torch.manual_seed(2)
    model = Stacked(act=torch.tanh, out=3).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    _check(model, x, nn.BCEWithLogitsLoss(), torch.rand(6, 3, dtype=torch.float64))
    _check(model, x, nn.BCEWithLogitsLoss(reduction="sum"), torch.rand(6, 3, dtype=torch.float64))
    labels = torch.tensor([0, 2, 1, 1, 0, 2])
    refs = _check(model, x, nn.CrossEntropyLoss(), labels)
    assert "log_softmax" not in refs["layer3.weight"].closed_form.splitlines()[0]
    _check(model, x, "cross_entropy", labels, loss_fn=nn.CrossEntropyLoss())
    _check(model, x, F.mse_loss, torch.randn(6, 3, dtype=torch.float64))


def test_seed001_functional_free_parameters_and_1d_input():
    # seed 001: y = celu(W3ᵀ celu(W2ᵀ celu(W1ᵀ x))), loss = mean((y − t)²), x 1-D
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(3)
            self.W1 = nn.Parameter(torch.randn(3, 10, generator=g, dtype=torch.float64))
            self.W2 = nn.Parameter(torch.randn(10, 10, generator=g, dtype=torch.float64))
            self.W3 = nn.Parameter(torch.randn(10, 1, generator=g, dtype=torch.float64))

        def forward(self, x):
            return F.celu(torch.matmul(self.W3.T, F.celu(torch.matmul(self.W2.T, F.celu(torch.matmul(self.W1.T, x))))))

    model = Net()
    x = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    t = torch.zeros(1, dtype=torch.float64)
    _check(model, x, "mse", t, loss_fn=nn.MSELoss())


def test_scalar_output_without_loss_and_errors():
    class Scalar(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x):
            return torch.tanh(self.lin(x)).sum()

    torch.manual_seed(4)
    m = Scalar().double()
    x = torch.randn(4, 3, dtype=torch.float64)
    refs = module_references(m, {"x": x})
    want = _autograd(m, x, None, None)
    for r in refs:
        np.testing.assert_allclose(r.value, want[r.name], rtol=1e-10, atol=1e-12)
    seq = nn.Sequential(nn.Linear(3, 2), nn.Sigmoid()).double()
    with pytest.raises(UnsupportedOp, match="scalar loss"):
        module_references(seq, {"x": x})

    class Odd(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, 0).sum()

    with pytest.raises(UnsupportedOp, match="cumsum.*fx node 'cumsum'"):
        module_references(Odd(), {"x": x})
    with pytest.raises(UnsupportedOp, match="Conv1d"):
        module_references(nn.Sequential(nn.Conv1d(1, 1, 1)), {"x": x}, loss="mse", target=x)


def test_verification_fails_on_a_wrong_rule(monkeypatch):
    # the once-per-architecture cross-check is not decorative: break the Hadamard-power rule
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    x, t = torch.randn(3, 3, dtype=torch.float64), torch.randn(3, 1, dtype=torch.float64)
    net = from_module(model, {"x": x}, loss=nn.MSELoss(), target=t)
    good = verify_network(net, *network_gradients(net))
    assert good[0], good[1]
    from sympy import HadamardPower

    wrong = lambda node, g, i: 3 * g  # noqa: E731 - d(A∘A) is not 3G
    monkeypatch.setitem(mdiff.VJP_RULES, HadamardPower, wrong)
    ok, msg = verify_network(net, *network_gradients(net))
    assert not ok and "Mismatched elements" in msg


def test_kink_bands_relu_on_the_kink():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)).double()
    with torch.no_grad():  # unit 0's pre-activation is exactly 0 for sample 0
        model[0].weight[0] = torch.tensor([1.0, -1.0], dtype=torch.float64)
        model[0].bias[0] = 0.0
    x = torch.tensor([[0.7, 0.7], [1.0, -2.0]], dtype=torch.float64)
    t = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    refs = {r.name: r for r in module_references(model, {"x": x}, loss=nn.MSELoss(), target=t)}
    want = _autograd(model, x, nn.MSELoss(), t)
    w0 = refs["0.weight"]
    assert w0.kink is not None and w0.kink[0].all() and not w0.kink[1:].any()
    np.testing.assert_allclose(w0.value, want["0.weight"], atol=1e-12)  # torch: relu'(0) = 0
    assert np.all(w0.lower <= w0.value) and np.all(w0.value <= w0.upper)
    assert np.any(w0.upper > w0.lower)


def test_float32_near_kink_band():
    # float32: a pre-activation within rounding of 0 is banded although it is not exactly 0
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight[0] = torch.tensor([0.1, 0.2])
        model[0].bias[0] = -0.3
    x = torch.tensor([[1.0, 1.0], [2.0, -1.0]])  # 0.1 + 0.2 - 0.3 rounds to ~1e-8, not 0
    t = torch.tensor([[1.0], [0.0]])
    refs = {r.name: r for r in module_references(model, {"x": x}, loss=nn.MSELoss(), target=t, dtype=torch.float32)}
    assert refs["0.weight"].kink is not None and refs["0.weight"].kink[0].any()
    refs64 = {r.name: r for r in module_references(model, {"x": x}, loss=nn.MSELoss(), target=t, dtype=torch.float64)}
    assert refs64["0.weight"].kink is None


def test_structure_cache_refreshes_values_and_tells_architectures_apart():
    # same class, same repr, different forward (act attribute): must not share a closed form
    torch.manual_seed(8)
    x, t = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 1, dtype=torch.float64)
    relu_net, tanh_net = Stacked().double(), Stacked(act=torch.tanh).double()
    tanh_net.load_state_dict(relu_net.state_dict())
    for model in (relu_net, tanh_net, relu_net):
        refs = {r.name: r for r in module_references(model, {"x": x}, loss=nn.MSELoss(), target=t)}
        want = _autograd(model, x, nn.MSELoss(), t)
        for name, w in want.items():
            np.testing.assert_allclose(refs[name].value, w, rtol=1e-10, atol=1e-12)
    # new parameter values, cached structure: the values are the new ones
    with torch.no_grad():
        for p in relu_net.parameters():
            p.mul_(-0.5)
    refs = {r.name: r for r in module_references(relu_net, {"x": 2 * x}, loss=nn.MSELoss(), target=3 * t)}
    want = _autograd(relu_net, 2 * x, nn.MSELoss(), 3 * t)
    for name, w in want.items():
        np.testing.assert_allclose(refs[name].value, w, rtol=1e-10, atol=1e-12)
