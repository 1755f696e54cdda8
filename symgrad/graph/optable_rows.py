"""Rows of the op table (``symgrad.graph.optable``): pointwise ops and special functions,
reductions, shape and indexing ops, linear algebra."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .opcase import OpCase, fixed, ints, mask, normal, positive, uniform

__all__ = ["ROWS"]

X = {"x": normal(3, 5)}
XY = {"x": normal(3, 5), "y": normal(3, 5)}
POS = {"x": positive(3, 5)}
UNIT = {"x": uniform(-0.9, 0.9, 3, 5)}


def pw(name, fn, inputs=None, **kw):
    return OpCase(name, fn, inputs or X, "pointwise", **kw)


def red(name, fn, inputs=None, **kw):
    return OpCase(name, fn, inputs or {"x": normal(4, 5)}, "reduction", **kw)


def shp(name, fn, inputs=None, **kw):
    return OpCase(name, fn, inputs or {"x": normal(3, 4)}, "shape", **kw)


def lin(name, fn, inputs, **kw):
    return OpCase(name, fn, inputs, "linalg", **kw)


_ACTIVATIONS = [
    ("silu", F.silu), ("mish", F.mish), ("hardswish", F.hardswish), ("hardsigmoid", F.hardsigmoid),
    ("softsign", F.softsign), ("logsigmoid", F.logsigmoid), ("selu", F.selu), ("celu", F.celu), ("elu", F.elu),
    ("gelu", F.gelu), ("gelu tanh", lambda x: F.gelu(x, approximate="tanh")), ("relu", F.relu),
    ("relu6", F.relu6), ("leaky_relu", lambda x: F.leaky_relu(x, 0.1)), ("softplus", F.softplus),
    ("softplus beta=2", lambda x: F.softplus(x, beta=2.0, threshold=5.0)), ("tanh", torch.tanh),
    ("sigmoid", torch.sigmoid), ("hardtanh", F.hardtanh), ("tanhshrink", F.tanhshrink),
    ("softshrink", F.softshrink), ("hardshrink", F.hardshrink), ("threshold", lambda x: F.threshold(x, 0.1, -1.0)),
    ("rrelu eval", lambda x: F.rrelu(x, training=False)),
]

_UNARY = [
    ("exp", torch.exp, X), ("log", torch.log, POS), ("sqrt", torch.sqrt, POS), ("rsqrt", torch.rsqrt, POS),
    ("reciprocal", torch.reciprocal, POS), ("sin", torch.sin, X), ("cos", torch.cos, X), ("tan", torch.tan, UNIT),
    ("asin", torch.asin, UNIT), ("acos", torch.acos, UNIT), ("atan", torch.atan, X), ("sinh", torch.sinh, X),
    ("cosh", torch.cosh, X), ("asinh", torch.asinh, X), ("acosh", torch.acosh, {"x": uniform(1.2, 3.0, 3, 5)}),
    ("atanh", torch.atanh, UNIT), ("erf", torch.erf, X), ("erfc", torch.erfc, X), ("erfinv", torch.erfinv, UNIT),
    ("lgamma", torch.lgamma, POS), ("digamma", torch.digamma, POS),
    ("polygamma n=1", lambda x: torch.polygamma(1, x), POS), ("polygamma n=2", lambda x: torch.polygamma(2, x), POS),
    ("expm1", torch.expm1, X), ("log1p", torch.log1p, POS), ("log2", torch.log2, POS), ("log10", torch.log10, POS),
    ("exp2", torch.exp2, X), ("sinc", torch.sinc, X), ("logit", torch.logit, {"x": uniform(0.1, 0.9, 3, 5)}),
    ("logit eps", lambda x: torch.logit(x, eps=0.05), {"x": uniform(0.1, 0.9, 3, 5)}), ("square", torch.square, X),
    ("abs", torch.abs, X), ("neg", torch.neg, X), ("pow scalar", lambda x: x**3, X),
    ("pow fractional", lambda x: x**1.5, POS), ("scalar ** x", lambda x: 2.5**x, X),
    ("deg2rad", torch.deg2rad, X), ("frac", torch.frac, X),
    ("i0", torch.i0, X), ("i0e", torch.special.i0e, X), ("i1", torch.special.i1, X), ("i1e", torch.special.i1e, X),
    ("erfcx", torch.special.erfcx, {"x": uniform(-4.0, 6.0, 3, 5)}),  # Note [erfcx] in graph/functions_stats.py
    ("log_ndtr", torch.special.log_ndtr, {"x": uniform(-6.0, 3.0, 3, 5)}),  # Note [log_ndtr as torch's kernel]
    # i1', i1e' at their removable point 0 and i0e' at its kink (Note [Modified Bessel functions as torch's kernels])
    ("i1 at 0", torch.special.i1, {"x": fixed([0.0, 1e-9, -2.0, 9.0])}),
    ("i1e at 0", torch.special.i1e, {"x": fixed([0.0, -1e-9, 2.0, -9.0])}),
    ("i0e at 0", torch.special.i0e, {"x": fixed([0.0, 0.5, -3.0, 30.0])}),
]

_BINARY = [
    ("add alpha", lambda x, y: torch.add(x, y, alpha=2.0), XY), ("sub", torch.sub, XY), ("mul", torch.mul, XY),
    ("div", torch.div, {"x": normal(3, 5), "y": positive(3, 5)}),
    ("pow tensor exponent", torch.pow, {"x": positive(3, 5), "y": normal(3, 5)}),
    ("atan2", torch.atan2, XY), ("hypot", torch.hypot, XY), ("logaddexp", torch.logaddexp, XY),
    ("logaddexp2", torch.logaddexp2, XY), ("xlogy", torch.xlogy, {"x": normal(3, 5), "y": positive(3, 5)}),
    ("xlogy x=0", torch.xlogy, {"x": fixed([0.0, 1.0, 0.0, -2.0]), "y": fixed([0.5, 2.0, 3.0, 0.25])}),
    ("maximum", torch.maximum, XY), ("minimum", torch.minimum, XY), ("fmax", torch.fmax, XY),
    ("where", lambda x, y, c: torch.where(c, x, y), {"x": normal(3, 5), "y": normal(3, 5), "c": mask(3, 5)}),
    ("where on a computed condition", lambda x, y: torch.where(x > y, x * y, x - y), XY),
    ("clamp scalar bounds", lambda x: x.clamp(-0.5, 0.7), X),
    ("clamp tensor bounds", lambda x, lo, hi: torch.clamp(x, lo, hi),
     {"x": normal(3, 5), "lo": uniform(-1.5, -0.2, 3, 5), "hi": uniform(0.2, 1.5, 3, 5)}),
    ("clamp_min", lambda x: torch.clamp_min(x, 0.1), X),
    ("lerp", lambda x, y: torch.lerp(x, y, 0.3), XY),
    ("lerp tensor weight", torch.lerp, {"x": normal(3, 5), "y": normal(3, 5), "w": uniform(0, 1, 3, 5)}),
    ("addcmul", lambda x, y, z: torch.addcmul(x, y, z, value=0.5), {"x": normal(3, 5), "y": normal(3, 5), "z": normal(3, 5)}),
    ("addcdiv", lambda x, y, z: torch.addcdiv(x, y, z, value=0.5),
     {"x": normal(3, 5), "y": normal(3, 5), "z": positive(3, 5)}),
    ("clamp to -inf", lambda x: x.clamp(min=-float("inf"), max=0.5), X),
    ("in-place hardtanh_", lambda x: F.hardtanh(x * 1.0, inplace=True), X),
    ("remainder", lambda x: torch.remainder(x, 0.7), X), ("fmod", lambda x: torch.fmod(x, 0.7), X),
    ("broadcast mul", torch.mul, {"x": normal(3, 1, 5), "y": normal(4, 1)}),
    ("nan_to_num", lambda x: torch.nan_to_num(torch.log(x)), {"x": positive(3, 5)}),
    # the NaN is a constant's: a NaN input is refused (no derivative at NaN)
    ("nan_to_num on inf and nan",
     lambda x: torch.nan_to_num(x * 2 + torch.tensor([0.0, 0.0, 0.0, float("nan"), 0.0], dtype=x.dtype), posinf=3.0)
     * x.isfinite(),
     {"x": fixed([1.5, float("inf"), -float("inf"), 0.25, -0.5])},
     ),
]

_ZERO = [
    ("sign", torch.sign), ("floor", torch.floor), ("ceil", torch.ceil), ("round", torch.round), ("trunc", torch.trunc),
]

ROWS = [pw(n, f) for n, f in _ACTIVATIONS]
ROWS += [pw(n, f, i) for n, f, i in _UNARY]
ROWS += [pw(n, f, i) for n, f, i in _BINARY]
ROWS += [pw(n, f, zero_grad=True, notes="derivative 0 almost everywhere") for n, f in _ZERO]
ROWS += [
    pw("prelu", F.prelu, {"x": normal(2, 3, 4), "w": uniform(0.1, 0.4, 3)}),
    pw("glu", F.glu, {"x": normal(3, 6)}),
    pw("relu on its kink", torch.relu, {"x": fixed([[-1.0, 0.0, 2.0], [0.0, 3.0, -0.5]])},
       notes="relu'(0) = 0 (torch); one-sided values form a kink band"),
]

ROWS += [
    red("sum", lambda x: x.sum()), red("sum dim", lambda x: x.sum(1)), red("mean", lambda x: x.mean(0)),
    red("prod", lambda x: x.prod(1)), red("prod all", lambda x: x.prod()),
    red("prod with a zero", lambda x: x.prod(1), {"x": fixed([[1.5, 0.0, 2.0], [0.5, -1.0, 3.0]])}),
    red("prod with two zeros", lambda x: x.prod(1), {"x": fixed([[1.5, 0.0, 0.0], [0.5, -1.0, 3.0]])}),
    red("amax", lambda x: x.amax(1)), red("amin", lambda x: x.amin(0)), red("max dim", lambda x: x.max(1).values),
    red("min dim", lambda x: x.min(1).values), red("max all", lambda x: x.max()),
    red("amax with ties", lambda x: x.amax(1), {"x": fixed([[1.0, 3.0, 3.0], [2.0, 0.5, -1.0]])},
        notes="ties are kinks: torch splits evenly, any split passes"),
    red("max dim with ties", lambda x: x.max(1).values, {"x": fixed([[1.0, 3.0, 3.0], [2.0, 0.5, -1.0]])},
        notes="ties are kinks: torch sends all to one index"),
    red("logsumexp", lambda x: torch.logsumexp(x, 1)), red("var", lambda x: x.var(1)),
    red("var correction=0", lambda x: torch.var(x, 1, correction=0)), red("std", lambda x: x.std(0)),
    red("std correction=2", lambda x: torch.std(x, 1, correction=2)), red("var all", lambda x: x.var()),
    red("var_mean", lambda x: sum(torch.var_mean(x, 1))),
    red("norm p=2", lambda x: torch.linalg.vector_norm(x, dim=1)), red("norm p=1", lambda x: x.norm(p=1, dim=1)),
    red("norm p=inf", lambda x: torch.linalg.vector_norm(x, float("inf"), dim=1)),
    red("norm p=3", lambda x: torch.linalg.vector_norm(x, 3, dim=1)),
    red("norm p=0.5", lambda x: torch.linalg.vector_norm(x, 0.5, dim=1)),
    red("norm fro", lambda x: torch.linalg.matrix_norm(x)), red("norm default", lambda x: x.norm()),
    red("cumsum", lambda x: torch.cumsum(x, 1)), red("cumprod", lambda x: torch.cumprod(x, 1)),
    red("cumprod with a zero", lambda x: torch.cumprod(x, 1), {"x": fixed([[1.5, 0.0, 2.0, -1.0], [0.5, -1.0, 3.0, 0.0]])}),
    red("sum of a long axis", lambda x: x.sum(0), {"x": normal(300, 2)}),
    red("prod of a long axis", lambda x: x.prod(0), {"x": uniform(0.9, 1.1, 40, 2)},
        notes="past 32 terms a tree of products"),
    red("logcumsumexp", lambda x: torch.logcumsumexp(x, 1), dtypes=("float32",),
        notes="float64: the next row"),
    red("logcumsumexp float64", lambda x: torch.logcumsumexp(x, 1), dtypes=("float64",),
        torch_differs="torch's forward-mode formula (logcumsumexp_jvp) adds 1e-13 to its denominator: in float64 "
                      "its jvp errs by up to ~1e-12 relative (thousands of ulps) and the jvp row FAILs; the "
                      "reverse mode passes (tests/graph/test_ops.py checks both)"),
    red("softmax", lambda x: torch.softmax(x, 1)), red("log_softmax", lambda x: torch.log_softmax(x, 0)),
    red("softmin", lambda x: F.softmin(x, 1)), red("cosine_similarity", F.cosine_similarity,
                                                    {"x": normal(4, 5), "y": normal(4, 5)}),
    red("pairwise_distance", F.pairwise_distance, {"x": normal(4, 5), "y": normal(4, 5)}),
    red("cdist", torch.cdist, {"x": normal(4, 3), "y": normal(5, 3)}),
    red("normalize", lambda x: F.normalize(x, dim=1)),
    red("std_mean", lambda x: sum(torch.std_mean(x, 1))), red("diff", lambda x: torch.diff(x, dim=1)),
    red("pdist", F.pdist), red("sort values", lambda x: torch.sort(x, 1).values,
                               notes="indices chosen by the float64 values; near-ties are not modelled as kinks"),
    red("topk", lambda x: torch.topk(x, 2, 1).values), red("kthvalue", lambda x: torch.kthvalue(x, 2, 1).values),
    red("median dim", lambda x: torch.median(x, 1).values), red("median all", torch.median),
    red("cummax", lambda x: torch.cummax(x, 1).values),
    red("quantile", lambda x: torch.quantile(x, 0.3, dim=1)),
    red("logsumexp of masked scores", lambda x: torch.logsumexp(x.masked_fill(x > 1.0, -float("inf")), 1),
        {"x": fixed([[0.5, 2.0, -1.0, 0.3], [1.5, -0.2, 0.7, 3.0]])}),
    red("softmax with a -inf column", lambda x: torch.softmax(x + torch.tensor([0.0, -float("inf"), 0.0, 0.0], dtype=x.dtype), 1),
        {"x": normal(3, 4)}),
]

ROWS += [
    shp("view", lambda x: x.view(2, 6) * 2), shp("reshape", lambda x: x.reshape(-1)),
    shp("permute", lambda x: x.permute(2, 0, 1), {"x": normal(2, 3, 4)}), shp("transpose", lambda x: x.t()),
    shp("expand", lambda x: x.expand(2, 3, 4), {"x": normal(3, 1)}), shp("repeat", lambda x: x.repeat(2, 3)),
    shp("repeat_interleave", lambda x: x.repeat_interleave(2, dim=0)),
    shp("flip", lambda x: x.flip(1)), shp("roll", lambda x: torch.roll(x, 1, 1)),
    shp("roll flat", lambda x: torch.roll(x, 5)), shp("rot90", lambda x: torch.rot90(x, 1, (0, 1))),
    shp("cat", lambda x, y: torch.cat([x, y * y], 0), {"x": normal(3, 4), "y": normal(2, 4)}),
    shp("stack", lambda x, y: torch.stack([x, y.exp()], 1), {"x": normal(3, 4), "y": normal(3, 4)}),
    shp("split", lambda x: torch.cat([p * (i + 1) for i, p in enumerate(torch.split(x, [1, 2]))])),
    shp("chunk", lambda x: torch.stack([p.sum(0) for p in x.chunk(2, 1)])),
    shp("narrow", lambda x: x.narrow(1, 1, 2)), shp("unbind", lambda x: torch.stack([p.exp() for p in x.unbind(1)])),
    shp("slice", lambda x: x[1:, ::2]), shp("negative index", lambda x: x[-1]),
    shp("integer tensor index", lambda x, i: x[i], {"x": normal(4, 3), "i": ints(4, 6)}),
    shp("integer index, 2 dims", lambda x, i, j: x[i, j], {"x": normal(4, 3), "i": ints(4, 5), "j": ints(3, 5)}),
    shp("mask index", lambda x, m: x[m], {"x": normal(3, 4), "m": mask(3, 4)}),
    shp("gather", lambda x, i: torch.gather(x, 1, i), {"x": normal(3, 4), "i": ints(4, 3, 5)}),
    shp("take_along_dim", lambda x, i: torch.take_along_dim(x, i, 1), {"x": normal(3, 4), "i": ints(4, 3, 2)}),
    shp("scatter", lambda x, s, i: torch.scatter(x, 1, i, s),
        {"x": normal(3, 4), "s": normal(3, 1), "i": ints(4, 3, 1)}),
    shp("scatter_add", lambda x, s, i: torch.scatter_add(x, 1, i, s),
        {"x": normal(3, 4), "s": normal(3, 5), "i": ints(4, 3, 5)}),
    shp("index_select", lambda x, i: torch.index_select(x, 0, i), {"x": normal(4, 3), "i": ints(4, 5)}),
    shp("index_add", lambda x, s, i: torch.index_add(x, 0, i, s),
        {"x": normal(4, 3), "s": normal(5, 3), "i": ints(4, 5)}),
    shp("index_copy", lambda x, s: torch.index_copy(x, 0, torch.tensor([2, 0]), s), {"x": normal(4, 3), "s": normal(2, 3)}),
    shp("index_put", lambda x, s: x.index_put((torch.tensor([0, 2]),), s), {"x": normal(4, 3), "s": normal(2, 3)}),
    shp("setitem", lambda x, s: _setitem(x, s), {"x": normal(4, 3), "s": normal(3)}),
    shp("masked_fill", lambda x, m: x.masked_fill(m, -2.0), {"x": normal(3, 4), "m": mask(3, 4)}),
    shp("masked_fill computed mask", lambda x: x.masked_fill(x > 0.5, 0.0)),
    shp("masked_select", lambda x, m: torch.masked_select(x, m), {"x": normal(3, 4), "m": mask(3, 4)}),
    shp("triu", lambda x: torch.triu(x, 1), {"x": normal(4, 4)}), shp("tril", lambda x: torch.tril(x), {"x": normal(4, 4)}),
    shp("diag", lambda x: torch.diag(x), {"x": normal(4, 4)}), shp("diag_embed", lambda x: torch.diag(x), {"x": normal(4)}),
    shp("diagonal", lambda x: torch.diagonal(x, 1), {"x": normal(4, 4)}),
    shp("pad constant 0", lambda x: F.pad(x, (1, 2)), {"x": normal(2, 3, 4)}),
    shp("pad constant value", lambda x: F.pad(x, (1, 2, 0, 1), value=1.5), {"x": normal(2, 3, 4)}),
    shp("pad reflect", lambda x: F.pad(x, (2, 1), mode="reflect"), {"x": normal(2, 3, 4)}),
    shp("pad reflect 2d", lambda x: F.pad(x, (1, 1, 2, 1), mode="reflect"), {"x": normal(1, 2, 4, 4)}),
    shp("pad replicate", lambda x: F.pad(x, (2, 1), mode="replicate"), {"x": normal(2, 3, 4)}),
    shp("pad replicate 2d", lambda x: F.pad(x, (1, 2, 1, 0), mode="replicate"), {"x": normal(1, 2, 3, 4)}),
    shp("pad circular", lambda x: F.pad(x, (2, 1), mode="circular"), {"x": normal(2, 3, 4)},
        notes="torch writes it into slices of a new tensor (Note [Writes into a new buffer])"),
    shp("pad circular 2d", lambda x: F.pad(x, (1, 2, 2, 1), mode="circular"), {"x": normal(1, 2, 3, 4)}),
    shp("Tensor.unfold", lambda x: x.unfold(1, 3, 2), {"x": normal(2, 7)}),
    shp("F.unfold (im2col)", lambda x: F.unfold(x, 2, padding=1, stride=2), {"x": normal(1, 2, 4, 4)}),
    shp("F.fold (col2im)", lambda x: F.fold(x, (3, 3), 2), {"x": normal(1, 8, 4)}),
    shp("pixel_shuffle", lambda x: F.pixel_shuffle(x, 2), {"x": normal(1, 8, 2, 3)}),
    shp("pixel_unshuffle", lambda x: F.pixel_unshuffle(x, 2), {"x": normal(1, 2, 4, 4)}),
    shp("interpolate nearest", lambda x: F.interpolate(x, scale_factor=2, mode="nearest"), {"x": normal(1, 2, 3, 3)}),
    shp("interpolate nearest 1d", lambda x: F.interpolate(x, size=7, mode="nearest"), {"x": normal(1, 2, 4)}),
    shp("interpolate bilinear", lambda x: F.interpolate(x, size=(5, 4), mode="bilinear"), {"x": normal(1, 2, 3, 3)}),
    shp("interpolate bilinear align_corners",
        lambda x: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True), {"x": normal(1, 2, 3, 3)}),
    shp("interpolate nearest-exact", lambda x: F.interpolate(x, size=(5, 7), mode="nearest-exact"), {"x": normal(1, 2, 3, 3)}),
    shp("interpolate bicubic", lambda x: F.interpolate(x, scale_factor=2, mode="bicubic"), {"x": normal(1, 2, 3, 3)}),
    shp("interpolate trilinear", lambda x: F.interpolate(x, size=(2, 5, 5), mode="trilinear"), {"x": normal(1, 1, 2, 3, 3)}),
    shp("grid_sample", lambda x, g: F.grid_sample(x, g, align_corners=False), {"x": normal(1, 2, 4, 4), "g": uniform(-1, 1, 1, 3, 3, 2)},
        notes="the sampled corners (the grid's nearest pixel and its neighbours) are data; the grid's derivative is the bilinear tents' slopes"),
    shp("interpolate linear", lambda x: F.interpolate(x, size=7, mode="linear"), {"x": normal(1, 2, 4)}),
    shp("interpolate bilinear scale 1.3 (a kept size)",
        lambda x: F.interpolate(x, scale_factor=1.3, mode="bilinear", recompute_scale_factor=False), {"x": normal(1, 2, 4, 3)},
        notes="torch's kernel copies an axis whose size the scale keeps (3 * 1.3 -> 3)"),
    shp("interpolate bilinear antialias", lambda x: F.interpolate(x, size=(3, 2), mode="bilinear", antialias=True),
        {"x": normal(1, 2, 6, 5)}),
    shp("interpolate bicubic antialias", lambda x: F.interpolate(x, size=(2, 3), mode="bicubic", antialias=True),
        {"x": normal(1, 2, 5, 6)}),
    shp("grid_sample 3d", lambda x, g: F.grid_sample(x, g, align_corners=False, padding_mode="border"),
        {"x": normal(1, 2, 3, 3, 3), "g": uniform(-1, 1, 1, 2, 2, 2, 3)}),
    shp("flatten", lambda x: torch.flatten(x, 1), {"x": normal(2, 3, 4)}), shp("squeeze", lambda x: x.unsqueeze(0).squeeze(0)),
    shp("movedim", lambda x: torch.movedim(x, 0, 2), {"x": normal(2, 3, 4)}),
    shp("detach", lambda x: x * x.detach()),
]

ROWS += [
    lin("matmul", torch.matmul, {"x": normal(3, 4), "y": normal(4, 2)}),
    lin("matmul batched broadcast", torch.matmul, {"x": normal(2, 3, 4), "y": normal(4, 2)}),
    lin("matmul vector", torch.matmul, {"x": normal(3, 4), "y": normal(4)}),
    lin("mv", torch.mv, {"x": normal(3, 4), "y": normal(4)}), lin("dot", torch.dot, {"x": normal(5), "y": normal(5)}),
    lin("bmm", torch.bmm, {"x": normal(2, 3, 4), "y": normal(2, 4, 2)}),
    lin("householder_product", torch.linalg.householder_product, {"x": normal(4, 3), "y": uniform(0.5, 1.5, 3)}),
    lin("matrix_exp", torch.linalg.matrix_exp, {"x": normal(3, 3)}),  # Note [Matrix exponential as a series]
    lin("matrix_exp batched", torch.linalg.matrix_exp, {"x": normal(2, 3, 3)}),
    lin("baddbmm", lambda a, x, y: torch.baddbmm(a, x, y, beta=0.5, alpha=2.0),
        {"a": normal(2, 3, 2), "x": normal(2, 3, 4), "y": normal(2, 4, 2)}),
    lin("addmm", torch.addmm, {"a": normal(3, 2), "x": normal(3, 4), "y": normal(4, 2)}),
    lin("einsum", lambda x, y: torch.einsum("bij,bjk->bik", x, y), {"x": normal(2, 3, 4), "y": normal(2, 4, 2)}),
    lin("einsum trace-like", lambda x, y: torch.einsum("ij,ji->", x, y), {"x": normal(3, 4), "y": normal(4, 3)}),
    lin("einsum ellipsis", lambda x, y: torch.einsum("...ij,...jk->...ik", x, y), {"x": normal(2, 3, 4), "y": normal(2, 4, 2)}),
    lin("addbmm", lambda a, x, y: torch.addbmm(a, x, y, beta=0.5, alpha=2.0),
        {"a": normal(3, 2), "x": normal(2, 3, 4), "y": normal(2, 4, 2)}),
    lin("einsum repeated index", lambda x: torch.einsum("ii->i", x), {"x": normal(3, 3)}),
    lin("outer", torch.outer, {"x": normal(3), "y": normal(4)}),
    lin("trace", torch.trace, {"x": normal(4, 4)}),
    lin("kron", torch.kron, {"x": normal(2, 2), "y": normal(2, 3)}),
    lin("tensordot", lambda x, y: torch.tensordot(x, y, dims=([1], [0])), {"x": normal(3, 4), "y": normal(4, 2)}),
    lin("cross", lambda x, y: torch.linalg.cross(x, y), {"x": normal(4, 3), "y": normal(4, 3)}),
]



def _sign_fixed(v):
    """Vectors with a sign convention (largest-magnitude entry positive): gauge invariant."""
    pick = v.abs().argmax(-2, keepdim=True)
    return v * torch.sign(torch.gather(v, -2, pick))


def _eig_fn(x):
    lam, v = torch.linalg.eigh(x + x.mT)
    return v @ torch.diag_embed(torch.exp(0.3 * lam)) @ v.mT


def _spread(x):
    """``0.2 x`` plus a diagonal 3, 2, 1, ...: singular values about a unit apart (float32's bounds on
    vectors grow as 1/gap, Note [Linalg vectors])."""
    m, n = x.shape[-2:]
    k = min(m, n)
    d = torch.zeros(m, n, dtype=x.dtype)
    d[range(k), range(k)] = torch.arange(k, 0, -1, dtype=x.dtype)
    return 0.2 * x + d


def _svd_fn(x):
    u, s, vh = torch.linalg.svd(_spread(x), full_matrices=False)
    return u @ torch.diag_embed(torch.tanh(s)) @ vh


_LOOSE32 = ("float32: for two of five draws the seeded 1e-3 bug stays within the allowance of entries that "
            "cancel (the report's 'Resolution' line says so); the seed sweep runs it in float64")
_GAUGE = "vectors up to sign: checked through gauge-invariant uses (Note [Linalg vectors])"
_M = [[2.0, 0.5, 0.1], [0.3, 1.5, 0.2], [0.1, 0.4, 1.8]]
ROWS += [
    lin("linalg.inv", torch.linalg.inv, {"x": fixed(_M)}),
    lin("linalg.inv batched", lambda x: torch.linalg.inv(x + 3 * torch.eye(3, dtype=x.dtype)), {"x": normal(2, 3, 3)}),
    lin("linalg.det", torch.linalg.det, {"x": fixed(_M)}),
    lin("linalg.det batched", lambda x: torch.linalg.det(x + 2 * torch.eye(3, dtype=x.dtype)), {"x": normal(2, 3, 3)}),
    lin("linalg.solve", torch.linalg.solve, {"a": fixed(_M), "b": normal(3, 2)}),
    lin("linalg.solve vector", torch.linalg.solve, {"a": fixed(_M), "b": normal(3)}),
    lin("linalg.solve batched", lambda a, b: torch.linalg.solve(a + 3 * torch.eye(3, dtype=a.dtype), b),
        {"a": normal(2, 3, 3), "b": normal(2, 3, 2)}),
    lin("linalg.slogdet", lambda x: torch.linalg.slogdet(x)[1], {"x": fixed(_M)}),
    lin("logdet", lambda x: torch.logdet(x @ x.mT + torch.eye(3, dtype=x.dtype)), {"x": normal(3, 3)}),
    lin("linalg.qr", lambda x: torch.linalg.qr(_spread(x))[1], {"x": normal(4, 3)}, notes="R of the reduced QR of "
        "0.2x + diag(3, 2, 1)"),
    lin("linalg.qr Q", lambda x: torch.linalg.qr(_spread(x))[0], {"x": normal(4, 3)}, notes="Q of the reduced QR"),
    lin("linalg.qr both batched", lambda x: (lambda q, r: q.sin() @ r)(*torch.linalg.qr(x + 2 * torch.eye(3, dtype=x.dtype))),
        {"x": normal(2, 3, 3, std=0.5)}),
    lin("linalg.eigvalsh", lambda x: torch.linalg.eigvalsh(x + x.mT), {"x": normal(3, 3)}, notes="distinct eigenvalues"),
    lin("linalg.eigh values, symmetric input", lambda x: torch.linalg.eigh(x + x.mT)[0], {"x": normal(2, 3, 3)}),
    lin("linalg.eigh values, non-symmetric input", lambda x: torch.linalg.eigh(x)[0], {"x": normal(2, 3, 3)},
        torch_differs="eigh reads the lower triangle only, but torch's backward (documented to assume a symmetric "
                      "input) gives V diag(g) Vᵀ on both triangles: not the derivative of its forward"),
    lin("linalg.eigh vectors", lambda x: torch.linalg.eigh(x + x.mT)[1].abs(), {"x": normal(3, 3)}, notes=_GAUGE),
    lin("linalg.eigh matrix function", _eig_fn, {"x": normal(2, 3, 3)}, notes="V diag(exp(λ/3)) Vᵀ"),
    lin("linalg.eigh vectors sign-fixed", lambda x: _sign_fixed(torch.linalg.eigh(x + x.mT)[1]), {"x": normal(4, 4)}),
    lin("linalg.svdvals", torch.linalg.svdvals, {"x": normal(4, 3)}, notes="distinct singular values"),
    lin("linalg.svd vectors", lambda x: torch.linalg.svd(x, full_matrices=False)[0].abs(), {"x": normal(4, 3)},
        notes=_GAUGE),
    lin("linalg.svd U diag(f(S)) Vh", _svd_fn, {"x": normal(4, 3)}, sweep_dtypes=("float64",),
        notes="of 0.2x + diag(3, 2, 1): gaps of about 1; " + _LOOSE32),
    lin("linalg.svd wide U Uᵀ and Vh", lambda x: (lambda u, s, vh: (u @ u.mT).sum() + (vh.mT @ vh) * s.sum())(
        *torch.linalg.svd(_spread(x), full_matrices=False)), {"x": normal(3, 5)}, notes="U Uᵀ = I: its derivative is 0"),
    lin("linalg.svd vectors sign-fixed batched", lambda x: _sign_fixed(torch.linalg.svd(_spread(x), full_matrices=False)[2].mT),
        {"x": normal(2, 5, 3)}, notes="Vᵀ, each column's largest entry positive"),
    lin("matrix_norm nuc and 2", lambda x: torch.linalg.matrix_norm(x, "nuc") + torch.linalg.matrix_norm(x, 2),
        {"x": normal(4, 3)}),
    lin("linalg.pinv", lambda x: torch.linalg.pinv(_spread(x)), {"x": normal(4, 3)}, sweep_dtypes=("float64",),
        notes="full rank: through the SVD; " + _LOOSE32),
    lin("linalg.cholesky", lambda x: torch.linalg.cholesky(x @ x.mT + torch.eye(3, dtype=x.dtype)), {"x": normal(3, 3)}),
    lin("linalg.cholesky upper batched", lambda x: torch.linalg.cholesky(x @ x.mT + torch.eye(3, dtype=x.dtype), upper=True),
        {"x": normal(2, 3, 3)}),
    lin("cholesky_solve", lambda x, b: torch.cholesky_solve(b, torch.linalg.cholesky(x @ x.mT + torch.eye(3, dtype=x.dtype))),
        {"x": normal(3, 3), "b": normal(3, 2)}),
    lin("solve_triangular", lambda a, b: torch.linalg.solve_triangular(a + 3 * torch.eye(3, dtype=a.dtype), b, upper=True),
        {"a": normal(3, 3), "b": normal(3, 2)}),
    lin("solve_triangular unit lower", lambda a, b: torch.linalg.solve_triangular(a, b, upper=False, unitriangular=True),
        {"a": normal(3, 3, std=0.5), "b": normal(3, 2)}),
]


def _setitem(x, s):
    y = x.clone()
    y[1] = s
    return y
