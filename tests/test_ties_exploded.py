"""Ties of max/min on the exploded engine (Note [Ties on the exploded engine] in symgrad/lower/ties.py):
a tie of k entries is one unit, any convex combination of "member i takes the whole cotangent" passes,
more or less than the whole cotangent fails, past the few conditions every combination of which is
evaluated (a one-index backward failed a tie of 9)."""

import pytest
import torch
import torch.nn.functional as F

import symgrad as sg
from symgrad.testing_ops import with_backward


def check(fn, inputs, **kw):
    return sg.check(fn, inputs, engine="elementwise", quiet=True, **kw)


def splits(n: int, dtype) -> list:
    """(name, gradient over the n tied entries for a cotangent of 1, passes)."""
    even = torch.full((n,), 1 / n, dtype=dtype)
    first, last = torch.zeros(n, dtype=dtype), torch.zeros(n, dtype=dtype)
    first[0], last[-1] = 1, 1
    return [("even split", even, True), ("first index", first, True), ("last index", last, True),
            ("half one index, half even", 0.5 * first + 0.5 * even, True),
            ("whole cotangent to every entry", torch.ones(n, dtype=dtype), False),
            ("half of it lost", 0.5 * even, False), ("one index, half lost", 0.5 * first, False)]


def seeded(op, share):
    """``op`` with a backward sending ``g * share`` to its input."""
    return with_backward(op, lambda x, g, share=share: g * share)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n", [2, 9, 16, 64])
def test_a_tie_of_the_maximum_is_one_unit(n, dtype):
    x = torch.full((n,), 0.3, dtype=dtype)
    cases = splits(n, dtype)
    for name, share, passes in cases if n < 64 else [cases[i] for i in (1, 4, 5)]:  # 3 s a check at 64
        assert check(seeded(lambda x: x.amax(), share), {"x": x}).passed is passes, name


@pytest.mark.parametrize("n", [9, 64])
def test_a_tie_of_sympy_max_and_of_the_minimum(n):
    x = torch.full((n,), -1.25, dtype=torch.float64)
    for name, share, passes in splits(n, torch.float64)[1::3]:  # first index, ..., one index half lost
        assert check(seeded(lambda x: x.amax(), share), {"x": x}, symbolic=lambda x: x.amax()).passed is passes, name
        if n < 64:
            assert check(seeded(lambda x: x.amin(), share), {"x": x}).passed is passes, name


def test_the_tie_is_found_among_larger_entries_and_with_others_below():
    x = torch.tensor([0.5, 2.0, -1.0, 2.0, 2.0, 1.0, 2.0, 0.0, 2.0, 2.0], dtype=torch.float64)
    tied = (x == 2.0).double()
    last = torch.zeros_like(x)
    last[-1] = 1
    for share, passes in ((last, True), (tied / tied.sum(), True), (tied, False), (torch.ones_like(x) / 10, False)):
        assert check(seeded(lambda x: x.amax(), share), {"x": x}).passed is passes


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_tie_inside_a_larger_expression(dtype):
    x = torch.full((24,), 0.5, dtype=dtype)
    y = torch.tensor([0.3, -1.2, 2.0], dtype=dtype)
    for name, share, passes in splits(24, dtype):
        amax = seeded(lambda x: x.amax(), share)
        assert check(lambda x, y: (amax(x) * y).sum(), {"x": x, "y": y}).passed is passes, name


def _rows(dtype):
    """Ties of 12, 3 and 12 in rows 0, 1 and 3; row 2 has none."""
    spread = torch.linspace(-1.0, 1.9, 12, dtype=dtype)
    tie3 = spread.clone()
    tie3[[0, 5, 11]] = 2.0
    x = torch.stack([torch.ones(12, dtype=dtype), tie3, spread, torch.full((12,), -0.5, dtype=dtype)])
    return x, torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ties_in_several_rows_of_max_over_a_dim(dtype):
    x, w = _rows(dtype)
    assert check(lambda x: (torch.max(x, dim=1).values * w).sum(), {"x": x}).passed  # one index per row
    assert check(lambda x: (x.amax(dim=1) * w).sum(), {"x": x}).passed  # even split per row
    tied = (x == x.amax(dim=1, keepdim=True)).to(dtype)
    even = tied / tied.sum(dim=1, keepdim=True)
    mixed = even.clone()
    mixed[0], mixed[3] = 0, 0
    mixed[0, 4], mixed[3, 11] = 1, 1  # one index in rows 0 and 3, an even split in row 1
    half_lost = mixed.clone()
    half_lost[3] *= 0.5
    for share, passes in ((mixed, True), (tied, False), (half_lost, False)):
        rowmax = with_backward(lambda x: torch.max(x, dim=1).values, lambda x, g, share=share: g[:, None] * share)
        assert check(lambda x: (rowmax(x) * w).sum(), {"x": x}).passed is passes


def test_max_pooling_windows_of_ties():
    x = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    assert check(lambda x: F.max_pool2d(x, 2).sum(), {"x": x}).passed
    doubled = with_backward(lambda x: F.max_pool2d(x, 2),
                            lambda x, g: torch.ones_like(x) * g.repeat_interleave(2, 2).repeat_interleave(2, 3))
    assert not check(lambda x: doubled(x).sum(), {"x": x}).passed


def _relu(slope_at_zero: float):
    return with_backward(torch.relu, lambda z, g: g * torch.where(z > 0, 1.0, torch.where(z == 0, slope_at_zero, 0.0)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_tie_with_relu_kinks_elsewhere(dtype):
    x = torch.full((24,), 0.25, dtype=dtype)
    z = torch.tensor([0.0, 0.0, 0.5, -1.0, 0.0], dtype=dtype)
    c = torch.tensor([1.0, -3.0, 2.0, 1.0, 0.5], dtype=dtype)
    named = dict((name, share) for name, share, _ in splits(24, dtype))
    for tie, slope, passes in (("first index", 0.0, True), ("first index", 1.0, True), ("even split", 0.5, True),
                               ("whole cotangent to every entry", 0.0, False), ("half of it lost", 1.0, False),
                               ("last index", 2.0, False), ("even split", -0.5, False)):
        amax, relu = seeded(lambda x: x.amax(), named[tie]), _relu(slope)
        got = check(lambda x, z: amax(x) + (relu(z) * c).sum(), {"x": x, "z": z}).passed
        assert got is passes, (tie, slope)


def test_the_units_are_read_off_the_closed_form():
    import symengine as se

    from symgrad.lower.numpy import lower
    from symgrad.lower.symengine_forms import extreme
    from symgrad.lower.ties import find_units

    a = se.symbols("a0:5")
    expr = extreme("Ge")(*a[:3]) + extreme("Le")(*a[3:]) + se.Piecewise((a[0], se.Lt(0, a[4])), (0, True))
    lowered = lower([expr], list(a))
    units = find_units(*lowered._tie_source)
    assert sorted(len(u.vertices) for u in units) == [2, 3]
    big = next(u for u in units if len(u.vertices) == 3)
    assert len(big.keys) == 6 and all(len(win) == 2 and len(lose) == 2 for win, lose in big.vertices)


def _overlapping_pool(share):
    """max pooling 3x3, stride 2 under test (one channel): ``share(tied, count)`` is each window
    entry's part of its window's cotangent; overlapping windows add up."""
    def backward(x, g):
        n, _, h, w = x.shape
        win = F.unfold(x, 3, stride=2)
        tied = (win == win.amax(1, keepdim=True)).to(x.dtype)
        return F.fold(share(tied, tied.sum(1, keepdim=True)) * g.reshape(n, 1, -1), (h, w), 3, stride=2)
    return with_backward(lambda x: F.max_pool2d(x, 3, stride=2), backward)


@pytest.mark.parametrize("engine", ["elementwise", "auto"])
def test_overlapping_pooling_windows_of_ties(engine):
    """Overlapping windows compare the same entries: as one shared condition, forcing one window's
    vertex re-split its neighbours, and torch's own max pooling over a zero input was a false alarm
    on the exploded engine (Note [Each max its own conditions] in symgrad/lower/ties.py)."""
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    plateau = torch.ones(1, 1, 5, 5, dtype=torch.float64)
    plateau[0, 0, 1, 1] = 2.0  # the first window has one maximum, the others tie over the plateau
    for x in (torch.zeros(1, 1, 5, 5, dtype=torch.float64), plateau):
        for name, pool, passes in [("torch", lambda x: F.max_pool2d(x, 3, stride=2), True),
                                   ("even", _overlapping_pool(lambda t, n: t / n), True),
                                   ("every", _overlapping_pool(lambda t, n: t), False),
                                   ("half lost", _overlapping_pool(lambda t, n: t / (2 * n)), False)]:
            report = sg.check(lambda x: (pool(x) * w).sum(), {"x": x}, engine=engine, quiet=True)
            assert report.passed is passes, (name, report.to_text()[:2000])


def test_a_sliding_max_in_plain_sympy():
    """A plain SymPy forward of overlapping windows goes to the exploded engine by default."""
    import sympy as sp

    X = sp.MatrixSymbol("x", 5, 1)
    symbolic = sp.Matrix([sp.Max(*[X[j, 0] for j in range(i, i + 3)]) for i in range(3)])
    x = torch.zeros(5, 1, dtype=torch.float64)
    report = sg.check(lambda x: x[:, 0].unfold(0, 3, 1).max(-1).values.reshape(3, 1), {"x": x},
                      symbolic=symbolic, quiet=True)
    assert report.passed, report.to_text()[:2000]
    assert "_own" not in report.to_text()  # the conditions' tags are not printed
    every = with_backward(lambda x: x[:, 0].unfold(0, 3, 1).max(-1).values.reshape(3, 1),
                          lambda x, g: torch.stack([g[max(0, j - 2):j + 1].sum() for j in range(5)]).reshape(5, 1))
    assert not sg.check(every, {"x": x}, symbolic=symbolic, quiet=True).passed
