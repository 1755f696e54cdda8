"""SymTensor semantics against torch: every case runs the same function on symbolic tensors and on
float64 torch tensors, and compares the SymPy result (evaluated by substitution) with torch's."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import symgrad as sg
from symgrad.errors import ShapeMismatch

from helpers import assert_matches_torch, evaluate, rng, run_both, time_limit


def _arr(shape, seed=0, low=-2.0, high=2.0):
    return rng(seed).uniform(low, high, size=shape)


# -- elementwise arithmetic and broadcasting ---------------------------------------------------
BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
}


@pytest.mark.parametrize("op", list(BINARY))
@settings(max_examples=15, deadline=None)
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3))
def test_binary_broadcasting_matches_torch(op, shapes):
    a_shape, b_shape = shapes.input_shapes
    a, b = _arr(a_shape, 1), _arr(b_shape, 2, 0.5, 2.0)  # b kept away from 0 for div
    got, want = run_both(BINARY[op], a, b)
    assert got.shape == want.shape == shapes.result_shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "fn",
    [
        lambda a: 2 + a,
        lambda a: 2 - a,
        lambda a: 3.0 * a,
        lambda a: 1.5 / a,
        lambda a: a**2,
        lambda a: 2**a,
        lambda a: -a,
        lambda a: +a,
        lambda a: a.pow(3),
        lambda a: a ** a,
    ],
    ids=["radd", "rsub", "rmul", "rtruediv", "pow", "rpow", "neg", "pos", "pow_method", "pow_tensor"],
)
def test_scalar_operands_and_pow(fn):
    assert_matches_torch(fn, _arr((2, 3), 3, 0.5, 2.0))


def test_pow_with_broadcast_tensor_exponent():
    assert_matches_torch(lambda a, b: a**b, _arr((2, 3), 4, 0.5, 2.0), _arr((3,), 5, -1.0, 2.0))


def test_incompatible_shapes_raise_shape_mismatch():
    with pytest.raises(ShapeMismatch, match=r"\(2, 3\) and \(2,\)"):
        sg.symbols("a", (2, 3)) + sg.symbols("b", (2,))


# -- matmul -----------------------------------------------------------------------------------
MATMUL_SHAPES = [
    ((3,), (3,)),  # dot -> scalar
    ((3,), (3, 2)),  # vector @ matrix
    ((2, 3), (3,)),  # matrix @ vector
    ((2, 3), (3, 4)),
    ((2, 2, 3), (3, 4)),  # batched @ matrix
    ((2, 3), (4, 3, 2)),  # matrix @ batched
    ((2, 1, 2, 3), (3, 3, 2)),  # batch dims broadcast
    ((3,), (2, 3, 2)),  # 1-d @ batched
    ((2, 2, 3), (3,)),  # batched @ 1-d
]


@pytest.mark.parametrize("a_shape,b_shape", MATMUL_SHAPES, ids=[f"{a}@{b}" for a, b in MATMUL_SHAPES])
def test_matmul_matches_torch(a_shape, b_shape):
    a, b = _arr(a_shape, 6), _arr(b_shape, 7)
    got, want = run_both(lambda x, y: x @ y, a, b)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    got2, _ = run_both(sg.matmul, a, b)
    np.testing.assert_allclose(got2, want, rtol=1e-12, atol=1e-12)


def test_matmul_methods_and_rmatmul():
    a, b = _arr((2, 3), 8), _arr((3, 2), 9)
    assert_matches_torch(lambda x, y: x.mm(y), a, b)
    assert_matches_torch(lambda x, y: x.matmul(y), a, b)
    # numpy array on the left: SymTensor.__rmatmul__ (numpy defers thanks to __array_priority__)
    x = sg.symbols("x", (3, 2))
    out = a @ x
    assert out.shape == (2, 2)
    np.testing.assert_allclose(evaluate(out, {x: b}), a @ b, rtol=1e-12)


@pytest.mark.parametrize("a_shape,b_shape", [((2, 3), (2, 3)), ((3,), (4,)), ((2, 3, 4), (2, 3))])
def test_matmul_shape_errors(a_shape, b_shape):
    with pytest.raises(ShapeMismatch, match="matmul"):
        sg.symbols("a", a_shape) @ sg.symbols("b", b_shape)


def test_matmul_of_scalars_is_refused():
    with pytest.raises(ShapeMismatch, match="at least one dimension"):
        sg.symbols("a", ()) @ sg.symbols("b", (2,))


# -- reductions -------------------------------------------------------------------------------
REDUCE_ARGS = [dict(), dict(dim=0), dict(dim=1), dict(dim=-1), dict(dim=(0, 2)), dict(dim=1, keepdim=True),
               dict(dim=(0, -1), keepdim=True)]


@pytest.mark.parametrize("kwargs", REDUCE_ARGS, ids=str)
@pytest.mark.parametrize("name", ["sum", "mean"])
def test_reductions_match_torch(name, kwargs):
    a = _arr((2, 3, 4), 10)
    got, want = run_both(lambda x: getattr(x, name)(**kwargs), a)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    got2, _ = run_both(lambda x: getattr(sg, name)(x, **kwargs), a)
    np.testing.assert_allclose(got2, want, rtol=1e-12, atol=1e-12)


def test_sum_of_empty_dim_list_and_scalar():
    assert_matches_torch(lambda x: x.sum(), _arr((), 11))
    assert_matches_torch(lambda x: x.mean(0), _arr((5,), 11))


# -- views and indexing ------------------------------------------------------------------------
VIEWS = {
    "T": lambda x: x[0].T,
    "t": lambda x: x[0].t(),
    "transpose": lambda x: x.transpose(0, 2),
    "transpose_neg": lambda x: x.transpose(-1, -2),
    "permute": lambda x: x.permute(2, 0, 1),
    "permute_tuple": lambda x: x.permute((1, 2, 0)),
    "reshape": lambda x: x.reshape(4, -1),
    "reshape_tuple": lambda x: x.reshape((3, 8)),
    "view": lambda x: x.view(2, 12),
    "flatten": lambda x: x.flatten(),
    "flatten_1": lambda x: x.flatten(1),
    "flatten_0_1": lambda x: x.flatten(0, 1),
    "unsqueeze": lambda x: x.unsqueeze(1),
    "unsqueeze_neg": lambda x: x.unsqueeze(-1),
    "squeeze": lambda x: x.unsqueeze(0).unsqueeze(-1).squeeze(),
    "squeeze_dim": lambda x: x.unsqueeze(1).squeeze(1),
    "squeeze_dim_noop": lambda x: x.squeeze(0),
    "expand": lambda x: x[:, :1, :].expand(2, 3, 4),
    "expand_neg": lambda x: x[:, :, :1].expand(-1, -1, 5),
    "expand_new_dim": lambda x: x[0].expand(2, 3, 4),
    "index_int": lambda x: x[1],
    "index_neg": lambda x: x[-1, -2],
    "index_slice": lambda x: x[:, 1:, ::2],
    "index_ellipsis": lambda x: x[..., 0],
    "index_none": lambda x: x[None, 0],
    "index_list": lambda x: x[:, [2, 0]],
    "index_scalar": lambda x: x[1, 2, 3],
}


@pytest.mark.parametrize("name", list(VIEWS))
def test_views_and_indexing_match_torch(name):
    got, want = run_both(VIEWS[name], _arr((2, 3, 4), 12))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=0)


def test_shape_helpers_and_iteration():
    x = sg.symbols("x", (2, 3))
    t = torch.zeros(2, 3)
    assert x.shape == tuple(t.shape) and x.ndim == t.ndim == x.dim()
    assert x.size() == tuple(t.size()) and x.size(1) == t.size(1)
    assert x.numel() == t.numel() and len(x) == len(t)
    rows = list(x)
    assert len(rows) == 2 and rows[1].shape == (3,)
    assert str(rows[1].data[2]) == "x[1, 2]"


def test_bad_reshape_raises_shape_mismatch():
    with pytest.raises(ShapeMismatch, match=r"\(2, 3\) to \(4, 2\)"):
        sg.symbols("x", (2, 3)).reshape(4, 2)


def test_item_and_to_sympy():
    x = sg.symbols("x", (2, 2))
    assert x.to_sympy() == sp.Matrix(2, 2, list(x.data.ravel()))
    assert (x.sum()).item() == sp.Add(*x.data.ravel())
    with pytest.raises(ShapeMismatch, match="one element"):
        x.item()


def test_symbols_are_named_after_input_and_index():
    x = sg.symbols("W", (2, 3))
    assert str(x.data[1, 2]) == "W[1, 2]"
    assert str(sg.symbols("s").item()) == "s"


def test_as_symtensor_accepts_sympy_numpy_torch_and_lists():
    m = sp.Matrix([[1, 2], [3, 4]])
    for value in (m, sp.Array([[1, 2], [3, 4]]), np.array([[1, 2], [3, 4]]), torch.tensor([[1, 2], [3, 4]]),
                  [[1, 2], [3, 4]]):
        st_ = sg.as_symtensor(value)
        assert st_.shape == (2, 2)
        assert [[int(e) for e in row] for row in st_.tolist()] == [[1, 2], [3, 4]]


def test_elementwise_methods_come_from_the_op_table():
    a = _arr((2, 3), 13)
    assert_matches_torch(lambda x: x.tanh(), a)
    assert_matches_torch(lambda x: x.sigmoid(), a)
    assert_matches_torch(lambda x: x.exp(), a)
    with pytest.raises(AttributeError, match="no method 'frobnicate'"):
        sg.symbols("x", (2,)).frobnicate()


# -- functions of both worlds ------------------------------------------------------------------
FUNCTIONS = {
    "softmax0": (lambda x: sg.softmax(x, 0), lambda x: torch.softmax(x, 0)),
    "softmax-1": (lambda x: sg.softmax(x, -1), lambda x: torch.softmax(x, -1)),
    "log_softmax": (lambda x: sg.log_softmax(x, 1), lambda x: torch.log_softmax(x, 1)),
    "method_softmax": (lambda x: x.softmax(1), lambda x: torch.softmax(x, 1)),
    "clamp_min": (lambda x: sg.clamp(x, min=-0.5), lambda x: torch.clamp(x, min=-0.5)),
    "clamp_max": (lambda x: sg.clamp(x, max=0.3), lambda x: torch.clamp(x, max=0.3)),
    "gelu_tanh": (lambda x: sg.gelu(x, approximate="tanh"), lambda x: F.gelu(x, approximate="tanh")),
    "gelu": (lambda x: sg.gelu(x), lambda x: F.gelu(x)),
    "leaky": (lambda x: sg.leaky_relu(x, 0.2), lambda x: F.leaky_relu(x, 0.2)),
    "elu_alpha": (lambda x: sg.elu(x, alpha=0.7), lambda x: F.elu(x, alpha=0.7)),
    "celu": (lambda x: sg.celu(x, 1.5), lambda x: F.celu(x, 1.5)),
    "softplus": (lambda x: sg.softplus(x, beta=2.0, threshold=1.0), lambda x: F.softplus(x, beta=2.0, threshold=1.0)),
    "hardtanh": (lambda x: sg.hardtanh(x, -0.5, 0.5), lambda x: F.hardtanh(x, -0.5, 0.5)),
    "relu_inplace_kw": (lambda x: sg.relu(x, inplace=False), lambda x: F.relu(x)),
}


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_functions_match_torch_reference(name):
    sym_fn, torch_fn = FUNCTIONS[name]
    a = _arr((2, 3), 14)
    x = sg.symbols("x", a.shape)
    got = evaluate(sg.as_symtensor(sym_fn(x)), {x: a})
    want = torch_fn(torch.tensor(a)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # the same sg function on a torch tensor is torch's
    np.testing.assert_allclose(sym_fn(torch.tensor(a)).numpy(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,torch_fn", [("maximum", torch.maximum), ("minimum", torch.minimum)])
def test_maximum_minimum_values_and_tie_gradient(name, torch_fn):
    a = np.array([1.0, 2.0, -1.0])
    b = np.array([1.0, 0.5, 3.0])  # a tie at index 0
    got, want = run_both(getattr(sg, name), a, b)
    np.testing.assert_allclose(got, want)
    # torch splits the gradient at a tie: d/da = 1/2 there; the symbolic form must agree.
    ta = torch.tensor(a, requires_grad=True)
    (g,) = torch.autograd.grad(torch_fn(ta, torch.tensor(b)).sum(), ta)
    x = sg.symbols("a", (3,))
    out = getattr(sg, name)(x, b).sum().item()
    sym_grad = [float(sp.diff(out, s).subs({s2: v for s2, v in zip(x.data, a)})) for s in x.data]
    np.testing.assert_allclose(sym_grad, g.numpy())


# -- losses ----------------------------------------------------------------------------------
REDUCTIONS = ["mean", "sum", "none"]


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_and_l1_loss(reduction):
    a, b = _arr((2, 3), 15), _arr((2, 3), 16)
    for sym_fn, torch_fn in ((sg.mse_loss, F.mse_loss), (sg.l1_loss, F.l1_loss)):
        got, _ = run_both(lambda x, y: sym_fn(x, y, reduction=reduction), a, b)
        want = torch_fn(torch.tensor(a), torch.tensor(b), reduction=reduction).numpy()
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", ["none", "weight", "pos_weight", "both"])
def test_binary_cross_entropy_with_logits(reduction, weighted):
    z, y = _arr((2, 3), 17, -4, 4), rng(18).uniform(0, 1, (2, 3))
    w = rng(19).uniform(0.5, 2, (2, 3)) if weighted in ("weight", "both") else None
    pw = rng(20).uniform(0.5, 3, (3,)) if weighted in ("pos_weight", "both") else None
    zs, ys = sg.symbols("z", z.shape), sg.symbols("y", y.shape)
    out = sg.binary_cross_entropy_with_logits(zs, ys, weight=w, reduction=reduction, pos_weight=pw)
    got = evaluate(sg.as_symtensor(out), {zs: z, ys: y})
    T = lambda a: None if a is None else torch.tensor(a)  # noqa: E731
    want = F.binary_cross_entropy_with_logits(T(z), T(y), weight=T(w), reduction=reduction, pos_weight=T(pw)).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy(reduction):
    p, y = rng(21).uniform(0.05, 0.95, (4,)), rng(22).uniform(0, 1, (4,))
    w = rng(23).uniform(0.5, 2, (4,))
    got, _ = run_both(lambda a, b: sg.binary_cross_entropy(a, b, weight=w if isinstance(a, sg.SymTensor) else torch.tensor(w),
                                                           reduction=reduction), p, y)
    want = F.binary_cross_entropy(torch.tensor(p), torch.tensor(y), torch.tensor(w), reduction=reduction).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("target_kind", ["indices", "probabilities", "unbatched"])
def test_cross_entropy(reduction, target_kind):
    if target_kind == "unbatched":
        logits, target = _arr((4,), 24), torch.tensor(2)
    else:
        logits = _arr((3, 4), 25)
        target = torch.tensor([0, 3, 1]) if target_kind == "indices" else torch.softmax(torch.tensor(_arr((3, 4), 26)), 1)
    x = sg.symbols("x", logits.shape)
    got = evaluate(sg.as_symtensor(sg.cross_entropy(x, target, reduction=reduction)), {x: logits})
    want = F.cross_entropy(torch.tensor(logits), target, reduction=reduction).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_loss_shape_and_argument_errors():
    a, b = sg.symbols("a", (2, 3)), sg.symbols("b", (3,))
    for fn in (sg.mse_loss, sg.l1_loss, sg.binary_cross_entropy, sg.binary_cross_entropy_with_logits):
        with pytest.raises(ShapeMismatch, match=r"\(2, 3\).*\(3,\)"):
            fn(a, b)
    with pytest.raises(ValueError, match="reduction"):
        sg.mse_loss(a, a, reduction="avg")
    with pytest.raises(ShapeMismatch, match="class-index target"):
        sg.cross_entropy(sg.symbols("x", (3, 4)), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="class index 7"):
        sg.cross_entropy(sg.symbols("x", (2, 4)), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="approximate"):
        sg.gelu(a, approximate="fast")


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(0, 10_000))
def test_linear_layer_matches_F_linear(n, k, m, seed):
    x, w, b = _arr((n, k), seed), _arr((m, k), seed + 1), _arr((m,), seed + 2)
    got, _ = run_both(lambda x, w, b: x @ w.T + b, x, w, b)
    want = F.linear(torch.tensor(x), torch.tensor(w), torch.tensor(b)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# Regression: with SymPy Piecewise forms, an op applied to an expression already holding Piecewise
# terms made SymPy fold every inner branch into the condition (2**width pieces; width 10 died with
# RecursionError).  Two layers of width 8 must build in well under a few seconds.
@pytest.mark.parametrize("act", ["relu", "celu"])
def test_two_layer_piecewise_network_builds_quickly(act):
    # Two layers of width 8 are tiny (64 weights); building them must not take seconds.
    x, W1, W2 = sg.symbols("x", (8,)), sg.symbols("W1", (8, 8)), sg.symbols("W2", (8, 8))
    fn = getattr(sg, act)
    with time_limit(3.0):
        out = fn(W2 @ fn(W1 @ x)).sum()
    a = _arr((8,), 30)
    w1, w2 = _arr((8, 8), 31), _arr((8, 8), 32)
    ref = getattr(F, act)(torch.tensor(w2) @ getattr(F, act)(torch.tensor(w1) @ torch.tensor(a))).sum()
    np.testing.assert_allclose(evaluate(out, {x: a, W1: w1, W2: w2}), ref.numpy(), rtol=1e-10)


def test_comparisons_are_entrywise_and_have_no_truth_value():
    """``==``/``!=`` are torch's entrywise comparisons (``x * (x == c)`` is a mask), so a SymTensor
    has no truth value unless it is one number, as a torch tensor has none beyond one entry."""
    import pytest

    x, y = sg.symbols("x", (2,)), sg.symbols("y", (2,))
    assert (x == x).shape == (2,) and (x != y).shape == (2,)
    with pytest.raises(TypeError, match="ambiguous"):
        bool(x == y)
    with pytest.raises(TypeError, match="ambiguous"):
        x in [y]  # noqa: B015 - what the truth value guards
    assert x in [x] and bool(sg.as_symtensor(np.array([1.0], object)))
