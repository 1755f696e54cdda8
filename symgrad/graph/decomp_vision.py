"""Forwards in torch ops for kernels torch has no decomposition of: antialiased bilinear and bicubic
resizing, fractional max pooling with its samples given, 3-d grid sampling, the Householder product
(embedding's renorm is a handler of its own: graph/aten_seq.py).

Each function computes what the ATen kernel computes, from the kernel's definition (the interval and
weight formulas of ``UpSampleKernel.cpp``, ``FractionalMaxPool2d.cpp``, ``GridSampler.cpp``), in
torch ops the op graph reads; ``trace.decompositions`` hands them to ``make_fx`` as decompositions.
The forward row of every check compares the result with torch's own kernel, and
``tests/graph/test_vision_families.py`` compares each one with its kernel on its own.
"""

from __future__ import annotations

import math

__all__ = ["VISION_DECOMPOSITIONS", "kept_size_scales"]


# Note [Scales of a kept size]
# ``F.interpolate(x, scale_factor=1.3, recompute_scale_factor=False)`` hands the scale to the kernel,
# which maps output to input coordinates by 1/1.3 -- except, in torch's CPU kernels of linear,
# bilinear, trilinear and 2-d nearest upsampling, along a dimension whose size the rounding left
# unchanged (3 * 1.3 -> 3): that dimension is copied as it stands.  torch's decompositions apply the
# scale there too and compute another forward (up to 1.6 off; torch's backward kernels agree with
# its forward kernels, gradcheck passes), so the op graph's forward disagreed with torch: a false
# alarm on a right model.  For these ops a kept dimension's scale is dropped before decomposing (the
# kernel's own choice); tests/graph/test_vision_families.py compares every upsampling decomposition
# with its kernel, so a torch release that changes either shows there.
_SAME_SIZE_KERNELS = (("upsample_linear1d", 1, True), ("upsample_bilinear2d", 2, True),
                      ("upsample_trilinear3d", 3, True), ("upsample_nearest2d", 2, False))


def _positional(op, args, kwargs) -> list:
    """``args`` then ``kwargs`` in the order of ``op``'s schema."""
    names = [a.name for a in op._schema.arguments]
    return list(args) + [kwargs[k] for k in names[len(args):] if k in kwargs]


def _kernel_scales(decomposed, op, n: int, linear: bool):
    """``decomposed`` with the scale of every spatial dimension the op keeps at its size dropped."""
    def run(*args, **kwargs):
        x, size, *rest = _positional(op, args, kwargs)
        head, scales = (rest[:1], list(rest[1:])) if linear else ([], list(rest))
        scales += [None] * (n - len(scales))
        scales = [None if x.shape[x.dim() - n + i] == size[i] else s for i, s in enumerate(scales)]
        return decomposed(x, size, *head, *scales)

    return run


def _vec_as_default(default, n: int, linear: bool):
    """The ``.vec`` overload (an output size or scale factors) through the ``.default`` one."""

    def run(x, size, *rest, **kwargs):
        rest = list(rest) + list(kwargs.values())
        head, factors = (rest[:1], rest[1] if len(rest) > 1 else None) if linear else ([], rest[0] if rest else None)
        if size is None:
            size = [int(math.floor(x.shape[x.dim() - n + i] * float(factors[i]))) for i in range(n)]
            scales = list(factors)
        else:
            scales = [None] * n
        return default(x, list(size), *head, *scales)

    return run

def kept_size_scales(table: dict) -> None:
    """``table``'s upsampling decompositions with the scale of a kept dimension dropped."""
    import torch

    for name, n, linear in _SAME_SIZE_KERNELS:
        packet = getattr(torch.ops.aten, name)
        if packet.default in table:
            table[packet.default] = _kernel_scales(table[packet.default], packet.default, n, linear)
            table[packet.vec] = _vec_as_default(table[packet.default], n, linear)


# Note [Antialiased resizing]
# ``F.interpolate(..., antialias=True)`` is separable: along each resized axis, output i is a
# normalised weighted sum of the inputs j in [xmin, xmax) around ``center = scale * (i + 0.5)``, with
# ``support = (interp / 2) * scale`` when shrinking (``interp / 2`` otherwise) and weights
# ``filter((j - center + 0.5) * invscale)``, ``invscale = 1 / scale`` when shrinking (1 otherwise);
# the filter is the triangle (bilinear) or Keys' cubic with a = -0.5 (bicubic).  The weights are
# built from ``arange`` in torch ops, so the trace folds them as constants (Note [Folded constants]),
# and the resize is two contractions with them.


def _area_scale(n_in: int, n_out: int, align_corners: bool, scale) -> float:
    if align_corners:
        return (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    return 1.0 / scale if scale is not None and scale > 0 else n_in / n_out


def _triangle(x):
    import torch

    return torch.clamp(1 - x.abs(), min=0)


def _keys_cubic(x):
    import torch

    a, x = -0.5, x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def _aa_weights(n_in: int, n_out: int, align_corners: bool, scale, interp: int, filt, dtype):
    """``(n_out, n_in)``: the normalised antialiasing weights along one axis."""
    import torch

    s = _area_scale(n_in, n_out, align_corners, scale)
    support = interp * 0.5 * s if s >= 1.0 else interp * 0.5
    invscale = 1.0 / s if s >= 1.0 else 1.0
    i = torch.arange(n_out, dtype=dtype)
    center = s * (i + 0.5)
    xmin = torch.clamp(torch.trunc(center - support + 0.5), min=0)
    xmax = torch.clamp(torch.trunc(center + support + 0.5), max=n_in)
    j = torch.arange(n_in, dtype=dtype)
    w = filt((j[None, :] - center[:, None] + 0.5) * invscale)
    inside = (j[None, :] >= xmin[:, None]) & (j[None, :] < xmax[:, None])
    w = torch.where(inside, w, torch.zeros_like(w))
    total = w.sum(1, keepdim=True)
    return torch.where(total != 0, w / torch.where(total != 0, total, torch.ones_like(total)), w)


def _resize_aa(interp: int, filt):
    def run(x, output_size, align_corners, scales_h=None, scales_w=None):
        import torch

        h, w = x.shape[-2:]
        oh, ow = output_size
        wh = _aa_weights(h, oh, align_corners, scales_h, interp, filt, x.dtype)
        ww = _aa_weights(w, ow, align_corners, scales_w, interp, filt, x.dtype)
        t = torch.einsum("...hw,qw->...hq", x, ww)  # the kernel's horizontal pass first
        return torch.einsum("...hq,ph->...pq", t, wh)

    return run


# Note [Fractional max pooling]
# The windows of ``fractional_max_pool2d`` start at ``int((i + u) * alpha) - int(u * alpha)``,
# ``alpha = (in - k) / (out - 1)``, the last at ``in - k``, with one sample u per (batch, channel)
# and axis (``samples[..., 0]`` along the width, ``[..., 1]`` along the height), computed in the
# input's dtype.  The samples are data (torch draws them unless given: a check gives them, as
# ``_random_samples=``, or fixes them by the forward row); the windows are read by indexing and
# reduced by ``amax``; the indices are the first maximum of each window in row-major order.


def _starts(u, n_in: int, n_out: int, k: int):
    """``(..., n_out)`` window starts along one axis from the samples ``u`` (..., in the input's dtype)."""
    import torch

    last = torch.full(u.shape + (1,), n_in - k, dtype=torch.int64)
    if n_out == 1:
        return last
    alpha = torch.tensor(float(n_in - k), dtype=u.dtype) / torch.tensor(float(n_out - 1), dtype=u.dtype)
    i = torch.arange(n_out - 1, dtype=u.dtype)
    seq = ((i + u.unsqueeze(-1)) * alpha).to(torch.int64) - (u * alpha).to(torch.int64).unsqueeze(-1)
    return torch.cat([seq, last], -1)


def _fractional_max_pool2d(x, kernel_size, output_size, random_samples):
    import torch

    kh, kw = (tuple(kernel_size) * 2)[:2]
    oh, ow = (tuple(output_size) * 2)[:2]
    batched = x.dim() == 4
    x4 = x if batched else x.unsqueeze(0)
    n, c, h, w = x4.shape
    u = random_samples.to(x.dtype).reshape(n, c, 2)
    r = (_starts(u[..., 1], h, oh, kh)[:, :, :, None, None, None]
         + torch.arange(kh).view(kh, 1))  # (n, c, oh, 1, kh, 1)
    q = _starts(u[..., 0], w, ow, kw)[:, :, None, :, None, None] + torch.arange(kw)  # (n, c, 1, ow, 1, kw)
    ni = torch.arange(n).view(n, 1, 1, 1, 1, 1)
    ci = torch.arange(c).view(1, c, 1, 1, 1, 1)
    win = x4[ni, ci, r, q].reshape(n, c, oh, ow, kh * kw)
    out = win.amax(-1)
    first = win.argmax(-1)
    flat = (r * w + q).expand(n, c, oh, ow, kh, kw).reshape(n, c, oh, ow, kh * kw)
    idx = flat.gather(-1, first.unsqueeze(-1)).squeeze(-1)
    return (out, idx) if batched else (out[0], idx[0])


# Note [3-d grid sampling]
# ``grid_sampler_3d`` as ``GridSampler.cpp`` computes it: each grid coordinate (x, y, z) along
# (W, H, D) is unnormalised (``(c + 1) / 2 * (size - 1)`` with align_corners, else
# ``((c + 1) * size - 1) / 2``), clipped (border) or reflected then clipped (reflection), and the
# input is read at the 8 corners around it (trilinear: weights the products of the distances to the
# opposite faces, a corner outside the input contributing 0) or at the nearest voxel (``round``, half
# to even as the kernel's ``nearbyint``).


def _unnormalise(c, size: int, align: bool):
    return (c + 1) / 2 * (size - 1) if align else ((c + 1) * size - 1) / 2


def _reflect(c, size: int, align: bool):
    import torch

    lo2, hi2 = (0, 2 * (size - 1)) if align else (-1, 2 * size - 1)
    if lo2 == hi2:
        return torch.zeros_like(c)
    low, span = lo2 / 2, (hi2 - lo2) / 2
    d = (c - low).abs()
    extra = torch.fmod(d, span)
    flips = torch.floor(d / span)
    return torch.where(torch.fmod(flips, 2) == 0, extra + low, span + low - extra)


def _source(c, size: int, padding: int, align: bool, unnormalise=_unnormalise):
    import torch

    c = unnormalise(c, size, align)
    if padding == 2:
        c = _reflect(c, size, align)
    if padding >= 1:
        c = torch.clamp(c, 0, size - 1)
    return c


def _grid_sampler_3d(x, grid, interpolation_mode: int = 0, padding_mode: int = 0, align_corners: bool = False):
    import torch

    if interpolation_mode not in (0, 1):
        from ..errors import UnsupportedOp

        raise UnsupportedOp(f"grid_sampler_3d with interpolation mode {interpolation_mode} (torch's 3-d grid "
                            "sampling is bilinear or nearest)")
    n, c, d, h, w = x.shape
    ix = _source(grid[..., 0], w, padding_mode, align_corners)
    iy = _source(grid[..., 1], h, padding_mode, align_corners)
    iz = _source(grid[..., 2], d, padding_mode, align_corners)
    ni = torch.arange(n).view(n, 1, 1, 1, 1)
    ci = torch.arange(c).view(1, c, 1, 1, 1)

    def read(z, y, xx):  # integer corners (n, od, oh, ow): the input there, 0 outside
        inside = (xx >= 0) & (xx < w) & (y >= 0) & (y < h) & (z >= 0) & (z < d)
        vals = x[ni, ci, z.clamp(0, d - 1).unsqueeze(1), y.clamp(0, h - 1).unsqueeze(1),
                 xx.clamp(0, w - 1).unsqueeze(1)]
        return torch.where(inside.unsqueeze(1), vals, torch.zeros_like(vals))

    if interpolation_mode == 1:
        return read(*(torch.round(t).to(torch.int64) for t in (iz, iy, ix)))
    x0, y0, z0 = (torch.floor(t) for t in (ix, iy, iz))
    out = None
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                wx = ix - x0 if dx else x0 + 1 - ix
                wy = iy - y0 if dy else y0 + 1 - iy
                wz = iz - z0 if dz else z0 + 1 - iz
                corner = read((z0 + dz).to(torch.int64), (y0 + dy).to(torch.int64), (x0 + dx).to(torch.int64))
                term = corner * (wx * wy * wz).unsqueeze(1)
                out = term if out is None else out + term
    return out


# Note [Bilinear grid sampling as tents]
# torch's decomposition of ``grid_sampler_2d`` reads the input at ``floor(ix)`` and ``floor(ix) + 1``
# and weights them ``floor(ix) + 1 - ix`` and ``ix - floor(ix)``.  The corners it reads are integer
# data (an index cast from floats, Note in graph/aten.py ``_identity``): taken from the float64
# floor, they cannot move.  Where a sample point lies within rounding of a pixel boundary the floor
# node gets a band of one (Note [Steps at their jumps] in scalar.py), and its other side moves the
# weights to the next cell while the pixels read stay those of this one: a function that is no side
# of the sample at all (the value jumps by a pixel difference, the x-slope does not change, the
# y-slope does).  torch's float32 coordinates that land on the other side of the boundary were then
# judged against that band and failed (affine_grid + grid_sample, theta [[0.9, 0.1, 0.05], [-0.1,
# 0.8, 0.02]] on 8x8: 4 of 12 kinked entries "outside their one-sided band").  So bilinear sampling
# is written as the same interpolant with tents, ``sum_k x[k] relu(1 - |ix - k|)`` over the three
# corners ``k`` around ``round(ix)`` (integer data, and constants in the graph): exactly torch's value
# and slope off the boundaries, continuous across them, and at a boundary its kinks (abs' at the
# corner, relu' at its neighbours) are pointwise kink units whose sides include the cell torch's
# own floor picked.  Nearest and bicubic keep torch's decomposition.


def _tents(c, size: int):
    """[(corner index, its tent weight, inside mask)] for the three corners around round(c)."""
    import torch

    r = torch.round(c).to(torch.int64)  # integer data: the float64 value's nearest corner
    out = []
    for d in (-1, 0, 1):
        k = r + d
        w = torch.relu(1 - (c - k.to(c.dtype)).abs())
        out.append((k, w, (k >= 0) & (k < size)))
    return out


def _unnormalise_2d(c, size: int, align: bool):
    """The source coordinate as torch's 2-d decomposition computes it (``c * mul + ofs``)."""
    return c * ((size * 0.5 - 0.5) if align else size * 0.5) + (size * 0.5 - 0.5)


def _grid_sampler_2d(x, grid, interpolation_mode: int = 0, padding_mode: int = 0, align_corners: bool = False):
    import torch
    from torch._decomp.decompositions import _grid_sampler_2d as torch_grid_sampler_2d

    if interpolation_mode != 0:
        return torch_grid_sampler_2d(x, grid, interpolation_mode, padding_mode, align_corners)
    n, c, h, w = x.shape
    ix = _source(grid[..., 0], w, padding_mode, align_corners, _unnormalise_2d)
    iy = _source(grid[..., 1], h, padding_mode, align_corners, _unnormalise_2d)
    ni = torch.arange(n).view(n, 1, 1, 1)
    ci = torch.arange(c).view(1, c, 1, 1)
    out = None
    for ky, wy, in_y in _tents(iy, h):
        for kx, wx, in_x in _tents(ix, w):
            vals = x[ni, ci, ky.clamp(0, h - 1).unsqueeze(1), kx.clamp(0, w - 1).unsqueeze(1)]
            vals = torch.where((in_x & in_y).unsqueeze(1), vals, torch.zeros_like(vals))
            term = vals * (wx * wy).unsqueeze(1)
            out = term if out is None else out + term
    return out


# Note [Householder product]
# ``linalg_householder_product(A, tau)`` (the orthogonal parametrization's 'householder' map) is
# ``H_1 H_2 ... H_k`` with ``H_i = I - tau_i v_i v_i^T``, ``v_i`` zero above row i, 1 at row i and
# ``A[i+1:, i]`` below, truncated to A's n columns: k rank-one updates in torch ops.


def _householder_product(a, tau):
    import torch

    m, n = a.shape[-2:]
    k = tau.shape[-1]
    q = torch.eye(m, dtype=a.dtype).expand(a.shape[:-2] + (m, m))
    rows = torch.arange(m)
    for i in range(k):
        v = torch.where(rows > i, a[..., :, i], (rows == i).to(a.dtype))  # (..., m)
        q = q - tau[..., i, None, None] * (q @ v.unsqueeze(-1)) * v.unsqueeze(-2)
    return q[..., :, :n]


# Note [Matrix exponential as a series]
# ``linalg_matrix_exp`` (the orthogonal parametrization's map for square weights) is read as scaling
# and squaring of its Taylor series: A / 2**s with s the least making the 1-norm at most 1/2, the
# series to degree MATRIX_EXP_DEGREE, then s squarings.  The truncation, (1/2)**19 / 19! < 2e-23
# relative, is far below float64's rounding, so the series' exact value and derivatives (the
# Fréchet derivative, through its products) are exp(A)'s to that accuracy; torch's kernel (a
# degree-18 Taylor form evaluated with fewer products) rounds differently, and the bound of the
# series' products covers both.  s is read from the values (a constant of the trace).
MATRIX_EXP_DEGREE = 18


def _matrix_exp(a):
    import math

    import torch
    from torch.fx.experimental.proxy_tensor import disable_proxy_modes_tracing

    from .trace_grad import chosen_from_values

    n = a.shape[-1]
    with disable_proxy_modes_tracing():
        norm = float(a.detach().abs().sum(-2).amax()) if a.numel() else 0.0
    s = max(0, math.ceil(math.log2(norm / 0.5))) if norm > 0.5 and math.isfinite(norm) else 0
    with chosen_from_values(f"matrix_exp's {s} squarings, chosen from its argument's norm {norm:.3g}"):
        x = a / 2.0**s
        eye = torch.eye(n, dtype=a.dtype).expand(a.shape)
        term, out = eye, eye
        for k in range(1, MATRIX_EXP_DEGREE + 1):
            term = (term @ x) / k
            out = out + term
        for _ in range(s):
            out = out @ out
    return out


def _vision_decompositions() -> dict:
    import torch

    aten = torch.ops.aten
    return {
        aten._upsample_bilinear2d_aa.default: _resize_aa(2, _triangle),
        aten._upsample_bicubic2d_aa.default: _resize_aa(4, _keys_cubic),
        aten.fractional_max_pool2d.default: _fractional_max_pool2d,
        aten.grid_sampler_2d.default: _grid_sampler_2d,
        aten.grid_sampler_3d.default: _grid_sampler_3d,
        aten.linalg_householder_product.default: _householder_product,
        aten.linalg_matrix_exp.default: _matrix_exp,
    }


VISION_DECOMPOSITIONS = _vision_decompositions
