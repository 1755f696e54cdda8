"""The tensor back end's fast paths change speed, never answers: contractions through BLAS
(Note [Fast contractions]), the value-only adjoint cross-check, and the comparison's shortcuts."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

import symgrad as sg
from symgrad.graph import approx, rules, rules_tensor
from symgrad.graph.approx import FAST_MIN_WORK, Approx, dot, einsum
from symgrad.reference import Reference

compare_module = importlib.import_module("symgrad.compare.compare")

SPECS = [
    ("ij,jk->ik", (70, 60), (60, 50)),
    ("ik,ij->jk", (64, 90), (64, 80)),  # a weight's gradient: summed over the batch
    ("bij,bjk->bik", (4, 30, 40), (4, 40, 20)),
    ("ij,ji->", (300, 400), (400, 300)),
    ("ij,jk->ki", (70, 60), (60, 50)),  # the output permuted
    ("i,j->ij", (400,), (300,)),  # nothing summed
    ("ngcxk,gock->ngox", (8, 2, 3, 40, 9), (2, 4, 3, 9)),  # a grouped convolution's kernel side
]


@pytest.mark.parametrize("spec, sa, sb", SPECS)
def test_dot_is_einsum(spec, sa, sb):
    rng = np.random.default_rng(0)
    a, b = rng.integers(-3, 4, sa).astype(float), rng.integers(-3, 4, sb).astype(float)
    assert np.array_equal(dot(spec, a, b), np.einsum(spec, a, b))  # integers: exact in any order
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    np.testing.assert_allclose(dot(spec, a, b), np.einsum(spec, a, b), rtol=1e-12, atol=1e-12)


def test_dot_takes_blas_only_for_large_finite_operands(monkeypatch):
    calls = []
    real = np.matmul
    monkeypatch.setattr(np, "matmul", lambda *a: calls.append(1) or real(*a))
    big = np.ones((64, 64)), np.ones((64, 64))
    assert 64 ** 3 >= FAST_MIN_WORK
    dot("ij,jk->ik", *big)
    assert calls, "a large contraction should go through matmul"
    calls.clear()
    dot("ij,jk->ik", np.ones((3, 4)), np.ones((4, 5)))
    with_inf = big[0].copy()
    with_inf[0, 0] = np.inf
    zeros = np.zeros((64, 64))
    out = dot("ij,jk->ik", with_inf, zeros)
    assert not calls  # small, or non-finite: numpy's own loop
    assert np.isnan(out[0]).all() and (out[1:] == 0).all()  # 0 * inf is NaN, as in numpy's einsum


def test_combined_bound_is_the_sum_of_its_terms():
    """einsum's bound with both operands carrying errors: c|A||B| + e_A|B| + |A|e_B, computed with
    one contraction fewer."""
    rng = np.random.default_rng(1)
    a = Approx(rng.standard_normal((80, 90)), np.abs(rng.standard_normal((80, 90))))
    b = Approx(rng.standard_normal((90, 70)), np.abs(rng.standard_normal((90, 70))))
    c = 1 + approx.summation_factor(90)
    out = einsum("ij,jk->ik", a, b)
    expected = c * np.abs(a.v) @ np.abs(b.v) + a.e @ np.abs(b.v) + np.abs(a.v) @ b.e
    np.testing.assert_allclose(out.e, expected, rtol=1e-12)
    for x, y in ((a, Approx(b.v)), (Approx(a.v), b)):  # one operand exact
        expected = c * np.abs(x.v) @ np.abs(y.v) + x.e @ np.abs(y.v) + np.abs(x.v) @ y.e
        np.testing.assert_allclose(einsum("ij,jk->ik", x, y).e, expected, rtol=1e-12)


def test_a_wrong_contraction_rule_at_blas_size_fails_the_cross_check(monkeypatch):
    """The cross-check runs through the same route as the real evaluation: a vjp that transposes
    a square weight's gradient (BLAS-sized) must fail the check, never pass it."""
    real = rules._vjp_contract

    def wrong(spec, args, g, needed):
        grads = real(spec, args, g, needed)
        if len(grads) > 1 and grads[1] is not None and grads[1].shape[0] == grads[1].shape[1]:
            grads[1] = grads[1].map(lambda t: np.ascontiguousarray(t.T))
        return grads

    monkeypatch.setattr(rules, "_vjp_contract", wrong)
    from symgrad.graph import crosscheck

    monkeypatch.setattr(crosscheck, "_PASSED", set())
    torch.manual_seed(0)
    x, w = torch.randn(64, 80, dtype=torch.float64), torch.randn(80, 80, dtype=torch.float64)
    report = sg.check(lambda x, w: torch.tanh(x @ w).sum(), {"x": x, "w": w}, engine="graph")
    assert not report.passed
    assert any("adjoint cross-check" in r.note for r in report.records)


def test_worst_entries_are_the_largest_excess_first_ties_in_index_order():
    e = np.ones(1000)
    a = e.copy()
    for i, off in ((10, 1e-9), (500, 3e-9), (20, 3e-9), (999, 2e-9), (7, 2.2e-16)):
        a[i] += off  # 500 and 20 tie; 7 is one ulp off, within its allowance
    ref = Reference("x", e, "x", rounding=np.abs(e), verified=True)
    rec = compare_module.compare(ref, a, "float64")
    assert rec.mismatched == 4
    assert [w.index for w in rec.worst] == [(20,), (500,), (999,)]


def test_nonfinite_entries_still_compare_as_before():
    e = np.array([1.0, np.inf, np.nan, 2.0])
    a = np.array([1.0, np.inf, 0.0, 2.0 + 1e-3])
    rec = compare_module.compare(Reference("x", e, "x", rounding=np.abs(np.nan_to_num(e)), verified=True), a, "float64")
    assert rec.mismatched == 2 and "Non-finite" in rec.nonfinite
    assert compare_module.ulp(np.float64(3.0), "float64") == 2.0**-51


def _keyed_signs_reference(v, salt):
    """montecarlo._keyed_signs as first written (temporaries, no in-place steps)."""
    mantissa = np.uint64((1 << 52) - 1) ^ np.uint64((1 << (52 - 20)) - 1)
    with np.errstate(over="ignore"):
        h = (v.view(np.uint64) & mantissa) ^ np.uint64(salt)
        h = (h + np.uint64(0x9E3779B97F4A7C15)) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    sign = np.where((h >> np.uint64(63)) == 1, 1.0, -1.0)
    return np.where(v < 0, -sign, sign)


def test_keyed_signs_in_place_equal_the_formula():
    from symgrad.graph import montecarlo

    assert montecarlo.KEY_BITS == 20
    rng = np.random.default_rng(3)
    x = rng.standard_normal(5000) * 10.0 ** rng.integers(-30, 30, 5000)
    x[::7], x[::11], x[::13], x[::17] = 0.0, -0.0, np.nan, -np.inf
    x[::19] = x[1::19]  # repeated values share a sign
    for v in (x, x.reshape(50, 100), np.array(3.0), np.array(-2.5), np.zeros((0, 3))):
        for salt in (0, 5, 2**63 - 1, int(rng.integers(0, 2**63))):
            got = montecarlo._keyed_signs(v, salt)
            assert got.shape == v.shape and np.array_equal(got, _keyed_signs_reference(v, salt))
    assert set(np.unique(montecarlo._keyed_signs(x, 1))) == {-1.0, 1.0}  # both signs occur


def _select_reference(idx, args, fill, shape):
    """rules_tensor._select and rules_tensor._vjp_select's scatter as first written (np.where over a pick mask)."""
    pick = idx > 0
    where = np.where(pick, idx - 1, 0)
    flat = np.concatenate([np.ravel(a) for a in args])
    return np.where(pick, flat[where], fill).reshape(shape)


@pytest.mark.parametrize("padded", [True, False])
def test_select_gather_and_scatter_equal_the_mask_formulas(padded):
    """Note [Gather with a fill slot]: the same entries picked, value, bound and band alike, and the
    scatter (a select's vjp) adds the same terms in the same order, on a convolution's patches."""
    from symgrad.graph.aten_nn import patches
    from symgrad.graph.ir import Node

    rng = np.random.default_rng(4)
    x = np.arange(1, 2 * 3 * 7 * 6 + 1).reshape(2, 3, 7, 6)
    idx = patches(x, (3, 2), (2, 1), (1, 1) if padded else (0, 0), (1, 2))
    assert (idx == 0).any() == padded
    args = [Approx(rng.standard_normal(x.shape), np.abs(rng.standard_normal(x.shape)),
                   np.abs(rng.standard_normal(x.shape)), np.zeros(x.shape))]
    node = Node("select", (), {"idx": idx, "fill": -np.inf}, idx.shape)
    for _ in range(2):  # a second call gives the same answer
        out = rules_tensor._select(node, args)
        assert np.array_equal(out.v, _select_reference(idx, [args[0].v], -np.inf, idx.shape))
        for field in ("e", "lo", "hi"):
            assert np.array_equal(getattr(out, field), _select_reference(idx, [getattr(args[0], field)], 0.0, idx.shape))
        g = Approx(rng.standard_normal(idx.shape), np.abs(rng.standard_normal(idx.shape)))
        (grad,) = rules_tensor._vjp_select(node, args, g)
        pick = idx.ravel() > 0
        slots = idx.ravel()[pick] - 1
        expected = np.bincount(slots, weights=g.v.ravel()[pick], minlength=x.size).reshape(x.shape)
        assert np.array_equal(grad.v, expected)
        own = approx.summation_factor(int(np.bincount(slots).max())) * np.bincount(
            slots, weights=np.abs(g.v).ravel()[pick], minlength=x.size)
        expected_e = np.bincount(slots, weights=g.e.ravel()[pick], minlength=x.size) + own
        assert np.array_equal(grad.e, expected_e.reshape(x.shape))


CONV = ("ngcijkl,gockl->ngoij", (4, 1, 5, 9, 9, 3, 3), (1, 6, 5, 3, 3))  # a convolution's patches x kernel


@pytest.mark.parametrize("spec, sa, sb", SPECS + [CONV])
def test_dots_equal_dot_bit_for_bit(spec, sa, sb):
    """``dots`` rearranges a recurring operand once; every product is dot's, bit for bit, also where
    an operand is non-finite (numpy's own loop) or recurs on both sides."""
    rng = np.random.default_rng(5)
    a1, a2 = rng.standard_normal(sa), rng.standard_normal(sa)
    b1, b2 = rng.standard_normal(sb), np.abs(rng.standard_normal(sb))
    bad = b2.copy()
    bad.flat[3] = np.inf
    pairs = [(a1, b1), (a1, b2), (a2, b1), (a2, b2), (a1, bad)]
    for (a, b), got in zip(pairs, approx.dots(spec, pairs)):
        want = dot(spec, a, b)
        assert np.array_equal(got, want, equal_nan=True)


def _einsum_reference(spec, a, b):
    """einsum's bound and band for two operands as first written: one contraction per term."""
    k = int(np.prod([n for ch, n in zip(spec.split(",")[0], a.shape) if ch not in spec.split("->")[1]]))
    c = 1 + approx.summation_factor(k)
    aa, ab = np.abs(a.v), np.abs(b.v)
    e = np.einsum(spec, aa, c * ab + b.e) + np.einsum(spec, a.e, ab)
    pos, neg = np.maximum(b.v, 0.0), np.maximum(-b.v, 0.0)
    lo = np.einsum(spec, a.lo, pos) + np.einsum(spec, a.hi, neg)
    hi = np.einsum(spec, a.hi, pos) + np.einsum(spec, a.lo, neg)
    return e, lo, hi


@pytest.mark.parametrize("spec, sa, sb", [SPECS[0], SPECS[6], CONV])
def test_einsum_bound_and_band_through_dots(spec, sa, sb):
    """The contraction's bound and one-sided band (a banded operand against a signed one) are the
    one-product-per-term formulas; bands that are zero stay exactly zero, side by side."""
    rng = np.random.default_rng(6)
    lo = np.where(rng.random(sa) < 0.05, rng.random(sa), 0.0)
    hi = np.where(rng.random(sa) < 0.05, rng.random(sa), 0.0)
    a = Approx(rng.standard_normal(sa), rng.random(sa), lo, hi)
    bv = rng.standard_normal(sb)
    bv.flat[::3] = np.abs(bv.flat[::3])
    b = Approx(bv, rng.random(sb))
    out = einsum(spec, a, b)
    e, lo_ref, hi_ref = _einsum_reference(spec, a, b)
    np.testing.assert_allclose(out.v, np.einsum(spec, a.v, b.v), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out.e, e, rtol=1e-12)
    np.testing.assert_allclose(out.lo, lo_ref, rtol=1e-12, atol=0)
    np.testing.assert_allclose(out.hi, hi_ref, rtol=1e-12, atol=0)
    assert np.array_equal(out.lo == 0, lo_ref == 0) and np.array_equal(out.hi == 0, hi_ref == 0)
    assert (lo_ref == 0).any() or spec != CONV[0]


def test_rerun_rounding_shares_an_operand_with_the_bound():
    """In a random-rounding rerun the contraction's own rounding |A|.|B| and the bilinear bound
    share |A|: the rerun's move is c |A|.|B| per unit, its bound the same as outside a rerun."""
    rng = np.random.default_rng(7)
    a = Approx(rng.standard_normal((64, 90)), rng.random((64, 90)))
    b = Approx(rng.standard_normal((90, 80)), rng.random((90, 80)))
    seen = []

    def perturb(v, own, key=None):
        seen.append(np.array(own))
        return v

    plain = einsum("ij,jk->ik", a, b)
    previous, approx._PERTURB = approx._PERTURB, perturb
    try:
        rerun = einsum("ij,jk->ik", a, b)
    finally:
        approx._PERTURB = previous
    c = 1 + approx.summation_factor(90)
    assert len(seen) == 1
    np.testing.assert_allclose(seen[0], c * np.abs(a.v) @ np.abs(b.v), rtol=1e-12)
    assert np.array_equal(rerun.e, plain.e) and np.array_equal(rerun.v, plain.v)


@pytest.mark.parametrize("shape", [(), (7,), (40, 30)])
def test_certified_picks_the_entries_of_the_two_tests(shape):
    """exact.certified runs its ulp test only where the cancellation test holds: the entries it
    re-evaluates over mpmath are those of both tests on every entry (Note [Certified pointwise values])."""
    import sympy as sp

    from symgrad.graph import exact
    from symgrad.graph.scalar import Ctx
    from symgrad.lower.exact import CERTIFY_FRACTION

    rng = np.random.default_rng(8)
    s0 = rules.symbols_for(1)[0]
    expr = sp.sin(s0)
    x = np.asarray(rng.uniform(0.5, 3.0, shape))
    v = np.asarray(np.sin(x) * 10.0 ** rng.integers(-12, 0, shape))  # a float64 value, near or not
    e = np.asarray(np.abs(rng.standard_normal(shape)) * 10.0 ** rng.integers(-2, 12, shape))
    ctx = Ctx(eps=2.0**-23, dtype="float32")
    with np.errstate(all="ignore"):
        ulp = exact._ulp(v, ctx.eps)
        want = (e > exact.CANCELLATION * np.abs(v)) & (2.0**-52 * e > CERTIFY_FRACTION * ulp)
    if int(want.sum()) > exact.MAX_ENTRIES:
        pytest.skip("beyond the entry cap")
    before = exact.counter["certified"]
    out = exact.certified(expr, {s0: Approx(x)}, ctx, Approx(v, e))
    assert exact.counter["certified"] - before == int(want.sum())
    changed = np.asarray(out.v) != v
    assert np.array_equal(changed, want)  # the re-evaluated entries are sin(x), far from the scaled v


@pytest.mark.parametrize("spec, sa, sb, taken", [("ij,jk->ik", (400, 60), (60, 300), True), (*CONV, True),
                                                 ("ngoij,ngcijkl->gockl", (4, 1, 6, 9, 9), (4, 1, 5, 9, 9, 3, 3), False)])
def test_dots_leave_out_zero_rows_and_columns(spec, sa, sb, taken, monkeypatch):
    """Note [Sparse bands]: a sparse non-negative operand's zero rows (or columns) are left out of
    the product; the result is dot's to float64 rounding, with exactly the same zeros."""
    rng = np.random.default_rng(9)
    calls = []
    from symgrad.graph import fastdot

    real = fastdot._product
    monkeypatch.setattr(fastdot, "_product", lambda am, bm, r, c: calls.append((r is not None, c is not None))
                        or real(am, bm, r, c))
    a = np.abs(rng.standard_normal(sa)) * (rng.random(sa) < 2e-3)
    b = np.abs(rng.standard_normal(sb)) * (rng.random(sb) < 2e-3)
    dense_a, dense_b = np.abs(rng.standard_normal(sa)), np.abs(rng.standard_normal(sb))
    pairs = [(a, dense_b), (dense_a, b), (a, b), (dense_a, dense_b), (np.zeros(sa), dense_b)]
    for (x, y), got in zip(pairs, approx.dots(spec, pairs)):
        want = dot(spec, x, y)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
        assert np.array_equal(got == 0, want == 0)
    assert any(r or c for r, c in calls[:3]) == taken  # few free entries (a weight's gradient): all taken
    assert calls[3] == (False, False)
    assert (got == 0).all()
