"""``order=2`` (torch's double backward against the exact second derivative) and the forward mode of
custom Functions (``via="forward_ad"`` / ``"func.jvp"`` run ``Function.jvp``), on both engines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.autograd.function import once_differentiable

import symgrad as sg
from symgrad.errors import AutogradFailed, InputError, UnsupportedOp
from symgrad.testing_ops import with_jvp

DTYPES = (torch.float64, torch.float32)
# engine "graph": the op graph traces the Function's forward; "auto" with a symbolic twin: exploded
ENGINES = (("graph", None), ("auto", lambda x: x * sg.sigmoid(x)))


def silu_function(backward_kind: str):
    """x * sigmoid(x) as a custom Function; ``backward_kind`` picks its backward (all right to first
    order; "grad_output detached" and "create_graph value" are wrong only as gradgradcheck checks:
    no derivative in the cotangent, or a value off on the create_graph=True path, a fused kernel's
    composite fallback)."""

    class SiLU(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            s = torch.sigmoid(x)
            ctx.save_for_backward(x, s)
            return x * s

        @staticmethod
        def backward(ctx, g):
            x, s_saved = ctx.saved_tensors
            if backward_kind == "right":  # recomputed from the saved input: differentiable
                s = torch.sigmoid(x)
                return g * (s + x * s * (1 - s))
            if backward_kind == "detach":
                xd = x.detach()
                s = torch.sigmoid(xd)
                return g * (s + xd * s * (1 - s))
            if backward_kind == "numpy":
                xn = x.detach().numpy()
                s = 1 / (1 + np.exp(-xn))
                return g * torch.from_numpy(s + xn * s * (1 - s))
            if backward_kind == "stale":  # sigmoid saved from forward (no graph): misses a term
                return g * (s_saved + x * s_saved * (1 - s_saved))
            s = torch.sigmoid(x)
            d = s + x * s * (1 - s)
            if backward_kind == "grad_output detached":  # no derivative in the cotangent
                return g.detach() * d
            if backward_kind == "create_graph value":  # off by 1e-6 g (1e-3 in float32) under grad mode only
                return g * d + (1e-6 if g.dtype == torch.float64 else 1e-3) * g.detach() if torch.is_grad_enabled() \
                    else g * d
            raise AssertionError(backward_kind)

    return SiLU.apply


class OnceSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * torch.sigmoid(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return g * (s + x * s * (1 - s))


def _x(dtype, n=5, seed=0):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("engine, symbolic", ENGINES, ids=["graph", "exploded"])
def test_differentiable_backward_passes(dtype, engine, symbolic):
    report = sg.check(silu_function("right"), (_x(dtype),), symbolic, order=2, engine=engine)
    assert report.passed, report.to_text()
    assert report.records[1].quantity == "hvp"
    assert "double backward" in report.meta["via"]
    assert report.meta["engine"].startswith("graph" if engine == "graph" else "elementwise")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("engine, symbolic", ENGINES, ids=["graph", "exploded"])
@pytest.mark.parametrize("kind", ["detach", "numpy", "once"])
def test_backward_that_is_not_differentiable_fails_with_a_note(dtype, engine, symbolic, kind):
    fn = OnceSiLU.apply if kind == "once" else silu_function(kind)
    report = sg.check(fn, (_x(dtype),), symbolic, order=2, engine=engine)
    assert not report.passed
    failing = [r for r in report.records if not r.passed]
    assert failing and all("not differentiable" in r.note for r in failing), report.to_text()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("engine, symbolic", ENGINES, ids=["graph", "exploded"])
@pytest.mark.parametrize("kind, row", [("grad_output detached", "jvp"), ("create_graph value", "vjp (create_graph)")])
def test_what_gradgradcheck_checks_beyond_the_hessian(kind, row, dtype, engine, symbolic):
    """Note [Double backward] (symgrad/autograd/run.py): the Hessian-vector products were right in both
    cases and order=2 passed; gradgradcheck fails both."""
    fn = silu_function(kind)
    assert sg.check(fn, (_x(dtype),), symbolic, engine=engine).passed  # right to first order
    report = sg.check(fn, (_x(dtype),), symbolic, order=2, engine=engine, v=_x(dtype, seed=3))
    assert not report.passed, report.to_text()
    assert {r.quantity for r in report.failures} == {row}, report.to_text()
    assert report.records[1].passed  # the hvp itself is right


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("engine, symbolic", ENGINES, ids=["graph", "exploded"])
def test_backward_that_differentiates_wrongly_fails(dtype, engine, symbolic):
    fn = silu_function("stale")
    assert sg.check(fn, (_x(dtype),), symbolic, engine=engine).passed  # right to first order
    report = sg.check(fn, (_x(dtype),), symbolic, order=2, engine=engine)
    assert not report.passed, report.to_text()
    assert "not differentiable" not in report.records[1].note  # connected, but the values are wrong
    with pytest.raises(AssertionError):
        sg.assert_correct(fn, (_x(dtype),), symbolic, order=2, engine=engine)


@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_ops_with_tensor_output_pass_on_both_engines(dtype):
    x, w = _x(dtype, 3).reshape(3, 1).expand(3, 2).clone(), _x(dtype, 2, seed=1)

    def fn(x, w):
        return torch.tanh(x * w) + torch.exp(w) * x

    for symbolic, engine in ((None, "graph"), (lambda x, w: sg.tanh(x * w) + sg.exp(w) * x, "elementwise")):
        report = sg.check(fn, (x, w), symbolic, order=2, engine=engine)
        assert report.passed, report.to_text()
        assert "random cotangent v" in report.meta["quantity"]
        assert report.records[1].shape == (3, 3, 2)  # three directions w, stacked


def test_linear_function_has_zero_second_derivative_and_passes():
    """A linear function's gradient has no grad_fn in torch: that is right (its Hessian is 0)."""
    x = _x(torch.float64)
    for engine in ("graph", "elementwise"):
        report = sg.check(lambda x: 3 * x, (x,), (lambda x: 3 * x) if engine == "elementwise" else None,
                          order=2, engine=engine)
        assert report.passed, report.to_text()


def test_given_direction_and_cotangent_are_used():
    x = _x(torch.float64, 4)
    w, v = torch.ones(4, dtype=torch.float64), torch.full((4,), 2.0, dtype=torch.float64)
    report = sg.check(torch.sin, (x,), lambda x: sg.sin(x), order=2, v=v, tangents=w)
    assert report.passed, report.to_text()
    np.testing.assert_allclose(report.records[1].expected[0], -2 * np.sin(x.numpy()), rtol=1e-14)
    assert "given direction" in report.meta["quantity"] and "given cotangent" in report.meta["quantity"]


def test_bad_order_and_via_are_clear_errors():
    x = _x(torch.float64)
    with pytest.raises(InputError, match="order must be 1"):
        sg.check(torch.sin, (x,), order=3)
    with pytest.raises(InputError, match="double backward"):
        sg.check(torch.sin, (x,), order=2, via="jacrev")


def test_linalg_is_refused_with_the_node_named():
    a = torch.eye(3, dtype=torch.float64) + 0.1 * _x(torch.float64, 9).reshape(3, 3)
    with pytest.raises(UnsupportedOp, match="Hessian-vector rule for the linalg node inv"):
        sg.check(lambda a: torch.linalg.inv(a).sum(), (a,), order=2, engine="graph")


def test_torch_without_double_backward_is_a_clear_error():
    x = _x(torch.float64)
    with pytest.raises(AutogradFailed, match="torch has no derivative for this backward"):
        sg.check(torch.nn.functional.hardsigmoid, (x,), order=2, engine="graph")


def test_module_goes_to_the_op_graph():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    report = sg.check(model, (torch.randn(2, 3, dtype=torch.float64),), order=2)
    assert report.passed, report.to_text()
    assert {r.name for r in report.records} >= {"0.weight", "2.weight"}


# ------------------------------------------------------------------------------ forward mode (item 2)

def sin_function(jvp: str):
    """sin as a setup_context-style Function; ``jvp``: "right", "wrong" (off by 1e-6) or "none"."""
    rule = {"right": lambda x, t: t * torch.cos(x), "wrong": lambda x, t: t * torch.cos(x) * (1 + 1e-6)}.get(jvp)
    return with_jvp(torch.sin, lambda x, g: g * torch.cos(x), rule)


@pytest.mark.parametrize("via", ["forward_ad", "func.jvp"])
@pytest.mark.parametrize("symbolic", [lambda x: sg.sin(x), lambda x: torch.sin(x), None],
                         ids=["exploded", "graph", "graph-traced-function"])
def test_function_jvp_is_checked(via, symbolic):
    x, t = _x(torch.float64), _x(torch.float64, seed=3)
    right = sg.check(sin_function("right"), (x,), symbolic, via=via, tangents=t)
    assert right.passed, right.to_text()
    assert right.records[-1].quantity == "jvp"
    wrong = sg.check(sin_function("wrong"), (x,), symbolic, via=via, tangents=t)
    assert not wrong.passed, wrong.to_text()


def test_new_style_function_traced_for_order2():
    """A setup_context-style Function, no symbolic twin: traced into the op graph, double backward checked."""
    report = sg.check(sin_function("none"), (_x(torch.float64),), order=2)
    assert report.passed and report.meta["engine"].startswith("graph"), report.to_text()


def test_first_order_check_of_a_traced_function_checks_its_jvp_too():
    """A tensor output on the op graph is checked by random vjps and jvps (func.jvp runs Function.jvp)."""
    x = _x(torch.float64)
    assert sg.check(sin_function("right"), (x,), engine="graph").passed
    assert not sg.check(sin_function("wrong"), (x,), engine="graph").passed


def test_functional_jvp_runs_the_backward_not_the_jvp():
    """Documented: torch.autograd.functional.jvp uses the double-vjp trick, so a wrong jvp passes under
    it (its backward is right); via='forward_ad' is the check of Function.jvp."""
    x, t = _x(torch.float64), _x(torch.float64, seed=3)
    assert sg.check(sin_function("wrong"), (x,), lambda x: sg.sin(x), via="functional.jvp", tangents=t).passed


@pytest.mark.parametrize("via", ["forward_ad", "func.jvp"])
def test_missing_jvp_names_the_fix(via):
    x, t = _x(torch.float64), _x(torch.float64, seed=3)
    with pytest.raises(AutogradFailed, match="no jvp staticmethod.*Fix: define @staticmethod jvp"):
        sg.check(sin_function("none"), (x,), lambda x: sg.sin(x), via=via, tangents=t)


@pytest.mark.parametrize("dtype, rel", [(torch.float64, 1e-6), (torch.float32, 1e-3)])
def test_seeded_second_derivative_bug_is_caught_only_by_order2(dtype, rel):
    from symgrad.testing_ops import wrong_second

    x, w = _x(dtype, 6).reshape(2, 3), _x(dtype, 6, seed=2).reshape(3, 2)

    def fn(x, w):
        return torch.tanh(x @ w)

    assert sg.check(wrong_second(fn, 0.0), (x, w), order=2, engine="graph").passed  # the wrapper itself is right
    bug = wrong_second(fn, rel)
    assert sg.check(bug, (x, w), engine="graph").passed  # first order: right
    assert not sg.check(bug, (x, w), order=2, engine="graph").passed


@pytest.mark.parametrize("fn", [lambda x: (torch.softmax(x, 0) ** 2).sum(), lambda x: torch.logsumexp(x, 0),
                                lambda x: torch.linalg.vector_norm(x)], ids=["softmax", "logsumexp", "norm"])
def test_torch_code_on_the_exploded_engine_at_second_order(fn):
    """torch code with engine='elementwise' and order=2: its op graph exploded (it was refused as
    'the symbolic forward could not run')."""
    x = torch.tensor([0.3, -1.2, 0.8, 2.0], dtype=torch.float64)
    assert sg.check(fn, {"x": x}, order=2, engine="elementwise").passed


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_pow_with_a_tensor_exponent_at_a_zero_base(dtype):
    """Note [pow' in its base as torch computes it] (graph/derivforms.py): SymPy's e b**e / b is NaN
    at b = 0, where torch's e b**(e - 1) is 0; torch's own pow(b, e) failed at order 2.  A double
    backward off by a little still fails."""
    from symgrad.testing_ops import wrong_second

    b = torch.tensor([0.0, 0.3, 2.0], dtype=dtype)
    e = torch.tensor([2.5, 3.0, 1.5], dtype=dtype)
    f = lambda b: torch.pow(b, e).sum()  # noqa: E731
    assert sg.check(f, {"b": b}, order=2, quiet=True).passed
    rel = 1e-6 if dtype == torch.float64 else 1e-3
    assert not sg.check(wrong_second(f, rel), {"b": b}, symbolic=f, order=2, quiet=True).passed


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_a_structural_zero_of_the_second_derivative_is_not_allowed_a_share_of_larger_ones(dtype):
    """Note [Allowances of other entries] at order 2: y enters linearly, so its Hessian-vector product
    is identically 0; a double backward leaking 1e-3 g there passed beside exp(10 x)'s second
    derivative in float32 (4 ulps of the check's largest entry, 5e-3).  It is allowed what torch's
    code sums there (nothing), and fails; a shift the closed form cancels, which torch sums, is
    still allowed its terms' rounding (correct code passes)."""
    from symgrad.testing_ops import custom

    leak = 1e-6 if dtype == torch.float64 else 1e-3
    double = custom(lambda y: 2 * y, lambda y, g: 2 * g + leak * g * (y - y.detach()))  # value right, y-derivative leaks
    x, y = torch.tensor([0.2, 0.5, 0.9], dtype=dtype), torch.tensor([0.1, 0.4, 0.7], dtype=dtype)
    f = lambda x, y: torch.exp(10 * x).sum() + double(y).sum()  # noqa: E731
    for engine in ("elementwise", "graph"):
        assert not sg.check(f, {"x": x, "y": y}, order=2, engine=engine, quiet=True).passed, engine
    right = custom(lambda y: 2 * y, lambda y, g: 2 * g)
    assert sg.check(lambda x, y: torch.exp(10 * x).sum() + right(y).sum(), {"x": x, "y": y}, order=2,
                    engine="elementwise", quiet=True).passed
    gen = torch.Generator().manual_seed(1)
    z, c = (4 * torch.randn(2, 5, generator=gen, dtype=torch.float64)).to(dtype), torch.randn(2, 1, dtype=dtype)
    for f in (lambda z, c: torch.logsumexp(z - c, -1).sum() - c.sum(),
              lambda z, c: torch.log_softmax(3 * z + c, -1)[..., 0].sum()):
        assert sg.check(f, {"z": z, "c": c}, order=2, engine="elementwise", quiet=True).passed


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_a_direction_of_zero_on_some_inputs_allows_what_torch_sums(dtype):
    """order=2 with given directions, x's all 0: the closed form's Hessian-vector product is an exact 0
    with no rounding where torch's double backward sums the shift c's cancelling terms (8e-15 against
    an allowance of 3e-322); those entries get the op graph's bound.  A wrong one still fails."""
    import torch.nn.functional as F

    from symgrad.testing_ops import wrong_second

    gen = torch.Generator().manual_seed(0)
    x, w = (torch.randn(2, 4, generator=gen, dtype=torch.float64).to(dtype) for _ in range(2))
    c = (100 * torch.randn(2, generator=gen, dtype=torch.float64)).to(dtype)
    f = lambda x, c: (F.layer_norm(x + c[:, None], (4,)) * w).sum()  # noqa: E731
    tangents = {"x": torch.zeros_like(x), "c": torch.randn(2, generator=gen, dtype=torch.float64).to(dtype)}
    report = sg.check(f, {"x": x, "c": c}, order=2, engine="elementwise", tangents=tangents, quiet=True)
    assert report.passed, report.to_text()
    if dtype == torch.float32:
        return  # float32's second derivative at a mean of 100 is too coarse for a 1e-3 bug
    assert not sg.check(wrong_second(f, 1e-6), {"x": x, "c": c}, symbolic=f, order=2, tangents={
        "x": torch.randn(2, 4, generator=gen, dtype=torch.float64).to(dtype), "c": tangents["c"]}, quiet=True).passed


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_the_first_backward_at_a_cone_point_is_judged_as_at_first_order(dtype):
    """A norm at a zero vector (reached in float32 by x - x.mean() of equal entries): order=1 accepts
    torch's gradient 0 there (Note [Cone points]), but order=2's rows of the same first backward and
    of its J w had no bands and failed.  The Hessian itself does not exist there (NaN on both sides)."""
    x = torch.zeros(4, dtype=dtype) if dtype == torch.float64 else torch.full((4,), 1e8, dtype=dtype)
    f = lambda x: torch.linalg.vector_norm(x - x.mean())  # noqa: E731
    assert sg.check(f, {"x": x}, quiet=True).passed
    rows = {(r.name, r.quantity): r.passed for r in sg.check(f, {"x": x}, order=2, quiet=True).records}
    assert rows[("x", "grad (create_graph)")] and rows[("grad_output", "jvp")]
