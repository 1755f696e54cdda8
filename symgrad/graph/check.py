"""The tensor back end's check: trace, evaluate, differentiate, run autograd, compare.

``check_graph(fn, inputs, ...)`` serves modules (every parameter, and float inputs), plain torch
functions and custom ``autograd.Function``s alike.  The forward is traced once into the op graph
(``symgrad.graph.trace``); the closed-form derivative is reverse mode over the graph's core
nodes, evaluated with numpy at full size with a per-entry rounding bound and kink band (Note
[Approx arithmetic]); every linear rule is cross-checked first (Note [Adjoint cross-check]), every
other rule node by node against its exploded exact derivative (Note [Node cross-check]).

A scalar output is checked as a gradient.  A tensor output is checked through ``cotangents``
random cotangents (vector-Jacobian products, the exact counterpart of gradcheck's fast mode):
every entry of every product is compared with its own bound.  ``cotangents="full"`` checks the
whole Jacobian, one product per output entry.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..compare.accuracy import apply_strict, check_accuracy_options, nesting, reference_mode
from ..compare.compare import EPS, compare, compare_all
from ..progress import stage
from ..errors import AutogradFailed, InputError, ShapeMismatch, SymgradError, UnsupportedOp
from ..report.report import Report
from ..ops import float32_constants, float32_scoped
from . import cache as graph_cache
from . import montecarlo
from . import scale as scale_test
from . import diskcache
from . import exact as graph_exact
from .crosscheck import crosscheck
from .node_cross import annotate as _annotate_crosscheck, crosscheck_nodes
from .outputs import buffers as _buffers, flatten_output as _flatten_output, restore as _restore
from .refs import JACOBIAN_VIAS
from .refs import State as _State, approx_reference as _approx_reference
from .forward_records import by_columns_wanted as _by_columns, column_records as _column_records, jvp_records as _jvp_records, n_in as _n_in, tangent_dict as _tangent_dict
from .engine import forward
from .kinkunits import sweep_references
from .statistical import note_resolution as _note_resolution, statistical as _statistical, statistical_forward as _statistical_forward, tighten as _tighten
from .interpret import to_graph
from .scalar import Ctx
from .trace import trace_callable

__all__ = ["check_graph", "EPS"]


def _dtype_name(tensors) -> str:
    import torch

    floats = [t.dtype for t in tensors if t.is_floating_point()]
    worst = max(floats, key=lambda d: torch.finfo(d).eps) if floats else torch.float64
    return str(worst).replace("torch.", "")


def _leaves(model, inputs: Mapping, wrt):
    """(names, tensors, roles, wrt): parameters (a tied weight once: functional_call ties it back),
    then inputs; integer inputs are data."""
    params = dict(model.named_parameters()) if model is not None else {}
    names = list(params) + list(inputs)
    tensors = list(params.values()) + list(inputs.values())
    if wrt is None:
        chosen = [n for n, p in params.items() if p.requires_grad]
        chosen += [n for n, t in inputs.items() if t.is_floating_point() and (model is None or t.requires_grad)]
        if not chosen:
            chosen = [n for n, t in inputs.items() if t.is_floating_point()]
    else:
        chosen = [wrt] if isinstance(wrt, str) else list(wrt)
        for w in chosen:
            if w not in names:
                raise InputError(f"wrt names {w!r}, which is neither a parameter nor an input; known: {', '.join(names)}")
            if not tensors[names.index(w)].is_floating_point():
                raise InputError(f"wrt names {w!r}, an integer tensor: only floating-point tensors have derivatives")
    roles = ["param"] * len(params) + ["input" if t.is_floating_point() else "const" for t in inputs.values()]
    return names, tensors, roles, chosen


_JACOBIAN_VIAS = JACOBIAN_VIAS
_VJP_VIAS = ("backward", "autograd.grad", "functional.vjp", "func.vjp")


@float32_scoped
def check_graph(fn, inputs: Mapping, *, symbolic=None, wrt=None, via=None, v=None, tangents=None, loss=None,
                target=None, cotangents=None, seed: int = 0, backward_calls: int = 1, rtol: float | None = None,
                atol: float | None = None, title: str | None = None, order: int = 1, reference: str | None = None,
                strict: bool = False, exploded_crosscheck: bool = False) -> Report:
    """Check ``fn`` (a module or torch callable) on the tensor back end; see the module docstring.

    ``exploded_crosscheck``: the tensor VJPs are first compared with the exploded exact derivative on
    sampled entries (Note [Exploded cross-check]); a disagreement makes every derivative unverified.

    ``symbolic``: a reference forward in torch ops, traced instead of ``fn`` (autograd still runs
    ``fn``).  ``via``: how autograd runs (``backward``, ``autograd.grad``, ``functional.vjp``,
    ``func.vjp``, ``functional.jacobian``, ``jacrev``, ``jacfwd``); ``v``: the cotangent.
    ``tangents``: ``{name: tensor}`` for a Jacobian-vector product (forward mode).
    ``cotangents``: how many random cotangents (and as many random tangents) check a tensor output
    with no ``v`` (or ``"full"``: the whole Jacobian); None: 3, or 12 cotangents (3 tangents) for a
    small half-precision output (Note [More cotangents in half precision]).
    ``order=2``: torch's double backward against exact Hessian-vector products (``symgrad.graph.order2``;
    ``tangents`` is then the direction ``w``, ``cotangents`` the number of random ones).
    ``reference``, ``strict``: as ``symgrad.check``'s (None: the running check's reference mode).
    The op graph answers "is it right?"; "is it accurate?" needs an entry's conditioning, which only
    the exploded engine computes (Note [Accurate, not only right] in symgrad/compare/accuracy.py).
    """
    check_accuracy_options(reference or reference_mode.get(), strict)
    token = reference_mode.set(reference or reference_mode.get())
    depth = nesting.set(nesting.get() + 1)
    start = graph_exact.counter["certified"]
    saved = _buffers(fn)
    try:
        report = _check_graph(fn, inputs, symbolic=symbolic, wrt=wrt, via=via, v=v, tangents=tangents, loss=loss,
                              target=target, cotangents=cotangents, seed=seed, backward_calls=backward_calls,
                              rtol=rtol, atol=atol, title=title, order=order, exploded_crosscheck=exploded_crosscheck)
    finally:
        reference_mode.reset(token)
        nesting.reset(depth)
        _restore(fn, saved)
    done = graph_exact.counter["certified"] - start
    for r in report.records:
        r.reference = r.reference.replace("closed form in float64 floats", "op graph in float64" + (
            f" ({done} cancelling pointwise entries re-evaluated over mpmath, at their float64 arguments)" if done else ""))
    return apply_strict(report, strict, warn=nesting.get() == 0)


# Note [The forward torch differentiates]
# torch's output is taken with autograd on and the leaves to differentiate requiring grad, as in the
# runs whose derivatives are checked: modules choose their inference fast paths by grad mode
# (TransformerEncoder in eval mode packs padded sequences into nested tensors under no_grad and
# returns 0 at padded positions, where the differentiated function computes values), and the forward
# row must compare the function torch differentiates.


def _check_graph(fn, inputs: Mapping, *, symbolic, wrt, via, v, tangents, loss, target, cotangents, seed,
                 backward_calls, rtol, atol, title, order, exploded_crosscheck=False) -> Report:
    import torch

    from .order2 import check_order

    check_order(order, via)

    model = fn if isinstance(fn, torch.nn.Module) else None
    inputs = dict(inputs)
    names, tensors, roles, wrt_names = _leaves(model, inputs, wrt)
    n_params = len(names) - len(inputs)
    dtype = _dtype_name(tensors)
    ctx = Ctx(EPS.get(dtype, 2.0**-52), dtype)
    structure: list = []  # a tuple / dict output: its kind and its tensors' shapes (Note [Structured outputs])

    def runner(forward_fn):
        def run(*flat):
            if model is not None and forward_fn is model:
                params = dict(zip(names[:n_params], flat[:n_params]))
                out = torch.func.functional_call(model, params, tuple(flat[n_params:]), strict=False)
            else:
                out = forward_fn(*flat[n_params:]) if model is not None else forward_fn(*flat)
            if loss is not None:
                return loss(out, target)
            flat, shapes = _flatten_output(out)
            if shapes is not None:
                structure[:] = [type(out).__name__, shapes]
            return flat

        return run

    torch_fn = runner(fn)
    key = graph_cache.key(fn, symbolic, loss, target, names, tensors)
    disk_key = diskcache.fingerprint(fn, symbolic, loss, target, names, tensors) if not graph_cache.known(key) else None
    leaves = {n: t.detach().clone().requires_grad_(n in wrt_names) for n, t in zip(names, tensors)}
    try:
        with torch.enable_grad():  # Note [The forward torch differentiates]
            out_t = torch_fn(*leaves.values())
        out_t = out_t.detach() if isinstance(out_t, torch.Tensor) else out_t
    except SymgradError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise InputError(f"the function raised on these inputs ({type(err).__name__}: {str(err)[:300]}); "
                         "symgrad checks derivatives where the forward runs: pass inputs it accepts") from err
    if not isinstance(out_t, torch.Tensor):
        raise InputError(f"the loss returned a {type(out_t).__name__}, not a tensor: make loss(output, target) "
                         "return a scalar tensor")
    tried: set = set()
    for attempt in ("cached", "traced", "plain"):  # Note [Functionalization and numpy]
        if attempt in tried:
            continue
        graph = graph_cache.lookup(key, names, tensors, disk_key) if attempt == "cached" else None
        if graph is None:
            stage("op graph: tracing the forward into core ATen ops")
            functional = attempt != "plain"
            gm = trace_callable(runner(symbolic if symbolic is not None else fn), tuple(t.detach() for t in tensors),
                                functional=functional)
            graph = to_graph(gm, list(zip(names, roles, (t.detach() for t in tensors))))
            # torch's float32 constants noted while tracing (celu's 1/alpha) travel with a stored graph
            graph.float32_constants = set(float32_constants())
            attempt = "traced" if functional else "plain"
            tried.add(attempt)
            diskcache.store(disk_key, graph)
        out_node = _single_output(graph)
        stage("op graph: cross-checking the tensor rules")
        failed = crosscheck(graph)
        stage("op graph: evaluating the forward")
        values = forward(graph, ctx)
        stage("op graph: cross-checking the non-linear rules, node by node")
        crossed = crosscheck_nodes(graph, values, failed)  # Note [Node cross-check]
        failed = failed + crossed.failed_nodes
        out_val = values[out_node]
        if tuple(out_t.shape) != out_val.shape:
            if attempt == "cached":
                continue  # a cached graph of something else: trace this function
            raise ShapeMismatch(f"torch's output has shape {tuple(out_t.shape)}, the op graph's {out_val.shape}")
        forward_ref = _approx_reference("output", out_val, "op graph forward", failed)
        records = [compare(forward_ref, out_t.detach().double().cpu().numpy(), dtype, quantity="forward",
                           rtol=rtol, atol=atol)]
        if records[0].passed or attempt == "plain":
            break  # a cached graph that disagrees with torch's forward is traced again (Note [Graph cache] in cache.py)
    graph_cache.remember(key, fn, graph)
    exploded = None
    if exploded_crosscheck:  # Note [Exploded cross-check]
        from .explode_cross import crosscheck_exploded, mark_report

        stage("op graph: cross-checking the tensor derivative against the exploded one")
        exploded = crosscheck_exploded(graph, wrt=[n for n in wrt_names if n in graph.inputs])
    state = _State(graph, values, out_node, ctx, failed, torch_fn, leaves, wrt_names, dtype, rtol, atol)
    meta = {"dtype": dtype, "engine": "graph (tensor back end)",
            "graph": ", ".join(f"{k} {c}" for k, c in graph.counts().items())}
    if structure:
        meta["output"] = (f"a {structure[0]} of {len(structure[1])} floating-point tensors (shapes "
                          f"{', '.join('x'.join(map(str, s)) or 'scalar' for s in structure[1])}), checked as one "
                          "vector of their entries in that order")
    n_tangents = 3 if cotangents is None else cotangents  # Note [More cotangents in half precision]
    if cotangents is None:
        cotangents = 3 if order == 2 else default_cotangents(out_t)
    if order == 2:  # Note [Hessian-vector rules] in hvp.py
        from .order2 import hvp_records

        found, info = hvp_records(state, out_t, v=v, tangents=tangents, count=cotangents, seed=seed)
        meta.update(info)
        report = _annotate_crosscheck(Report(records + found, title=title or "symgrad check", meta=meta), crossed)
        return report if exploded is None else mark_report(report, exploded)
    if tangents is not None or via in ("functional.jvp", "func.jvp", "forward_ad"):
        if tangents is None:
            raise InputError(f"via={via!r} computes a Jacobian-vector product: pass tangents= (one per input in wrt)")
        records += _jvp_records(state, [_tangent_dict(tangents, leaves, wrt_names)], via or "func.jvp")
        meta["quantity"], meta["via"] = "jvp", via or "func.jvp"
    elif _by_columns(state, out_t, via, cotangents):  # Note [Jacobian by columns]
        how = via or "functional.jacobian"
        records += _column_records(state, how, tuple(out_t.shape))
        meta["quantity"], meta["via"] = f"jacobian (one jvp per input entry, {_n_in(state)})", how
    else:
        seeds, quantity, how = _plan(out_t, via, v, cotangents, seed)
        records += _vjp_records(state, seeds, how, v, backward_calls, tuple(out_t.shape))
        records[0] = _statistical_forward(state, forward_ref, records[0], out_t)
        meta["quantity"], meta["via"] = quantity, how
        if how == "random-vjp":  # forward mode too: the exact counterpart of gradcheck's fast mode
            gen = torch.Generator().manual_seed(seed + 1)
            dirs = [{n: torch.randn(leaves[n].shape, generator=gen, dtype=torch.float64).to(leaves[n].dtype)
                     for n in wrt_names} for _ in range(n_tangents)]
            try:
                records += _jvp_records(state, dirs, "func.jvp")
                meta["quantity"] += f" and jvp ({len(dirs)} random tangents)"
            except AutogradFailed as err:  # e.g. a custom Function with no jvp: forward mode is not asked for
                meta["jvp"] = f"not checked (torch.func.jvp could not run: {str(err)[:160]})"
            except NotImplementedError as err:  # a node kind without a forward-mode rule (linalg)
                meta["jvp"] = f"not checked ({err})"
    report = _annotate_crosscheck(Report(records, title=title or "symgrad check", meta=meta), crossed)
    return report if exploded is None else mark_report(report, exploded)


def _single_output(graph):
    outs = [o for o in graph.outputs if o is not None]
    if len(outs) == 1 and not hasattr(outs[0], "kind"):
        raise UnsupportedOp("the function's output does not depend on any of its inputs or parameters (it is a "
                            "constant, or built from integer inputs only), so it has no derivative to check: check a "
                            "function whose output is computed from the floating-point inputs")
    if len(outs) != 1:
        raise UnsupportedOp("the function must return one floating-point tensor that depends on its inputs "
                            f"(it returned {len(graph.outputs)} values); return the loss, or pass loss=")
    return outs[0]


def _vjp_records(st: _State, seeds, how, v, backward_calls, out_shape) -> list:
    import torch

    from ..autograd.run import run_autograd

    stage(f"op graph: {len(seeds)} reverse-mode sweep(s) and torch autograd")
    with torch.enable_grad():
        actual = _autograd(st.torch_fn, st.leaves, st.wrt, how, seeds, v, backward_calls, run_autograd)
    nodes = [st.graph.inputs.get(n) for n in st.wrt]
    live = [n for n in nodes if n is not None]
    scale = backward_calls if how == "backward" else 1
    refs, per_seed, kinked = sweep_references(st, seeds, live, nodes, how, out_shape, scale, flip=False)
    stats, runs = _statistical(st, seeds, live, per_seed, refs, nodes, out_shape, how, scale)
    quantity = ("jacobian" if how in _JACOBIAN_VIAS else
                "grad" if len(seeds) == 1 and v is None else "vjp")
    records = compare_all(refs, actual, st.dtype, quantity=quantity, rtol=st.rtol, atol=st.atol)
    if kinked and not all(r.passed for r in records):  # Note [Other side everywhere]
        flipped, _, _ = sweep_references(st, seeds, live, nodes, how, out_shape, scale, flip=True)
        for ref, stat in zip(flipped, stats):
            _tighten(ref, stat)
        others = compare_all(flipped, actual, st.dtype, quantity=quantity, rtol=st.rtol, atol=st.atol)
        for i, (rec, other) in enumerate(zip(records, others)):
            if not rec.passed and other.passed:
                other.note = (other.note + " " if other.note else "") + (
                    "Autograd took the other one-sided derivative at every kinked unit (e.g. relu'(0) = 1); "
                    "checked against that choice (Note [Other side everywhere]).")
                records[i], refs[i] = other, flipped[i]
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
        _note_resolution(rec, ref, st.dtype)
    return records


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


def _plan(out_t, via, v, cotangents, seed: int):
    """(seeds as float64 arrays, quantity label, how autograd runs)."""
    import torch

    if via is not None and via not in _VJP_VIAS + _JACOBIAN_VIAS:
        raise UnsupportedOp(f"via={via!r}: the tensor back end checks reverse mode (gradients, vector-Jacobian "
                            "products, Jacobians); use engine='elementwise' for forward mode and Hessians")
    if via in _JACOBIAN_VIAS or cotangents == "full":
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


def _autograd(torch_fn, leaves, wrt, how, seeds, v, backward_calls, run_autograd) -> dict:
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
    cot = None if how in _JACOBIAN_VIAS else (torch.from_numpy(seeds[0]).to(next(iter(leaves.values())).dtype)
                                              if v is not None or how in ("functional.vjp", "func.vjp") else None)
    if v is not None:
        cot = torch.as_tensor(v).to(cot.dtype)
    return run_autograd(torch_fn, leaves, wrt, how, cotangent=cot, backward_calls=backward_calls)


