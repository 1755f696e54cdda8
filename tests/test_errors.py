"""Bad input: a clear SymgradError subclass whose message names the cause."""

from __future__ import annotations

import re

import numpy as np
import pytest
import sympy as sp
import torch

import symgrad as sg
from symgrad.errors import InputError, ShapeMismatch, SymgradError, UnsupportedOp

x3 = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)


def _raises(cls, pattern, fn):
    with pytest.raises(cls, match=pattern) as info:
        fn()
    assert isinstance(info.value, SymgradError)
    return info.value


def test_error_hierarchy():
    assert issubclass(InputError, SymgradError) and issubclass(InputError, TypeError)
    assert issubclass(ShapeMismatch, SymgradError) and issubclass(UnsupportedOp, SymgradError)
    assert issubclass(SymgradError, ValueError)


# -- symbolic and torch outputs of different shapes -------------------------------------------
@pytest.mark.parametrize(
    "torch_fn,sym_fn,torch_shape,sym_shape",
    [
        (lambda x: x.sum(), lambda x: x * 2, r"\(\)", r"\(3,\)"),
        (lambda x: x * 2, lambda x: x[:2] * 2, r"\(3,\)", r"\(2,\)"),
        (lambda x: torch.outer(x, x), lambda x: x, r"\(3, 3\)", r"\(3,\)"),
    ],
)
def test_output_shapes_differ(torch_fn, sym_fn, torch_shape, sym_shape):
    _raises(ShapeMismatch, f"torch function returns shape {torch_shape} but the symbolic forward returns {sym_shape}",
            lambda: sg.check(torch_fn, {"x": x3}, symbolic=sym_fn))


# -- an input with no symbol ------------------------------------------------------------------
def test_input_with_no_symbol_in_matrix_expression():
    a = sp.MatrixSymbol("a", 3, 1)
    err = _raises(InputError, "input 'y' has no symbol",
                  lambda: sg.check(None, {"a": x3.reshape(3, 1), "y": x3}, symbolic=a.T * a, wrt=["a", "y"]))
    assert "wrt" in str(err)


def test_symbol_that_belongs_to_no_input():
    _raises(InputError, "belong to no input: p", lambda: sg.check(None, {"x": x3}, symbolic=sp.Symbol("p") ** 2))


def test_matrix_symbol_that_is_no_input():
    _raises(InputError, "MatrixSymbol 'b', which is not an input",
            lambda: sg.check(None, {"a": x3.reshape(3, 1)}, symbolic=sp.MatrixSymbol("b", 3, 1).T * sp.MatrixSymbol("a", 3, 1)))


def test_matrix_symbol_of_the_wrong_shape():
    _raises(ShapeMismatch, r"MatrixSymbol a is 2x1 but input 'a' has shape \(3,\)",
            lambda: sg.check(None, {"a": x3}, symbolic=sp.MatrixSymbol("a", 2, 1).T * sp.MatrixSymbol("a", 2, 1)))


def test_torch_function_that_ignores_an_input():
    # no .grad is a zero gradient: right where the closed form is 0, a failure where it is not
    report = sg.check(lambda x, y: x.sum(), {"x": x3, "y": x3}, symbolic=lambda x, y: (x + 0 * y).sum())
    assert report.passed and "no gradient (None" in report["y"].note
    report = sg.check(lambda x, y: x.sum(), {"x": x3, "y": x3}, symbolic=lambda x, y: (x + y).sum())
    assert not report["y"].passed and "no gradient (None" in report["y"].message()


def test_no_symbol_message_names_the_real_keyword():
    a = sp.MatrixSymbol("a", 3, 1)
    with pytest.raises(InputError) as info:
        sg.check(None, {"a": x3.reshape(3, 1), "y": x3}, symbolic=a.T * a, wrt=["a", "y"])
    assert "symbols_map=" in str(info.value)
    with pytest.raises(InputError) as info:
        sg.check(None, {"x": x3}, symbolic=sp.Symbol("p") ** 2)
    assert "symbols_map=" in str(info.value)


def test_symbols_map_naming_no_input_or_wrong_size():
    p = sp.Matrix(sp.symbols("p0:3", real=True))
    _raises(InputError, "'z', which is not an input", lambda: sg.check(None, {"x": x3}, symbolic=p[0], symbols_map={"z": p}))
    _raises(ShapeMismatch, r"has 2 symbols but input 'x' has shape \(3,\)",
            lambda: sg.check(None, {"x": x3}, symbolic=p[0], symbols_map={"x": p[:2, :]}))


# -- a non-tensor input -------------------------------------------------------------------------
@pytest.mark.parametrize("value,kind", [([1.0, 2.0], "list"), (np.ones(3), "ndarray"), (2.5, "float")])
def test_non_tensor_input_is_named(value, kind):
    _raises(InputError, f"input 'x' is a {kind}, not a torch.Tensor", lambda: sg.check(lambda x: x.sum(), {"x": value}))
    _raises(InputError, f"input 'x' is a {kind}", lambda: sg.check(lambda x: x.sum(), (value,)))


@pytest.mark.parametrize("inputs", ["abc", 3.0, None])
def test_inputs_of_the_wrong_kind(inputs):
    _raises(InputError, "inputs must be a dict", lambda: sg.check(lambda x: x.sum(), inputs))


def test_torch_function_returning_a_non_tensor():
    _raises(InputError, "returned a float, not a tensor", lambda: sg.check(lambda x: 3.0, {"x": x3}, symbolic=lambda x: x.sum()))


def test_no_floating_input():
    _raises(InputError, "no floating-point input", lambda: sg.check(lambda n: n.sum(), {"n": torch.tensor([1, 2])}))


# -- an unsupported function in the symbolic forward --------------------------------------------
def test_torch_function_in_the_symbolic_forward():
    # A reference forward in plain torch ops is traced into the op graph (issue "One op graph"):
    # it used to be refused.  The custom backward under test is still what autograd runs.
    report = sg.check(lambda x: torch.tanh(x).sum(), {"x": x3}, symbolic=lambda x: torch.tanh(x).sum())
    assert report.passed and report.meta["engine"].startswith("graph")
    wrong = sg.check(lambda x: (2 * torch.tanh(x)).sum(), {"x": x3}, symbolic=lambda x: torch.tanh(x).sum())
    assert not wrong.passed and not wrong.records[0].passed  # the forward row names the disagreement


def test_plain_torch_function_without_symbolic_is_imported_through_fx():
    # No symbolic twin given and the function is torch code: symgrad traces it with torch.fx.
    report = sg.check(lambda x: torch.tanh(x).sum(), {"x": x3})
    assert report.passed
    np.testing.assert_allclose(report["x"].expected, 1 - np.tanh(x3.numpy()) ** 2, rtol=1e-12)


def test_plain_torch_function_reading_a_float_names_the_cause_and_fix():
    def data_dependent(x):
        return x.sum() if float(x.sum()) > 0 else (-x).sum()  # a Python float of a value to differentiate

    err = _raises(UnsupportedOp, r"\.item\(\)", lambda: sg.check(data_dependent, {"x": x3}))
    assert "detach" in str(err) and "fx node" in str(err) and len(str(err)) < 1000


def test_unknown_sg_function():
    _raises(UnsupportedOp, "erfinv", lambda: sg.check(lambda x: x.sum(), {"x": x3}, symbolic=lambda x: sg.erfinv(x).sum()))


def test_symbolic_forward_returning_torch():
    _raises(UnsupportedOp, "returned a torch tensor",
            lambda: sg.check(lambda x: x.sum(), {"x": x3}, symbolic=lambda x: torch.zeros(())))


def test_sympy_function_that_cannot_be_lowered_to_torch():
    err = _raises(UnsupportedOp, "gamma", lambda: sg.check(None, {"s": torch.tensor(0.5, dtype=torch.float64)},
                                                         symbolic=sp.gamma(sp.Symbol("s"))))
    assert "SYMPY_TO_TORCH" in str(err)


def test_closed_form_that_cannot_be_lowered_to_numpy():
    # gamma' = gamma * polygamma: numpy has neither; a clear UnsupportedOp, not a NameError.
    s = torch.tensor(0.5, dtype=torch.float64)
    with pytest.raises(UnsupportedOp, match="gamma"):
        sg.check(lambda s: torch.lgamma(s).exp(), {"s": s}, symbolic=sp.gamma(sp.Symbol("s")))


def test_symbolic_that_is_neither_callable_nor_sympy():
    _raises(InputError, "symbolic must be a callable or a SymPy expression, not int",
            lambda: sg.check(lambda x: x.sum(), {"x": x3}, symbolic=3))


def test_shape_errors_inside_the_symbolic_forward_keep_their_class():
    _raises(ShapeMismatch, r"\(3,\) and \(2,\)",
            lambda: sg.check(lambda x: x.sum(), {"x": x3}, symbolic=lambda x: (x + sg.symbols("q", (2,))).sum()))
    _raises(ShapeMismatch, "mse_loss", lambda: sg.check(lambda x: x.sum(), {"x": x3}, symbolic=lambda x: sg.mse_loss(x, x[:2])))


# -- a wrt that names nothing -----------------------------------------------------------------
@pytest.mark.parametrize("wrt", ["z", ["x", "z"]])
def test_wrt_names_nothing(wrt):
    err = _raises(InputError, "wrt names 'z', which is not an input", lambda: sg.check(lambda x: x.sum(), {"x": x3}, wrt=wrt))
    assert "the inputs are: x" in str(err)


def test_wrt_names_an_integer_input():
    _raises(InputError, re.escape("wrt names 'n', a torch.int64 tensor"),
            lambda: sg.check(lambda x, n: x.sum(), {"x": x3, "n": torch.tensor([1, 2])}, wrt="n"))


# -- via, cotangents and tangents ----------------------------------------------------------------
def test_unknown_via_lists_the_known_ones():
    err = _raises(InputError, "via='numeric' is not a way", lambda: sg.check(lambda x: x.sum(), {"x": x3}, via="numeric"))
    assert "jacrev" in str(err) and "functional.hessian" in str(err)


def test_vjp_and_jvp_arguments():
    _raises(InputError, "pass the cotangent v", lambda: sg.check(lambda x: x * 2, {"x": x3}, via="functional.vjp"))
    _raises(ShapeMismatch, r"v has shape \(4,\), the output has \(3,\)", lambda: sg.check(lambda x: x * 2, {"x": x3}, v=torch.ones(4)))
    _raises(InputError, "pass tangents", lambda: sg.check(lambda x: x * 2, {"x": x3}, via="func.jvp"))
    _raises(ShapeMismatch, r"tangent for 'x' has shape \(4,\)",
            lambda: sg.check(lambda x: x * 2, {"x": x3}, via="func.jvp", tangents=torch.ones(4)))
    _raises(InputError, "tangents must map each of",
            lambda: sg.check(lambda x: x * 2, {"x": x3}, via="func.jvp", tangents={"y": torch.ones(3)}))


def test_scalar_quantities_of_a_non_scalar_output():
    _raises(ShapeMismatch, r"differentiates a scalar, but the output has shape \(3,\)",
            lambda: sg.check(lambda x: x * 2, {"x": x3}, via="autograd.grad"))
    _raises(ShapeMismatch, "Hessian needs a scalar output", lambda: sg.check(lambda x: x * 2, {"x": x3}, via="functional.hessian"))


def test_bad_engine_and_module_only_arguments():
    _raises(InputError, "engine must be one of", lambda: sg.check(lambda x: x.sum(), {"x": x3}, engine="fast"))
    _raises(InputError, "loss=/target= apply to nn.Module", lambda: sg.check(lambda x: x.sum(), {"x": x3}, loss="mse"))


def test_the_exploded_back_end_running_out_of_memory_is_a_clear_refusal(monkeypatch):
    """Note [Memory guard]: a deeply nested forward (an ODE solver's stages) can outgrow the size
    estimate; generated code past MAX_SOURCE_CHARS, or a MemoryError while building, is an InputError
    naming the tensor back end, never a bare MemoryError."""
    import symgrad.lower.numpy as lowered

    monkeypatch.setattr(lowered, "MAX_SOURCE_CHARS", 10)
    x = torch.tensor([0.3, -0.2], dtype=torch.float64)
    with pytest.raises(sg.InputError, match="engine='graph'"):
        sg.check(lambda x: torch.tanh(torch.tanh(x)).sum(), {"x": x}, engine="elementwise", quiet=True)


def test_the_exploded_second_order_running_out_of_memory_is_a_clear_refusal(monkeypatch):
    """The same at order=2 (its exploded Hessian-vector products are lowered too)."""
    import symgrad.lower.numpy as lowered

    monkeypatch.setattr(lowered, "MAX_SOURCE_CHARS", 10)
    x = torch.tensor([0.3, -0.2], dtype=torch.float64)
    with pytest.raises(sg.InputError, match="engine='graph'"):
        sg.check(lambda x: torch.tanh(torch.tanh(x)).sum(), {"x": x}, engine="elementwise", order=2, quiet=True)


def test_tangents_with_a_jacobian_via_are_refused_clearly():
    """tangents= with via='jacfwd' (which computes the whole Jacobian) reached the op graph and died
    of a KeyError; it is refused naming the vias that take tangents."""
    x = torch.tensor([0.3, -0.2], dtype=torch.float64)
    with pytest.raises(sg.InputError, match="forward_ad"):
        sg.check(torch.tanh, {"x": x}, via="jacfwd", tangents={"x": torch.ones_like(x)}, quiet=True)


def test_a_full_jacobian_beyond_the_budget_is_refused_before_autograd_runs():
    """Note [Memory guard of a full Jacobian]: a 2,048 x 16,576 Jacobian died of a numpy MemoryError
    in the comparison; the refusal names the size and the way that scales."""
    import time

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Tanh(), torch.nn.Linear(128, 64)).double()
    x = torch.randn(32, 64, dtype=torch.float64)
    start = time.perf_counter()
    _raises(InputError, r"full Jacobian asked for \(2,048 output entries x 16,576 .*Leave via= out",
            lambda: sg.check(model, {"x": x}, via="jacrev", memory_budget=2**30))
    _raises(InputError, r"90,000 output entries", lambda: sg.check(torch.tanh, {"x": torch.randn(300, 300, dtype=torch.float64)},
                                                                   via="functional.jacobian"))
    assert time.perf_counter() - start < 30
