"""Per-sample closed forms, derived once and evaluated vectorised over the batch.

See Note [Per-sample derivation] in ``symgrad/importer/batch.py`` for when this is sound (decided
op by op there; this module trusts its caller on that).  Here one sample's output (or loss) is a
SymPy expression in the sample's *row symbols* (``x[n, 0]``, ..., the symbol ``n`` standing for
any sample) and in the parameters.  Its derivatives are taken once (symengine), lowered once
(``symgrad.lower.numpy``), and evaluated with each row symbol bound to a length-N array, so the
symbolic work does not depend on N.  The batch result is assembled from the per-sample values:

=============================  ===================================================================
quantity                        assembly
=============================  ===================================================================
loss = c Σ_n ℓ_n  (grad)        d/dθ = c Σ_n dℓ_n/dθ ;  d/dx_n = c dℓ_n/dx_n   (c = 1 or 1/N)
output rows (jacobian)          J[n, o, θ] = d out_n[o]/dθ ;  J[n, o, m, r] = δ_nm d out_n[o]/dx_n[r]
=============================  ===================================================================

A vjp with cotangent v is the loss ``Σ_n <v_n, out_n>``.  Kinks keep Note [Kinks at evaluation
time]: the one-sided values are found per sample; a sum's band is the sum of the per-sample bands.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import symengine as se

from ..symbolic.tensor import SymTensor
from ..compare.kinks import stack_generators
from ..compare.accuracy import EntryOracle
from ..lower.exact import ExactEvaluator
from ..lower.numpy import high_precision, lower
from ..reference import Reference
from ..report.report import shorten
from .elementwise import differentiate, entry_form, structural_zeros

__all__ = ["row_symbols", "per_sample_references"]


def row_symbols(name: str, row_shape: tuple[int, ...]) -> SymTensor:
    """One sample of input ``name``: symbols ``name[n, j, ...]`` in a tensor of shape ``(1, *row_shape)``."""
    data = np.empty((1,) + tuple(row_shape), dtype=object)
    for index in np.ndindex(tuple(row_shape)):
        data[(0,) + index] = se.Symbol(f"{name}[{', '.join(['n', *map(str, index)])}]")
    return SymTensor(data)


def _stack(values, n: int, dtype) -> np.ndarray:
    """One row per expression, one column per sample."""
    if not values:
        return np.zeros((0, n), dtype=dtype)
    return np.stack([np.broadcast_to(np.asarray(v, dtype=dtype), (n,)) for v in values])


def per_sample_references(
    out: SymTensor,
    batched: Mapping[str, SymTensor],
    unbatched: Mapping[str, SymTensor],
    values: Mapping[str, np.ndarray],
    wrt: list[str],
    *,
    n: int,
    reduction: str | None,
    dtype_is_float32: bool,
    kink_eps: float,
    backend: str = "auto",
) -> tuple[Reference, list[Reference], list[str]]:
    """References for the batch from one symbolic sample.

    ``out``: one sample's loss (a scalar; ``reduction`` is "sum" or "mean" over the samples) or its
    output rows (shape ``(1, *O)``, ``reduction=None``: the Jacobian is assembled).  ``batched``:
    row symbols per batched input (shape ``(1, *R)``); ``unbatched``: symbols of the rest (parameters
    included).  ``values``: real values by name (batched ones with N rows).
    """
    rows = reduction is None
    quantity = "jacobian" if rows else "grad"
    syms = {**batched, **unbatched}
    derivs = differentiate(out, {w: syms[w] for w in wrt}, quantity, backend=backend)

    exprs = list(out.data.ravel())
    sizes = [out.numel()]
    for w in wrt:
        exprs += list(derivs[w].ravel())
        sizes.append(derivs[w].size)
    args, vals = [], []
    for name, st in syms.items():
        if not all(isinstance(s, se.Symbol) for s in st.data.ravel()) or st.numel() == 0:
            continue  # constants (integer inputs)
        v = np.asarray(values[name], dtype=np.float64)
        if name in batched:
            v = v.reshape(n, -1)
            for k, s in enumerate(st.data.ravel()):
                args.append(s)
                vals.append(v[:, k])
        else:
            args += list(st.data.ravel())
            vals += list(v.ravel())
    hp = high_precision()
    low_dtype = np.float32 if dtype_is_float32 else np.float64
    hi = lower(exprs, args, forward=sizes[0])(vals, dtype=hp, kink_eps=kink_eps)

    def blocks(values_list, dtype):
        arr = _stack(values_list, n, dtype)
        parts, start = [], 0
        for size in sizes:
            parts.append(arr[start:start + size])
            start += size
        return parts

    main, low = blocks(hi.values, hp), blocks(hi.values_lowp, low_dtype)
    mags = blocks(hi.magnitudes, hp) if getattr(hi, "magnitudes", None) is not None else None
    band = None
    if hi.lower is not None:
        lo_b, up_b = blocks(hi.lower, hp), blocks(hi.upper, hp)
        band = ([np.minimum(np.minimum(a, b), m) for a, b, m in zip(lo_b, up_b, main)],
                [np.maximum(np.maximum(a, b), m) for a, b, m in zip(lo_b, up_b, main)])
    # Note [Joint kink check]: each forced evaluation's difference from the closed form, per block
    diffs = [[cb - m for cb, m in zip(blocks(cand, hp), main)] for cand in hi.candidates or []]
    c = 1.0 / n if reduction == "mean" else 1.0

    def total(block, dtype):  # c * sum over samples, in dtype
        return (np.sum(block.astype(dtype), axis=-1) * dtype(c)).astype(np.float64)

    kink_mags = blocks(hi.kink_magnitudes, np.float64) if hi.kink_magnitudes is not None else None

    def total_rounding(i, bounds=None):  # the batch sum as one more Add (Note [Rounding bound], lower/codegen.py)
        terms = np.abs(main[i].astype(np.float64))
        bounds = mags if bounds is None else bounds
        return c * (np.sum(np.abs(bounds[i].astype(np.float64)), axis=-1) + max(1.0, np.log2(n)) * np.sum(terms, axis=-1))

    def as_rows(block, shape_after):
        return np.moveaxis(block.reshape(tuple(shape_after) + (n,)), -1, 0).astype(np.float64)

    out_shape = (n,) + out.shape[1:] if rows else ()
    if rows:
        fwd, fwd_low = as_rows(main[0], out.shape[1:]), as_rows(low[0], out.shape[1:])
    else:
        fwd, fwd_low = total(main[0], hp).reshape(()), total(low[0], low_dtype).reshape(())
    forward = Reference("output", fwd.reshape(out_shape), "symbolic forward (one sample, evaluated for all)",
                        value_lowp=fwd_low.reshape(out_shape))
    if mags is not None:
        forward.rounding = (np.abs(as_rows(mags[0], out.shape[1:])) if rows else total_rounding(0)).reshape(out_shape)

    refs = []
    for i, w in enumerate(wrt, start=1):
        shape = syms[w].shape
        is_batched = w in batched
        if rows:
            inner = shape[1:] if is_batched else shape
            assemble = _jacobian_rows_batched if is_batched else _jacobian_rows
            pick = lambda b, _i=i: assemble(b[_i], out.shape[1:], inner, n).astype(np.float64)  # noqa: E731
        elif is_batched:
            pick = lambda b, _i=i: c * as_rows(b[_i], shape[1:])  # noqa: E731
        else:
            pick = lambda b, _i=i: total(b[_i], hp).reshape(shape)  # noqa: E731
        value = pick(main)
        value_low = pick(low) if not (not rows and not is_batched) else total(low[i], low_dtype).reshape(shape)
        rounding = None
        if mags is not None:
            rounding = total_rounding(i).reshape(shape) if (not rows and not is_batched) else np.abs(pick(mags))
        lo = up = None
        if band is not None:
            lo, up = pick(band[0]), pick(band[1])
        text, latex = _closed_form_text(derivs[w], rows, reduction, is_batched)
        ref = Reference(w, value, text, latex, value_lowp=value_low)
        zeros = structural_zeros(derivs[w])
        if zeros is not None:  # identically 0 for every sample (Note [Tolerances] in symgrad/compare)
            ref.structural_zero = pick({i: np.broadcast_to(zeros.reshape(-1, 1).astype(np.float64), (zeros.size, n))}) != 0
        if rounding is not None and hasattr(ref, "rounding"):
            ref.rounding = rounding
        if lo is not None:
            kink = (lo != up) | (lo != value) | (up != value)
            if kink.any():
                ref.lower, ref.upper, ref.kink = lo, up, kink
                if kink_mags is not None:
                    ref.kink_rounding = (total_rounding(i, kink_mags).reshape(shape) if (not rows and not is_batched)
                                         else np.abs(pick(kink_mags)))
                if hi.kink_joint:
                    ref.kink_generators = stack_generators(
                        [[pick(_at(diffs[j], i, pos)) for j in ids] for pos, ids in hi.kink_groups], value.shape)
        refs.append(ref)
    _attach_oracles(refs, wrt, batched, syms, ExactEvaluator(exprs, args, vals), sizes, n, c, rows)
    return forward, refs, list(hi.kink_conditions or [])


def _attach_oracles(refs, wrt, batched, syms, evaluator, sizes, n: int, c: float, rows: bool) -> None:
    """Each reference's entries as slots of ``evaluator`` (Note [Certified reference] in
    symgrad/lower/exact.py): a batched input's entry is one sample's closed form, a parameter's is
    the sum over the samples.  The assembled Jacobian rows (``rows``) have none."""
    if rows:
        return
    offsets = np.cumsum([0] + list(sizes))
    for i, (w, ref) in enumerate(zip(wrt, refs), start=1):
        o = int(offsets[i])
        if w in batched:
            inner = int(np.prod(syms[w].shape[1:], dtype=int))
            ref.oracle = EntryOracle(evaluator, lambda j, o=o, m=inner: [((o + j % m, j // m), c)])
        else:
            ref.oracle = EntryOracle(evaluator, lambda j, o=o: [((o + j, s), c) for s in range(n)])


def _at(diff_blocks: list, i: int, pos: tuple) -> dict:
    """Block ``i`` of a forced evaluation's difference, kept only at sample ``pos`` (() keeps all):
    what one independent choice of side changes (a dict standing in for the list of blocks)."""
    block = diff_blocks[i]
    if pos:
        kept = np.zeros_like(block)
        kept[:, pos[0]] = block[:, pos[0]]
        block = kept
    return {i: block}


def _jacobian_rows(block, out_row, param_shape, n):
    """``(O*P, N)`` per-sample values -> ``J[n, o, p]``."""
    return np.moveaxis(block.reshape(tuple(out_row) + tuple(param_shape) + (n,)), -1, 0)


def _jacobian_rows_batched(block, out_row, row_shape, n):
    """``(O*R, N)`` per-sample values -> block-diagonal ``J[n, o, m, r] = δ_nm d out_n[o] / dx_n[r]``."""
    per = block.reshape(tuple(out_row) + tuple(row_shape) + (n,))
    full = np.zeros((n,) + tuple(out_row) + (n,) + tuple(row_shape), dtype=block.dtype)
    lead = (slice(None),) * len(out_row)
    for k in range(n):
        full[(k,) + lead + (k,)] = per[..., k]
    return full


def _closed_form_text(deriv: np.ndarray, rows: bool, reduction: str | None, is_batched: bool) -> tuple[str, str]:
    text, latex = entry_form(deriv)
    if not text:
        return "", ""
    text = shorten(text, 400)
    if not rows and not is_batched:
        text = f"{'(1/N) ' if reduction == 'mean' else ''}Σ_n [{text}]"
    elif not rows and reduction == "mean":
        text = f"(1/N) [{text}]"
    return f"{text}  (first entry; n is any sample)", latex
