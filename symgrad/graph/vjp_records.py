"""Reverse mode on the tensor back end: the cotangents a check uses (``plan``), torch autograd's
products for them, and the records comparing them with the op graph's exact VJPs, sharpened by the
statistical allowance and the scale test."""

from __future__ import annotations

import numpy as np

from ..compare.compare import compare_all
from ..errors import InputError, ShapeMismatch, UnsupportedOp
from ..progress import stage
from . import montecarlo
from . import scale as scale_test
from .kinkunits import sweep_references
from .refs import JACOBIAN_VIAS
from .refs import State
from .statistical import note_resolution, statistical, tighten
from .tie_totals import tie_total_failures

__all__ = ["vjp_records", "default_cotangents", "plan", "HALF_COTANGENTS", "HALF_COTANGENT_ENTRIES", "VJP_VIAS"]

VJP_VIAS = ("backward", "autograd.grad", "functional.vjp", "func.vjp")


def vjp_records(st: State, seeds, how, v, backward_calls, out_shape, out_dtype=None) -> list:
    import torch

    from ..autograd.run import run_autograd

    stage(f"op graph: {len(seeds)} reverse-mode sweep(s) and torch autograd")
    with torch.enable_grad():
        actual = _autograd(st.torch_fn, st.leaves, st.wrt, how, seeds, v, backward_calls, run_autograd, out_dtype)
    nodes = [st.graph.inputs.get(n) for n in st.wrt]
    live = [n for n in nodes if n is not None]
    scale = backward_calls if how == "backward" else 1
    refs, per_seed, kinked, logs = sweep_references(st, seeds, live, nodes, how, out_shape, scale, flip=False)
    stats, runs = statistical(st, seeds, live, per_seed, refs, nodes, out_shape, how, scale)
    quantity = ("jacobian" if how in JACOBIAN_VIAS else
                "grad" if len(seeds) == 1 and v is None else "vjp")
    records = compare_all(refs, actual, st.dtype, quantity=quantity, rtol=st.rtol, atol=st.atol)
    retries = [(dict(flip=True), "Autograd took the other one-sided derivative at every kinked unit (e.g. "
                "relu'(0) = 1); checked against that choice (Note [Other side everywhere]).")] if kinked else []
    if kinked == 2:  # Note [A tie's first entry]
        retries += [(dict(flip=False, pick="first"), "Autograd took the first entry of every tie (as torch's max(dim) "
                     "and max pooling do); checked against that choice (Note [A tie's first entry])."),
                    (dict(flip=False, pick="last"), "Autograd took the last entry of every tie; checked against "
                     "that choice (Note [A tie's first entry]).")]
    for sides, text in retries:
        if all(r.passed for r in records):
            break
        again, _, _, _ = sweep_references(st, seeds, live, nodes, how, out_shape, scale, **sides)
        for ref, stat in zip(again, stats):
            tighten(ref, stat)
        others = compare_all(again, actual, st.dtype, quantity=quantity, rtol=st.rtol, atol=st.atol)
        for i, (rec, other) in enumerate(zip(records, others) if all(o.passed for o in others) else ()):
            # a choice of sides that passes only by leaving entries unresolved explains nothing (Note
            # [Other side everywhere]): acos' at a cosine one ulp from 1 allowed 1e8 times a gradient of 1
            if not rec.passed and other.unresolved <= rec.unresolved:
                other.note = (other.note + " " if other.note else "") + text
                records[i], refs[i] = other, again[i]
    _tie_totals(st, live, nodes, seeds, logs, records, refs, scale)
    for rec, (ref_runs, ref_constants) in zip(records, runs):
        scale_test.apply_scale_test(rec, ref_runs, st.dtype, ref_constants)  # Note [Systematic scale]
    if len(runs) > 1:  # Note [One scale over every gradient]
        scale_test.apply_joint_scale_test(records, [r for r, _ in runs], st.dtype, [c for _, c in runs])
    for rec, ref, stat, (ref_runs, _) in zip(records, refs, stats, runs):
        if stat is not None and ref.statistical:
            rec.note = (rec.note + " " if rec.note else "") + (
                f"Rounding allowance: {ref.statistical:,} entries use the statistical bound ({montecarlo.LAMBDA:g} standard "
                f"deviations of {len(ref_runs) if ref_runs else montecarlo.SAMPLES} random-rounding reruns), tighter than the worst case "
                "(Note [Statistical allowance]).")
        note_resolution(rec, ref, st.dtype)
    return records


def _tie_totals(st, live, nodes, seeds, logs, records, refs, scale) -> None:
    """Fail the records whose values break a banded tie's total (Note [A tie's total] in tie_totals.py)."""
    for failed, got, lo, hi, slack in tie_total_failures(st, live, nodes, seeds, logs, records, refs,
                                                         scale):
        names = ", ".join(rec.name for rec in failed)
        for rec in failed:
            rec.mismatched = max(1, rec.mismatched)
            rec.note = (rec.note + " " if rec.note else "") + (
                f"The ties of max/min too large for the joint kink check hand on the wrong total: along the "
                f"gradients ({names}) that a cotangent of 1 on every tied entry gives, autograd's differ from the "
                f"even split's by {got:.6g}, where any split of the cotangent among the tied entries gives between "
                f"{lo:.6g} and {hi:.6g} (± {slack:.3g} of rounding; Note [A tie's total]).")


# Note [More cotangents in half precision]
# A backward off by 1 % in bfloat16 is 2.6 units of its roundoff; whether it shows depends on how
# many entries the scale test (Note [Systematic scale] in scale.py) fits.  A small tensor output's
# three random cotangents give 3 x its size entries per input; each further cotangent is another
# independent draw of roundings against the same systematic error.  So a float16 or bfloat16
# output of at most HALF_COTANGENT_ENTRIES entries gets HALF_COTANGENTS random cotangents.  Measured
# over the op table in bfloat16 (`python benchmarks/half_optable.py --dtypes bfloat16 --first-seed 0
# --seeds 1`): 1 % bugs missed 126 of 329 with 3, 86 with 12.  The random tangents stay 3: a
# backward's bug does not move torch's forward mode, and 12 tangents made rsqrt's float16 JVP a
# false alarm (one entry of 180 at 1.005 of its statistical allowance, seed 1).
HALF_COTANGENTS = 12
HALF_COTANGENT_ENTRIES = 4096


def default_cotangents(out_t) -> int:
    import torch

    small_half = out_t.dtype in (torch.float16, torch.bfloat16) and out_t.numel() <= HALF_COTANGENT_ENTRIES
    return HALF_COTANGENTS if small_half else 3


def plan(out_t, via, v, cotangents, seed: int):
    """(seeds as float64 arrays, quantity label, how autograd runs)."""
    import torch

    if via is not None and via not in VJP_VIAS + JACOBIAN_VIAS:
        raise UnsupportedOp(f"via={via!r}: the tensor back end checks reverse mode (gradients, vector-Jacobian "
                            "products, Jacobians); use engine='elementwise' for forward mode and Hessians")
    if via in JACOBIAN_VIAS or cotangents == "full":
        m = out_t.numel()
        eye = np.eye(m).reshape((m,) + tuple(out_t.shape))
        return list(eye), f"jacobian (one vjp per output entry, {m})", via or "functional.jacobian"
    if v is not None:
        vt = torch.as_tensor(v, dtype=out_t.dtype)
        if tuple(vt.shape) != tuple(out_t.shape):
            raise ShapeMismatch(f"v has shape {tuple(vt.shape)}, the output has {tuple(out_t.shape)}")
        return [vt.double().cpu().numpy()], "vjp", via or "backward"
    if out_t.numel() == 1:
        if out_t.dim() != 0 and via in ("backward", "autograd.grad", None):
            return [np.ones(out_t.shape)], "grad", via or "autograd.grad"
        return [np.ones(out_t.shape)], "grad", via or "backward"
    if not isinstance(cotangents, int) or cotangents < 1:
        raise InputError(f"cotangents must be a positive integer or 'full', not {cotangents!r}")
    gen = torch.Generator().manual_seed(seed)
    vs = [torch.randn(out_t.shape, generator=gen, dtype=torch.float64).to(out_t.dtype) for _ in range(cotangents)]
    return [t.double().numpy() for t in vs], f"vjp ({cotangents} random cotangents)", "random-vjp"


def _autograd(torch_fn, leaves, wrt, how, seeds, v, backward_calls, run_autograd, out_dtype=None) -> dict:
    import torch

    from ..autograd.run import autograd_failure, private, unmodified

    if how == "random-vjp":
        grads = []
        diff = [leaves[n] for n in wrt]
        with unmodified(leaves, wrt):  # Note [Code under test owns no reference value]
            out = torch_fn(*leaves.values())
            dtype = out.dtype
            for k, s in enumerate(seeds):
                try:
                    got = torch.autograd.grad(out, diff, private(torch.from_numpy(s).to(dtype)),
                                              retain_graph=k + 1 < len(seeds), allow_unused=True)
                except RuntimeError as err:  # an output detached from every input: say so, not a traceback
                    raise autograd_failure(err, "autograd.grad") from err
                grads.append(got)
        return {n: None if any(g[i] is None for g in grads) else torch.stack([g[i] for g in grads])
                for i, n in enumerate(wrt)}
    # the cotangent in the output's dtype, as ``plan`` read it for the closed form: in the first
    # input's, a float32 v of a half input's float32 softmax reached torch rounded to the half dtype
    dtype = out_dtype if out_dtype is not None else next(iter(leaves.values())).dtype
    cot = None if how in JACOBIAN_VIAS else (torch.from_numpy(seeds[0]).to(dtype)
                                              if v is not None or how in ("functional.vjp", "func.vjp") else None)
    if v is not None:
        cot = torch.as_tensor(v).to(cot.dtype)
    return run_autograd(torch_fn, leaves, wrt, how, cotangent=cot, backward_calls=backward_calls)


