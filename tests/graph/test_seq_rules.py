"""The sequence and embedding rules of ``symgrad/graph/aten_seq.py`` and the fixes found by the
sequence / attention model families (``tests/graph/families_seq.py``): each correct function passes,
a seeded wrong backward fails, and where torch's own rule is wrong the check says so."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import symgrad as sg
from symgrad.testing_ops import scaled, vjp, with_backward

DTYPES = [torch.float64, torch.float32]
DELTA = {torch.float64: 1e-6, torch.float32: 1e-3}


def _rand(*shape, dtype, seed=0):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduce", ["sum", "prod", "mean", "amax", "amin"])
@pytest.mark.parametrize("include_self", [True, False])
def test_scatter_reduce_every_reduction(reduce, include_self, dtype):
    """Position 3 receives nothing (keeps x), position 0 two entries, position 1 three.  torch's JVP of
    reduce='prod' is silently zero (its forward-mode rule was left out): the jvp row fails, as it should."""
    index = torch.tensor([0, 1, 1, 0, 2, 1])

    def f(x, src):
        return x.scatter_reduce(0, index, src, reduce, include_self=include_self)

    inputs = {"x": _rand(4, dtype=dtype), "src": _rand(6, dtype=dtype, seed=1)}
    report = sg.check(f, inputs, engine="graph")
    if reduce == "prod":  # torch's forward mode gives no tangent at all for prod (pytorch/pytorch#196702)
        assert report["x"].passed and report["src"].passed and not report["jvp"].passed, report.to_text()
    else:
        assert report.passed, report.to_text()
    bug = scaled(lambda s: s * 1.0, 1 + DELTA[dtype])
    assert not sg.check(lambda x, src: f(x, bug(src)), inputs, engine="graph").passed


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_embedding_scale_grad_by_freq_is_torch_rule(dtype):
    """Note [Gradient rules torch defines beside the derivative]: row 3 occurs twice, row 2 (the
    padding row) three times; a backward that forgets the 1/count is caught;
    ``padding_idx`` rows get none."""
    tokens = torch.tensor([[3, 2, 3, 9], [1, 2, 0, 2]])
    weight = _rand(10, 4, dtype=dtype)

    def good(w):
        return torch.tanh(F.embedding(tokens, w, padding_idx=2, scale_grad_by_freq=True))

    def plain_backward(w, g):  # torch's rule without the frequency scaling
        return _lookup_grad(tokens, g, w.shape, padding_idx=2)

    forgot = with_backward(lambda w: F.embedding(tokens, w, padding_idx=2, scale_grad_by_freq=True), plain_backward)
    assert sg.check(good, {"w": weight}, engine="graph").passed
    assert not sg.check(lambda w: torch.tanh(forgot(w)), {"w": weight}, engine="graph").passed


def _lookup_grad(tokens, g, shape, padding_idx):
    out = torch.zeros(shape, dtype=g.dtype).index_add_(0, tokens.reshape(-1), g.reshape(-1, shape[1]))
    out[padding_idx] = 0
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_embedding_max_norm_differentiates_the_renormed_weight_as_the_leaf(dtype):
    """Note [Writes into an input]: F.embedding(max_norm=1) renormalises the named rows of the weight in
    place under no_grad, and torch's gradient is the lookup's, at the renormalised values.  The same
    gradient for the renormalisation written as a function of the weight (no in-place write) is
    wrong, and caught."""
    tokens = torch.tensor([1, 3, 1, 4])
    weight = (_rand(6, 3, dtype=torch.float64) * 2).to(dtype)
    assert (weight[[1, 3, 4]].norm(dim=1) > 1).all()  # every named row is renormalised

    def f(w):
        return torch.sin(F.embedding(tokens, w, max_norm=1.0))

    report = sg.check(f, {"w": weight.clone()}, engine="graph")
    assert report.passed, report.to_text()

    def renormed_lookup(w):  # the same values, the renormalisation written as a function of w
        n = w.norm(dim=1, keepdim=True)
        return F.embedding(tokens, torch.where(n > 1, w / (n + 1e-7), w))

    def lookup_backward(w, g):  # torch's max_norm gradient: the plain lookup's
        return torch.zeros_like(w).index_add_(0, tokens, g)

    wrong = with_backward(renormed_lookup, lookup_backward)  # right for max_norm, wrong for this forward
    bad = sg.check(lambda w: torch.sin(wrong(w)), {"w": weight.clone()}, engine="graph")
    assert not bad.passed and not bad["w"].passed and bad.records[0].passed


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_a_no_grad_write_into_an_input_is_read_as_that_input(dtype):
    """Note [Writes into an input]: a clamp_ of a parameter under no_grad changes its values, not its
    place in autograd; the gradient is 2 x w' (w' the clamped values), not masked by the clamp."""
    def f(w, x):
        with torch.no_grad():
            w.clamp_(-0.5, 0.5)
        return (w * x) ** 2

    w, x = _rand(5, dtype=dtype), _rand(5, dtype=dtype, seed=2)
    assert (w.abs() > 0.5).any()
    report = sg.check(f, {"w": w.clone(), "x": x}, wrt=["w", "x"], engine="graph")
    assert report.passed, report.to_text()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_embedding_bag_max_with_an_empty_bag_is_zero(dtype):
    def f(w):
        return F.embedding_bag(torch.tensor([1, 4, 4, 8, 0]), w, torch.tensor([0, 3, 3]), mode="max").tanh()

    assert sg.check(f, {"w": _rand(9, 4, dtype=dtype)}, engine="graph").passed


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_torch_embedding_bag_scale_grad_by_freq_cpu_count_is_wrong_and_said_so(dtype):
    """torch's CPU embedding_bag backward (sum/mean, scale_grad_by_freq) divides by the count of the
    wrong index (pytorch/pytorch#190063): with indices [1, 1, 3] row 3's gradient is halved.  With the
    repeated index sorting last it is right, and passes."""
    w = _rand(4, 3, dtype=dtype)

    def bag(tokens):
        return lambda w: F.embedding_bag(torch.tensor(tokens), w, torch.tensor([0]), mode="sum",
                                         scale_grad_by_freq=True).sin()

    wrong = sg.check(bag([1, 1, 3]), {"w": w}, engine="graph")
    assert not wrong.passed and not wrong["w"].passed
    assert not sg.check(bag([3, 1, 1]), {"w": w}, engine="graph").passed  # torch sorts the indices first
    assert sg.check(bag([0, 3, 3]), {"w": w}, engine="graph").passed  # the repeated index sorts last


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pack_and_pad_unequal_lengths(dtype):
    """_pack_padded_sequence as a select; pad_packed_sequence's writes into a float32 zeros buffer are
    followed (the buffer is folded in float64, so its views stay views: Note [Writes into a new buffer];
    before, float32 lost the writes and saw a constant output)."""
    def f(x, lengths):
        packed = pack_padded_sequence(x * 1.5, lengths, batch_first=True, enforce_sorted=False)
        return pad_packed_sequence(packed, batch_first=True, total_length=x.shape[1])[0].tanh()

    inputs = {"x": _rand(3, 4, 2, dtype=dtype), "lengths": torch.tensor([2, 4, 1])}
    assert sg.check(f, inputs, engine="graph").passed
    bug = scaled(lambda x: x * 1.0, 1 + DELTA[dtype])
    assert not sg.check(lambda x, lengths: f(bug(x), lengths), inputs, engine="graph").passed


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fully_masked_attention_row(dtype):
    """Note [Masked entries under a NaN cotangent]: a row masked entirely gives NaN in torch; the
    forward row reports the non-finite output (not verifiable: the check does not pass), while the
    vjp -- 0 for the masked entries in torch and in the derivative -- passes, not blaming torch."""
    mask = torch.tensor([[True, False, False, True], [True, True, True, True], [False, False, False, False]])

    def f(x):
        return x.masked_fill(mask, float("-inf")).softmax(-1)

    report = sg.check(f, {"x": _rand(3, 4, dtype=dtype)}, engine="graph")
    assert not report.passed
    assert report["x"].passed, report.to_text()
    assert "NaN" in report.to_text()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bool_mask_shifted_by_slicing_is_data(dtype):
    """Note [Bool entries moved beside a comparison]: top-p filtering shifts a comparison's mask by one
    (``remove[..., 1:] = remove[..., :-1].clone()``); its bool copy was read as index positions (a
    forward false alarm).  A seeded bug on the logits is still caught."""
    def f(x):
        srt, idx = x.sort(-1, descending=True)
        remove = srt.softmax(-1).cumsum(-1) > 0.8
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = False
        return x.masked_fill(remove.scatter(-1, idx, remove), float("-inf")).softmax(-1)

    x = _rand(3, 6, dtype=dtype) * 2
    report = sg.check(f, {"x": x}, engine="graph")
    assert report.passed, report.to_text()
    bug = scaled(lambda x: x * 1.0, 1 + DELTA[dtype])
    assert not sg.check(lambda x: f(bug(x)), {"x": x}, engine="graph").passed


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_finfo_min_attention_mask(dtype):
    """Note [Astronomical values]: scores plus (1 - mask) * finfo(dtype).min, then softmax: in float64
    the masked scores' bounds overflowed eps units, NaN spread over the rows, and the allowances of
    every gradient shrank (a false alarm).  A seeded bug is caught."""
    keep = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])

    def f(q, k):
        s = q @ k.transpose(-1, -2) + (1.0 - keep[:, None, :].to(q.dtype)) * torch.finfo(q.dtype).min
        return s.softmax(-1) @ k

    inputs = {"q": _rand(2, 3, 4, dtype=dtype), "k": _rand(2, 4, 4, dtype=dtype, seed=1)}
    report = sg.check(f, inputs, engine="graph")
    assert report.passed, report.to_text()
    bug = scaled(lambda q: q * 1.0, 1 + DELTA[dtype])
    assert not sg.check(lambda q, k: f(bug(q), k), inputs, engine="graph").passed


def _one_entry_off(fn, rel):
    """``fn`` with torch's own backward, one entry in the middle off by ``1 + rel``."""
    def backward(x, g):
        out = vjp(fn, x, g).clone()
        out[..., out.shape[-1] // 2] *= 1 + rel
        return out
    return with_backward(fn, backward)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", ["cumsum", "logcumsumexp"])
def test_a_running_sum_over_a_long_axis(op, dtype):
    """Note [A running sum in blocks]: 20,000 entries made a 20,000 x 20,000 constant (a MemoryError
    in the adjoint cross-check).  Note [Sequential scans]: torch adds one term at a time, and a float64
    logcumsumexp of 10,000 entries had erred past the log2 n allowance of a blocked sum (2 of 3 seeds)."""
    fn = (lambda x: torch.cumsum(x, -1)) if op == "cumsum" else (lambda x: torch.logcumsumexp(x, -1))
    x = torch.rand(2, 20_000, dtype=dtype, generator=torch.Generator().manual_seed(1))
    v = torch.rand(2, 20_000, dtype=dtype, generator=torch.Generator().manual_seed(2))
    report = sg.check(fn, {"x": x}, v=v)
    assert report.passed, report.to_text()
    delta = 1e-9 if dtype == torch.float64 else 1e-3
    bugged = sg.check(_one_entry_off(fn, delta), {"x": x}, symbolic=fn, v=v)
    assert not bugged.passed, bugged.to_text()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_a_running_product_over_a_long_axis(dtype):
    """Note [A running product in blocks]: torch's decomposition is an n x n triangle (2,048 entries
    over 4 rows: 33 s and 2.7 GB); in blocks, zeros in a later block and two in one row included, and
    a block boundary (k = 46) crossed by the zero's influence."""
    fn = lambda x: torch.cumprod(x, -1)  # noqa: E731
    x = 1 + 0.02 * torch.randn(4, 2048, dtype=dtype, generator=torch.Generator().manual_seed(3))
    x[1, 1000] = 0.0
    x[2, 45] = 0.0
    x[2, 1500] = 0.0
    v = torch.randn(4, 2048, dtype=dtype, generator=torch.Generator().manual_seed(4))
    report = sg.check(fn, {"x": x}, v=v)
    assert report.passed, report.to_text()
    delta = 1e-6 if dtype == torch.float64 else 1e-3
    bugged = sg.check(_one_entry_off(fn, delta), {"x": x}, symbolic=fn, v=v)
    assert not bugged.passed, bugged.to_text()


def test_a_running_product_in_blocks_is_the_triangles_product():
    """The blocked running product has the dense one's values and exact gradient (zeros included)."""
    from symgrad.graph import aten_scan

    x = torch.randn(3, 150, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    x[0, 20] = 0.0
    x[1, 13] = x[1, 140] = 0.0
    fn = lambda x: torch.cumprod(x, 1)  # noqa: E731
    v = torch.randn(3, 150, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    blocked = sg.check(fn, {"x": x}, v=v, engine="graph")
    dense_at = aten_scan.DENSE_PRODUCT
    try:
        aten_scan.DENSE_PRODUCT = 1000
        dense = sg.check(lambda x: x.cumprod(dim=1), {"x": x}, v=v, engine="graph")  # another key
    finally:
        aten_scan.DENSE_PRODUCT = dense_at
    assert blocked.passed and dense.passed
    assert torch.allclose(torch.as_tensor(blocked["x"].expected), torch.as_tensor(dense["x"].expected), rtol=1e-13, atol=0)


def test_a_float64_scan_of_positive_terms():
    """100,000 positive terms: torch's sequential float64 cumsum (and its backward, a reversed
    cumsum) erred past the blocked sum's allowance in 2 of 3 seeds."""
    fn = lambda x: torch.cumsum(x, 0)  # noqa: E731
    for seed in range(3):
        x = torch.rand(100_000, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        v = torch.rand(100_000, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 10))
        report = sg.check(fn, {"x": x}, v=v)
        assert report.passed, report.to_text()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n, scale", [(12, 1.0), (200, 400.0), (5000, 1.0)])
def test_logcumsumexp_with_masked_entries(n, scale, dtype):
    """Note [An empty prefix] and Note [Each position its own shift] (graph/aten_scan.py): -inf entries
    inside a row and a row whose second half is -inf; with a row spanning 1,000 (scale 400) the
    shift is per position.  -inf - -inf had made the closed form NaN."""
    fn = lambda x: torch.logcumsumexp(x, 1)  # noqa: E731
    x = scale * _rand(3, n, dtype=dtype)
    x[1, n // 3: n // 3 + 5] = -float("inf")
    x[2, n // 2:] = -float("inf")
    v = _rand(3, n, dtype=dtype, seed=1)
    assert sg.check(fn, {"x": x}, v=v).passed
    bugged = sg.check(scaled(fn, 1 + DELTA[dtype]), {"x": x}, symbolic=fn, v=v, engine="graph")
    assert not bugged.passed


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_logsumexp_over_a_fully_masked_row(dtype):
    """Note [A masked row] (graph/aten_shift.py): log 0 = -inf on both sides, not a NaN reference;
    torch's own gradient there is NaN (fails), a backward giving 0 there passes, 1 there fails."""
    lse = lambda x: torch.logsumexp(x, 1)  # noqa: E731
    x = _rand(3, 4, dtype=dtype)
    x[1] = -float("inf")
    v = _rand(3, dtype=dtype, seed=1)
    report = sg.check(lse, {"x": x}, v=v, quiet=True)
    assert report.records[0].passed and not report["x"].passed  # torch: NaN in the masked row

    def masked_grad(x, g, fill):
        finite = torch.isfinite(x).any(1, keepdim=True)
        return torch.where(finite, g[:, None] * torch.softmax(torch.where(finite, x, 0.0), 1), fill)

    fixed = with_backward(lse, lambda x, g: masked_grad(x, g, 0.0))
    assert sg.check(fixed, {"x": x}, symbolic=lse, v=v, engine="graph", quiet=True).passed
    wrong = with_backward(lse, lambda x, g: masked_grad(x, g, 1.0))
    assert not sg.check(wrong, {"x": x}, symbolic=lse, v=v, engine="graph", quiet=True).passed


def test_logsumexp_over_a_row_holding_inf():
    """Note [A masked row]: a row holding +inf is shifted by 0 as torch's is, so its output is +inf
    on both sides (inf - inf had made the reference NaN, and symengine crashed comparing it)."""
    x = torch.tensor([[float("inf"), 1.0], [1.0, 2.0]], dtype=torch.float64)
    report = sg.check(lambda x: torch.logsumexp(x, -1).clamp(max=10), {"x": x},
                      v=torch.tensor([0.3, -1.0], dtype=torch.float64), quiet=True)
    assert report.records[0].passed, str(report)


def _hub_messages(dtype, how, k=1024, n=64, f=8):
    """A message-passing layer whose node 0 receives ``k`` messages (a hub), added up by ``how``."""
    g = torch.Generator().manual_seed(1)
    dst = torch.cat([torch.zeros(k, dtype=torch.long), torch.randint(1, n, (200,), generator=g)])
    src = torch.randint(0, n, (dst.numel(),), generator=g)
    lin = torch.nn.Linear(f, f).to(dtype)

    def add_up(m):
        z = torch.zeros(n, f, dtype=dtype)
        if how == "index_add":
            return z.index_add(0, dst, m, alpha=0.5)
        if how == "scatter_add":
            return z.scatter_add(0, dst[:, None].expand(-1, f), m)
        return z.index_put((dst,), m, accumulate=True)

    def layer(h, add=add_up):
        return torch.tanh(add(torch.tanh(lin(h))[src]) / 50).pow(2).sum()

    wrong = with_backward(add_up, lambda m, g: vjp(add_up, m, g) * torch.where(
        torch.arange(dst.numel())[:, None] < k, 1 + DELTA[dtype], 1.0).to(dtype))
    return layer, lambda h: layer(h, wrong), _rand(n, f, dtype=dtype)


@pytest.mark.parametrize("how", ["index_add", "scatter_add", "index_put"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_hub_receiving_a_thousand_entries(how, dtype):
    """Note [Many entries landing at one place]: 1,024 messages into one node made 1,024 selects and a
    pointwise node of 1,025 operands (53 s in float64, 312 s in float32); now rows summed in buckets,
    charged as torch's kernels add them, one at a time.  A backward off by DELTA at the hub's
    messages only is caught, forward mode too."""
    layer, wrong, h = _hub_messages(dtype, how)
    assert sg.check(layer, {"h": h}, quiet=True).passed
    assert not sg.check(wrong, {"h": h}, quiet=True).passed
    assert sg.check(layer, {"h": h}, via="jacfwd", quiet=True).passed


@pytest.mark.parametrize("how", ["index_add", "index_put"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_hub_in_half_precision(how, dtype):
    """index_add keeps a float32 sum in half precision and rounds it once; index_put adds in the
    half dtype: torch's own passes either way."""
    layer, _, h = _hub_messages(dtype, how)
    assert sg.check(layer, {"h": h}, quiet=True).passed
