"""The model families of ``benchmarks/model_families.py`` (``tests/graph/families.py``): each correct
model passes, each with a seeded wrong backward fails, torch's own wrong logcumsumexp JVP fails,
refusals name a fix.  The default run has a few families that once went wrong; the rest is slow."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import symgrad as sg
from symgrad.errors import SymgradError
from symgrad.graph.check import check_graph

from .families import FAMILIES, TORCH_BUGS, bugged
from .families_vision import FLOAT32_LIMITS, REFUSED_VISION

DELTA = {torch.float64: 1e-6, torch.float32: 1e-3}
# once failed (a crash, a refusal with no fix) or exercise a rule no other test does: in the default run
DEFAULT = {"tuple_output", "dict_output", "avgpool_ceil", "fold_unfold", "ce_ignore_weight", "cumsum_topk_sort", "ctc",
           "embedding_max_norm", "gnn_scatter", "embbag_max"}  # the last three: tests/graph/families_seq.py
REFUSED: set = set(REFUSED_VISION)  # families refused with a message naming a fix (training-mode BatchNorm was, before modules went to the graph)
CHECKED = [n for n in FAMILIES if n not in REFUSED and n not in TORCH_BUGS]


def _mark(name, extra=()):
    return [] if name in DEFAULT and not extra else [pytest.mark.slow]


def _build(name, dtype, bug=None):
    torch.manual_seed(0)
    model, inputs, kwargs = FAMILIES[name](dtype, 0)
    if bug is not None:
        model = bugged(model, bug, 1 + DELTA[dtype])
    return model, inputs, kwargs


@pytest.mark.parametrize("name, dtype", [
    pytest.param(n, d, id=f"{n}-{str(d)[6:]}", marks=_mark(n, () if d == torch.float64 else ("f32",)))
    for n in CHECKED for d in (torch.float64, torch.float32)])
def test_correct_family_passes(name, dtype):
    model, inputs, kwargs = _build(name, dtype)
    report = sg.check(model, inputs, engine="graph", **kwargs)
    assert report.passed, report.to_text()


@pytest.mark.parametrize("name, dtype, bug", [
    pytest.param(n, d, b, id=f"{n}-{str(d)[6:]}-{b}",
                 marks=_mark(n, () if (d, b) == (torch.float32, "entry") else ("more",)))
    for n in CHECKED for d in (torch.float64, torch.float32) for b in ("scaled", "entry")
    if not (d == torch.float32 and n in FLOAT32_LIMITS)])  # said in the report: test_vision_families.py
def test_seeded_bug_is_caught(name, dtype, bug):
    model, inputs, kwargs = _build(name, dtype, bug)
    if kwargs.get("via") == "jacrev":  # torch.func needs setup_context, which the seeded layer lacks
        with pytest.raises(SymgradError, match="setup_context"):
            sg.check(model, inputs, engine="graph", **kwargs)
        return
    report = sg.check(model, inputs, engine="graph", **kwargs)
    assert not report.passed, report.to_text()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_tuple_and_dict_outputs_are_checked_as_one_vector(dtype):
    """Note [Structured outputs]: a model returning a tuple or a dict is checked through the
    concatenation of its floating-point outputs; a wrong backward on one output is caught."""
    for name in ("tuple_output", "dict_output"):
        model, inputs, _ = _build(name, dtype)
        report = sg.check(model, inputs, engine="graph")
        assert report.passed, report.to_text()
        assert "2 floating-point tensors (shapes 3x3, 3x2)" in report.meta["output"]
        assert report["a.weight"].shape == (3, 3, 4)  # three random cotangents on the 9 + 6 entries
        bad = sg.check(_build(name, dtype, "entry")[0], inputs, engine="graph")
        assert not bad.passed and not bad["a.inner.weight"].passed and bad["b.weight"].passed


def test_integer_outputs_of_a_tuple_are_left_out_and_none_is_refused():
    lin = nn.Linear(4, 5).double()
    x = torch.randn(2, 4, dtype=torch.float64)
    report = sg.check(lambda x, w, b: torch.topk(nn.functional.linear(x, w, b), 2, dim=1),
                      {"x": x, "w": lin.weight.detach(), "b": lin.bias.detach()}, engine="graph")
    assert report.passed and "1 floating-point tensors (shapes 2x2)" in report.meta["output"]
    with pytest.raises(SymgradError, match="no floating-point tensor"):
        sg.check(lambda x: (x.argmax(), None), {"x": x}, engine="graph")


@pytest.mark.parametrize("name, dtype", [
    pytest.param("batchnorm_train", torch.float64, id="batchnorm_train-float64"),
    pytest.param("batchnorm1d_train", torch.float32, id="batchnorm1d_train-float32"),
    *[pytest.param("resnet_block_train", d, id=f"resnet_block_train-{str(d)[6:]}", marks=pytest.mark.slow)
      for d in (torch.float64, torch.float32)]])
def test_batchnorm_in_training_mode_on_the_graph_restores_running_stats(name, dtype):
    """The op graph checks train-mode BatchNorm (batch statistics) directly; the many forwards of a
    check would move the running statistics, so they are put back.  symgrad.check sends every module
    there; only engine='elementwise' refuses it."""
    model, inputs, _ = _build(name, dtype)
    before = {k: b.clone() for k, b in model.named_buffers()}
    report = check_graph(model, inputs)
    assert report.passed, report.to_text()
    assert sg.check(model, inputs).passed
    assert all(torch.equal(before[k], b) for k, b in model.named_buffers())
    bad, _, _ = _build(name, dtype, "scaled")
    assert not check_graph(bad, inputs).passed


def test_torch_logcumsumexp_jvp_is_wrong_and_said_so():
    """torch's logcumsumexp JVP divides by cumsum(exp(x - max)) + 1e-13: at x = [-30, 0] it gives
    0.48 where the derivative is 1.  The VJP (a different formula) is right."""
    h = torch.tensor([-30.0, 0.0], dtype=torch.float64)
    report = sg.check(lambda h: h.logcumsumexp(0), {"h": h}, engine="graph")
    assert not report.passed
    assert report["h"].passed and not report["jvp"].passed
    assert "logcumsumexp" in TORCH_BUGS
    model, inputs, _ = _build("logcumsumexp", torch.float64)
    assert not sg.check(model, inputs, engine="graph").passed


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("case", ["padded", "concatenated-blank4-repeats", "none-reduction-zero_infinity"])
def test_ctc_loss_on_the_graph(case, dtype):
    """Note [CTC as core nodes]: the alpha recursion unrolled; a 1+delta backward on the log-softmax
    feeding it is caught."""
    import torch.nn.functional as F

    from symgrad.testing_ops import scaled

    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 2, 5, dtype=dtype, generator=g)
    if case == "padded":
        def loss(lp):
            return F.ctc_loss(lp, torch.tensor([[1, 2, 2], [3, 1, 0]]), torch.tensor([6, 5]), torch.tensor([3, 2]))
    elif case.startswith("concatenated"):
        def loss(lp):
            return F.ctc_loss(lp, torch.tensor([1, 1, 2, 3]), torch.tensor([6, 4]), torch.tensor([2, 2]), blank=4)
    else:
        def loss(lp):
            return F.ctc_loss(lp, torch.tensor([[2, 2], [1, 3]]), torch.tensor([5, 6]), torch.tensor([2, 1]),
                              reduction="none", zero_infinity=True)
    good = sg.check(lambda x: loss(x.log_softmax(2)), {"x": x}, engine="graph")
    assert good.passed, good.to_text()
    bug = scaled(lambda y: y.log_softmax(2), 1 + DELTA[dtype])
    assert not sg.check(lambda x: loss(bug(x)), {"x": x}, engine="graph").passed
