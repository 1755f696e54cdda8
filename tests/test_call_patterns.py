"""Unusual ways of calling symgrad, each of which once gave a wrong verdict or a misleading error:
stop-gradients inside small torch code, random draws, dict outputs, zero cotangents, bool outputs,
a forward that overflows float64, tiny float32 gradients, stateful modules, hooks, unknown vias and
the ``assert sg.check(...)`` idiom."""

import pytest
import torch
import torch.nn as nn

import symgrad as sg
from symgrad.errors import InputError, UnsupportedOp
from symgrad.testing_ops import with_backward

D = torch.float64


def _x(*shape, seed=0, dtype=D):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _no_grad_scale(x):
    with torch.no_grad():
        scale = x.abs().amax()
    return (x / scale).sin().sum()


@torch.no_grad()
def _constant_exp(x):
    return x.exp()


@pytest.mark.parametrize("fn", [_no_grad_scale, lambda x: (_constant_exp(x) * x).sum()], ids=["with", "decorator"])
def test_no_grad_inside_small_torch_code_is_a_stop_gradient(fn):
    """Note [Torch code on symbolic tensors]: the twin run on symbolic tensors differentiated through
    the no_grad region and failed torch's correct gradient; a seeded bug in front is still caught."""
    x = _x(3, 4)
    assert sg.check(fn, {"x": x}, quiet=True).passed
    off = with_backward(lambda x: x * 1.0, lambda x, g: g * 1.001)
    assert not sg.check(lambda x: fn(off(x)), {"x": x}, quiet=True).passed


def test_item_and_random_draws_inside_small_torch_code_get_the_graphs_refusal():
    x = _x(3)
    with pytest.raises(UnsupportedOp, match="item"):
        sg.check(lambda x: x * x.sum().item(), {"x": x}, quiet=True)
    with pytest.raises(UnsupportedOp, match="random"):
        sg.check(lambda x: (x * torch.randn(3, dtype=D)).sum(), {"x": x}, quiet=True)


class _FocalLoss(torch.nn.Module):
    """A detection-style focal loss normalised by the number of positive targets, a Python number."""

    def __init__(self, sigmoid=torch.sigmoid):
        super().__init__()
        self.head, self.sigmoid = torch.nn.Linear(8, 4), sigmoid

    def forward(self, x, t):
        p = self.sigmoid(self.head(x))
        num_pos = max(t.sum().item(), 1.0)
        return -(t * (1 - p) ** 2 * torch.log(p) + (1 - t) * p**2 * torch.log(1 - p)).sum() / num_pos


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_float_item_of_data_is_a_constant(dtype):
    """Note [A float .item()]: the focal loss's normaliser, computed from the targets, was refused;
    now a constant, as to torch, while a 1% bug in the head's sigmoid is still caught."""
    torch.manual_seed(0)
    x, t = torch.randn(64, 8, dtype=dtype), (torch.rand(64, 4) > 0.7).to(dtype)
    assert sg.check(_FocalLoss().to(dtype), {"x": x, "t": t}, quiet=True).passed
    off = with_backward(torch.sigmoid, lambda z, g: g * torch.sigmoid(z) * (1 - torch.sigmoid(z)) * 1.01)
    assert not sg.check(_FocalLoss(off).to(dtype), {"x": x, "t": t}, quiet=True).passed
    with pytest.raises(UnsupportedOp, match="'t', which is differentiated"):
        sg.check(_FocalLoss().to(dtype), {"x": x, "t": t}, wrt=["t"], quiet=True)
    w = torch.randn(5, dtype=dtype)  # past a detach the number is a constant to torch too
    assert sg.check(lambda w: (w / w.detach().abs().mean().item()).pow(2).sum(), {"w": w}, quiet=True).passed


def test_small_torch_code_returning_a_dict_is_checked():
    assert sg.check(lambda x: {"a": x.sin(), "b": x * x}, {"x": _x(2, 3)}, quiet=True).passed


def test_a_cotangent_or_tangents_of_zeros_are_refused():
    bad = with_backward(torch.sin, lambda x, g: g * torch.cos(x) * 1.5)
    with pytest.raises(InputError, match="v is all zeros"):
        sg.check(bad, {"x": _x(3)}, v=torch.zeros(3, dtype=D), quiet=True)
    with pytest.raises(InputError, match="every tangent is all zeros"):
        sg.check(torch.sin, {"x": _x(3)}, tangents={"x": torch.zeros(3, dtype=D)}, via="forward_ad", quiet=True)


def test_a_bool_output_is_refused():
    with pytest.raises(InputError, match="bool tensor"):
        sg.check(lambda a: a > 0, {"a": _x(3)}, quiet=True)

    class Sign(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2).double()

        def forward(self, x):
            return self.lin(x) > 0

    with pytest.raises(InputError, match="bool tensor"):
        sg.check(Sign(), {"x": _x(4, 3)}, quiet=True)


@pytest.mark.parametrize("engine", ["auto", "elementwise", "graph"])
def test_a_forward_beyond_float64_on_both_sides_passes_and_an_intermediate_overflow_fails(engine):
    """Note [Overflow is the right answer]: (x*x).sum() at 1e300 is 1.5e601, and +inf is right; the
    forward's entries are written out exactly to tell it from an inf whose exact value fits."""
    x = torch.tensor([1.0, -2.0, 3.0], dtype=D) * 1e300
    report = sg.check(lambda x: (x * x).sum(), {"x": x}, engine=engine, quiet=True)
    assert report.passed, str(report)
    y = torch.tensor([1.0, 2.0], dtype=D) * 1e200
    assert not sg.check(lambda y: (y * y).sum() / (y * y).sum(), {"y": y}, engine=engine, quiet=True).passed


def test_tiny_float32_gradients_keep_their_sign():
    """Note [Underflow floor]: the flush allowance takes a normal value toward 0, never past it; a
    subnormal remainder of either sign passes (torch's own mish' at x = -90 returns +7e-40 where the
    exact value is -6.6e-38)."""
    x = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float32) * 1e-37
    square = lambda x: (x * x).sum()  # noqa: E731
    for factor, ok in ((2.0, True), (-2.0, False), (3.0, False)):
        fn = with_backward(square, lambda x, g, f=factor: g * f * x)
        assert sg.check(fn, {"x": x}, symbolic=square, quiet=True).passed is ok, factor
    mish = torch.nn.functional.mish
    assert sg.check(mish, {"x": torch.tensor([-90.0, -95.0, 1.0])}, v=torch.tensor([1.0, -1.0, 0.5]), quiet=True).passed


class _Annealed(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3).double()
        self.register_buffer("step", torch.zeros((), dtype=D))

    def forward(self, x):
        self.step += 1  # a step counter advanced before use
        return self.lin(x) / (1.0 + self.step)


def test_a_module_that_advances_a_buffer_is_the_same_function_on_every_run():
    torch.manual_seed(0)
    m, x, t = _Annealed(), _x(5, 4), _x(5, 3, seed=1)
    assert sg.check(m, {"x": x}, loss=nn.MSELoss(), target=t, quiet=True).passed
    assert float(m.step) == 0.0


def test_modules_with_pre_hooks_go_to_the_op_graph():
    torch.manual_seed(0)
    from torch.nn.utils import prune

    pruned = prune.l1_unstructured(nn.Linear(4, 3).double(), "weight", amount=0.5)
    assert sg.check(pruned, {"x": _x(5, 4)}, loss=nn.MSELoss(), target=_x(5, 3, seed=1), quiet=True).passed


def test_an_unknown_via_is_named_with_the_choices():
    with pytest.raises(InputError, match="choose one of"):
        sg.check(torch.sin, {"x": _x(3)}, via="jacobian", quiet=True)


def test_a_full_hessian_of_small_torch_code_is_checked():
    assert sg.check(lambda x: torch.tanh(x).sum() ** 2, {"x": _x(3)}, via="functional.hessian", quiet=True).passed


def test_inputs_left_out_by_requires_grad_are_named():
    x, y = _x(3).requires_grad_(), _x(3, seed=1)
    report = sg.check(lambda x, y: (x * y).sum(), {"x": x, "y": y}, quiet=True)
    assert report.passed and "Not checked: y" in str(report)


def test_a_failing_reports_repr_is_one_short_line():
    bad = with_backward(torch.sin, lambda x, g: g * torch.cos(x) * 1.01)
    report = sg.check(bad, {"x": _x(3, 4)}, v=_x(3, 4, seed=1), quiet=True)
    text = repr(report)
    assert not report and text.startswith("<symgrad Report 1 of 2 rows FAIL") and "x vjp FAIL" in text
    assert len(text) <= 600 and "\n" not in text


def test_the_repr_prints_the_two_values_apart():
    """A float64 failure 1e-11 off (Megatron's bias_gelu constant 0.1070322243) printed both values
    as 0.315808: the repr and the worst-entry lines take as many digits as tell them apart."""
    bad = with_backward(torch.sin, lambda x, g: g * torch.cos(x) * (1 + 1e-11))
    report = sg.check(bad, {"x": _x(3, 4)}, v=_x(3, 4, seed=1), quiet=True)
    head = repr(report).split("farthest past its allowance ")[1]
    autograd, closed = head.split("autograd ")[1].split(",")[0], head.split("closed form ")[1].split(" ")[0]
    assert not report.passed and autograd != closed and "difference" in head
    line = [ln for ln in str(report).splitlines() if ln.startswith("  x[")][0]
    assert line.split(" | ")[0].split(": ")[1] != line.split(" | ")[1]


class _Cube(torch.autograd.Function):
    @staticmethod
    def forward(x):
        return x * x * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        (ctx.x,) = inputs

    @staticmethod
    def backward(ctx, g):
        return g * 3 * ctx.x ** 2

    @staticmethod
    def jvp(ctx, t):
        return t * 3 * ctx.x ** 2


def test_forward_mode_past_the_exploded_budget_goes_to_the_op_graph():
    """engine='auto' refused forward mode of 100,000 entries with the exploded engine's memory guard
    (and advised engine='auto'); it goes to the op graph as reverse mode does."""
    x = _x(100_000)
    t = _x(100_000, seed=1)
    twin = lambda x: x * x * x  # noqa: E731
    assert sg.check(_Cube.apply, {"x": x}, twin, via="forward_ad", tangents=t, quiet=True).passed
    wrong_jvp = type("WrongCube", (_Cube,), {"jvp": staticmethod(lambda ctx, t: t * 3 * ctx.x ** 2 * 1.001)})
    assert not sg.check(wrong_jvp.apply, {"x": x}, twin, via="forward_ad", tangents=t, quiet=True).passed


def test_the_exploded_memory_guard_is_not_called_a_trace_failure():
    """engine='elementwise' on a 19k-parameter MLP: the memory guard's refusal, raised while the
    forward is traced, came wrapped as "torch could not trace the function", cut mid-word."""
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Tanh(), torch.nn.Linear(256, 10)).double()
    with pytest.raises(sg.InputError) as err:
        sg.check(model, {"x": _x(32, 64)}, loss=torch.nn.MSELoss(), target=_x(32, 10, seed=1),
                 engine="elementwise", quiet=True)
    assert "memory budget" in str(err.value) and "could not trace" not in str(err.value)


def test_a_loss_class_instead_of_an_instance_is_named():
    model = torch.nn.Linear(3, 2).double()
    with pytest.raises(InputError, match=r"loss=MSELoss\(\)"):
        sg.check(model, {"x": _x(4, 3)}, loss=torch.nn.MSELoss, target=_x(4, 2, seed=1), quiet=True)


def test_a_cotangent_for_a_tuple_output_names_the_tuple():
    """v for one tensor of a tuple output was refused as "the output has (12,)", a shape the user never made."""
    pair = with_backward(lambda a: torch.stack([a.sin(), a.cos()]), lambda a, g: g[0] * a.cos() - g[1] * a.sin())
    with pytest.raises(sg.ShapeMismatch, match=r"a tuple of shapes \[\(6,\), \(6,\)\]"):
        sg.check(lambda a: tuple(pair(a)), {"a": _x(6)}, v=_x(6, seed=1), quiet=True)


def test_a_large_models_markdown_fits_a_comment():
    """A ResNet's 62 rows made 100 kB of markdown, past GitHub's 65,536 characters per comment: past
    60,000 the closed forms and passing rows' notes are left out, failing rows kept."""
    from symgrad.report import markdown

    layers = [torch.nn.Linear(6, 6) for _ in range(4)]
    model = torch.nn.Sequential(*[m for lay in layers for m in (lay, torch.nn.ReLU())]).double()
    report = sg.check(model, {"x": _x(4, 6)}, loss=torch.nn.MSELoss(), target=_x(4, 6, seed=1), quiet=True)
    full = markdown.render(report)
    limit = markdown.COMMENT_CHARS
    try:
        markdown.COMMENT_CHARS = 1000  # forces the cut: the table stays, closed forms and notes go
        short = markdown.render(report)
    finally:
        markdown.COMMENT_CHARS = limit
    assert "left out to fit a comment" not in full and "Closed forms" in full
    assert len(short) < len(full) and "left out to fit a comment" in short and "Closed forms" not in short


def test_a_modules_tangents_for_its_input_name_wrt():
    model = torch.nn.Linear(3, 2).double()
    with pytest.raises(InputError, match=r"wrt=\['x'\]"):
        sg.check(model, {"x": _x(4, 3)}, via="func.jvp", tangents=_x(4, 3, seed=1), quiet=True)


def test_the_text_report_says_what_was_checked():
    """How many random cotangents and tangents were used, and a narrower dtype the forward computes
    in, were only in the meta (JSON, markdown, HTML), not in the text report or the CLI's output."""
    report = sg.check(torch.nn.Linear(3, 2).double(), {"x": _x(4, 3)}, quiet=True)
    assert "Checked: vjp (3 random cotangents) and jvp (3 random tangents); float64" in report.to_text()
    narrow = sg.check(lambda x: torch.tanh(x.float()).double().sum(), {"x": _x(4)}, quiet=True)
    assert "computes in float32" in narrow.to_text()


class _AddsIntoItsInput(nn.Module):
    def __init__(self, backward=None):
        super().__init__()
        self.lin = nn.Linear(4, 2).double()
        self.act = torch.tanh if backward is None else with_backward(torch.tanh, backward)

    def forward(self, x):
        x += 1.0  # in place on the (non-differentiated) input, as `x += pe`
        return self.act(self.lin(x)).sum()


def test_a_forward_writing_into_its_input_is_one_function_and_the_users_tensor_is_kept():
    """Note [Inputs written in forward]: every run starts from the values given (each run got x + 1,
    x + 2, ... before, and a correct module failed its forward and its gradients)."""
    x = _x(3, 4)
    before = x.clone()
    torch.manual_seed(0)
    assert sg.check(_AddsIntoItsInput(), {"x": x}).passed
    assert torch.equal(x, before)
    torch.manual_seed(0)
    wrong = _AddsIntoItsInput(lambda y, g: g * (1 - torch.tanh(y) ** 2) * (1 + 1e-6))
    assert not sg.check(wrong, {"x": x}).passed

    def f(x, w):
        x.add_(1.0)
        return (x @ w).tanh().sum()

    w = _x(4, 2, seed=1)
    assert sg.check(f, {"x": x, "w": w}, wrt="w").passed
    assert torch.equal(x, before)
    with pytest.raises(InputError, match=r"writes into its input 'x' in place.*engine='graph'"):
        sg.check(f, {"x": x, "w": w}, wrt="w", engine="elementwise")
    assert torch.equal(x, before)


def test_a_jvp_that_raises_is_not_skipped_and_a_skipped_forward_mode_is_said():
    """Note [A jvp that raises]: the default check of a tensor output runs forward mode beside the
    random vector-Jacobian products; a custom Function's jvp returning a tangent of the wrong shape
    was skipped as if forward mode were not there, and the check passed."""
    from symgrad.errors import AutogradFailed
    from symgrad.testing_ops import with_jvp

    lse = lambda x: torch.logsumexp(x, -1)  # noqa: E731
    backward = lambda x, g: g[..., None] * torch.softmax(x, -1)  # noqa: E731
    raises = with_jvp(lse, backward, lambda x, t: (torch.softmax(x, -1) * t).sum(-1)[..., None] * t)
    x = _x(5, 3)
    with pytest.raises(AutogradFailed, match="raised in forward mode"):
        sg.check(raises, {"x": x}, engine="graph")
    no_jvp = with_backward(lse, backward)
    report = sg.check(no_jvp, {"x": x}, engine="graph")
    assert report.passed and "Forward mode: not checked" in report.to_text()


class _ExpWithJvp(torch.autograd.Function):
    """exp written with forward(ctx, x) (no setup_context) and a jvp scaled by SCALE."""
    SCALE = 1.0

    @staticmethod
    def forward(ctx, x):
        y = torch.exp(x)
        ctx.save_for_backward(y)
        ctx.save_for_forward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        return g * ctx.saved_tensors[0]

    @staticmethod
    def jvp(ctx, t):
        return t * ctx.saved_tensors[0] * _ExpWithJvp.SCALE


@pytest.mark.parametrize("symbolic", [torch.exp, sg.exp], ids=["graph", "exploded"])
def test_the_jvp_of_a_function_written_with_ctx_is_checked_by_default(symbolic):
    """torch.func.jvp refuses a Function without setup_context; its jvp runs under dual tensors,
    which the default check now tries (Note [A jvp that raises]), and the exploded check of a tensor
    output runs forward mode beside its Jacobian (Note [Forward mode beside the Jacobian]): a jvp
    1 % off passed both ways."""
    x = _x(3, 4)
    try:
        report = sg.check(_ExpWithJvp.apply, {"x": x}, symbolic=symbolic)
        assert report.passed and "and jvp" in report.to_text(), report.to_text()
        _ExpWithJvp.SCALE = 1.01
        assert not sg.check(_ExpWithJvp.apply, {"x": x}, symbolic=symbolic).passed
    finally:
        _ExpWithJvp.SCALE = 1.0


def _exp_with(jvp):
    class Exp(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return torch.exp(x)

        @staticmethod
        def backward(ctx, g):
            return g * torch.exp(ctx.saved_tensors[0])

    Exp.jvp = staticmethod(jvp)
    return Exp.apply


def _reads_saved_tensors(ctx, t):
    (x,) = ctx.saved_tensors  # empty in forward mode: a ValueError
    return t * torch.exp(x)


def _placeholder(ctx, t):
    raise NotImplementedError("no forward mode yet")


@pytest.mark.parametrize("symbolic", [torch.exp, sg.exp], ids=["graph", "exploded"])
def test_a_jvp_that_fails_in_its_own_code_is_named_and_a_placeholder_is_not(symbolic):
    """The default check's dual-tensor try runs jvps torch.func never ran: one that fails in its own
    code (reading ctx.saved_tensors, empty in forward mode) is a bug named with the fix, not a raw
    ValueError; one raising NotImplementedError says it is not there, as torch's default does."""
    from symgrad.errors import AutogradFailed

    x = _x(2, 3)
    with pytest.raises(AutogradFailed, match="save_for_forward"):
        sg.check(_exp_with(_reads_saved_tensors), {"x": x}, symbolic=symbolic)
    report = sg.check(_exp_with(_placeholder), {"x": x}, symbolic=symbolic)
    assert report.passed and "Forward mode: not checked" in report.to_text()


def test_a_function_torch_runs_no_forward_mode_through_is_not_failed_on_it():
    """torch.cond under func.jvp raises a bare KeyError inside functorch (after a dispatch mode ran
    it, every later run does); with dual tensors its output gets no tangent.  Neither fails the check
    of a correct function, and neither escapes as torch's own exception (Note [A tangent torch drops])."""
    x = _x(3)
    fn = lambda x: torch.cond(x.sum() > 0, lambda y: y.sin(), lambda y: y.cos(), (x,))  # noqa: E731
    ref = lambda x: torch.sin(x) if x.sum() > 0 else torch.cos(x)  # noqa: E731
    report = sg.check(fn, {"x": x}, symbolic=ref)
    assert report.passed and "Forward mode: not checked" in report.to_text()


def test_the_exploded_check_says_when_forward_mode_is_left_out():
    lse = lambda x: torch.logsumexp(x, -1)  # noqa: E731
    no_jvp = with_backward(lse, lambda x, g: g[..., None] * torch.softmax(x, -1))
    report = sg.check(no_jvp, {"x": _x(2, 3)}, engine="elementwise")
    assert report.passed and "Forward mode: not checked" in report.to_text()


def test_a_compiled_function_is_checked_against_a_reference_and_a_compiled_submodule_is_named():
    """torch.compile hides the Python forward from the trace: a compiled function given symbolic= is
    run by torch and checked against the reference; a module holding a compiled submodule is refused
    with the fix (it fell through to "code that leaves torch cannot be traced")."""
    x = _x(3, 4)
    ok = torch.compile(lambda x: torch.sin(x).sum(), backend="eager")
    assert sg.check(ok, {"x": x}, symbolic=lambda x: torch.sin(x).sum()).passed
    wrong = torch.compile(with_backward(torch.sin, lambda x, g: g * torch.cos(x) * 1.01), backend="eager")
    assert not sg.check(wrong, {"x": x}, symbolic=torch.sin).passed

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = torch.compile(nn.Linear(4, 4), backend="eager")

        def forward(self, x):
            return torch.tanh(self.inner(x)).sum()

    with pytest.raises(UnsupportedOp, match=r"compile'd submodule \('inner'\).*model.inner._orig_mod"):
        sg.check(Outer().double(), {"x": x})


class _KeywordMask(nn.Module):
    def __init__(self, backward=None):
        super().__init__()
        self.lin = nn.Linear(4, 3).double()
        self.act = torch.tanh if backward is None else with_backward(torch.tanh, backward)

    def forward(self, x, *, mask=None):  # keyword-only, as attention masks often are
        h = self.act(self.lin(x))
        return h if mask is None else h * mask


def test_a_modules_keyword_only_inputs_are_passed_by_name():
    """A dict naming forward's keyword-only parameter was refused as "not a parameter"; the op graph
    passes it by name now, a seeded bug still fails, and a function (called with its inputs in order)
    or the exploded back end says how to pass it."""
    x, mask = _x(5, 4), (_x(5, 3, seed=1) > 0).double()
    torch.manual_seed(0)
    report = sg.check(_KeywordMask(), {"x": x, "mask": mask})
    assert report.passed, report.to_text()
    torch.manual_seed(0)
    wrong = _KeywordMask(lambda y, g: g * (1 - torch.tanh(y) ** 2) * 1.001)
    assert not sg.check(wrong, {"x": x, "mask": mask}).passed
    with pytest.raises(InputError, match="keyword-only in _KeywordMask.forward.*engine='graph'"):
        sg.check(_KeywordMask(), {"x": x, "mask": mask}, engine="elementwise")
    with pytest.raises(InputError, match=r"'s' is a keyword-only parameter of fn.*lambda x, s: fn\(x, s=s\)"):
        sg.check(lambda x, *, s: (x * s).tanh().sum(), {"x": x, "s": x.clone()})
    with pytest.raises(InputError, match=r"takes its inputs as \*\*kwargs"):
        sg.check(lambda **kw: (kw["x"] * kw["s"]).tanh().sum(), {"x": x, "s": x.clone()})
