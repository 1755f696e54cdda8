"""symgrad.check end to end: every `via`, every quantity, plain SymPy inputs, fn=None lowering,
custom autograd.Functions with subtle bugs, float32 without false alarms, NaN/inf.

Expected closed forms and expected worst indices are derived here by hand (numpy), never read
back from symgrad.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import sympy as sp
import torch

import symgrad as sg
from symgrad.autograd import VIAS
from symgrad.compare import compare
from symgrad.reference import Reference

from helpers import DTYPES

SEEDS = [0, 1, 2]


def _t(a, dtype=torch.float64):
    return torch.as_tensor(np.asarray(a), dtype=dtype)


# -- every via ---------------------------------------------------------------------------------
def _vec(x, W):
    return sg.tanh(x @ W) * x[:2]


def _scalar(x, W):
    return (sg.tanh(x @ W) * x[:2]).sum()


def _via_kwargs(via, dtype):
    q = VIAS[via]
    kw = {}
    if q == "vjp":
        kw["v"] = _t([0.3, -1.2], dtype)
    if q == "jvp":
        kw["tangents"] = {"x": _t([1.0, -0.5, 2.0], dtype), "W": _t(np.arange(6.0).reshape(3, 2) / 5, dtype)}
    return (_scalar if q in ("grad", "hessian") else _vec), kw


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("via", list(VIAS))
def test_every_via_passes_on_a_correct_function(via, dtype):
    torch.manual_seed(0)
    x, W = torch.randn(3, dtype=dtype), torch.randn(3, 2, dtype=dtype)
    fn, kw = _via_kwargs(via, dtype)
    report = sg.check(fn, {"x": x, "W": W}, via=via, **kw)
    assert report.passed, report.to_text()
    assert report.meta["via"] == via and report.meta["quantity"] == VIAS[via]
    names = [r.name for r in report.records]
    q = VIAS[via]
    if q == "hessian":
        assert names[1:] == ["(x, x)", "(x, W)", "(W, x)", "(W, W)"]
        assert report["(x, W)"].shape == (3, 3, 2)
    elif q == "jvp":
        assert names[1:] == ["jvp"] and report["jvp"].shape == (2,)
    elif q == "jacobian":
        assert report["W"].shape == (2, 3, 2)
    else:
        assert report["x"].shape == (3,) and report["W"].shape == (3, 2)


def test_closed_forms_match_hand_derivations():
    # f(x) = sum((x + 1)**2): grad 2(x + 1), Hessian 2 I, Jacobian of (x+1)**2 is diag 2(x+1).
    x = _t([0.5, -2.0, 3.0])
    g = sg.check(lambda x: ((x + 1) ** 2).sum(), {"x": x})
    np.testing.assert_allclose(g["x"].expected, 2 * (x.numpy() + 1))
    h = sg.check(lambda x: ((x + 1) ** 2).sum(), {"x": x}, via="functional.hessian")
    np.testing.assert_allclose(h["(x, x)"].expected, 2 * np.eye(3))
    j = sg.check(lambda x: (x + 1) ** 2, {"x": x})
    assert j.meta["via"] == "functional.jacobian"
    np.testing.assert_allclose(j["x"].expected, np.diag(2 * (x.numpy() + 1)))
    v = _t([1.0, 2.0, -1.0])
    p = sg.check(lambda x: (x + 1) ** 2, {"x": x}, v=v)  # y.backward(v)
    np.testing.assert_allclose(p["x"].expected, v.numpy() * 2 * (x.numpy() + 1))
    t = _t([0.1, 0.2, 0.3])
    q = sg.check(lambda x: (x + 1) ** 2, {"x": x}, via="func.jvp", tangents=t)
    np.testing.assert_allclose(q["jvp"].expected, 2 * (x.numpy() + 1) * t.numpy())


@pytest.mark.parametrize("calls", [1, 2, 3])
def test_backward_calls_accumulate(calls):
    # seed 002: backward(ones) on (inp + 1)**2 at eye(5) gives 2(inp + 1); each further call adds it again.
    inp = torch.eye(5, dtype=torch.float64)
    r = sg.check(lambda inp: (inp + 1).pow(2), {"inp": inp}, v=torch.ones(5, 5, dtype=torch.float64), backward_calls=calls)
    assert r.passed, r.to_text()
    np.testing.assert_allclose(r["inp"].expected, calls * 2 * (np.eye(5) + 1))


def test_wrt_selects_inputs_and_integer_inputs_are_constants():
    x, W = _t([1.0, 2.0]), _t([[1.0, -1.0], [0.5, 2.0]])
    idx = torch.tensor([1, 0])
    r = sg.check(lambda x, W, idx: (x[idx] @ W).sum(), {"x": x, "W": W, "idx": idx}, symbolic=lambda x, W, idx: (x[[1, 0]] @ W).sum(), wrt="W")
    assert [rec.name for rec in r.records] == ["output", "W"]
    np.testing.assert_allclose(r["W"].expected, np.outer(x.numpy()[[1, 0]], np.ones(2)))
    # default wrt: the inputs with requires_grad
    r2 = sg.check(lambda x, W: (x @ W).sum(), {"x": x, "W": W.clone().requires_grad_()})
    assert [rec.name for rec in r2.records] == ["output", "W"]


def test_inputs_as_tuple_are_named_after_parameters():
    r = sg.check(lambda alpha, beta: (alpha * beta).sum(), (_t([1.0, 2.0]), _t([3.0, 4.0])))
    assert [rec.name for rec in r.records] == ["output", "alpha", "beta"]
    np.testing.assert_allclose(r["alpha"].expected, [3.0, 4.0])


# -- plain SymPy inputs --------------------------------------------------------------------------
def test_matrix_symbol_expression_seed003():
    # d(a^T X b)/dX = a b^T (seed 003's own numbers)
    a = _t([[1], [2], [3.0], [4]])
    X = _t([[1, 2, 3], [5, 6, 7], [8, 9, 10], [5, 4, 3.0]])
    b = _t([[2], [3], [4.0]])
    A, XS, B = sp.MatrixSymbol("a", 4, 1), sp.MatrixSymbol("X", 4, 3), sp.MatrixSymbol("b", 3, 1)
    r = sg.check(lambda a, X, b: a.view(1, -1).mm(X).mm(b), {"a": a, "X": X, "b": b}, symbolic=A.T * XS * B, wrt="X")
    assert r.passed, r.to_text()
    np.testing.assert_allclose(r["X"].expected, a.numpy() @ b.numpy().T)


def test_matrix_symbol_matrix_output_with_ones_cotangent():
    # F = A X, backward(ones_like(F)) -> X.grad = A^T 1 1^T
    A = _t([[1, 2], [3, 4.0]])
    X = _t([[1, 2, 3], [4, 5, 6.0]])
    AS, XS = sp.MatrixSymbol("A", 2, 2), sp.MatrixSymbol("X", 2, 3)
    r = sg.check(lambda A, X: A.mm(X), {"A": A, "X": X}, symbolic=AS * XS, wrt="X", v=torch.ones(2, 3, dtype=torch.float64))
    assert r.passed
    np.testing.assert_allclose(r["X"].expected, [[4, 4, 4], [6, 6, 6]])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matrix_of_symbols_with_symbols_map_and_applyfunc(dtype):
    P = sp.Matrix(2, 2, sp.symbols("p0:4", real=True))
    expr = sp.Add(*P.applyfunc(lambda e: sp.sin(e) * sp.exp(e / 2)))
    x = _t([[0.1, -0.7], [1.3, 2.0]], dtype)
    r = sg.check(lambda x: (torch.sin(x) * torch.exp(x / 2)).sum(), {"x": x}, symbolic=expr, symbols_map={"x": P})
    assert r.passed, r.to_text()
    xv = x.double().numpy()
    np.testing.assert_allclose(r["x"].expected, np.exp(xv / 2) * (np.cos(xv) + np.sin(xv) / 2), rtol=1e-12)


def test_sympy_matrix_output_gives_a_jacobian():
    P = sp.Matrix(sp.symbols("q0:3", real=True))  # a 3x1 column
    x = _t([0.2, 0.4, -1.0])
    r = sg.check(lambda x: (torch.tanh(x) * x[0]).reshape(3, 1), {"x": x},
                 symbolic=P.applyfunc(sp.tanh) * P[0], symbols_map={"x": P})
    assert r.passed, r.to_text()
    xv = x.numpy()
    # d(tanh(x_i) x_0)/dx_j = delta_ij (1 - tanh(x_i)**2) x_0 + delta_j0 tanh(x_i)
    jac = np.diag((1 - np.tanh(xv) ** 2) * xv[0])
    jac[:, 0] += np.tanh(xv)
    np.testing.assert_allclose(r["x"].expected, jac.reshape(3, 1, 3), rtol=1e-12)


def test_named_scalar_symbol_and_any_sympy_function():
    s = sp.Symbol("s")
    v = _t(0.7)
    r = sg.check(None, {"s": v}, symbolic=sp.erf(s) * sp.atan(s) + sp.sinh(s))
    assert r.passed, r.to_text()
    sv = 0.7
    expected = 2 / math.sqrt(math.pi) * math.exp(-sv**2) * math.atan(sv) + math.erf(sv) / (1 + sv**2) + math.cosh(sv)
    assert float(r["s"].expected) == pytest.approx(expected, rel=1e-12)


# -- fn=None: the symbolic forward lowered to torch -------------------------------------------------
def _q(n):
    return sp.Matrix(sp.symbols(f"q0:{n}", real=True))


def test_lowering_heaviside_no_torch_function_needed():
    q = _q(3)
    x = _t([-1.0, 0.5, 2.0])
    r = sg.check(None, {"x": x}, symbolic=sum(qi**2 * sp.Heaviside(qi) for qi in q), symbols_map={"x": q})
    assert r.passed, r.to_text()
    np.testing.assert_allclose(r["x"].expected, [0.0, 1.0, 4.0])


@pytest.mark.parametrize(
    "make,expected",
    [
        (lambda q: sum(sp.Max(qi, 0) for qi in q), lambda x: (x > 0).astype(float)),
        (lambda q: sum(sp.Abs(qi) for qi in q), lambda x: np.sign(x)),
        (lambda q: sum(sp.Min(qi, 1) * qi for qi in q), lambda x: np.where(x < 1, 2 * x, 1.0)),
    ],
    ids=["Max", "Abs", "Min"],
)
def test_lowering_max_abs_min(make, expected):
    q = _q(3)
    x = _t([-1.5, 0.5, 2.0])  # away from the kinks
    r = sg.check(None, {"x": x}, symbolic=make(q), symbols_map={"x": q})
    assert r.passed, r.to_text()
    np.testing.assert_allclose(r["x"].expected, expected(x.numpy()))


_SYMPY_BACKEND_SCRIPT = """
import numpy as np, sympy as sp, torch, symgrad as sg
q = sp.Matrix(sp.symbols("q0:3", real=True))
x = torch.tensor([-1.5, 0.5, 2.0], dtype=torch.float64)
r = sg.check(None, {"x": x}, symbolic=sum(sp.Max(qi, 0) + sp.Abs(qi) for qi in q), symbols_map={"x": q}, backend="sympy")
assert r.passed, r.to_text()
np.testing.assert_allclose(r["x"].expected, (x.numpy() > 0) + np.sign(x.numpy()))
print("OK")
"""


def test_lowering_max_abs_with_sympy_backend():
    # The same as above through SymPy's own diff: Max -> torch.maximum, Abs -> torch.abs.  Run in a
    # subprocess: a crash inside symengine (a segfault) must fail this test, not end the session.
    proc = subprocess.run([sys.executable, "-c", _SYMPY_BACKEND_SCRIPT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-2000:]


def test_lowering_matrix_symbol_expression_all_inputs():
    a, X = _t([[1.0], [2.0]]), _t([[1.0, -1.0], [0.5, 3.0]])
    A, XS = sp.MatrixSymbol("a", 2, 1), sp.MatrixSymbol("X", 2, 2)
    r = sg.check(None, {"a": a, "X": X}, symbolic=A.T * XS * A)
    assert r.passed
    # d(a^T X a)/da = (X + X^T) a ; d/dX = a a^T
    np.testing.assert_allclose(r["a"].expected, (X.numpy() + X.numpy().T) @ a.numpy())
    np.testing.assert_allclose(r["X"].expected, a.numpy() @ a.numpy().T)


# -- custom autograd.Functions: correct ones pass, subtly wrong ones are caught -----------------
class Cube(torch.autograd.Function):
    """x**3 with backward 3x**2 * factor and a matching jvp (so every via sees the same bug)."""

    factor = 1.0
    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x**3

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)

    @classmethod
    def backward(cls, ctx, g):
        (x,) = ctx.saved_tensors
        return g * 3 * x**2 * cls.factor

    @classmethod
    def jvp(cls, ctx, t):
        (x,) = ctx.saved_tensors
        return t * 3 * x**2 * cls.factor


class BadCube(Cube):
    factor = 1 + 1e-4


class Elu(torch.autograd.Function):
    """ELU(alpha=1.5); the bug variant writes the negative branch as out + 1 instead of out + alpha."""

    alpha = 1.5
    bug = False

    @staticmethod
    def forward(ctx, x):
        out = torch.where(x > 0, x, Elu.alpha * (torch.exp(x) - 1))
        ctx.save_for_backward(x, out)
        return out

    @classmethod
    def backward(cls, ctx, g):
        x, out = ctx.saved_tensors
        neg = out + (1.0 if cls.bug else cls.alpha)
        return g * torch.where(x > 0, torch.ones_like(x), neg)


class BadElu(Elu):
    bug = True


class MatMul(torch.autograd.Function):
    """A @ X; the bug variant returns A @ g for X's gradient (a missing transpose)."""

    bug = False

    @staticmethod
    def forward(ctx, A, X):
        ctx.save_for_backward(A, X)
        return A @ X

    @classmethod
    def backward(cls, ctx, g):
        A, X = ctx.saved_tensors
        return g @ X.T, (A if cls.bug else A.T) @ g


class BadMatMul(MatMul):
    bug = True


class XSin(torch.autograd.Function):
    """x sin x; the bug variant drops the sin x term of the product rule."""

    bug = False

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * torch.sin(x)

    @classmethod
    def backward(cls, ctx, g):
        (x,) = ctx.saved_tensors
        d = x * torch.cos(x) if cls.bug else torch.sin(x) + x * torch.cos(x)
        return g * d


class BadXSin(XSin):
    bug = True


def _cube_case(seed, dtype, bad):
    r = np.random.default_rng(seed)
    x = r.uniform(-1, 1, 6)
    k = int(r.integers(6))
    x[k] = 2.5 * r.choice([-1, 1])  # the largest |3 x**2|, hence the largest error of a factor bug
    fn = BadCube if bad else Cube
    check = dict(fn=lambda x: fn.apply(x).sum(), inputs={"x": _t(x, dtype)}, symbolic=lambda x: (x**3).sum())
    return check, "x", (k,)


def _elu_case(seed, dtype, bad):
    r = np.random.default_rng(seed)
    x = r.uniform(0.1, 2, 5)
    k = int(r.integers(5))
    x[k] = -r.uniform(0.2, 2)  # the only entry on the negative branch
    fn = BadElu if bad else Elu
    check = dict(fn=lambda x: fn.apply(x).sum(), inputs={"x": _t(x, dtype)}, symbolic=lambda x: sg.elu(x, 1.5).sum())
    return check, "x", (k,)


def _matmul_case(seed, dtype, bad):
    r = np.random.default_rng(seed)
    A, X, C = r.normal(size=(4, 4)), r.normal(size=(4, 3)), r.normal(size=(4, 3))
    diff = np.abs(A.T @ C - A @ C)  # |right - wrong| for X's gradient, computed by hand
    fn = BadMatMul if bad else MatMul
    check = dict(fn=lambda A, X: fn.apply(A, X), inputs={"A": _t(A, dtype), "X": _t(X, dtype)},
                 symbolic=lambda A, X: A @ X, v=_t(C, dtype))
    return check, "X", tuple(int(i) for i in np.unravel_index(np.argmax(diff), diff.shape))


def _xsin_case(seed, dtype, bad):
    r = np.random.default_rng(seed)
    x = r.uniform(-0.3, 0.3, (2, 3))  # |sin x| < 0.3 ...
    k = (int(r.integers(2)), int(r.integers(3)))
    x[k] = np.pi / 2  # ... except here, where the missing term sin x = 1 is largest
    y = _t(r.uniform(-1, 1, (2, 3)), dtype)
    fn = BadXSin if bad else XSin
    check = dict(fn=lambda y, x: (y * XSin.apply(y) + fn.apply(x)).sum(), inputs={"y": y, "x": _t(x, dtype)},
                 symbolic=lambda y, x: (y * y * y.sin() + x * x.sin()).sum())
    return check, "x", k


CASES = {"factor 1+1e-4": _cube_case, "wrong on one branch": _elu_case, "transposed": _matmul_case,
         "missing term": _xsin_case}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_buggy_backward_is_caught_and_located(case, dtype, seed):
    kwargs, name, index = CASES[case](seed, dtype, bad=True)
    report = sg.check(kwargs.pop("fn"), kwargs.pop("inputs"), **kwargs)
    assert not report.passed
    assert [r.name for r in report.failures] == [name], report.to_text()
    rec = report[name]
    assert rec.verdict == "FAIL"
    assert rec.abs_index == index, report.to_text()
    where = f"{name}[{', '.join(map(str, index))}]"
    assert where in rec.message()
    assert where in report.to_text()
    with pytest.raises(sg.GradientMismatch, match=__import__("re").escape(where)):
        report.raise_for_failure()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_correct_backward_passes(case, dtype, seed):
    kwargs, _, _ = CASES[case](seed, dtype, bad=False)
    report = sg.check(kwargs.pop("fn"), kwargs.pop("inputs"), **kwargs)
    assert report.passed, report.to_text()
    sg.assert_correct(*(lambda k: (k.pop("fn"), k.pop("inputs")))(d := CASES[case](seed, dtype, bad=False)[0]), **d)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("via", list(VIAS))
def test_factor_bug_is_caught_by_every_via(via, dtype):
    x = _t([0.3, -2.0, 0.7], dtype)  # |x| largest at index 1
    q = VIAS[via]
    kw = {}
    if q == "vjp":
        kw["v"] = torch.ones(3, dtype=dtype)
    if q == "jvp":
        kw["tangents"] = torch.ones(3, dtype=dtype)
    scalar = q in ("grad", "hessian")
    fn = (lambda x: BadCube.apply(x).sum()) if scalar else (lambda x: BadCube.apply(x))
    sym = (lambda x: (x**3).sum()) if scalar else (lambda x: x**3)
    report = sg.check(fn, {"x": x}, symbolic=sym, via=via, **kw)
    assert not report.passed
    failing = report.failures[0]
    expected_index = {"grad": (1,), "vjp": (1,), "jvp": (1,), "jacobian": (1, 1), "hessian": (1, 1)}[q]
    assert failing.abs_index == expected_index, report.to_text()
    good = (lambda x: Cube.apply(x).sum()) if scalar else (lambda x: Cube.apply(x))
    assert sg.check(good, {"x": x}, symbolic=sym, via=via, **kw).passed


# -- float32 without false alarms --------------------------------------------------------------------
def _mlp(x, W1, b1, W2, b2, t):
    h = sg.tanh(x @ W1 + b1)
    return sg.mse_loss(sg.softplus(h @ W2 + b2), t)


def _classifier(x, W1, b1, W2, b2, t):
    h = sg.sigmoid(x @ W1 + b1)
    return sg.binary_cross_entropy_with_logits(h @ W2 + b2, t)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("model", [_mlp, _classifier], ids=["mlp-mse", "mlp-bce"])
def test_float32_small_mlp_has_no_false_alarm(model, seed):
    g = torch.Generator().manual_seed(seed)
    shapes = {"x": (4, 3), "W1": (3, 5), "b1": (5,), "W2": (5, 2), "b2": (2,)}
    inputs = {k: torch.randn(*s, generator=g) * 2 for k, s in shapes.items()}
    inputs["t"] = torch.rand(4, 2, generator=g)
    report = sg.check(model, inputs, wrt=["x", "W1", "b1", "W2", "b2"])
    assert report.meta["dtype"] == "float32"
    assert report.passed, report.to_text()


@pytest.mark.parametrize("seed", range(8))
def test_float32_sweep_of_ill_conditioned_expressions(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, generator=g) * 3
    y = torch.rand(6, generator=g) + 0.5

    def f(x, y):
        return (sg.exp(x) / (1 + sg.exp(x)) + sg.log(y) * x**2 - sg.sqrt(y) * sg.sin(x) * sg.cos(x)).sum() + sg.log_softmax(x, 0).sum()

    assert sg.check(f, {"x": x, "y": y}).passed
    assert sg.check(lambda x, y: sg.softmax(x * y, 0), {"x": x, "y": y}).passed


# -- NaN/inf: reported, never passing -----------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nonfinite_on_both_sides_is_reported_not_passed(dtype):
    # d sqrt(x)/dx = inf at 0 in the closed form and in torch: identical, which proves nothing.
    r = sg.check(lambda x: sg.sqrt(x).sum(), {"x": _t([0.0, 1.0], dtype)})
    rec = r["x"]
    assert not rec.passed and not r.passed
    assert "NaN/inf" in rec.verdict
    assert "x[0]" in rec.nonfinite and "proves nothing" in rec.nonfinite
    assert "NaN/inf" in r.to_text()


def test_nan_in_autograd_only_fails():
    class NanAt(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            out = g * 2
            out = out.clone()
            out[2] = float("nan")
            return out

    r = sg.check(lambda x: NanAt.apply(x).sum(), {"x": _t([1.0, 2.0, 3.0, 4.0])}, symbolic=lambda x: (x * 2).sum())
    rec = r["x"]
    assert rec.verdict == "FAIL (NaN/inf)"
    assert rec.mismatched == 1
    assert "autograd has 1 NaN/inf (first at x[2])" in rec.nonfinite


def test_inf_in_closed_form_only_fails():
    class SafeSqrt(torch.autograd.Function):  # clips the gradient at 0: finite where the truth is inf
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return torch.sqrt(x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * 0.5 / torch.sqrt(x.clamp(min=1e-12))

    r = sg.check(lambda x: SafeSqrt.apply(x).sum(), {"x": _t([4.0, 0.0])}, symbolic=lambda x: sg.sqrt(x).sum())
    rec = r["x"]
    assert not rec.passed and rec.mismatched == 1
    assert "closed form has 1 NaN/inf (first at x[1])" in rec.nonfinite


@pytest.mark.parametrize(
    "expected,actual,passes",
    [
        ([np.nan, 1.0], [np.nan, 1.0], False),
        ([np.inf, 1.0], [-np.inf, 1.0], False),
        ([np.inf, 1.0], [1e308, 1.0], False),
        ([1.0, 2.0], [1.0, np.nan], False),
        ([1.0, 2.0], [1.0, 2.0], True),
    ],
)
def test_compare_never_calls_nonfinite_equal(expected, actual, passes):
    rec = compare(Reference("x", np.array(expected)), np.array(actual), "float64")
    assert rec.passed is passes
    if not passes:
        assert rec.nonfinite


@pytest.mark.parametrize("dtype,rel", [("float64", 1e-6), ("float32", 1e-4)])
def test_compare_default_tolerances_follow_dtype(dtype, rel):
    e = np.array([1.0, 2.0, 3.0])
    assert not compare(Reference("x", e), e * (1 + rel), dtype).passed
    assert compare(Reference("x", e), e * (1 + rel / 100), dtype).passed
