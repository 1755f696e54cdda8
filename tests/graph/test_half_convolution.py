"""A convolution's sums in half precision (the comment above approx.HALF_ACCUMULATING): its forward
rounds once (im2col and a float32 gemm), its backward and a transposed convolution's forward add up
in the half dtype.  torch's own kernels pass either way; the forward's allowance is one rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import symgrad as sg

CASES = {
    "conv1d": (lambda x, w: F.conv1d(x, w, padding=1), (2, 6, 20), (8, 6, 5)),
    "conv2d": (lambda x, w: F.conv2d(x, w), (2, 6, 10, 10), (16, 6, 5, 5)),
    "conv2d strided dilated": (lambda x, w: F.conv2d(x, w, stride=2, dilation=2), (2, 6, 12, 12), (16, 6, 3, 3)),
    "conv2d grouped": (lambda x, w: F.conv2d(x, w, groups=2), (2, 6, 9, 9), (8, 3, 3, 3)),
    "conv_transpose2d": (lambda x, w: F.conv_transpose2d(x, w, stride=2), (2, 6, 5, 5), (6, 4, 3, 3)),
}


def _inputs(xs, ws, dtype):
    gen = torch.Generator().manual_seed(0)
    return {"x": torch.randn(xs, generator=gen).to(dtype), "w": (torch.randn(ws, generator=gen) / 3).to(dtype)}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", list(CASES))
def test_torch_convolutions_pass_in_half_precision(name, dtype):
    fn, xs, ws = CASES[name]
    report = sg.check(fn, _inputs(xs, ws, dtype), engine="graph", quiet=True)
    assert report.passed, report


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_a_convolution_forward_is_allowed_one_rounding(dtype):
    """torch's half conv2d is the exact result rounded once; the forward row is allowed about that,
    where adding up in half (log2 of 150 terms' roundings on their sizes) allowed many times more."""
    fn, xs, ws = CASES["conv2d"]
    inputs = _inputs(xs, ws, dtype)
    row = sg.check(fn, inputs, engine="graph", quiet=True).records[0]
    value = np.abs(np.asarray(row.expected, np.float64)).ravel()
    unit = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
    terms = F.conv2d(inputs["x"].double().abs(), inputs["w"].double().abs()).numpy().ravel()
    allowed = np.asarray(row.allowed, np.float64).ravel()
    # one half rounding (1.25 u, at least 1.5 of them per entry) plus float32 roundings on the terms
    assert np.all(allowed <= 2 * unit * value + 2.0**-16 * terms + 1e-6)
    transposed = sg.check(CASES["conv_transpose2d"][0], _inputs(*CASES["conv_transpose2d"][1:], dtype),
                          engine="graph", quiet=True).records[0]
    tv = np.abs(np.asarray(transposed.expected, np.float64)).ravel()
    ta = np.asarray(transposed.allowed, np.float64).ravel()
    assert np.median(ta / tv) > 4 * unit  # col2im adds up in half: several roundings
