"""The op table, row by row: hand-written derivative vs sympy.diff vs torch autograd.

Every row of ``symgrad.ops.OPS`` (and a few rows with non-default parameters) is checked

* symbolically: the hand-written ``derivative`` equals ``sympy.diff`` of the ``sympy`` form, at
  points of the op's domain and exactly at each kink (exact rational arithmetic);
* numerically: the row's torch function computes the SymPy form, and torch autograd computes the
  hand-written derivative, in float64 and float32, at points drawn by hypothesis from the domain;
* at each kink: torch's backward at the kink point equals the row's derivative there (the row
  reproduces torch's convention), and ``symgrad.check`` passes at inputs sitting on the kink.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import symgrad as sg
from symgrad.ops import OPS

from helpers import DTYPES, TOL

X = sp.Symbol("x", real=True)

# Every row with its defaults, plus rows whose parameters move or create kinks.
CASES = [(name, {}) for name in OPS] + [
    ("leaky_relu", {"negative_slope": sp.Rational(1, 5)}),
    ("elu", {"alpha": sp.Integer(2)}),
    ("celu", {"alpha": sp.Rational(1, 2)}),
    ("softplus", {"beta": 2, "threshold": 3}),  # kink at 1.5, inside the domain
    ("hardtanh", {"min_val": sp.Rational(-1, 2), "max_val": 2}),
    ("clamp", {"min": sp.Rational(-1, 2), "max": sp.Rational(1, 4)}),
]
IDS = [name + ("" if not p else "-" + "-".join(f"{k}={v}" for k, v in p.items())) for name, p in CASES]


def _grid(row, n=9):
    lo, hi = (sp.nsimplify(b) for b in row.domain)
    return [lo + (hi - lo) * sp.Rational(k, n - 1) for k in range(n)]


def _away_from_kinks(points, kinks):
    return [p for p in points if all(p != k for k in kinks)]


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_row_is_well_formed(name, params):
    row = OPS[name]
    assert row.name == name
    assert row.domain[0] < row.domain[1]
    assert callable(row.torch_fn(**params))
    assert row.sym(X, **params).has(X)


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_derivative_equals_sympy_diff(name, params):
    row = OPS[name]
    hand = row.diff(X, **params)
    auto = sp.diff(row.sym(X, **params), X)
    kinks = [sp.nsimplify(k) for k in row.kink_points(**params)]
    for p in _grid(row) + kinks:
        a = sp.N(hand.subs(X, p), 30)
        b = sp.N(auto.subs(X, p), 30)
        assert abs(a - b) <= 1e-25 * (1 + abs(b)), f"{name}'({p}): hand-written {a} != sympy.diff {b}"


def _numpy_fns(row, params):
    """The SymPy form and the hand-written derivative, evaluated elementwise with mpmath."""
    f = sp.lambdify(X, row.sym(X, **params), "mpmath")
    d = sp.lambdify(X, row.diff(X, **params), "mpmath")
    vec = lambda fn: np.vectorize(lambda v: float(fn(float(v))), otypes=[np.float64])  # noqa: E731
    return vec(f), vec(d)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_torch_matches_sympy_form_and_derivative(name, params, dtype):
    row = OPS[name]
    f_np, d_np = _numpy_fns(row, params)
    torch_fn = row.torch_fn(**params)
    lo, hi = (float(np.float32(b)) for b in row.domain)
    lo, hi = max(lo, row.domain[0]), min(hi, row.domain[1])
    lo = lo if lo >= row.domain[0] else float(np.nextafter(np.float32(lo), np.float32(np.inf)))
    kinks = [float(k) for k in row.kink_points(**params)]

    @settings(max_examples=25, deadline=None)
    @given(st.lists(st.floats(lo, hi, allow_nan=False, width=32), min_size=1, max_size=6))
    def run(values):
        x = torch.tensor(values, dtype=dtype, requires_grad=True)
        y = torch_fn(x)
        (g,) = torch.autograd.grad(y.sum(), x)
        xv = x.detach().double().numpy()  # the values torch actually saw
        off = np.array([all(abs(v - k) > 1e-6 for k in kinks) for v in xv])
        np.testing.assert_allclose(y.detach().double().numpy(), f_np(xv), **TOL[dtype])
        np.testing.assert_allclose(g.double().numpy()[off], d_np(xv)[off], **TOL[dtype])

    run()


KINK_CASES = [(n, p) for n, p in CASES if OPS[n].kink_points(**p)]
KINK_IDS = [i for i, (n, p) in zip(IDS, CASES) if OPS[n].kink_points(**p)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name,params", KINK_CASES, ids=KINK_IDS)
def test_kink_reproduces_torch_convention(name, params, dtype):
    row = OPS[name]
    for k in row.kink_points(**params):
        x = torch.tensor([float(k)], dtype=dtype, requires_grad=True)
        assert x.item() == float(k), "kink not exactly representable; pick another parameter"
        (g,) = torch.autograd.grad(row.torch_fn(**params)(x).sum(), x)
        hand = float(row.diff(X, **params).subs(X, sp.nsimplify(k)))
        auto = float(sp.diff(row.sym(X, **params), X).subs(X, sp.nsimplify(k)))
        assert g.item() == pytest.approx(hand, rel=1e-6), f"{name}'({k}): torch {g.item()}, row {hand}"
        assert auto == pytest.approx(hand, rel=1e-12)


def test_documented_conventions_at_zero():
    # Spelled out by hand from torch's documentation / source, not from the table:
    # relu'(0) = 0, leaky_relu'(0) = negative_slope, abs'(0) = 0.
    expected = {"relu": 0.0, "leaky_relu": 0.01, "abs": 0.0}
    for name, value in expected.items():
        x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(OPS[name].torch_fn()(x).sum(), x)
        assert g.item() == pytest.approx(value)
        assert float(OPS[name].diff(X).subs(X, 0)) == pytest.approx(value)
    # clamp passes the gradient at its bounds, hardtanh does not.
    for name, value in (("clamp", 1.0), ("hardtanh", 0.0)):
        for bound in (-1.0, 1.0):
            assert float(OPS[name].diff(X).subs(X, sp.nsimplify(bound))) == value


def _sg_fn(name, params):
    fn = getattr(sg, name)
    floats = {k: float(v) for k, v in {**OPS[name].params, **params}.items()}
    return lambda x: fn(x, **floats).sum()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_check_passes_on_domain_and_kinks(name, params, dtype):
    row = OPS[name]
    lo, hi = row.domain
    points = list(np.linspace(lo, hi, 7)) + [float(k) for k in row.kink_points(**params)]
    x = torch.tensor(points, dtype=dtype)
    report = sg.check(_sg_fn(name, params), {"x": x})
    assert report.passed, report.to_text()
    rec = report["x"]
    # At kinks the reference is torch's own convention, not merely a band that contains it.
    for i, p in enumerate(points):
        if any(p == float(k) for k in row.kink_points(**params)):
            hand = float(row.diff(X, **params).subs(X, sp.nsimplify(p)))
            assert rec.expected[i] == pytest.approx(hand, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kink_value_outside_band_fails(dtype):
    # A relu whose backward returns 2 at 0: outside the one-sided band [0, 1], so a bug.
    class BadRelu(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.clamp(min=0)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * torch.where(x > 0, 1.0, torch.where(x == 0, 2.0, 0.0)).to(g.dtype)

    x = torch.tensor([-1.0, 0.0, 2.0], dtype=dtype)
    report = sg.check(lambda x: BadRelu.apply(x).sum(), {"x": x}, symbolic=lambda x: sg.relu(x).sum())
    assert not report.passed
    assert report["x"].abs_index == (1,)
    assert "OUTSIDE" in report["x"].kink_note


def test_register_op_rejects_duplicates_and_adds_rows():
    with pytest.raises(ValueError, match="already"):
        sg.register_op(OPS["exp"])
    with pytest.raises(KeyError, match="no op 'nope'"):
        sg.ops.op("nope")


def test_coverage_rows_cover_the_table():
    rows = sg.ops.coverage_rows()
    assert [r["op"] for r in rows] == list(OPS)
    assert all(r["derivative"] for r in rows)
