"""The statistical rounding allowance of low-precision gradients (Note [Statistical allowance])."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import symgrad as sg
from symgrad.graph import montecarlo, scale
from symgrad.testing_ops import with_backward

from .test_models import LeNet


def _tanh_layer(factor: float = 1.0, entry: int | None = None):
    """A custom tanh layer (``.apply``) whose backward is scaled by ``factor``, everywhere or at one entry."""
    def backward(x, g):
        gx = g * (1 - torch.tanh(x) ** 2)
        if entry is None:
            return gx * factor
        gx = gx.clone()
        gx.view(-1)[entry] *= factor
        return gx

    return SimpleNamespace(apply=with_backward(torch.tanh, backward))


def _lenet_check(layer, seed: int = 0):
    torch.manual_seed(seed)
    model = LeNet(act=layer).float()
    inputs = {"x": torch.randn(2, 1, 28, 28), "y": torch.tensor([3, 7])}
    return sg.check(model, inputs, engine="graph")


def test_float32_lenet_passes_and_its_first_layer_is_resolved():
    report = _lenet_check(_tanh_layer())
    assert report.passed, report.to_text()
    rec = report["c1.weight"]
    assert "statistical bound" in rec.note
    value = np.abs(rec.expected)
    share = np.median(rec.allowed[value > 0] / value[value > 0])
    assert share < 1e-3, share  # the worst-case bound alone allowed more than 100 % of each entry here


@pytest.mark.parametrize("factor, entry", [(1.001, None), (1.001, 3)], ids=["scaled 1e-3", "one entry 1e-3"])
def test_float32_lenet_catches_a_small_bug_the_worst_case_bound_let_pass(factor, entry):
    report = _lenet_check(_tanh_layer(factor, entry))
    assert not report.passed
    assert {"f1.weight", "f1.bias"} & {r.name for r in report.failures}


def test_float64_has_no_reruns(monkeypatch):
    calls = []
    real = montecarlo.spread
    monkeypatch.setattr(montecarlo, "spread", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    model = LeNet(act=_tanh_layer()).double()
    report = sg.check(model, {"x": torch.randn(2, 1, 28, 28, dtype=torch.float64), "y": torch.tensor([3, 7])},
                      engine="graph")
    assert report.passed and not calls  # the worst-case bound resolves float64: no reruns


def test_the_statistical_bound_only_ever_tightens(monkeypatch):
    from .test_models import _models

    def allowed():
        torch.manual_seed(2)
        model, inputs = _models(torch.float32)["resblock"]
        report = sg.check(model.float(), inputs, engine="graph")
        return {r.name: r.allowed for r in report.records if r.quantity != "forward"}, report

    tight, report = allowed()
    assert any("statistical bound" in r.note for r in report.records)
    monkeypatch.setattr(montecarlo, "LAMBDA", 1e30)  # a spread that explains anything: the worst case stays
    loose, report = allowed()
    assert not any("statistical bound" in r.note for r in report.records)
    for name in tight:
        assert np.all(tight[name] <= loose[name]) and np.any(tight[name] < loose[name]), name


def test_rerun_spread_matches_the_first_order_variance():
    # one product and one sum: d = a*b + c, each operation moved by +-its own bound; the spread's
    # square is the sum of the squared moves carried to the output (here with slope 1)
    from symgrad.graph.approx import Approx, add, mul

    a, b, c = (Approx(np.array([v])) for v in (3.0, 5.0, -14.0))
    rng = np.random.default_rng(0)
    outs = []
    with montecarlo.perturbing(rng):
        for _ in range(4000):
            outs.append(float(add(mul(a, b), c).v[0]) - 1.0)
    got = np.sqrt(np.mean(np.square(outs))) / montecarlo.DELTA
    expected = np.sqrt(15.0**2 + 1.0**2)  # |a*b| = 15 for the product, |a*b + c| = 1 for the sum
    assert abs(got - expected) < 0.05 * expected


def _sigmoid_check(dtype, factor: float = 1.0):
    from symgrad.testing_ops import scaled

    f = lambda t: torch.sigmoid(3 * t).sum()  # noqa: E731
    x = torch.randn(16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)
    return sg.check(f if factor == 1.0 else scaled(f, factor), {"x": x}, engine="graph", quiet=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_systematic_scale_catches_one_percent_every_entry_alone_lets_pass(dtype):
    """Note [Systematic scale]: 256 entries of a sigmoid gradient, each allowed more than 1 % in
    bfloat16, together resolve a scale of 1.01 (the per-entry bound alone passed it)."""
    assert _sigmoid_check(dtype).passed
    for factor in (1.01, 0.99):
        report = _sigmoid_check(dtype, factor)
        assert not report.passed
        # float16's entries catch it one by one already; in bfloat16 only the scale does
        assert dtype == torch.float16 or "Systematic scale" in report["x"].note


def test_the_scale_test_runs_only_in_half_precision(monkeypatch):
    kept = []
    real = montecarlo.spread
    monkeypatch.setattr(montecarlo, "spread", lambda *a, **k: kept.append(k.get("keep")) or real(*a, **k))
    assert _sigmoid_check(torch.float32).passed and _sigmoid_check(torch.float64).passed
    assert all(k is None for k in kept)  # no reruns kept for the scale test (float64: no reruns at all)
    _sigmoid_check(torch.bfloat16)
    assert len(kept[-1]) == scale.SCALE_SAMPLES  # a small graph: more reruns (Note [Scale test's spread])


def test_equal_values_of_one_operation_move_together():
    v = np.array([0.3, 0.3, -0.3, 0.3 * 2.0**-5, 0.7, 1.1, 2.5, 3.7] * 64)
    signs = montecarlo._keyed_signs(v.copy(), 12345)
    assert signs[0] == signs[1] == -signs[2] == signs[3]  # the same value (up to sign and a power of 2)
    others = signs.reshape(64, 8)[0, 4:]
    flips = [montecarlo._keyed_signs(v.copy(), salt)[4:8] for salt in range(64)]
    assert 0.3 < np.mean(np.array(flips) > 0) < 0.7 and others.shape == (4,)  # distinct values: independent signs


def test_the_scale_test_keeps_no_more_reruns_than_its_limit(monkeypatch):
    monkeypatch.setattr(scale, "MAX_KEPT", 16 * 255)  # one entry short of the sigmoid's 16 x 256
    assert _sigmoid_check(torch.bfloat16, 1.01).passed  # not run: each entry alone lets 1 % pass


def _small_sigmoid_check(factor: float = 1.0, n: int = 12):
    from symgrad.testing_ops import scaled

    f = lambda t: torch.sigmoid(3 * t).sum()  # noqa: E731
    x = torch.randn(n, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(torch.bfloat16)
    return sg.check(f if factor == 1.0 else scaled(f, factor), {"x": x}, engine="graph", quiet=True)


def test_one_percent_is_resolved_over_144_bfloat16_entries():
    """Note [Scale test's spread]: 144 entries resolve a scale of 1.01 in bfloat16 (the 16 reruns at
    8 standard deviations with the floor added on top passed it)."""
    assert _small_sigmoid_check().passed
    for factor in (1.01, 0.99):
        report = _small_sigmoid_check(factor)
        assert not report.passed and "Systematic scale" in report["x"].note, report["x"].note


def test_scale_lambda_keeps_the_false_alarm_probability():
    from scipy.stats import t as student_t

    assert scale.scale_lambda(montecarlo.SAMPLES) == pytest.approx(montecarlo.LAMBDA)
    tail = 2 * (1 + montecarlo.LAMBDA**2 / montecarlo.SAMPLES) ** (-montecarlo.SAMPLES / 2)
    lams = [scale.scale_lambda(n) for n in (16, 32, 64, 128)]
    assert all(a > b for a, b in zip(lams, lams[1:])) and lams[-1] > 5.0  # never below the known-sigma 5.07
    for n, lam in zip((16, 32, 64, 128), lams):
        # a Gaussian scale over an estimated spread is Student's t: its tail stays below the bound
        assert 2 * student_t.sf(lam, n) <= tail * 1.0001


def _scale_record(g, actual, allowed):
    return SimpleNamespace(passed=True, expected=g, actual=actual, allowed=allowed, kink_mask=None)


def test_the_floor_is_an_at_least_in_the_scale_test():
    """An entry whose reruns already spread it by more than its floor gets nothing from the floor;
    one that the reruns leave still gets it (Note [Scale test's spread])."""
    from symgrad.compare.compare import EPS
    from symgrad.compare.half import rounding_ulps, value_roundings

    rng = np.random.default_rng(0)
    g = rng.uniform(0.5, 2.0, 64)
    unit = rounding_ulps("bfloat16") * EPS["bfloat16"]
    allowed = np.full(64, 1.0)  # a worst case far away: the spread decides
    loud = [g * value_roundings("bfloat16") * 3 * rng.choice((-1.0, 1.0), 64) for _ in range(16)]
    alpha, allow, n = scale.systematic_scale(_scale_record(g, g, allowed), loud, "bfloat16")
    spread2 = unit**2 * np.mean(np.square(loud), axis=0)  # Note [Weighted scale]
    w = (g / spread2) / np.sum(g * g / spread2)
    runs_only = montecarlo.LAMBDA * unit * np.sqrt(np.mean([np.sum(w * r) ** 2 for r in loud]))
    assert alpha == 0 and n == 64 and allow == pytest.approx(runs_only)
    quiet = [np.zeros(64) for _ in range(16)]  # nothing counted: the floor alone
    _, allow, _ = scale.systematic_scale(_scale_record(g, g, allowed), quiet, "bfloat16")
    floor = value_roundings("bfloat16") * unit * g
    w = (g / floor**2) / np.sum(g * g / floor**2)
    assert allow == pytest.approx(montecarlo.LAMBDA * np.sqrt(np.sum((w * floor) ** 2)))


def test_quiet_entries_set_the_weighted_scale():
    """Note [Weighted scale]: entries the reruns spread widely weigh little, so a few noisy entries
    do not widen the scale's allowance; a scale of the quiet entries is seen through them."""
    from symgrad.compare.compare import EPS
    from symgrad.compare.half import rounding_ulps

    rng = np.random.default_rng(1)
    g = rng.uniform(0.5, 2.0, 64)
    unit = rounding_ulps("bfloat16") * EPS["bfloat16"]
    size = np.where(np.arange(64) < 8, 40.0, 2.0) * g  # 8 entries err by 20 % in the model
    runs = [size * rng.choice((-1.0, 1.0), 64) for _ in range(64)]
    allowed = np.full(64, 1.0)
    _, allow, _ = scale.systematic_scale(_scale_record(g, g * 1.01, allowed), runs, "bfloat16")
    unweighted = g / np.sum(g * g)
    plain = scale.scale_lambda(64) * unit * np.sqrt(np.mean([np.sum(unweighted * r) ** 2 for r in runs]))
    assert allow < 0.01 < plain  # 1 % is beyond the weighted allowance, within the unweighted one
    assert scale.systematic_scale(_scale_record(g, g * 1.01, allowed), runs, "bfloat16")[0] == pytest.approx(0.01)


def test_a_coherent_rounding_is_charged_its_size_not_lambda_times():
    """Note [Coherent roundings]: a rounding every entry shares moves the scale by at most its size."""
    from symgrad.compare.compare import EPS
    from symgrad.compare.half import rounding_ulps

    rng = np.random.default_rng(2)
    g = rng.uniform(0.5, 2.0, 64)
    unit = rounding_ulps("bfloat16") * EPS["bfloat16"]
    runs = [2.0 * g * rng.choice((-1.0, 1.0), 64) for _ in range(64)]
    shared = [1.5 * g]  # one site moving every entry by 1.5 roundings of itself
    _, alone, _ = scale.systematic_scale(_scale_record(g, g, np.full(64, 1.0)), runs, "bfloat16")
    _, both, _ = scale.systematic_scale(_scale_record(g, g, np.full(64, 1.0)), runs, "bfloat16", shared)
    # the entries' weights see the shared site as spread (its mean square), the allowance as a shift
    assert both > alone + 1.5 * unit * 0.99
    assert both < alone * np.sqrt(1 + 1.5**2 / 2.0**2) + 1.5 * unit + 1e-12


def test_erf_constant_is_a_coherent_rounding():
    """erf's derivative holds 1/sqrt(pi), one rounding every entry shares: the scale test holds it
    still in the reruns and charges its worst case (Note [Coherent roundings])."""
    seen = []
    real = montecarlo.coherent_reruns

    def spy(*args, **kwargs):
        runs, constants = real(*args, **kwargs)
        seen.append(len(constants))
        return runs, constants

    x = torch.linspace(-2, 2, 48, dtype=torch.float64).reshape(6, 8).to(torch.bfloat16)
    try:
        montecarlo.coherent_reruns = spy
        report = sg.check(torch.erf, {"x": x}, engine="graph", quiet=True)
    finally:
        montecarlo.coherent_reruns = real
    assert report.passed and seen and seen[0] >= 1


def test_the_forward_row_gets_the_statistical_allowance():
    """Note [Statistical forward]: a deep float32 forward's worst-case bound allowed 6 % of the loss;
    with the reruns' spread a forward off by 3e-4 fails at the output row."""
    def net(x, ws, last):
        h = x
        for w in ws:
            h = torch.tanh(h @ w) * 3
        return last(h).pow(2).mean()

    gen = torch.Generator().manual_seed(0)
    ws = [torch.randn(48, 48, generator=gen) / 4 for _ in range(6)]
    inputs = {"x": torch.randn(8, 48, generator=gen), **{f"w{i}": w for i, w in enumerate(ws)}}
    for factor in (1.0, 1 + 3e-4):
        off = with_backward(lambda h, factor=factor: h * factor, lambda h, g: g)
        report = sg.check(lambda x, *w: net(x, w, off), inputs, symbolic=lambda x, *w: net(x, w, lambda h: h),
                          engine="graph", quiet=True)
        row = report.records[0]
        assert row.name == "output" and row.passed == (factor == 1.0), row.note
        # the forward's bounds are capped as it is evaluated (Note [Statistical kinks]), or its row
        # tightened after the reruns (Note [Statistical forward])
        assert row.allowed < 1e-4 * abs(row.expected)
        assert "Statistical forward" in row.note or "Statistical kinks" in row.note


def test_one_scale_over_every_gradient():
    """Note [One scale over every gradient]: two gradients scaled alike, each too small alone to
    resolve the scale, fail together; scaled apart (one up, one down) they do not."""
    rng = np.random.default_rng(3)
    shape = (40,)
    gs = [rng.uniform(0.5, 2.0, shape) for _ in range(2)]
    runs = [[3.0 * g * rng.choice((-1.0, 1.0), shape) for _ in range(64)] for g in gs]

    def records(factors):
        return [SimpleNamespace(name=f"x{i}", passed=True, expected=g, actual=g * f, allowed=np.full(shape, 1.0),
                                kink_mask=None, note="", mismatched=0) for i, (g, f) in enumerate(zip(gs, factors))]

    alone = [scale.systematic_scale(rec, run, "bfloat16") for rec, run in zip(records((1.012, 1.012)), runs)]
    assert all(abs(a) <= allow for a, allow, _ in alone)  # each alone passes
    recs = records((1.012, 1.012))
    scale.apply_joint_scale_test(recs, runs, "bfloat16", [[], []])
    assert all(r.mismatched and "every gradient" in r.note for r in recs)
    recs = records((1.012, 0.988))
    scale.apply_joint_scale_test(recs, runs, "bfloat16", [[], []])
    assert not any(r.mismatched for r in recs)


class _FlipLast(torch.autograd.Function):
    """The identity, whose backward flips the sign of the last feature column."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        g = g.clone()
        g[..., -1] = -g[..., -1]
        return g


class _Encoder(torch.nn.Module):
    def __init__(self, flip: bool, layers: int = 2, causal: bool = False):
        super().__init__()
        self.flip, self.causal = flip, causal
        self.inp, self.out = torch.nn.Linear(8, 16), torch.nn.Linear(16, 10)
        self.layers = torch.nn.ModuleList([torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
                                           for _ in range(layers)])

    def forward(self, x, y):
        h = self.inp(x)
        h = _FlipLast.apply(h) if self.flip else h
        n = x.shape[1]
        mask = torch.triu(torch.full((n, n), float("-inf"), dtype=x.dtype), 1) if self.causal else None
        for layer in self.layers:
            h = layer(h, src_mask=mask)
        return torch.nn.functional.cross_entropy(self.out(h).flatten(0, 1), y.flatten())


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("flip", [False, True])
def test_a_deep_float64_model_is_resolved(flip, causal):
    """Float64 runs the reruns too: the worst case of a transformer encoder compounds past each
    entry's size, and a gradient with a flipped column passed (Note [Statistical allowance])."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 6, 8, dtype=torch.float64, generator=gen), torch.randint(0, 10, (2, 6), generator=gen)
    report = sg.check(_Encoder(flip, layers=3, causal=causal).double().eval(), {"x": x, "y": y}, quiet=True)
    assert report.passed is not flip, str(report)  # a -inf causal mask: no move of -inf (it was NaN)


class _DeepReluNet(torch.nn.Module):
    """Plain 3x3 convolutions and relus, the middle relu's backward optionally 1.001 times torch's."""

    def __init__(self, depth: int, bad: bool):
        super().__init__()
        self.convs = torch.nn.ModuleList([torch.nn.Conv2d(3 if i == 0 else 8, 8, 3, padding=1, bias=False)
                                          for i in range(depth)])
        self.fc = torch.nn.Linear(8, 10)
        self.bad = bad

    def forward(self, x, y):
        from symgrad.testing_ops import with_backward

        relu = with_backward(torch.relu, lambda z, g: g * (z > 0).to(g.dtype) * 1.001)
        for i, conv in enumerate(self.convs):
            x = conv(x)
            x = relu(x) if self.bad and i == len(self.convs) // 2 else torch.relu(x)
        return torch.nn.functional.cross_entropy(self.fc(x.mean((2, 3))), y)


@pytest.mark.parametrize("dtype, depth", [(torch.float32, 10), (torch.float64, 24)], ids=["float32", "float64"])
def test_relu_units_beyond_the_forwards_statistical_spread_are_not_kinks(dtype, depth):
    """Note [Statistical kinks] (montecarlo.py): the worst-case forward bound of a deep relu network
    outgrew its values (1e20 of a gradient entry's size in float64 at depth 24), every relu unit
    counted as within rounding of its kink, and a relu backward off by 1e-3 passed in both dtypes."""
    x = torch.randn(2, 3, 8, 8, dtype=dtype, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([1, 2])
    torch.manual_seed(1)
    good = _DeepReluNet(depth, False).to(dtype)
    bad = _DeepReluNet(depth, True).to(dtype)
    bad.load_state_dict(good.state_dict())
    report = sg.check(good, {"x": x, "y": y}, quiet=True)
    assert report.passed and not any(r.coarse for r in report.records), report.summary()
    assert not sg.check(bad, {"x": x, "y": y}, quiet=True).passed


class _DenseBlock(torch.nn.Module):
    """Two DenseNet layers (BatchNorm, relu, 1x1 and 3x3 convolutions, their inputs concatenated)."""

    def __init__(self, cin: int = 16, growth: int = 12):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, cin, 3, padding=1)
        self.layers = torch.nn.ModuleList()
        for i in range(2):
            c = cin + i * growth
            self.layers.append(torch.nn.ModuleList([
                torch.nn.BatchNorm2d(c), torch.nn.Conv2d(c, 4 * growth, 1, bias=False),
                torch.nn.BatchNorm2d(4 * growth), torch.nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)]))
        c = cin + 2 * growth
        self.bn, self.trans, self.fc = torch.nn.BatchNorm2d(c), torch.nn.Conv2d(c, c // 2, 1), torch.nn.Linear(c // 2, 10)

    def forward(self, x, y):
        feats = [self.stem(x)]
        for bn1, conv1, bn2, conv2 in self.layers:
            h = conv1(torch.relu(bn1(torch.cat(feats, 1))))
            feats.append(conv2(torch.relu(bn2(h))))
        h = torch.nn.functional.avg_pool2d(self.trans(torch.relu(self.bn(torch.cat(feats, 1)))), 2)
        return torch.nn.functional.cross_entropy(self.fc(h.mean((2, 3))), y)


@pytest.mark.parametrize("train", [True, False], ids=["batchnorm train", "batchnorm eval"])
def test_a_float32_dense_block_is_resolved(train):
    """Notes [Continuous kinks are roundings] (engine.py) and [Kinked entries' rounding]
    (statistical.py): one relu unit within rounding of 0 gave every value after it a band, every
    smooth derivative there became a kinked unit, every gradient entry was judged by bands and the
    worst case (1e8 ulps), and a stem backward off by 1e-3 passed."""
    from .families import bugged

    torch.manual_seed(0)
    good = _DenseBlock().float().train(train)
    inputs = {"x": torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1000)), "y": torch.tensor([0, 3, 5, 9])}
    assert sg.check(good, inputs, quiet=True).passed
    assert not sg.check(bugged(good, "scaled", 1 + 1e-3), inputs, quiet=True).passed


def _layer_norm(eps_forward: float, eps_backward: float):
    """A custom LayerNorm whose backward recomputes rstd with ``eps_backward``."""

    class LayerNorm(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w, b):
            ctx.save_for_backward(x, w)
            mu = x.mean(-1, keepdim=True)
            var = ((x - mu) ** 2).mean(-1, keepdim=True)
            return (x - mu) / torch.sqrt(var + eps_forward) * w + b

        @staticmethod
        def backward(ctx, g):
            x, w = ctx.saved_tensors
            mu = x.mean(-1, keepdim=True)
            var = ((x - mu) ** 2).mean(-1, keepdim=True)
            rstd = 1 / torch.sqrt(var + eps_backward)
            xh, gx = (x - mu) * rstd, g * w
            dx = rstd * (gx - gx.mean(-1, keepdim=True) - xh * (gx * xh).mean(-1, keepdim=True))
            return dx, (g * xh).sum(0), g.sum(0)

    return LayerNorm


def test_a_float32_layer_norm_backward_without_eps_fails():
    """Note [Float32's reruns at a hundredth] (montecarlo.py): a LayerNorm backward that drops eps
    (5e-6 relative) passed in float32, each entry allowed about 230 times torch's error; the right
    backward and torch's own layer_norm pass."""
    torch.manual_seed(0)
    x = (torch.randn(8, 32, dtype=torch.float64) + 0.5).float()
    w, b = (1 + 0.1 * torch.randn(32, dtype=torch.float64)).float(), (0.1 * torch.randn(32, dtype=torch.float64)).float()
    v = torch.randn(8, 32)
    ref = lambda x, w, b: F.layer_norm(x, (32,), w, b, 1e-5)  # noqa: E731
    inputs = {"x": x, "w": w, "b": b}
    assert not sg.check(_layer_norm(1e-5, 0.0).apply, inputs, symbolic=ref, v=v, quiet=True).passed
    assert sg.check(_layer_norm(1e-5, 1e-5).apply, inputs, symbolic=ref, v=v, quiet=True).passed
    assert sg.check(ref, inputs, v=v, quiet=True).passed


def _layer_norm_jvp(eps_tangent: float):
    """A custom LayerNorm (eps 1e-5) whose jvp recomputes rstd with ``eps_tangent``."""

    class LayerNorm(torch.autograd.Function):
        @staticmethod
        def forward(x, w, b):
            mu = x.mean(-1, keepdim=True)
            var = ((x - mu) ** 2).mean(-1, keepdim=True)
            return (x - mu) / torch.sqrt(var + 1e-5) * w + b

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.inputs = inputs

        @staticmethod
        def backward(ctx, g):
            raise NotImplementedError

        @staticmethod
        def jvp(ctx, tx, tw, tb):
            x, w, _ = ctx.inputs
            mu = x.mean(-1, keepdim=True)
            var = ((x - mu) ** 2).mean(-1, keepdim=True)
            rstd = 1 / torch.sqrt(var + eps_tangent)
            xh = (x - mu) * rstd
            dxh = rstd * (tx - tx.mean(-1, keepdim=True) - xh * (tx * xh).mean(-1, keepdim=True))
            return dxh * w + xh * tw + tb

    return LayerNorm


def test_a_float32_layer_norm_jvp_without_eps_fails():
    """Note [Statistical tangents] (graph/forward_records.py): the same bug in a custom jvp passed on
    9 of 10 seeds in float32; the right jvp passes."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).float()  # noqa: E731
    inputs = {"x": r(4, 16) + 0.5, "w": 1 + 0.1 * r(16), "b": 0.1 * r(16)}
    tangents = {k: r(*v.shape) for k, v in inputs.items()}
    ref = lambda x, w, b: F.layer_norm(x, (16,), w, b, 1e-5)  # noqa: E731
    for eps, ok in ((0.0, False), (1e-5, True)):
        report = sg.check(_layer_norm_jvp(eps).apply, inputs, symbolic=ref, via="forward_ad", tangents=tangents,
                          quiet=True)
        assert report.passed == ok, report.to_text()


class _KalmanLike(torch.nn.Module):
    """A chain of ``steps`` inverses and log-determinants (a Kalman filter's likelihood)."""

    def __init__(self, steps, inv=torch.linalg.inv):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Parameter(torch.eye(4) * 0.9 + 0.05 * torch.randn(4, 4))
        self.steps, self.inv = steps, inv

    def forward(self, y):
        p, ll, eye = torch.eye(4, dtype=y.dtype), 0, torch.eye(4, dtype=y.dtype)
        for t in range(self.steps):
            s = self.a @ p @ self.a.T + eye
            si = self.inv(s)
            ll = ll + y[t] @ si @ y[t] + torch.logdet(s)
            p = s - s @ si @ s * 0.5
        return ll


class _GaussianProcess(torch.nn.Module):
    """A GP's negative log marginal likelihood: an RBF kernel of learned features, its Cholesky factor."""

    def __init__(self, kexp=torch.exp):
        super().__init__()
        torch.manual_seed(0)
        self.feat = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32))
        self.kexp = kexp

    def forward(self, x, y):
        z = self.feat(x)
        k = self.kexp(-0.5 * (z[:, None] - z[None]).pow(2).sum(-1)) + 0.37 * torch.eye(len(y), dtype=y.dtype)
        low = torch.linalg.cholesky(k)
        return 0.5 * (y[:, None] * torch.cholesky_solve(y[:, None], low)).sum() + torch.log(torch.diagonal(low)).sum()


def test_a_chain_of_inverses_is_resolved():
    """Note [Linalg in the reruns] (linalg.py): graphs with linear-algebra nodes kept the worst case,
    which compounds along a chain (20 inverses: 4e42 ulps), and an inverse's backward off by 1e-5 on
    the gradient's diagonal passed in float64."""
    from symgrad.testing_ops import vjp

    def off(s, g):
        gr = vjp(torch.linalg.inv, s, g)
        return gr + 1e-5 * torch.diag_embed(torch.diagonal(gr, dim1=-2, dim2=-1))

    y = torch.randn(20, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert sg.check(_KalmanLike(20).double(), {"y": y}, quiet=True).passed
    assert not sg.check(_KalmanLike(20, with_backward(torch.linalg.inv, off)).double(), {"y": y}, quiet=True).passed


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_gaussian_process_likelihood_is_resolved(dtype):
    """The same for a Cholesky factor over 64 points: its exp's backward off on the kernel's first
    sub-diagonal (1e-5 in float64, 1e-2 in float32) passed, the allowances 1e13 times the entries."""
    from symgrad.testing_ops import vjp

    size = 1e-5 if dtype == torch.float64 else 1e-2

    def off(x, g):
        m = torch.ones_like(x)
        i = torch.arange(1, x.shape[-1])
        m[i, i - 1] = 1 + size
        return vjp(torch.exp, x, g) * m

    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 8, generator=gen).to(dtype), torch.randn(64, generator=gen).to(dtype)
    assert sg.check(_GaussianProcess().to(dtype), {"x": x, "y": y}, quiet=True).passed
    assert not sg.check(_GaussianProcess(with_backward(torch.exp, off)).to(dtype), {"x": x, "y": y}, quiet=True).passed


def test_linear_algebra_in_the_reruns_moves_its_reverse_rules_too():
    """Note [Linalg in the reruns]: a determinant's reverse rule (cofactors) read the unmoved matrix,
    its rerun spread was near 0, and torch's float32 det gradient of random 8 x 8 matrices failed
    (19 of 20); eigvalsh and svdvals at (numerically) repeated values, where first-order moves say
    nothing, keep the worst case."""
    gen = torch.Generator().manual_seed(12)
    for _ in range(4):
        assert sg.check(torch.linalg.det, {"A": torch.randn(8, 8, generator=gen)}, quiet=True).passed
    torch.manual_seed(2)
    q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    s = q @ torch.diag(torch.tensor([2.0, 1.0, 1.0, 0.5], dtype=torch.float64)) @ q.T
    v = torch.randn(4, dtype=torch.float64)
    assert sg.check(lambda s: torch.linalg.eigvalsh((s + s.mT) / 2), {"s": (s + s.T) / 2}, v=v, quiet=True).passed
    q2, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    a = (q @ torch.diag(torch.tensor([3.0, 1.0, 1.0, 0.2], dtype=torch.float64)) @ q2.T).float()
    assert sg.check(torch.linalg.svdvals, {"a": a}, v=torch.randn(4), quiet=True).passed


def test_a_float32_table_in_a_float64_check_moves_linearly():
    """Note [Moves stay linear] (montecarlo.py): a float32 sinusoidal table built inside a float64
    forward carries 2**31 units of its size; moved by 2**-30 per unit, it moved by itself, the tanh
    after it saturated, and torch's own gradient failed.  A backward 1e-5 off still fails."""
    import math

    from symgrad.testing_ops import scaled

    def table(L, d):
        pos = torch.arange(L, dtype=torch.float32).unsqueeze(1)
        div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
        return torch.stack([torch.sin(pos * div), torch.cos(pos * div)], -1).reshape(L, d).double()

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 48, dtype=torch.float64, generator=gen)
    v = torch.randn(64, 48, dtype=torch.float64, generator=gen)
    fn = lambda x: torch.tanh(x * table(*x.shape))  # noqa: E731
    assert sg.check(fn, {"x": x}, v=v, quiet=True).passed
    bugged = lambda x: scaled(torch.tanh, 1 + 1e-5)(x * table(*x.shape))  # noqa: E731
    assert not sg.check(bugged, {"x": x}, v=v, symbolic=fn, quiet=True).passed


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("kind", ["arange", "cos", "sin"])
def test_a_constant_with_a_rounding_residue_of_zero_keeps_the_moves(kind, dtype):
    """Note [Moves stay linear]: a float32 constant whose entry is a rounding residue of 0 (0.1 * 3 -
    0.3, cos(pi/2), sin(pi)) has a bound many times its own size there; scaled by that entry, every
    move of the reruns fell below float64's spacing, the reruns saw no spread, and torch's own
    gradient failed (an audit helper's find on an intermediate commit)."""
    import math

    make = {"arange": lambda: torch.arange(8, dtype=torch.float32) * 0.1 - 0.3,
            "cos": lambda: torch.cos(torch.arange(8, dtype=torch.float32) * (math.pi / 2)),
            "sin": lambda: torch.sin(torch.arange(8, dtype=torch.float32) * math.pi)}[kind]

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 8)

        def forward(self, x, t):
            return F.mse_loss(torch.tanh(self.lin(x) + make()), t)

    gen = torch.Generator().manual_seed(0)
    x, t = (torch.randn(16, 8, generator=gen, dtype=dtype) for _ in range(2))
    torch.manual_seed(0)
    assert sg.check(Model().to(dtype), {"x": x, "t": t}, quiet=True).passed


@pytest.mark.parametrize("fn", [lambda a, b: torch.sigmoid(a) * b, lambda a, b: F.silu(a) * b])
def test_a_change_too_small_to_square_keeps_the_worst_case(fn):
    """torch's float64 sigmoid(-710) is 0 (exact 4.5e-309, lost whole): the reruns moved ``s * b``
    by about 1e-289, their squares came out 0 and capped the allowance at 0 (Note [Moves too small
    to square] in montecarlo.py)."""
    a = torch.tensor([-710.0, -712.0], dtype=torch.float64)
    b = torch.full((2,), 3e4, dtype=torch.float64)
    assert sg.check(fn, {"a": a, "b": b}, v=torch.ones(2, dtype=torch.float64), quiet=True).passed
