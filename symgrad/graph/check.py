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

import math
from contextlib import nullcontext
from typing import Mapping

from ..compare.accuracy import ForwardOracle, apply_strict, check_accuracy_options, nesting, reference_mode
from ..compare.compare import EPS, compare
from ..compare.worst import joined
from ..progress import stage
from ..errors import InputError, ShapeMismatch, SymgradError, UnsupportedOp
from ..autograd.forward_mode import first_forward_mode
from ..report.report import Report
from ..ops import float32_constants, float32_scoped
from ..validate import refuse_nan, refuse_non_float_output
from . import cache as graph_cache
from . import diskcache
from . import exact as graph_exact
from .crosscheck import crosscheck
from .node_cross import annotate as _annotate_crosscheck, crosscheck_nodes
from .outputs import buffers as _buffers, flatten_output as _flatten_output, restore as _restore
from .refs import JACOBIAN_VIAS, State as _State, approx_reference as _approx_reference
from .forward_records import TangentDropped, by_columns_wanted as _by_columns, column_records as _column_records, jvp_records as _jvp_records, n_in as _n_in, tangent_dict as _tangent_dict
from .engine import forward
from . import montecarlo
from .budget import refuse_graph, refuse_jacobian
from .statistical import statistical_forward as _statistical_forward
from .interpret import to_graph
from .interpret_data import refuse_float_items
from .scalar import Ctx
from .trace import trace_callable
from .trace_grad import BACKWARD_UNSEEN, marking
from .vjp_records import default_cotangents, plan, vjp_records

__all__ = ["check_graph", "EPS"]


def _dtype_name(tensors) -> str:
    import torch

    floats = [t.dtype for t in tensors if t.is_floating_point()]
    worst = max(floats, key=lambda d: torch.finfo(d).eps) if floats else torch.float64
    return str(worst).replace("torch.", "")


# Note [A forward that computes in a narrower dtype]
# Code written for mixed precision casts inside its forward: Llama's RMSNorm computes in float32
# (``hidden_states.to(torch.float32)``), eager attention takes ``softmax(..., dtype=torch.float32)``,
# an autocast region computes in bfloat16.  Checked with float64 inputs, those parts still round as
# float32 does, and bounds charged at float64's eps failed every correct such model.  The op graph
# has one rounding unit per check, so a trace that holds a floating-point value narrower than the
# inputs (any node of the traced ATen graph) makes the check one of that dtype: every allowance
# is the narrower dtype's (coarser than needed on the parts that stay wide: sound, never a false
# alarm from the casts), and the report's meta says so.
def _narrowest(gm) -> str | None:
    """The narrowest floating-point dtype a cast of the traced graph narrows a floating value to
    (``_to_copy``, ``convert_element_type``), or None.  Constants made in the default dtype
    (``torch.ones(3)`` beside float64 values) are not casts: they round nothing torch computes."""
    import torch

    found = None
    for n in gm.graph.nodes:
        copy = str(n.target).startswith("aten.copy")  # a value stored into a narrower tensor (copy_, setitem)
        if not (copy or any(k in str(n.target) for k in ("_to_copy", "convert_element_type", "to.dtype"))):
            continue
        i = 1 if copy else 0
        src = n.args[i].meta.get("val") if len(n.args) > i and hasattr(n.args[i], "meta") else None
        out = n.meta.get("val")
        s_dt, o_dt = getattr(src, "dtype", None), getattr(out, "dtype", None)
        if not (isinstance(s_dt, torch.dtype) and isinstance(o_dt, torch.dtype)):
            continue
        feeds_floats = any(getattr(getattr(u.meta.get("val"), "dtype", None), "is_floating_point", False)
                           for u in n.users)  # x.float() > 0 only makes a mask: no rounding reaches a value
        if s_dt.is_floating_point and o_dt.is_floating_point and feeds_floats \
                and torch.finfo(o_dt).eps > torch.finfo(s_dt).eps:
            if found is None or torch.finfo(o_dt).eps > torch.finfo(found).eps:
                found = o_dt
    return None if found is None else str(found).replace("torch.", "")


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


@float32_scoped
def check_graph(fn, inputs: Mapping, *, symbolic=None, wrt=None, via=None, v=None, tangents=None, loss=None,
                target=None, cotangents=None, seed: int = 0, backward_calls: int = 1, rtol: float | None = None,
                atol: float | None = None, title: str | None = None, order: int = 1, reference: str | None = None,
                strict: bool = False, exploded_crosscheck: bool = False, memory_budget: int | None = None) -> Report:
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
    ``memory_budget``: bytes the check may use (None: half of the available memory, or
    ``SYMGRAD_MEMORY_BUDGET``); a graph whose estimate is beyond it is refused right after tracing
    (Note [Memory guard of the op graph] in budget.py).
    The op graph answers "is it right?"; "is it accurate?" needs an entry's conditioning, which only
    the exploded engine computes (Note [Accurate, not only right] in symgrad/compare/accuracy.py).
    """
    check_accuracy_options(reference or reference_mode.get(), strict)
    token = reference_mode.set(reference or reference_mode.get())
    depth = nesting.set(nesting.get() + 1)
    start, outer_stop = graph_exact.counter["certified"], graph_exact.counter["stop"]
    if outer_stop is None:  # Note [A budget of certified entries] in graph/exact.py (a nested check shares it)
        graph_exact.counter["stop"] = start + graph_exact.PER_CHECK
    saved = _buffers(fn)
    try:
        report = _check_graph(fn, inputs, symbolic=symbolic, wrt=wrt, via=via, v=v, tangents=tangents, loss=loss,
                              target=target, cotangents=cotangents, seed=seed, backward_calls=backward_calls,
                              rtol=rtol, atol=atol, title=title, order=order, exploded_crosscheck=exploded_crosscheck,
                              buffers=saved, memory_budget=memory_budget)
    finally:
        reference_mode.reset(token)
        nesting.reset(depth)
        _restore(fn, saved)
        graph_exact.counter["stop"] = outer_stop
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
                 backward_calls, rtol, atol, title, order, exploded_crosscheck=False, buffers=None,
                 memory_budget: int | None = None) -> Report:
    import torch

    from .order2 import check_order

    check_order(order, via)

    model = fn if isinstance(fn, torch.nn.Module) else None
    inputs = dict(inputs)
    names, tensors, roles, wrt_names = _leaves(model, inputs, wrt)
    refuse_nan(dict(zip(names, tensors)), "input or parameter")
    n_params = len(names) - len(inputs)
    dtype = _dtype_name(tensors)
    ctx = Ctx(EPS.get(dtype, 2.0**-52), dtype)
    structure: list = []  # a tuple / dict output: its kind and its tensors' shapes (Note [Structured outputs])

    copied = frozenset(i for i, n in enumerate(names) if i >= n_params and n not in wrt_names)
    runner = _runner(model, names, n_params, loss, target, structure, buffers or {}, copied)  # check_graph's copy
    torch_fn = runner(fn)
    key = graph_cache.key(fn, symbolic, loss, target, names, tensors)
    disk_key = diskcache.fingerprint(fn, symbolic, loss, target, names, tensors) if not graph_cache.known(key) else None
    leaves = {n: t.detach().clone().requires_grad_(n in wrt_names) for n, t in zip(names, tensors)}
    out_t = _torch_forward(torch_fn, leaves)
    graph, values, out_node, failed, crossed, forward_ref, records = _traced(
        runner(symbolic if symbolic is not None else fn, symbolic is not None), key, disk_key, names, roles, tensors, out_t, ctx, dtype,
        rtol, atol, memory_budget)
    refuse_float_items(graph, wrt_names)  # Note [A float .item()] in interpret_data.py
    graph_cache.remember(key, fn, graph)
    narrow = getattr(graph, "narrowest", None)
    if narrow is not None and EPS.get(narrow, 0.0) > EPS.get(dtype, 2.0**-52):
        dtype, ctx = narrow, Ctx(EPS[narrow], narrow)  # Note [A forward that computes in a narrower dtype]
        graph, values, out_node, failed, crossed, forward_ref, records = _traced(
            runner(symbolic if symbolic is not None else fn, symbolic is not None), key, disk_key, names, roles, tensors, out_t, ctx,
            dtype, rtol, atol, memory_budget)
    exploded = None
    if exploded_crosscheck:  # Note [Exploded cross-check]
        from .explode_cross import crosscheck_exploded, mark_report

        stage("op graph: cross-checking the tensor derivative against the exploded one")
        exploded = crosscheck_exploded(graph, wrt=[n for n in wrt_names if n in graph.inputs])
    state = _State(graph, values, out_node, ctx, failed, torch_fn, leaves, wrt_names, dtype, rtol, atol)
    meta = {"dtype": dtype, "engine": "graph (tensor back end)",
            "graph": ", ".join(f"{k} {c}" for k, c in graph.counts().items())}
    if dtype != _dtype_name(tensors):
        meta["computes in"] = (f"{dtype}: the forward casts to it inside (inputs are {_dtype_name(tensors)}); "
                               f"every allowance is {dtype}'s")
    if structure:
        meta["output"] = (f"a {structure[0]} of {len(structure[1])} floating-point tensors (shapes "
                          f"{', '.join('x'.join(map(str, s)) or 'scalar' for s in structure[1])}), checked as one "
                          "vector of their entries in that order")
    v = _flat_cotangent(v, structure)
    n_tangents = 3 if cotangents is None else cotangents  # Note [More cotangents in half precision]
    if cotangents is None:
        cotangents = 3 if order == 2 else default_cotangents(out_t)
    if order == 2:  # Note [Hessian-vector rules] in hvp.py
        from .order2 import hvp_records

        found, info = hvp_records(state, out_t, v=v, tangents=tangents, count=cotangents, seed=seed)
        meta.update(info)
        records += found
    else:
        if tangents is None and (via in JACOBIAN_VIAS or cotangents == "full"):  # Note [Memory guard of a full Jacobian]
            refuse_jacobian(out_t.numel(), _n_in(state), memory_budget)
        records += _products(state, out_t, forward_ref, records, meta, via=via, v=v, tangents=tangents,
                             cotangents=cotangents, n_tangents=n_tangents, seed=seed, backward_calls=backward_calls)
    _one_triangle_note(graph, records)
    report = _annotate_crosscheck(Report(records, title=title or "symgrad check", meta=meta), crossed)
    return report if exploded is None else mark_report(report, exploded)


def _one_triangle_note(graph, records: list) -> None:
    """A failing derivative row of a graph that reads one triangle of a matrix (Note [One triangle
    read] in aten_linalg.py) says how torch's convention differs."""
    ops = getattr(graph, "one_triangle", ())
    if not ops:
        return
    text = (f"{', '.join(ops)}: each reads one triangle of its matrix, and the closed form's derivative by the other "
            "triangle is 0, where torch's backward returns the symmetric one (half to each triangle). Where the "
            "matrix is an input, that alone fails; build it symmetric ((A + A.mT) / 2) to compare the derivatives.")
    for rec in records:
        if rec.quantity != "forward" and not rec.passed:
            rec.note = joined(rec.note, text)


def _flat_cotangent(v, structure: list):
    """A cotangent given per tensor of a tuple / dict output, as the one vector the output is checked
    as (Note [Structured outputs]): its parts flattened and concatenated in the output's order."""
    import torch

    shapes = [tuple(s) for s in structure[1]] if structure else None
    if not isinstance(v, (list, tuple, dict)):
        if shapes is not None and v is not None and int(torch.as_tensor(v).numel()) != sum(math.prod(s) for s in shapes):
            raise ShapeMismatch(f"v has shape {tuple(torch.as_tensor(v).shape)}, but the output is a {structure[0]} of "
                                f"shapes {shapes}: give v as a {structure[0]} of one cotangent per output tensor, "
                                "shaped like it")
        return v
    parts = list(v.values()) if isinstance(v, dict) else list(v)
    got = [tuple(torch.as_tensor(p).shape) for p in parts]
    if shapes is None or got != shapes:
        raise ShapeMismatch(f"v is a {type(v).__name__} of shapes {got}, but the output is "
                            + (f"a {structure[0]} of shapes {shapes}" if structure else "one tensor")
                            + ": give one cotangent per output tensor, shaped like it (or one tensor shaped like the output)")
    return torch.cat([torch.as_tensor(p).reshape(-1) for p in parts])


# Note [Inputs written in forward]
# A forward may write into an input it is given (``x += pe``, ``mask.masked_fill_(...)``): the
# function it computes is the same each time only if each run starts from the values the user gave.
# The check runs torch's forward, the trace and autograd on the same leaves, so each run gets its
# own copy of every input that is not differentiated (a traced ``clone``; a differentiated input
# written in place is torch's own error, a leaf that requires grad).  Before this, the forward row
# and the gradients saw x + 1, x + 2, ... and a correct function failed.
def _runner(model, names: list, n_params: int, loss, target, structure: list, saved: dict,
            copied: frozenset = frozenset()):
    """``runner(forward_fn)``: a function of the flat leaves (parameters, then inputs) returning the
    one tensor checked: the loss of the output, or the output, a tuple or dict flattened
    (``structure`` notes its kind and shapes).  Every run starts from the buffers ``saved`` at the
    start: a forward that advances a buffer before using it (a step counter) is the same function
    each time the check runs it -- torch's forward, the trace, autograd; so do the inputs not
    differentiated, by their positions ``copied`` in the flat leaves."""
    import torch
    from torch.fx.experimental.proxy_tensor import disable_proxy_modes_tracing

    from ..validate import keyword_only

    given = set(names[n_params:])
    keyword = [k for k in keyword_only(model.forward) if k in given] if model is not None else []

    def runner(forward_fn, twin: bool = False):
        """``twin``: ``forward_fn`` is a reference forward (``symbolic=``), not the code whose backward runs."""

        def run(*flat):
            if saved:
                with disable_proxy_modes_tracing():  # not an op of the traced function
                    _restore(model, saved)
            flat = tuple(t.clone() if i in copied and isinstance(t, torch.Tensor) else t  # Note [Inputs written in forward]
                         for i, t in enumerate(flat))
            args, kwargs = flat[n_params:], {}
            if keyword:  # a module's keyword-only inputs, by name (they come last: nn/check._named_inputs)
                args, kwargs = args[:len(args) - len(keyword)], dict(zip(keyword, args[len(args) - len(keyword):]))
            if model is not None and forward_fn is model:
                params = dict(zip(names[:n_params], flat[:n_params]))
                out = torch.func.functional_call(model, params, tuple(args), kwargs, strict=False)
            else:
                with marking(BACKWARD_UNSEEN, True) if twin else nullcontext():  # Note [elu's slope from its input]
                    out = forward_fn(*args, **kwargs) if model is not None else forward_fn(*flat)
            if loss is not None:
                return loss(out, target)
            flat, shapes = _flatten_output(out)
            if shapes is not None:
                structure[:] = [type(out).__name__, shapes]
            return flat

        run.reset = lambda: _restore(model, saved)
        return run

    return runner


def _torch_forward(torch_fn, leaves: dict):
    """torch's output, with autograd on (Note [The forward torch differentiates])."""
    import torch

    try:
        with torch.enable_grad():
            out_t = torch_fn(*leaves.values())
        out_t = out_t.detach() if isinstance(out_t, torch.Tensor) else out_t
    except SymgradError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        from .trace import NESTED_GRAD, nested_grad

        if nested_grad(err):
            raise UnsupportedOp(f"{NESTED_GRAD} ({type(err).__name__}: {str(err)[:160]})") from err
        raise InputError(f"the function raised on these inputs ({type(err).__name__}: {str(err)[:300]}); "
                         "symgrad checks derivatives where the forward runs: pass inputs it accepts") from err
    if not isinstance(out_t, torch.Tensor):
        raise InputError(f"the loss returned a {type(out_t).__name__}, not a tensor: make loss(output, target) "
                         "return a scalar tensor")
    refuse_non_float_output(out_t)
    return out_t


def _traced(traced_fn, key, disk_key, names, roles, tensors, out_t, ctx, dtype: str, rtol, atol,
            memory_budget: int | None = None):
    """The op graph of ``traced_fn`` (cached, traced functionalized, or traced plain: Note
    [Functionalization and numpy]), its rules cross-checked and its forward evaluated and compared
    with torch's: (graph, values, output node, failed rules, node cross-check, forward reference,
    [forward record])."""
    tried: set = set()
    for attempt in ("cached", "traced", "plain"):  # Note [Functionalization and numpy]
        if attempt in tried:
            continue
        graph = graph_cache.lookup(key, names, tensors, disk_key) if attempt == "cached" else None
        if graph is None:
            stage("op graph: tracing the forward into core ATen ops")
            functional = attempt != "plain"
            gm = trace_callable(traced_fn, tuple(t.detach() for t in tensors), functional=functional)
            getattr(traced_fn, "reset", lambda: None)()  # the trace's constants are buffers it advanced
            graph = to_graph(gm, list(zip(names, roles, (t.detach() for t in tensors))))
            # torch's float32 constants noted while tracing (celu's 1/alpha) travel with a stored graph
            graph.float32_constants = set(float32_constants())
            graph.narrowest = _narrowest(gm)  # Note [A forward that computes in a narrower dtype]
            attempt = "traced" if functional else "plain"
            tried.add(attempt)
            diskcache.store(disk_key, graph)
        out_node = _single_output(graph)
        refuse_graph(graph, memory_budget)  # Note [Memory guard of the op graph] in budget.py: before the forward
        stage("op graph: cross-checking the tensor rules")
        failed = crosscheck(graph)
        stage("op graph: evaluating the forward")
        graph.kink_caps = None  # a cached graph's caps were another check's
        values = forward(graph, ctx)
        caps = montecarlo.kink_caps(graph, ctx, values)  # Note [Statistical kinks] in montecarlo.py
        if caps is not None:
            graph.kink_caps = caps  # every later forward of this check (its reruns) reads them
            values = None  # freed before the capped forward is made, not after (memory)
            values = forward(graph, ctx, caps)
        stage("op graph: cross-checking the non-linear rules, node by node")
        crossed = crosscheck_nodes(graph, values, failed)  # Note [Node cross-check]
        failed = failed + crossed.failed_nodes
        out_val = values[out_node]
        if tuple(out_t.shape) != out_val.shape:
            if attempt == "cached":
                continue  # a cached graph of something else: trace this function
            raise ShapeMismatch(f"torch's output has shape {tuple(out_t.shape)}, the op graph's {out_val.shape}")
        forward_ref = _approx_reference("output", out_val, "op graph forward", failed)
        forward_ref.stored_dtype = str(out_t.dtype).replace("torch.", "")
        forward_ref.exact_forward = ForwardOracle(lambda g=graph, vals=values, o=out_node: _exact_forward(g, vals, o))
        records = [compare(forward_ref, out_t.detach().double().cpu().numpy(), dtype, quantity="forward",
                           rtol=rtol, atol=atol)]
        if caps is not None:
            records[0].note = (records[0].note + " " if records[0].note else "") + (
                "Rounding allowance: the forward's worst-case bounds outgrew its values, so each value's bound "
                f"is capped at {montecarlo.LAMBDA:g} standard deviations of random-rounding reruns, and relu units "
                "beyond that are off their kinks (Note [Statistical kinks]).")
        if records[0].passed or attempt == "plain":
            break  # a cached graph that disagrees with torch's forward is traced again (Note [Graph cache] in cache.py)
    return graph, values, out_node, failed, crossed, forward_ref, records


def _exact_forward(graph, values, out):
    """The output's entries as exact constants (every leaf its exact value), within a small budget."""
    from .explode import explode

    return explode(graph, values, leaves=[], out=out, budget=2**27)[0]


def _products(state: _State, out_t, forward_ref, records: list, meta: dict, *, via, v, tangents, cotangents,
              n_tangents: int, seed: int, backward_calls: int) -> list:
    """The records of the products checked (forward mode, the Jacobian by columns, or VJPs with
    random tangents beside them); ``records[0]`` (the forward) may be sharpened, ``meta`` says
    which products were checked."""
    import torch

    leaves, wrt_names, found = state.leaves, state.wrt, []
    if tangents is not None or via in ("functional.jvp", "func.jvp", "forward_ad"):
        if tangents is None:
            raise InputError(f"via={via!r} computes a Jacobian-vector product: pass tangents= (one per input in wrt)")
        found += _jvp_records(state, [_tangent_dict(tangents, leaves, wrt_names)], via or "func.jvp", meta=meta)
        meta["quantity"], meta["via"] = "jvp", via or "func.jvp"
    elif _by_columns(state, out_t, via, cotangents):  # Note [Jacobian by columns]
        how = via or "functional.jacobian"
        found += _column_records(state, how, tuple(out_t.shape))
        meta["quantity"], meta["via"] = f"jacobian (one jvp per input entry, {_n_in(state)})", how
    else:
        seeds, quantity, how = plan(out_t, via, v, cotangents, seed)
        found += vjp_records(state, seeds, how, v, backward_calls, tuple(out_t.shape), out_t.dtype)
        records[0] = _statistical_forward(state, forward_ref, records[0], out_t)
        meta["quantity"], meta["via"] = quantity, how
        if how == "random-vjp":  # forward mode too: the exact counterpart of gradcheck's fast mode
            gen = torch.Generator().manual_seed(seed + 1)
            dirs = [{n: torch.randn(leaves[n].shape, generator=gen, dtype=torch.float64).to(leaves[n].dtype)
                     for n in wrt_names} for _ in range(n_tangents)]
            found += _default_jvps(state, dirs, meta)
    return found


def _default_jvps(state: _State, dirs: list, meta: dict) -> list:
    """Forward mode beside the random VJPs, not asked for: through ``torch.func.jvp``, else through dual
    tensors (a custom Function written with ``forward(ctx, ...)`` and a ``jvp`` runs there, not under
    torch.func); left out with the reason where neither runs (Note [A jvp that raises])."""
    got = first_forward_mode(lambda how: _jvp_records(state, dirs, how), meta, (NotImplementedError, TangentDropped))
    if got is None:  # a node kind without a forward-mode rule (linalg), or a custom op torch has none for
        return []
    how, found = got
    meta["quantity"] += f" and jvp ({len(dirs)} random tangents{', dual tensors' if how == 'forward_ad' else ''})"
    return found


# Note [A jvp that raises]
# The default check of a tensor output runs forward mode with random tangents beside the random
# vector-Jacobian products, and skips it, with a note, where forward mode is not there to run: a
# custom Function with no jvp or no setup_context, an op torch has no forward-mode rule for, a
# module torch.func cannot transform (batch norm's running statistics).  A custom Function's jvp
# that is there and raises, or returns a tangent torch refuses (of the wrong shape), was skipped the
# same way, and the check passed on the reverse-mode products alone without a word in the text
# report: that is raised now, and a skipped forward mode is printed beside what was checked.
# torch.func.jvp runs only custom Functions written with ``setup_context``; one written with
# ``forward(ctx, ...)`` and a ``jvp`` (still the common form) runs its jvp under dual tensors, so
# the default check tries those before leaving forward mode out: a jvp 1 % off in that form passed.
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
