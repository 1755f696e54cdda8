"""Ties of max/min and of order statistics: any convex combination of the tied entries passes,
more or less than the whole cotangent fails (Notes [Ties as kink units], [Ties of order statistics])."""

import pytest
import torch
import torch.nn.functional as F

import symgrad as sg
from symgrad.testing_ops import custom, vjp, with_backward

ENGINES = ["auto", "elementwise"]
X = torch.tensor([1.0, 3.0, 3.0, 3.0], dtype=torch.float64)
SPLITS = [  # (gradient on the tied entries 1..3, passes)
    ([1 / 3, 1 / 3, 1 / 3], True),  # torch's amax and median(): evenly
    ([1.0, 0.0, 0.0], True),  # torch's max(): one index
    ([0.5, 0.5, 0.0], True),
    ([1.0, 1.0, 1.0], False),  # the whole cotangent to every tied entry
    ([0.5, 0.0, 0.0], False),  # half of it lost
]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("split,passes", SPLITS)
@pytest.mark.parametrize("op", [lambda x: x.amax(), lambda x: x.max(), lambda x: -(-x).min(),
                                lambda x: torch.topk(x, 1).values[0]], ids=["amax", "max", "min", "topk1"])
def test_a_tie_of_the_maximum(op, split, passes, engine):
    grad = torch.tensor([0.0] + split, dtype=torch.float64)
    f = with_backward(op, lambda x, g: g * grad)
    assert sg.check(f, {"x": X}, engine=engine).passed is passes


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("split,passes", SPLITS)
def test_a_tie_at_the_median(split, passes, engine):
    x = torch.tensor([3.0, 1.0, 1.0, 1.0], dtype=torch.float64)  # median 1, three ways
    grad = torch.tensor([0.0] + split, dtype=torch.float64)
    f = with_backward(lambda x: x.median(), lambda x, g: g * grad)
    assert sg.check(f, {"x": x}, engine=engine).passed is passes


@pytest.mark.parametrize("engine", ENGINES)
def test_torch_order_statistics_at_ties_pass(engine):
    y = torch.tensor([[3.0, 1.0, 3.0], [2.0, 2.0, 0.0]], dtype=torch.float64)
    w = torch.arange(3.0, dtype=torch.float64)
    for fn in (lambda y: y.median(), lambda y: torch.kthvalue(y, 2, dim=1).values.sum(),
               lambda y: torch.mode(y, 1).values.sum(), lambda y: (torch.cummax(y, 1).values * w).sum(),
               lambda y: (torch.sort(y, 1, descending=True).values * w).sum(), lambda y: y.median(dim=1).values.sum()):
        assert sg.check(fn, {"y": y}, engine=engine).passed


def test_max_pool_windows_of_ties_with_a_backward_that_doubles_them():
    x = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    assert sg.check(lambda x: F.max_pool2d(x, 2).sum(), {"x": x}).passed
    doubled = with_backward(lambda x: F.max_pool2d(x, 2),
                            lambda x, g: torch.ones_like(x) * g.repeat_interleave(2, 2).repeat_interleave(2, 3))
    assert not sg.check(lambda x: doubled(x).sum(), {"x": x}).passed


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n", [9, 64])
def test_a_large_tie_of_a_small_function_is_one_unit(n, dtype):
    """Past 8 tied entries a tie kept its entrywise band, whatever the graph's size: amax over 9 or
    64 equal entries passed a backward sending the whole cotangent to each, or losing half of it.
    A small graph now takes ties of up to MAX_SMALL_TIE entries as units (Note [Ties as kink units])."""
    x = torch.zeros(n, dtype=dtype)
    first = torch.zeros(n, dtype=dtype)
    first[0] = 1
    for grad, passes in ((torch.full((n,), 1 / n, dtype=dtype), True), (first, True),
                         (torch.ones(n, dtype=dtype), False), (torch.full((n,), 0.5 / n, dtype=dtype), False)):
        f = with_backward(lambda x: x.amax(), lambda x, g, grad=grad: g * grad)
        assert sg.check(f, {"x": x}, engine="graph", quiet=True).passed is passes, (grad[:2], passes)


def test_the_tie_size_follows_the_graph_size():
    from symgrad.graph.kinkunits import tie_members
    from symgrad.graph.kinklog import MAX_SMALL_TIE, MAX_TIE_MEMBERS

    class Graph:
        def __init__(self, numbers):
            self.nodes = [type("N", (), {"shape": (numbers,)})()]

    assert tie_members(Graph(100)) == MAX_SMALL_TIE
    assert tie_members(Graph(10**6)) == MAX_TIE_MEMBERS
    assert MAX_TIE_MEMBERS < tie_members(Graph(5000)) < MAX_SMALL_TIE


def _pool_backward(share):
    """max pooling 2x2 under test: ``share(tied, count)`` is each window entry's part of the cotangent."""
    def backward(x, g):
        n, c, h, w = x.shape
        win = x.reshape(n, c, h // 2, 2, w // 2, 2)
        tied = (win == win.amax(dim=(3, 5), keepdim=True)).to(x.dtype)
        part = share(tied, tied.sum(dim=(3, 5), keepdim=True))
        return (part * g.reshape(n, c, h // 2, 1, w // 2, 1)).reshape(n, c, h, w)
    return custom(lambda x: F.max_pool2d(x, 2), backward)


class _TiedCNN(torch.nn.Module):
    """Two conv-relu-pool blocks over images with a zero background: every background window of
    both poolings is a tie (relu of the bias, four times) -- a few hundred ties in all."""

    def __init__(self, pool):
        super().__init__()
        self.c1 = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = torch.nn.Conv2d(4, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 3 * 3, 10)
        with torch.no_grad():
            self.c1.bias.fill_(0.1)
            self.c2.bias.fill_(0.05)
        self.pool = pool

    def forward(self, x, y):
        h = self.pool(torch.relu(self.c1(x)))
        h = self.pool(torch.relu(self.c2(h)))[..., :3, :3]
        return F.cross_entropy(self.fc(h.flatten(1)), y)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_hundreds_of_pooling_ties_in_a_cnn_are_units(dtype):
    """Before Note [A budget of sweeps]: past 32 kinked units every tied entry kept its band, so a
    pooling backward giving every tied entry the whole cotangent (4x the first bias's gradient)
    passed in float64 and float32."""
    torch.manual_seed(0)
    x = torch.zeros(2, 1, 12, 12)
    x[:, :, 3:9, 5:7] = torch.rand(2, 1, 6, 2) + 0.5  # a stroke on a zero background
    inputs = {"x": x.to(dtype), "y": torch.tensor([3, 7])}
    pools = {"torch": (lambda x: F.max_pool2d(x, 2), True),
             "even": (_pool_backward(lambda tied, n: tied / n), True),  # amax's split: a subgradient
             "every": (_pool_backward(lambda tied, n: tied), False),
             "half lost": (_pool_backward(lambda tied, n: tied / (2 * n)), False)}
    for name, (pool, passes) in pools.items():
        torch.manual_seed(1)
        report = sg.check(_TiedCNN(pool).to(dtype), inputs, quiet=True)
        assert report.passed is passes, (name, report.to_text()[:3000])
        assert "Too many kinked units" not in report.to_text()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ties_of_indistinct_entries_need_no_choice(dtype):
    """28x28 images in batches of 4: thousands of background ties, past the sweeps' budget.  Their
    entries have the same rows towards every parameter, so any split gives the same gradient and
    the tie is no choice (Note [Ties of indistinct entries]); before, each kept its band and a
    pooling backward giving every tied entry the whole cotangent passed."""
    torch.manual_seed(0)
    x = torch.zeros(4, 1, 28, 28)
    x[:, :, 7:21, 13:15] = torch.rand(4, 1, 14, 2) + 0.5
    inputs = {"x": x.to(dtype), "y": torch.tensor([3, 7, 1, 0])}

    class Wide(_TiedCNN):
        def __init__(self, pool):
            super().__init__(pool)
            self.fc = torch.nn.Linear(8 * 7 * 7, 10)

        def forward(self, x, y):
            h = self.pool(torch.relu(self.c1(x)))
            h = self.pool(torch.relu(self.c2(h)))
            return F.cross_entropy(self.fc(h.flatten(1)), y)

    for name, pool, passes in [("torch", lambda x: F.max_pool2d(x, 2), True),
                               ("even", _pool_backward(lambda tied, n: tied / n), True),
                               ("every", _pool_backward(lambda tied, n: tied), False),
                               ("half lost", _pool_backward(lambda tied, n: tied / (2 * n)), False)]:
        torch.manual_seed(1)
        report = sg.check(Wide(pool).to(dtype), inputs, quiet=True)
        assert report.passed is passes, (name, report.to_text()[:3000])


def test_ties_past_the_budget_say_so():
    """4,096 ties of distinct entries (the input's own rows) are past the sweeps' budget: they keep
    their entrywise bands, and the report says what that lets pass."""
    x = torch.zeros(1, 1, 128, 128, dtype=torch.float64)
    report = sg.check(lambda x: F.max_pool2d(x, 2).sum(), {"x": x}, quiet=True)
    assert report.passed
    assert "4096 ties of max/min were too many for the sweeps' budget" in report.to_text()


TWO_INPUT_TIES = {
    "maximum": torch.maximum, "minimum": torch.minimum, "fmax": torch.fmax,
    "where": lambda a, b: torch.where(a > b, a, b),
    "stack-amax": lambda a, b: torch.stack([a, b]).amax(0),
    "clamp-min": lambda a, b: torch.clamp(a, min=b),
}


def _two_input(op, split):
    """``op`` with a backward that gives each argument ``split`` of the cotangent at a tie (None:
    torch's own backward of ``op``)."""
    class Tied(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a, b):
            ctx.save_for_backward(a, b)
            return op(a, b)

        @staticmethod
        def backward(ctx, g):
            a, b = ctx.saved_tensors
            with torch.enable_grad():
                a2, b2 = a.detach().requires_grad_(), b.detach().requires_grad_()
                ga, gb = torch.autograd.grad(op(a2, b2), (a2, b2), g)
            if split is None:
                return ga, gb
            tie = a == b
            return torch.where(tie, split[0] * g, ga), torch.where(tie, split[1] * g, gb)

    return Tied.apply


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", TWO_INPUT_TIES)
@pytest.mark.parametrize("split,passes", [(None, True), ((1.0, 0.0), True), ((0.25, 0.75), True),
                                          ((1.0, 1.0), False), ((0.0, 0.0), False)])
def test_a_tie_between_two_inputs(name, split, passes, dtype, engine):
    """One choice of side holds for both inputs (Notes [Sides of one region], [One choice for every
    input]): the cotangent goes to a, to b or is split; to both, or to neither, fails."""
    op = TWO_INPUT_TIES[name]
    a = torch.tensor([1.0, 2.0, 3.0, -0.5], dtype=dtype)
    b = torch.tensor([1.0, 0.0, 3.0, 0.25], dtype=dtype)  # ties at 0 and 2
    v = torch.tensor([0.5, -1.0, 2.0, 0.75], dtype=dtype)
    report = sg.check(_two_input(op, split), {"a": a, "b": b}, symbolic=op, v=v, engine=engine, quiet=True)
    assert report.passed is passes, str(report)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ["maximum", "clamp-min"])
@pytest.mark.parametrize("split,passes", [((0.0, 1.0), True), ((0.25, 0.75), True), ((1.0, 1.0), False),
                                          ((0.0, 0.0), False), ((0.5, 0.6), False)])
def test_a_tie_at_every_entry_between_two_inputs(name, split, passes, dtype, engine):
    """Every entry tied: each input's record alone is explained by one side (a by the graph's, b by
    the other), so the other side (Note [Other side everywhere]) is taken for all records or none,
    and the split's weights are fitted where the graph's side of b is exactly 0 (Note [A split is
    rounded too] in compare/kinks.py)."""
    op = TWO_INPUT_TIES[name]
    a = torch.linspace(-2.0, 2.0, 24, dtype=dtype)
    v = torch.randn(24, dtype=dtype, generator=torch.Generator().manual_seed(3))
    report = sg.check(_two_input(op, split), {"a": a, "b": a.clone()}, symbolic=op, v=v, engine=engine, quiet=True)
    assert report.passed is passes, str(report)


class _Router(torch.nn.Module):
    """A top-2-of-4 router initialised at zero (every logit tied) whose indices pick expert values."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor
        self.gate = torch.nn.Linear(3, 4).double()
        torch.nn.init.zeros_(self.gate.weight)
        torch.nn.init.zeros_(self.gate.bias)
        self.experts = torch.nn.Parameter(torch.tensor([0.3, -1.2, 0.7, 2.0], dtype=torch.float64))

    def forward(self, x, t):
        scale = with_backward(lambda z: z * 1.0, lambda z, g: g * self.factor)
        vals, idx = torch.topk(scale(self.gate(x)), 2, dim=-1)
        y = (torch.softmax(vals, -1) * self.experts[idx]).sum(-1)
        return ((y - t) ** 2).mean()


@pytest.mark.parametrize("factor,passes", [(1.0, True), (-1.0, False), (1 + 1e-6, False)])
def test_a_tied_top_k_whose_indices_are_read_follows_torchs_indices(factor, passes):
    """Note [Ties of order statistics] (graph/aten_order.py): with the tie free, the values could route
    to another tied entry while idx still picked torch's experts, and a sign-flipped router passed."""
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(8, 3, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
    report = sg.check(_Router(factor), {"x": x, "t": t}, quiet=True)
    assert report.passed is passes, str(report)


@pytest.mark.parametrize("pick", ["max", "topk", "argmax"])
def test_a_float32_near_tie_follows_torchs_own_pick(pick):
    """Note [Torch's own picks] (graph/aten_order.py): x + 3 ties in float32 but not in float64; the
    index torch returns selects a weight, so the graph must pick as torch did (every row failed)."""
    x = torch.tensor([[1.0, 1.0 + 2**-23, 0.5, 0.2]], dtype=torch.float32)
    w = torch.tensor([[0.3, -1.2, 0.7, 2.0]], dtype=torch.float32)

    def f(x, w):
        y = x + 3.0
        if pick == "max":
            v, i = torch.max(y, dim=1)
        elif pick == "topk":
            v, i = torch.topk(y, 1, dim=1)
            v, i = v[:, 0], i[:, 0]
        else:
            i = torch.argmax(y, dim=1)
            v = torch.gather(y, 1, i[:, None])[:, 0]
        return v * torch.gather(w, 1, i[:, None])[:, 0]

    assert sg.check(f, {"x": x, "w": w}, v=torch.tensor([0.8]), quiet=True).passed
    off = with_backward(lambda w: w * 1.0, lambda w, g: g * 1.01)
    assert not sg.check(lambda x, w: f(x, off(w)), {"x": x, "w": w}, v=torch.tensor([0.8]), quiet=True).passed


class _FirstMatchSort(torch.autograd.Function):
    """sort whose backward and jvp invert the permutation by the first input equal to each output (a
    realistic bug: ``(sorted == x).argmax``): at a tie, both outputs read one input."""

    @staticmethod
    def forward(x):
        return torch.sort(x).values

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x, output)
        ctx.first = (output.unsqueeze(-1) == x.unsqueeze(-2)).to(torch.int64).argmax(-1)

    @staticmethod
    def backward(ctx, g):
        x, _ = ctx.saved_tensors
        return torch.zeros_like(x).scatter_add(-1, ctx.first, g)

    @staticmethod
    def jvp(ctx, t):
        return t.gather(-1, ctx.first)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_a_tie_shared_by_two_outputs_of_sort(dtype):
    """Note [A tie shared by outputs] (graph/aten_order.py): sort([1, 1]) is (min, max) near the tie,
    the outputs take distinct entries; routing both to the first passed as two free maxima."""
    x = torch.tensor([[1.0, 1.0, 0.5], [2.0, -1.0, 2.0]], dtype=dtype)
    v = torch.tensor([[1.0, 2.0, 3.0], [0.5, 1.5, -2.0]], dtype=dtype)
    sort = lambda x: torch.sort(x).values  # noqa: E731
    assert sg.check(sort, {"x": x}, v=v).passed
    assert sg.check(sort, {"x": x}, v=v, engine="elementwise").passed
    report = sg.check(_FirstMatchSort.apply, {"x": x}, symbolic=sort, v=v)
    assert not report.passed, report.to_text()
    assert not sg.check(_FirstMatchSort.apply, {"x": x}, symbolic=sort, via="forward_ad", tangents=v).passed


def test_a_tie_of_a_top_k_in_a_model():
    """Ordinal cut-points initialised equal and sorted (every output tied): torch's sort passes, the
    first-match backward (the whole cotangent sum on one cut-point) fails."""
    cut = torch.zeros(4, dtype=torch.float64)
    h = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def loss(cut, h, sort):
        c = sort(cut)
        return (torch.sigmoid(c[None, :] - h[:, None]) * torch.arange(1.0, 5.0, dtype=cut.dtype)).sum()

    assert sg.check(lambda cut, h: loss(cut, h, lambda c: torch.sort(c).values), {"cut": cut, "h": h}).passed
    assert not sg.check(lambda cut, h: loss(cut, h, _FirstMatchSort.apply), {"cut": cut, "h": h},
                        symbolic=lambda cut, h: loss(cut, h, lambda c: torch.sort(c).values)).passed



class _MaskedMaxPool(torch.nn.Module):
    """Deep Sets' pooling: a padded set's entries filled with -1e9, then the maximum over the set."""

    def __init__(self):
        super().__init__()
        self.phi = torch.nn.Sequential(torch.nn.Linear(3, 96), torch.nn.ELU(), torch.nn.Linear(96, 96), torch.nn.ELU())
        self.out = torch.nn.Linear(96, 1)

    def forward(self, x, mask, y):
        h = self.phi(x).masked_fill(~mask.bool()[..., None], -1e9).amax(1)
        return torch.nn.functional.mse_loss(self.out(h).squeeze(-1), y)


def test_a_masked_fill_far_below_the_maximum_is_no_rival():
    """The -1e9 of the padding is never the maximum, but its bound (a few float32 ulps of 1e9) was
    taken as every entry's: every channel of a padded row was a tie, past the sweeps' budget the ties
    were banded, and a first layer's backward off by 1e-3 passed (allowed 70 times its size)."""
    from tests.graph.families import bugged

    torch.manual_seed(0)
    x, y = torch.randn(4, 10, 3), torch.randn(4)
    mask = torch.ones(4, 10)
    mask[1, 6:] = 0
    mask[3, 3:] = 0
    good = _MaskedMaxPool()
    report = sg.check(good, {"x": x, "mask": mask, "y": y}, quiet=True)
    assert report.passed and not any(r.coarse for r in report.records), report.summary()
    assert not sg.check(bugged(good, "scaled", 1 + 1e-3), {"x": x, "mask": mask, "y": y}, quiet=True).passed


class _AmaxToEveryTie(torch.autograd.Function):
    """amax whose backward gives the whole cotangent to every tied entry (n times the gradient)."""

    @staticmethod
    def forward(ctx, x):
        m = x.amax()
        ctx.save_for_backward(x, m)
        return m

    @staticmethod
    def backward(ctx, g):
        x, m = ctx.saved_tensors
        return g * (x == m).to(g.dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_one_tie_of_five_hundred_entries_is_a_unit(dtype):
    """Note [One large tie]: past the tie size shared by 32 units, each tied entry was judged by its
    band (none to all of the cotangent) and the whole cotangent to every entry passed."""
    x = torch.ones(500, dtype=dtype)
    assert not sg.check(_AmaxToEveryTie.apply, {"x": x}, symbolic=lambda x: x.amax()).passed
    assert sg.check(lambda x: x.amax(), {"x": x}).passed


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_one_tie_choice_for_every_jacobian_row(dtype):
    """Note [One choice for every cotangent] (graph/kinkunits.py): a tie met by several rows of a
    Jacobian (or several cotangents) is one choice for all of them; the rows of
    ``stack([amax(x), 2 amax(x)])`` sent to different tied entries passed, each row alone valid."""
    def twin(x):
        return torch.stack([x.amax(), 2 * x.amax()])

    def routed(first, second):
        def backward(x, g):
            out = torch.zeros_like(x)
            out[first] = out[first] + g[0]
            out[second] = out[second] + 2 * g[1]
            return out
        return custom(twin, backward)

    x = torch.tensor([1.0, 3.0, 3.0, 3.0], dtype=dtype)
    for first, second, ok in ((1, 2, False), (3, 1, False), (2, 2, True), (1, 1, True)):
        for via, kw in (("functional.jacobian", {}), ("backward", {"v": torch.tensor([0.7, -1.3], dtype=dtype)})):
            report = sg.check(routed(first, second), {"x": x}, symbolic=twin, via=via, engine="graph", quiet=True,
                              **kw)
            if via == "functional.jacobian" or ok:  # one cotangent: a mix of both rows, caught or not
                assert report.passed == ok, (first, second, via, report.to_text())
    assert sg.check(twin, {"x": x}, via="jacrev", quiet=True).passed


def _nested_pool(x):
    return F.max_pool1d(F.max_pool1d(x, 2), 2).sum()


def _routed(pick: str):
    """Both pools of ``_nested_pool`` on a flat region, by hand: ``pick`` of each window's ties."""
    def backward(x, g):
        out = torch.zeros_like(x)
        if pick == "first":
            out[..., 0] = g
        elif pick == "last":
            out[..., 3] = g
        elif pick == "even":
            out[...] = g / 4
        elif pick == "every":
            out[...] = g
        elif pick == "first and 0.2":
            out[..., 0], out[..., 2] = g, 0.2 * g
        return out
    return with_backward(_nested_pool, backward)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("pick,passes", [("torch", True), ("first", True), ("last", True), ("even", True),
                                         ("every", False), ("first and 0.2", False)])
def test_ties_that_feed_ties(pick, passes, dtype):
    """A flat region max-pooled twice: torch's [1, 0, 0, 0] is the first entry at both levels, which
    the even split plus one change per tie cannot express (a cross term); it failed until the fit was
    repeated around each tie's first and last entry (Note [A tie's first entry])."""
    x = torch.ones(1, 1, 4, dtype=dtype)
    f = _nested_pool if pick == "torch" else _routed(pick)
    report = sg.check(f, {"x": x}, symbolic=_nested_pool, quiet=True)
    assert report.passed is passes, str(report)
    if pick == "torch":
        rows = sg.check(lambda x: x.reshape(2, 2).max(-1).values.max(-1).values, {"x": x.flatten()}, quiet=True)
        assert rows.passed, str(rows)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_saliency_of_a_cnn_that_pools_a_binary_image_first(dtype):
    """The gradient with respect to a binary image pooled before a conv, relu and a second pool:
    ties at both pools; torch's own backward failed (Note [A tie's first entry])."""
    torch.manual_seed(0)
    conv, fc = torch.nn.Conv2d(1, 4, 3, padding=1).to(dtype), torch.nn.Linear(16, 3).to(dtype)

    def f(x):
        h = F.max_pool2d(torch.relu(conv(F.max_pool2d(x, 2))), 2)
        return F.cross_entropy(fc(h.flatten(1)), torch.tensor([1]))

    x = torch.zeros(1, 1, 8, 8, dtype=dtype)
    x[0, 0, 3:8, 0:4] = 1
    assert sg.check(f, {"x": x}, quiet=True).passed
    twice = with_backward(lambda x: F.max_pool2d(x, 2), lambda x, g: 2 * vjp(lambda x: F.max_pool2d(x, 2), x, g))
    wrong = lambda x: F.cross_entropy(fc(F.max_pool2d(torch.relu(conv(twice(x))), 2).flatten(1)),  # noqa: E731
                                      torch.tensor([1]))
    assert not sg.check(wrong, {"x": x}, symbolic=f, quiet=True).passed


@pytest.mark.parametrize("fn", [lambda x: torch.quantile(x, 0.3, dim=-1), lambda x: torch.nanquantile(x, 0.5, dim=-1)],
                         ids=["quantile", "nanquantile"])
def test_quantile_of_ratings_with_ties(fn):
    """torch.quantile's trace ends in an in-place ``squeeze_``, refused before with a message naming
    an op the user never wrote."""
    x = torch.tensor([[1.0, 3.0, 3.0, 2.0], [4.0, 4.0, 1.0, 5.0]], dtype=torch.float64)
    assert sg.check(fn, {"x": x}, quiet=True).passed
    off = with_backward(fn, lambda x, g: vjp(fn, x, g) * (1 + 1e-6))
    assert not sg.check(off, {"x": x}, symbolic=fn, quiet=True).passed


def _first_of_the_maximum(x, g):
    out = torch.zeros_like(x)
    out.view(-1)[torch.argmax(x)] = g
    return out


LARGE_TIE_BACKWARDS = [  # (name, backward of x.max() over a tie of thousands, passes)
    ("torch's max", None, True),
    ("the first tied entry", _first_of_the_maximum, True),
    ("the cotangent lost (tinygrad#12296's count overflowing to inf)", lambda x, g: torch.zeros_like(x), False),
    ("the whole cotangent to every tied entry", lambda x, g: g * (x == x.max()).to(x.dtype), False),
    ("half of it, split evenly", lambda x, g: 0.5 * g * (x == x.max()).to(x.dtype) / (x == x.max()).sum(), False),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name,backward,passes", LARGE_TIE_BACKWARDS, ids=[c[0] for c in LARGE_TIE_BACKWARDS])
def test_a_tie_too_large_for_units_hands_on_its_total(name, backward, passes, dtype):
    """Note [A tie's total] (tie_totals.py): past the sweeps' budget each of 2,571 tied entries was
    judged alone, anywhere from none to all of the cotangent, and a backward losing it passed."""
    x = torch.ones(3000, dtype=dtype)
    x[::7] = 0.5
    op = (lambda x: x.max()) if backward is None else custom(lambda x: x.max(), backward)
    assert sg.check(lambda x: 2.0 * op(torch.tanh(x)), {"x": x}, quiet=True).passed is passes


def test_saliency_through_a_global_max_pool_of_a_saturated_image():
    conv = torch.nn.Conv2d(1, 4, 3, padding=1).double()
    img = torch.ones(1, 1, 48, 48, dtype=torch.float64)
    img[..., 10:20, 10:20] = 0.3
    pool = lambda im: F.adaptive_max_pool2d(im, 1)  # noqa: E731
    lost = custom(pool, lambda im, g: torch.zeros_like(im))
    assert sg.check(lambda im: pool(im).sum() + conv(im).tanh().mean(), {"im": img}, quiet=True).passed
    assert not sg.check(lambda im: lost(im).sum() + conv(im).tanh().mean(), {"im": img}, quiet=True).passed


def test_a_large_near_tie_split_by_torch_over_its_rounded_ties():
    """Note [A tie's total]: W's 2,000 rows equal up to 2 ulps, so torch's float64 W @ x ties at 410
    entries and splits the cotangent over them, the reference over its own exact ties; the total's
    functional must sum over every leaf (t is the tangent of all of them) and allow the rounding of
    torch's spread split: torch's own gradient failed."""
    gen = torch.Generator().manual_seed(13)
    for shape in ((6,), (6,), (2000, 1), (30, 40)):  # the draws that gave the failing values
        torch.randint(-2, 3, shape, generator=gen) if shape == (2000, 1) else torch.randn(shape, generator=gen)
    x, base = torch.randn(6, dtype=torch.float64, generator=gen), torch.randn(6, dtype=torch.float64, generator=gen)
    w = base.repeat(2000, 1) * (1 + torch.randint(-2, 3, (2000, 1), generator=gen).double() * torch.finfo(torch.float64).eps)
    assert int((w @ x == (w @ x).max()).sum()) > 100
    assert sg.check(lambda w, x: torch.amax(w @ x) * 2, {"w": w, "x": x}, quiet=True).passed
    lost = custom(lambda y: torch.amax(y), lambda y, g: torch.zeros_like(y))
    assert not sg.check(lambda w, x: lost(w @ x) * 2, {"w": w, "x": x}, quiet=True).passed


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("op", ["max_pool1d", "max_dim", "amax"])
def test_a_window_of_masked_entries_only_is_a_tie_in_forward_mode(op, dtype):
    """rules_tensor._near_extreme: a window or row whose entries are all -inf (masked) had no tie, and
    the tangent was taken as the even split with nothing allowed; torch's max(dim) and max pooling
    route it to the first entry, and their own forward mode failed.  Equal infinite entries tie."""
    fn = {"max_pool1d": lambda x: F.max_pool1d(x.reshape(1, 1, 4), 2).reshape(2),
          "max_dim": lambda x: x.reshape(2, 2).max(1).values,
          "amax": lambda x: x.reshape(2, 2).amax(1)}[op]
    x = torch.tensor([-float("inf"), -float("inf"), 0.0, 0.0], dtype=dtype)
    t = torch.tensor([0.3, -0.7, 0.5, 0.2], dtype=dtype)
    assert sg.check(fn, {"x": x}, quiet=True).passed
    assert sg.check(fn, {"x": x}, via="forward_ad", tangents=t, quiet=True).passed
