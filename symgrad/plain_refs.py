"""The evaluate stage of the plain-function pipeline (``elementwise.check_plain``): the forward and
every closed-form derivative lowered into one numpy function, evaluated at the inputs, and made into
``Reference``s (value, value in the checked dtype, rounding bound, kink bands, certified oracle)."""

from __future__ import annotations

import numpy as np
import sympy as sp

from .compare.accuracy import EntryOracle, ForwardOracle
from .compare.kinks import stack_generators
from .differentiate.elementwise import entry_form, structural_zeros
from .differentiate.matrix_form import matrix_closed_form
from .lower.exact import ExactEvaluator
from .lower.numpy import high_precision, lower
from .reference import Reference

__all__ = ["closed_form_references"]


def _parts(vals, sizes: list) -> list:
    """One flat list of evaluated entries cut into the forward's and each derivative's."""
    flat = np.array([float(x) for x in vals], dtype=np.float64) if vals else np.zeros(0)
    parts, start = [], 0
    for size in sizes:
        parts.append(flat[start:start + size])
        start += size
    return parts


class _Evaluated:
    """The lowered forward and derivatives at the inputs, each quantity cut into its parts."""

    def __init__(self, exprs: list, args: list, values: list, sizes: list, eps: float):
        self.lowered = lower(exprs, args, forward=sizes[0])
        hi = self.lowered(values, dtype=high_precision(), kink_eps=eps)
        self.hi, self.sizes = hi, sizes
        self.main, self.low, self.rounding = (_parts(q, sizes) for q in (hi.values, hi.values_lowp, hi.magnitudes))
        self.band_lo = _parts(hi.lower, sizes) if hi.lower is not None else None
        self.band_hi = _parts(hi.upper, sizes) if hi.upper is not None else None
        self.cands = [_parts(c, sizes) for c in hi.candidates] if hi.candidates is not None else []
        self.kink_rounding = _parts(hi.kink_magnitudes, sizes) if hi.kink_magnitudes is not None else None

    def bands(self, ref: Reference, i: int, scale) -> None:
        """Kink bands of part ``i`` onto ``ref`` where the closed form has kinks there."""
        if self.band_lo is None:
            return
        shape = ref.value.shape
        lo, up = scale * self.band_lo[i].reshape(shape), scale * self.band_hi[i].reshape(shape)
        kink = (lo != up) | (lo != ref.value) | (up != ref.value)
        if not kink.any():
            return
        ref.lower, ref.upper, ref.kink = lo, up, kink
        ref.kink_rounding = scale * self.kink_rounding[i].reshape(shape)
        if i and self.hi.kink_joint:
            ref.kink_generators = stack_generators(
                [[scale * (self.cands[j][i] - self.main[i]) for j in ids] for _, ids in self.hi.kink_groups], shape)


def closed_form_references(out, derivs: dict, named: dict, sym_in: dict, extra_args: list, extra_vals: list,
                           dtype, *, scale, symbolic, twin_graph, quantity: str, v, via: str, tangents=None,
                           zeros_graph=None):
    """(output reference, one reference per derivative in ``derivs``' order, kink conditions).
    ``symbolic``: the SymPy forward when a matrix closed form may be shown (gradients of plain SymPy).
    ``zeros_graph``: where a symbolic twin was given beside torch code, a function tracing that
    code's op graph, called only if the twin cancels an entry to 0: it bounds those entries alone
    (Note [Allowances of other entries] in compare/compare.py)."""
    import torch

    keys = list(derivs)
    exprs, sizes = list(out.data.ravel()), [out.numel()]
    for k in keys:
        exprs += list(derivs[k].ravel())
        sizes.append(derivs[k].size)
    floats = [n for n in named if named[n].is_floating_point()]
    args = [s for n in floats for s in sym_in[n].data.ravel()] + extra_args
    values = [x for n in floats for x in named[n].detach().double().cpu().numpy().ravel()] + extra_vals
    eps = float(torch.finfo(dtype).eps)
    ev = _Evaluated(exprs, args, values, sizes, eps)
    out_ref = Reference("output", ev.main[0].reshape(out.shape), closed_form="symbolic forward",
                        value_lowp=ev.low[0].reshape(out.shape), rounding=ev.rounding[0].reshape(out.shape),
                        value_eps=ev.lowered.value_eps)
    out_ref.exact_forward = ForwardOracle(lambda: _exact_entries(out.data, args, values))
    if any(c.endswith("at a jump") for c in ev.hi.kink_conditions or ()):
        ev.bands(out_ref, 0, 1)  # a step function's forward at its jump (Note [Jumps of the step functions])
    matrix_values = {n: t.detach().double().cpu().numpy().reshape(_as_2d(tuple(t.shape))) for n, t in named.items()}
    refs = [_derivative_reference(derivs[k], k, i, ev, scale, symbolic, matrix_values)
            for i, k in enumerate(keys, start=1)]
    if any(np.isnan(r.value).any() for r in refs) and np.isfinite(ev.main[0]).all():
        from .graph.cones import basis, exploded_bands

        if quantity == "jvp" and tangents:  # Note [Moves along the tangent]
            moves = [{k: tangents[n].detach().double().cpu().numpy().ravel() for k, n in enumerate(floats)
                      if n in tangents}]
        elif via == "jacfwd":
            moves = basis({k: (named[n].numel(),) for k, n in enumerate(floats) if n in keys})
        else:
            moves = []
        exploded_bands(refs, lower(exprs, args, forward=sizes[0]), sizes, values, len(values) - len(extra_vals),
                       [named[n].numel() for n in floats], scale, eps, moves)
    from .graph.twin import exact_zeros

    zeros_only = twin_graph is None and zeros_graph is not None and any(
        r.structural_zero is not None or (quantity == "jvp" and exact_zeros(r).any()) for r in refs)
    if zeros_only and quantity in ("grad", "vjp", "jacobian", "jvp"):
        twin_graph = zeros_graph()
    if twin_graph is not None and quantity in ("grad", "vjp", "jacobian"):
        _widen(twin_graph, refs, out_ref, quantity, out.shape, v, via, scale, str(dtype).replace("torch.", ""),
               zeros_only)
    elif twin_graph is not None and quantity == "jvp" and tangents:
        from .graph.twin import bound_tangent_zeros

        bound_tangent_zeros(twin_graph, refs[0], tangents, str(dtype).replace("torch.", ""), widen=not zeros_only)
    evaluator = ExactEvaluator(exprs, args, values)  # Note [Certified reference] (symgrad/lower/exact.py)
    offsets = np.cumsum([0] + sizes)
    for i, ref in enumerate(refs, start=1):
        ref.oracle = EntryOracle(evaluator, lambda j, o=int(offsets[i]): [((o + j, None), float(scale))])
    return out_ref, refs, ev.hi.kink_conditions


def _derivative_reference(deriv: np.ndarray, key, i: int, ev: _Evaluated, scale, symbolic,
                          matrix_values: dict) -> Reference:
    shape = deriv.shape
    name = key if isinstance(key, str) else f"({key[0]}, {key[1]})"
    text, latex = _closed_form_text(deriv)
    if scale != 1:
        text = f"{scale} * ({text})  [grad accumulated over {scale} backward calls]"
        latex = f"{scale} \\left({latex}\\right)" if latex else ""
    ref = Reference(name, scale * ev.main[i].reshape(shape), text, latex, value_lowp=scale * ev.low[i].reshape(shape),
                    rounding=scale * ev.rounding[i].reshape(shape), structural_zero=structural_zeros(deriv),
                    value_eps=ev.lowered.value_eps)
    ref.closed_form_expr, ref.entry_form = _printable(deriv, latex, scale)
    if symbolic is not None and isinstance(key, str):
        shown = matrix_closed_form(symbolic, key, matrix_values, ref.value / scale)
        if shown is not None:
            ref.note = shown[2]
            if shown[0]:
                ref.closed_form, ref.closed_form_latex = shown[0], shown[1]
                ref.closed_form_expr = None  # the matrix form is shown as text, not the first entry
    ev.bands(ref, i, scale)
    return ref


def _exact_entries(entries: np.ndarray, args: list, values: list) -> np.ndarray:
    """The forward's entries with every input symbol replaced by its exact value."""
    from .graph.explode import exact_number

    at = {a: exact_number(v) for a, v in zip(args, values)}
    return np.array([e.xreplace(at) if hasattr(e, "xreplace") else e.subs(at) for e in np.ravel(entries)], object)


def _widen(graph, refs, out_ref, quantity: str, shape: tuple, v, via: str, scale, dtype: str,
           zeros_only: bool = False) -> None:
    """The tensor back end's bounds for the same products (Note [Bounds of two evaluation orders]);
    ``zeros_only``: for the entries the closed form cancels to 0 alone."""
    from .graph.refs import JACOBIAN_VIAS
    from .graph.twin import widen_to_tensor_bounds

    if quantity == "jacobian":
        m = int(np.prod(shape, dtype=np.int64))
        seeds, how = list(np.eye(m).reshape((m,) + shape)), via if via in JACOBIAN_VIAS else "functional.jacobian"
    else:
        seeds = [np.ones(shape) if quantity == "grad" else v.detach().double().cpu().numpy()]
        how = "backward"
    node = next((o for o in graph.outputs if o is not None), None)
    if node is not None and tuple(node.shape) == tuple(shape):
        widen_to_tensor_bounds(graph, node, refs, out_ref, seeds, how, [r.name for r in refs], dtype, scale,
                               zeros_only)


MAX_FORM_CHARS = 2000  # a closed form longer than this is shown cut, with its length (an exploded sum)


def _shortened(text: str) -> str:
    if len(text) <= MAX_FORM_CHARS:
        return text
    return f"{text[:MAX_FORM_CHARS]} ... [{len(text):,} characters in all]"


def _closed_form_text(arr: np.ndarray) -> tuple[str, str]:
    """The first entry's closed form, labelled as such when the derivative has more entries."""
    text, latex = entry_form(arr)
    text = _shortened(text)
    if arr.size <= 1:
        return text, latex
    return f"{text}  (entry [{', '.join('0' for _ in arr.shape)}])", latex


def _printable(deriv: np.ndarray, latex: str, scale: int):
    """For the reports: the first entry as a SymPy expression (only where it was short enough for
    LaTeX), and a callable giving any entry's closed form text (the worst entry of a failure)."""
    expr = None
    if latex and deriv.size:
        expr = sp.sympify(deriv.ravel()[0])
        if scale != 1:
            expr = sp.Mul(scale, expr, evaluate=False)

    def entry_text(index: tuple) -> str:
        text = _shortened(entry_form(np.array([deriv[tuple(index)]], dtype=object))[0])
        return f"{scale} * ({text})" if scale != 1 else text

    return expr, entry_text


def _as_2d(shape: tuple) -> tuple:
    return shape if len(shape) == 2 else (shape + (1,) if len(shape) == 1 else (1, 1) if not shape else shape)
