"""Note [Matrix expressions into the op graph]: SymPy matrix forwards as torch functions, and the
checks beyond the exploded engine's memory budget that they make possible."""

import numpy as np
import pytest
import sympy as sp
import torch

import symgrad as sg
from symgrad.errors import UnsupportedOp
from symgrad.matrix.to_torch import matrix_forward
from symgrad.testing_ops import with_backward

X, Y = sp.MatrixSymbol("X", 4, 3), sp.MatrixSymbol("Y", 3, 3)
a, b = sp.MatrixSymbol("a", 4, 1), sp.MatrixSymbol("b", 3, 1)
EXPRESSIONS = [  # (SymPy matrix expression, the same computed with numpy)
    (a.T * X * b, lambda v: v["a"].T @ v["X"] @ v["b"]),
    ((X * Y).applyfunc(sp.tanh), lambda v: np.tanh(v["X"] @ v["Y"])),
    (2 * sp.Trace(Y.inv()) + sp.Determinant(Y), lambda v: 2 * np.trace(np.linalg.inv(v["Y"])) + np.linalg.det(v["Y"])),
    (sp.HadamardProduct(X, X) * 3 - X * Y.T, lambda v: 3 * v["X"] * v["X"] - v["X"] @ v["Y"].T),
    (Y**3 + sp.Identity(3), lambda v: np.linalg.matrix_power(v["Y"], 3) + np.eye(3)),
    ((X.T * X).applyfunc(lambda t: sp.exp(-t**2) + sp.Abs(t)), lambda v: np.exp(-(v["X"].T @ v["X"]) ** 2) + np.abs(v["X"].T @ v["X"])),
]


@pytest.mark.parametrize("expr,numpy_form", EXPRESSIONS, ids=range(len(EXPRESSIONS)))
def test_the_torch_function_computes_the_expression(expr, numpy_form):
    g = torch.Generator().manual_seed(0)
    values = {"a": torch.randn(4, 1, generator=g, dtype=torch.float64),
              "X": torch.randn(4, 3, generator=g, dtype=torch.float64),
              "Y": torch.randn(3, 3, generator=g, dtype=torch.float64) + 3 * torch.eye(3, dtype=torch.float64),
              "b": torch.randn(3, 1, generator=g, dtype=torch.float64)}
    want = torch.as_tensor(numpy_form({n: t.numpy() for n, t in values.items()}), dtype=torch.float64)
    got = matrix_forward(expr, list(values), tuple(want.shape))(*values.values())
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)


def _bilinear(n: int, seed: int) -> tuple:
    """(a, W, b) MatrixSymbols of a bilinear form aᵀWb, and random float64 inputs named after them."""
    A, W, B = sp.MatrixSymbol("a", n, 1), sp.MatrixSymbol("W", n, n), sp.MatrixSymbol("b", n, 1)
    g = torch.Generator().manual_seed(seed)
    inputs = {"a": torch.randn(n, 1, generator=g, dtype=torch.float64),
              "W": torch.randn(n, n, generator=g, dtype=torch.float64),
              "b": torch.randn(n, 1, generator=g, dtype=torch.float64)}
    return A, W, B, inputs


def test_a_large_bilinear_form_is_checked_on_the_op_graph():
    A, W, B, inputs = _bilinear(200, seed=1)
    report = sg.check(lambda a, W, b: a.T @ W @ b, inputs, symbolic=A.T * W * B, wrt="W")
    assert report.passed and "graph" in report.meta["engine"]
    wrong = with_backward(lambda W: inputs["a"].T @ W @ inputs["b"], lambda W, gr: gr * (inputs["a"] @ inputs["b"].T) * 1.0001)
    assert not sg.check(lambda a, W, b: wrong(W), inputs, symbolic=A.T * W * B, wrt="W").passed
    other = sg.check(lambda a, W, b: (a.T @ W @ b) * 1.001, inputs, symbolic=A.T * W * B, wrt="W")
    assert not other.passed  # the torch function computes something else: its forward row fails


@pytest.mark.parametrize("engine", ["auto", "graph"])
def test_a_large_matrix_expression_with_no_torch_function(engine):
    """symgrad.check(None, inputs, symbolic=expr) beyond the exploded engine's size: the expression is
    written as torch ops (Note [Matrix expressions into the op graph]) and checked on the op graph."""
    A, W, B, inputs = _bilinear(40, seed=0)
    report = sg.check(None, inputs, symbolic=(A.T * W * B).applyfunc(sp.tanh), wrt="W", engine=engine, quiet=True)
    assert report.passed and report.meta["engine"].startswith("graph"), str(report)
    a, b = inputs["a"], inputs["b"]
    expected = (1 - torch.tanh(a.T @ inputs["W"] @ b) ** 2) * (a @ b.T)
    assert torch.allclose(torch.as_tensor(report["W"].expected), expected, rtol=1e-12, atol=1e-14)


def test_names_and_nodes_outside_the_lowering_are_refused_with_the_reason():
    Z = sp.MatrixSymbol("Z", 3, 3)
    with pytest.raises(UnsupportedOp, match="Z"):
        matrix_forward(Z * Y, ["Y"], (3, 3))
    with pytest.raises(UnsupportedOp, match="matrix exponential"):
        matrix_forward(sp.exp(Y), ["Y"], (3, 3))(torch.eye(3, dtype=torch.float64))


def test_entries_written_out_are_lowered_in_a_few_batched_ops():
    """Note [Entries written out] (symgrad/lower/batched.py): SymPy writes (a.T*W*b)[0, 0] out as n**2
    terms; the lowering reads them with a few gathers, so the traced op graph does not grow with n,
    and its values equal the node-by-node lowering's."""
    from torch.fx.experimental.proxy_tensor import make_fx

    sizes = {}
    for n in (8, 24):
        A, W, B, inputs = _bilinear(n, seed=2)
        entry = (A.T * W * B)[0, 0]
        expr = entry**2 + sp.sin(entry) * W[0, 1] - sp.exp(W[1, 1]) + sp.Piecewise((W[0, 0], W[1, 0] > 0), (0, True))
        forward = matrix_forward(expr, list(inputs), ())
        a, w, b = inputs.values()
        s = (a.T @ w @ b)[0, 0]
        want = s**2 + torch.sin(s) * w[0, 1] - torch.exp(w[1, 1]) + (w[0, 0] if w[1, 0] > 0 else 0.0)
        assert torch.allclose(forward(*inputs.values()), want, rtol=1e-12, atol=1e-12)
        sizes[n] = len(make_fx(forward)(*inputs.values()).graph.nodes)
    assert sizes[24] == sizes[8] < 200, sizes  # node by node: 24**2 products alone


def test_a_squared_entry_of_a_product_on_the_op_graph():
    A, W, B, inputs = _bilinear(40, seed=3)
    symbolic = (A.T * W * B)[0, 0] ** 2
    report = sg.check(lambda a, W, b: (a.T @ W @ b)[0, 0] ** 2, inputs, symbolic=symbolic, wrt="W", quiet=True)
    assert report.passed and report.meta["engine"].startswith("graph"), str(report)
    a, w, b = inputs.values()
    assert torch.allclose(torch.as_tensor(report["W"].expected), 2 * (a.T @ w @ b) * (a @ b.T), rtol=1e-12)
    wrong = with_backward(lambda W: (inputs["a"].T @ W @ inputs["b"])[0, 0] ** 2,
                          lambda W, g: g * 2 * (a.T @ W @ b) * (a @ b.T) * (1 + 1e-9))
    assert not sg.check(lambda a, W, b: wrong(W), inputs, symbolic=symbolic, wrt="W", quiet=True).passed
