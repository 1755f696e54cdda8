"""Every matrix-form result against the exploded elementwise derivative (``sympy.diff`` on the
entries, independent of the engine's rules), sweeping random small shapes: gradients, JVPs and
HVPs.  Also: the cross-check itself catches a wrong form."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import sympy as sp
from sympy import Inverse, MatrixSymbol, OneMatrix, Trace, det, log

from symgrad.matrix import (
    CrossCheckError,
    LogSoftmaxRows,
    SoftmaxRows,
    check_grad,
    check_hvp,
    check_jvp,
    elementwise,
    frobenius_sq,
    grad,
    hadamard,
    random_values,
    sum_all,
)

r, c, q = sp.symbols("r c q", integer=True, positive=True)
Xsq, A, B = MatrixSymbol("X", r, r), MatrixSymbol("A", r, r), MatrixSymbol("B", r, r)
Xrect, Arect, Brect = MatrixSymbol("X", r, c), MatrixSymbol("A", q, r), MatrixSymbol("B", q, c)
a, b = MatrixSymbol("a", r, 1), MatrixSymbol("b", c, 1)
W, bias = MatrixSymbol("W", q, r), MatrixSymbol("b", q, 1)
T = MatrixSymbol("T", c, q)


def _spd(name, shape, rng):
    if name == "X" and shape[0] == shape[1]:
        M = rng.standard_normal(shape)
        return M @ M.T + shape[0] * np.eye(shape[0])
    return None


def _mlp_loss(act_out="tanh"):
    # one hidden layer, batch as rows: H = act(X Wᵀ + 1 bᵀ), loss = ‖H − T‖²/N
    Z = Xrect.T * W.T + OneMatrix(c, 1) * bias.T
    return (1 / c) * sum_all(hadamard(elementwise(act_out, Z) - T, elementwise(act_out, Z) - T))


W2 = MatrixSymbol("V2", q, q)


def _mlp2_loss(act, head="mse"):
    # two layers, batch as rows: Y = act(act(X Wᵀ + 1 bᵀ) V2ᵀ); an MSE head or BCE-with-logits
    # (softplus(Y) − T ⊙ Y, the form the importer builds for BCEWithLogitsLoss)
    H = elementwise(act, Xrect.T * W.T + OneMatrix(c, 1) * bias.T)
    Y = elementwise(act, H * W2.T) if head == "mse" else H * W2.T
    if head == "bce":
        return (1 / (c * q)) * sum_all(elementwise("softplus", Y, beta=1, threshold=sp.oo) - hadamard(T, Y))
    return (1 / c) * sum_all(hadamard(Y - T, Y - T))


# (id, f, wrt, square?)
CASES = [
    ("aTXb", a.T * Xrect * b, Xrect, False),
    ("trAX", Trace(A * Xsq), Xsq, True),
    ("trXtAX", Trace(Xsq.T * A * Xsq), Xsq, True),
    ("frob", frobenius_sq(Arect * Xrect - Brect), Xrect, False),
    ("logdet", log(det(Xsq)), Xsq, True),
    ("trXinvA", Trace(Inverse(Xsq) * A), Xsq, True),
    ("sum_sigmoid", sum_all(elementwise("sigmoid", W * Xrect + bias * OneMatrix(1, c))), W, False),
    ("sum_sigmoid_b", sum_all(elementwise("sigmoid", W * Xrect + bias * OneMatrix(1, c))), bias, False),
    ("mlp_tanh", _mlp_loss("tanh"), W, False),
    ("mlp_softplus", _mlp_loss("softplus"), bias, False),
    ("mlp_celu_X", _mlp_loss("celu"), Xrect, False),
    ("mlp_relu", _mlp2_loss("relu"), W, False),
    ("mlp_relu_b", _mlp2_loss("relu"), bias, False),
    ("mlp_sigmoid", _mlp2_loss("sigmoid"), W, False),
    ("mlp_sigmoid_V2", _mlp2_loss("sigmoid"), W2, False),
    ("mlp_tanh_bce", _mlp2_loss("tanh", "bce"), W, False),
    ("mlp_relu_bce_V2", _mlp2_loss("relu", "bce"), W2, False),
    ("softmax_ce", -sum_all(hadamard(T, LogSoftmaxRows(Xrect.T * W.T))), W, False),
    ("softmax_sq", sum_all(hadamard(SoftmaxRows(Xrect.T * W.T), T)), W, False),
]


def _shapes(seed, square):
    rng = np.random.default_rng(seed)
    for _ in range(3):
        rr, cc, qq = (int(v) for v in rng.integers(1, 4, size=3))
        if square:
            rr = max(rr, 2)
        yield {r: rr, c: cc, q: qq}


@pytest.mark.parametrize("case", CASES, ids=[x[0] for x in CASES])
def test_grad_matches_exploded(case):
    name, f, wrt, square = case
    for k, dims in enumerate(_shapes(zlib.crc32(name.encode()), square)):
        syms = f.atoms(MatrixSymbol)
        values = random_values(syms, dims, rng=k, sampler=_spd)
        check_grad(f, wrt, values, dims=dims).assert_ok()


@pytest.mark.parametrize("case", CASES, ids=[x[0] for x in CASES])
def test_jvp_and_hvp_match_exploded(case):
    name, f, wrt, square = case
    V = MatrixSymbol("V", *wrt.shape)
    dims = next(iter(_shapes(zlib.crc32(name.encode()) + 1, square)))
    values = random_values(f.atoms(MatrixSymbol) | {V}, dims, rng=7, sampler=_spd)
    check_jvp(f, {wrt: V}, values, dims=dims).assert_ok()
    check_hvp(f, wrt, V, values, dims=dims).assert_ok()


def test_matrix_valued_jvp():
    # F(X) = tanh(W X) is matrix valued: its JVP along V is tanh'(WX) ⊙ (W V)
    F = elementwise("tanh", W * Xrect)
    V = MatrixSymbol("V", r, c)
    dims = {r: 3, c: 2, q: 2}
    values = random_values({W, Xrect, V}, dims, rng=3)
    check_jvp(F, {Xrect: V}, values, dims=dims).assert_ok()
    check_jvp(F, {W: MatrixSymbol("V", q, r)}, random_values({W, Xrect, MatrixSymbol("V", q, r)}, dims, rng=4), dims=dims).assert_ok()


def test_crosscheck_catches_a_wrong_form():
    # a transposed gradient of a non-symmetric case must be flagged, with an assert_close-style message
    f = Trace(A * Xsq)
    dims = {r: 3}
    values = random_values({A, Xsq}, dims, rng=0)
    bad = check_grad(f, Xsq, values, dims=dims, matrix_form=A)  # the truth is Aᵀ
    assert not bad.ok and bad.mismatched > 0
    with pytest.raises(CrossCheckError, match="Mismatched elements"):
        bad.assert_ok()
    assert check_grad(f, Xsq, values, dims=dims, matrix_form=A.T).ok


def test_elementwise_of_product_does_not_recurse():
    # SymPy 1.14 raises RecursionError / ValueError differentiating these; the engine must not
    f = sum_all(elementwise("tanh", W * elementwise("tanh", Xrect)))
    g = grad(f, Xrect)
    dims = {r: 2, c: 3, q: 2}
    check_grad(f, Xrect, random_values({W, Xrect}, dims, rng=1), dims=dims, matrix_form=g).assert_ok()
