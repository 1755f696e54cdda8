"""Note [A cotangent passed on as it is] (graph/rules.py): a local derivative of exactly 1 or -1
passes the cotangent on without a rounding."""

import functools

import pytest
import torch

import symgrad as sg
from symgrad.testing_ops import custom


def _draw(shape, seed, dtype):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_bias_gradient_summed_row_by_row_in_half_precision_fails(dtype):
    """The sum of 512 rows of ``A + b``'s cotangent added one row at a time in the half dtype errs
    by up to 29 % per entry: it passed, each cotangent entry charged a rounding for ``g * 1``."""
    A, b, v = _draw((512, 8), 12, dtype), _draw((8,), 13, dtype), _draw((512, 8), 1, dtype)
    rowwise = custom(lambda b: A + b, lambda b, g: functools.reduce(lambda acc, row: acc + row, g, torch.zeros_like(b)))
    assert not sg.check(rowwise, {"b": b}, v=v, quiet=True).passed


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_torchs_own_sums_and_differences_pass(dtype):
    for seed in range(3):
        A, b, v = _draw((512, 8), seed, dtype), _draw((8,), seed + 1, dtype), _draw((512, 8), seed + 2, dtype)
        assert sg.check(lambda A, b: A + b, {"A": A, "b": b}, v=v, quiet=True).passed
        assert sg.check(lambda A, b: (A - b) * A - b, {"A": A, "b": b}, v=v, quiet=True).passed
        assert sg.check(lambda A, b: A.float() - b.float() + A.float(), {"A": A, "b": b}, v=v.float(), quiet=True).passed


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_decomposed_half_value_added_to_a_float32_one_rounds_its_cotangent(dtype):
    """``gelu(x_half) + pos_float32``: torch rounds the float32 cotangent to the half dtype for
    gelu's backward.  gelu's node comes from a decomposition, with no dtype of its own: read as
    the check's (half) dtype it is the narrower one, and its cotangent is rounded (it was passed on
    unrounded, and torch's own code failed)."""
    pos = _draw((64, 16), 3, torch.float32)

    def f(x):
        y = torch.nn.functional.gelu(x)
        return torch.tanh(y + pos) - y.float() * 0.5

    for seed in range(2):
        x, v = _draw((64, 16), seed + 1, dtype), _draw((64, 16), seed + 2, torch.float32)
        assert sg.check(f, {"x": x}, v=v, quiet=True).passed


@pytest.mark.parametrize("op", [lambda x: torch.roll(x, 1, 0), torch.nn.functional.gelu])
def test_a_float32_island_in_a_float64_check_rounds_its_widened_cotangent(op):
    """``op(x.float())`` widened back by float64 ops: torch rounds each float64 cotangent to
    float32; a decomposed op's nodes note the dtype their value is stored in for that."""
    pos = _draw((64, 16), 3, torch.float64)

    def f(x):
        y = op(x.float())
        return torch.tanh(y + pos) - y.double() * 0.5

    x, v = _draw((64, 16), 1, torch.float64), _draw((64, 16), 2, torch.float64)
    assert sg.check(f, {"x": x}, v=v, quiet=True).passed


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_computation_written_twice_rounds_each_uses_cotangent(dtype):
    """``cat([x + w, x + w])`` (x half, w float32) is one node of the op graph (Note [One node per
    computation] in ir.py), but torch runs each add's backward, rounding each use's float32
    cotangent to the half dtype: with cotangents that nearly cancel torch's own code failed."""
    x, w, v1 = _draw((64, 8), 0, dtype), _draw((8,), 1, torch.float32), _draw((64, 8), 2, torch.float32)
    v = torch.cat([v1, -v1 * (1 + 2**-10)])
    assert sg.check(lambda x: torch.cat([x + w, x + w]), {"x": x}, v=v, quiet=True).passed
    assert sg.check(lambda x: torch.cat([torch.sigmoid(x) * w, torch.sigmoid(x) * w]), {"x": x}, v=v, quiet=True).passed
