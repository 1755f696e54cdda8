"""Textbook identities, each tested twice: the printed matrix form, and the number against torch
autograd in float64 (and, in test_crosscheck.py, against the exploded SymPy derivative)."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch
from sympy import Inverse, MatrixSymbol, OneMatrix, Trace, det, log

from symgrad.matrix import elementwise, evaluate, frobenius_sq, grad, sum_all, to_latex, to_text

n = 3
X, A, B = MatrixSymbol("X", n, n), MatrixSymbol("A", n, n), MatrixSymbol("B", n, n)
a, b = MatrixSymbol("a", n, 1), MatrixSymbol("b", n, 1)
m, k, p = sp.symbols("m k p", integer=True, positive=True)
W, Xr, bias = MatrixSymbol("W", m, p), MatrixSymbol("X", p, k), MatrixSymbol("b", m, 1)


def _spd(rng, size):
    M = rng.standard_normal((size, size))
    return M @ M.T + size * np.eye(size)


# (id, f, wrt, text, latex, torch function of the tensors, values)
CASES = [
    # d aᵀXb / dX = a bᵀ
    ("aTXb", a.T * X * b, X, "a*b.T", "a b^{T}", lambda t: (t["a"].T @ t["X"] @ t["b"]).sum()),
    # d tr(AX) / dX = Aᵀ
    ("trAX", Trace(A * X), X, "A.T", "A^{T}", lambda t: torch.trace(t["A"] @ t["X"])),
    # d tr(XᵀAX) / dX = AX + AᵀX
    ("trXtAX", Trace(X.T * A * X), X, "A*X + A.T*X", "A X + A^{T} X", lambda t: torch.trace(t["X"].T @ t["A"] @ t["X"])),
    # d ‖AX − B‖²_F / dX = 2Aᵀ(AX − B)
    ("frob", frobenius_sq(A * X - B), X, "2*A.T*(A*X - B)", r"2 A^{T} \left(A X - B\right)", lambda t: ((t["A"] @ t["X"] - t["B"]) ** 2).sum()),
    # d log det X / dX = X⁻ᵀ   (SymPy 1.14 returns 0 here)
    ("logdet", log(det(X)), X, "X.T**(-1)", "X^{-T}", lambda t: torch.logdet(t["X"])),
    # d tr(X⁻¹A) / dX = −X⁻ᵀ Aᵀ X⁻ᵀ
    ("trXinvA", Trace(Inverse(X) * A), X, "-X.T**(-1)*A.T*X.T**(-1)", r"- X^{-T} A^{T} X^{-T}", lambda t: torch.trace(torch.linalg.inv(t["X"]) @ t["A"])),
]


def _values(rng):
    return {"X": _spd(rng, n), "A": rng.standard_normal((n, n)), "B": rng.standard_normal((n, n)), "a": rng.standard_normal((n, 1)), "b": rng.standard_normal((n, 1))}


def _torch_grad(fn, values, wrt):
    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=(k == wrt)) for k, v in values.items()}
    out = fn(t)
    (g,) = torch.autograd.grad(out, t[wrt])
    return g.numpy()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_printed_form(case):
    _, f, wrt, text, latex, _ = case
    g = grad(f, wrt)
    assert to_text(g) == text
    assert to_latex(g) == latex


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_against_autograd(case):
    _, f, wrt, _, _, fn = case
    rng = np.random.default_rng(1)
    for _ in range(3):
        values = _values(rng)
        got = evaluate(grad(f, wrt), values)
        np.testing.assert_allclose(got, _torch_grad(fn, values, wrt.name), rtol=1e-10, atol=1e-12)


def _sigmoid_layer():
    return sum_all(elementwise("sigmoid", W * Xr + bias * OneMatrix(1, k)))


def test_sum_sigmoid_layer_printed():
    # d 1ᵀσ(WX + b1ᵀ)1 / dW = σ'(WX + b1ᵀ) Xᵀ ;  d/db = σ'(WX + b1ᵀ) 1
    f = _sigmoid_layer()
    assert to_text(grad(f, W)) == "sigmoid'(W*X + b*1)*X.T"
    assert to_text(grad(f, bias)) == "sigmoid'(W*X + b*1)*1"
    assert to_latex(grad(f, W)) == r"\sigma'\left(W X + b \mathbb{1}\right) X^{T}"


@pytest.mark.parametrize("shape", [(2, 3, 4), (5, 1, 2), (1, 4, 3)])
def test_sum_sigmoid_layer_against_autograd(shape):
    mm, kk, pp = shape
    rng = np.random.default_rng(sum(shape))
    values = {"W": rng.standard_normal((mm, pp)), "X": rng.standard_normal((pp, kk)), "b": rng.standard_normal((mm, 1))}
    f = _sigmoid_layer()
    for wrt in (W, Xr, bias):
        fn = lambda t: torch.sigmoid(t["W"] @ t["X"] + t["b"]).sum()  # noqa: E731
        np.testing.assert_allclose(evaluate(grad(f, wrt), values), _torch_grad(fn, values, wrt.name), rtol=1e-10, atol=1e-12)


def test_nonsquare_aTXb():
    # SymPy gives an array (PermuteDims) form here; the engine stays in matrix notation
    a2, X2, b2 = MatrixSymbol("a", 3, 1), MatrixSymbol("X", 3, 4), MatrixSymbol("b", 4, 1)
    assert to_text(grad(a2.T * X2 * b2, X2)) == "a*b.T"
    assert to_text(grad(a2.T * X2 * b2, a2)) == "X*b"


def test_sympy_own_diff_is_wrong_where_engine_is_right():
    # SymPy 1.14: d log det X / dX == 0 (sympy issue 28618).  Ours is X⁻ᵀ; if SymPy is ever fixed,
    # this still checks ours is not 0.
    ours = grad(log(det(X)), X)
    assert to_text(ours) == "X.T**(-1)"
    values = _values(np.random.default_rng(0))
    assert np.abs(evaluate(ours, values)).max() > 0.01
