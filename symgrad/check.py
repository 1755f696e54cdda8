"""The public entry point: ``symgrad.check(torch_fn, inputs, symbolic=...) -> Report``.

It runs the pipeline once: build the symbolic forward, differentiate it in closed form, lower the
closed form to numpy, run torch autograd the way the user named (``via``), compare, report.
Bad input raises a ``SymgradError`` naming the cause and the fix; a wrong derivative does not
raise here: it is a failing row of the report (``report.raise_for_failure()`` or
``symgrad.assert_correct`` turn it into an ``AssertionError``).
"""

from __future__ import annotations

import inspect
from typing import Callable, Mapping

import numpy as np
import sympy as sp

from .autograd.forward import forward_once, grad_enabled
from .autograd.run import default_via, quantity_of, run_autograd
from .symbolic.tensor import SymTensor, as_symtensor, symbols
from .compare.compare import compare, compare_all
from .compare.kinks import stack_generators
from .differentiate.elementwise import differentiate, entry_form, structural_zeros
from .differentiate.matrix_form import matrix_closed_form
from .errors import InputError, ShapeMismatch, SymgradError, UnsupportedOp
from .lower.numpy import high_precision, lower
from .progress import stage, with_progress
from .reference import Reference
from .validate import (arrange_inputs, check_backend, check_callable, check_names, check_via_keywords,
                       check_wrt_type, recursion_guard, refuse_nonfinite)
from .report.report import Report, shorten
from .compare.accuracy import EntryOracle, apply_strict, check_accuracy_options, nesting, reference_mode
from .lower.exact import ExactEvaluator

__all__ = ["check", "assert_correct", "symbolic_inputs", "lowest_precision"]

ENGINES = ("auto", "elementwise", "matrix", "graph")


def _is_module(fn) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return isinstance(fn, torch.nn.Module)


def _input_names(fn, symbolic, n: int) -> list[str]:
    for f in (fn, symbolic):
        if callable(f) and not isinstance(f, sp.Basic):
            try:
                params = [p for p in inspect.signature(f).parameters.values()
                          if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            except (TypeError, ValueError):
                continue
            if len(params) >= n:
                return [p.name for p in params[:n]]
    return [f"x{i}" for i in range(n)]


def normalize_inputs(fn, symbolic, inputs, *, finite: bool = True) -> dict:
    """``inputs`` as an ordered ``{name: tensor}``; a clear error for anything that is not a tensor."""
    import torch

    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if not isinstance(inputs, (Mapping, list, tuple)):
        raise InputError(f"inputs must be a dict {{name: tensor}} or a tuple of tensors, not {type(inputs).__name__}; "
                         "e.g. symgrad.check(fn, (x,)) or symgrad.check(fn, {'x': x})")
    inputs = arrange_inputs((fn, symbolic), inputs)
    if isinstance(inputs, Mapping):
        named = dict(inputs)
    else:
        named = dict(zip(_input_names(fn, symbolic, len(inputs)), inputs))
    check_names(named)
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise InputError(
                f"input {name!r} is a {type(t).__name__}, not a torch.Tensor; wrap it: torch.tensor(..., dtype=torch.float64)"
            )
        if t.layout != torch.strided:
            raise InputError(f"input {name!r} is a {t.layout} tensor; symgrad evaluates dense tensors: pass "
                             f"{name}.to_dense() (a sparse backward is then checked through its dense values)")
        if t.device.type == "meta":
            raise InputError(f"input {name!r} is on the meta device and has no values; give it real data (e.g. on the CPU)")
        if t.is_complex():
            raise InputError(f"input {name!r} is complex ({t.dtype}); symgrad checks real derivatives")
        if t.numel() == 0:
            raise InputError(f"input {name!r} is empty (shape {tuple(t.shape)}): there is nothing to check")
    if finite:  # the op graph evaluates inf and NaN (nan_to_num, -inf masks); the exploded back end does not
        refuse_nonfinite(named)
    return named


def _choose_wrt(named: dict, wrt) -> list[str]:
    if isinstance(wrt, str):
        wrt = [wrt]
    floating = [n for n, t in named.items() if t.is_floating_point()]
    if wrt is None:
        chosen = [n for n in floating if named[n].requires_grad] or floating
        if not chosen:
            raise InputError("no floating-point input to differentiate; pass float tensors or name them in wrt")
        return chosen
    wrt = list(wrt)
    if not wrt:
        raise InputError("wrt is empty: name at least one input to differentiate, or leave wrt=None for all of them")
    for w in wrt:
        if w not in named:
            raise InputError(f"wrt names {w!r}, which is not an input; the inputs are: {', '.join(named)}")
        if not named[w].is_floating_point():
            raise InputError(f"wrt names {w!r}, a {named[w].dtype} tensor; only floating-point inputs have derivatives")
    return wrt


def symbolic_inputs(named: Mapping[str, object]) -> dict[str, SymTensor]:
    """One symbol tensor per floating input (``x[0, 1]``), constants for integer inputs."""
    out = {}
    for name, t in named.items():
        if t.is_floating_point():
            out[name] = symbols(name, tuple(t.shape))
        else:  # integer and bool inputs are constants (bools as 0/1)
            out[name] = as_symtensor(t.detach().cpu().numpy().astype(np.int64) if t.dtype == torch_bool() else t.detach().cpu().numpy())
    return out


def _explode(expr, sym_inputs: dict[str, SymTensor], extra: Mapping[str, object] | None) -> SymTensor:
    """A plain SymPy expression (scalar, Matrix, Array or matrix expression) in the input symbols.

    MatrixSymbols and Symbols are matched to inputs by name; ``extra`` maps an input name to a
    user's own Matrix/Array of symbols for it.
    """
    if isinstance(expr, sp.MatrixBase) and not isinstance(expr, sp.Basic):
        expr = sp.ImmutableMatrix(expr)  # a mutable Matrix of MatrixSymbol entries (sp.Matrix(X))
    subs = {}
    for name, st in sym_inputs.items():
        if st.ndim == 0:
            subs[sp.Symbol(name)] = sp.Symbol(str(st.item()))
    if isinstance(expr, sp.Basic) and expr.atoms(sp.MatrixSymbol):
        explicit = {}
        for m in expr.atoms(sp.MatrixSymbol):
            if m.name not in sym_inputs:
                raise InputError(f"the symbolic forward uses MatrixSymbol {m.name!r}, which is not an input; "
                                 f"inputs: {', '.join(sym_inputs)}")
            st = sym_inputs[m.name]
            shape2 = st.shape if st.ndim == 2 else (st.shape + (1,) if st.ndim == 1 else (1, 1))
            if tuple(m.shape) != shape2:
                raise ShapeMismatch(f"MatrixSymbol {m.name} is {m.shape[0]}x{m.shape[1]} but input {m.name!r} has shape {st.shape}")
            entries = [sp.Symbol(str(e)) for e in st.data.ravel()]
            explicit[m] = sp.ImmutableMatrix(shape2[0], shape2[1], entries)
        # Explicit matrices in place of the symbols: doit() then expands products, traces,
        # determinants and inverses entry by entry (the exact, independent derivation).
        expr = expr.xreplace(explicit).doit()
        if isinstance(expr, sp.MatrixExpr):
            expr = expr.as_explicit()
    for name, mat in (extra or {}).items():
        if name not in sym_inputs:
            raise InputError(f"symbols_map names {name!r}, which is not an input; inputs: {', '.join(sym_inputs)}")
        user = _user_symbols(name, mat)
        ours = sym_inputs[name].data.ravel()
        if len(user) != ours.size:
            raise ShapeMismatch(f"symbols_map[{name!r}] has {len(user)} symbols but input {name!r} has shape {sym_inputs[name].shape}")
        subs.update({u: sp.Symbol(str(o)) for u, o in zip(user, ours)})
    if isinstance(expr, (sp.MatrixBase, sp.NDimArray)):
        expr = expr.applyfunc(lambda e: sp.sympify(e).xreplace(subs)) if subs else expr
    else:
        expr = sp.sympify(expr).xreplace(subs) if subs else expr
    return as_symtensor(expr)


def _user_symbols(name: str, mat) -> list:
    """The symbols of ``symbols_map[name]``, flat; only SymPy objects (never strings, which
    ``sympy.Array`` would parse, i.e. run)."""
    if isinstance(mat, sp.MatrixSymbol):
        mat = mat.as_explicit()
    if isinstance(mat, sp.Symbol):
        return [mat]
    if isinstance(mat, (sp.MatrixBase, sp.NDimArray)):
        flat = list(mat) if isinstance(mat, sp.MatrixBase) else list(sp.flatten(mat.tolist()))
    elif isinstance(mat, (list, tuple)):
        flat = list(sp.utilities.iterables.flatten(mat))
    else:
        flat = [mat]
    bad = [e for e in flat if not isinstance(e, sp.Basic)]
    if bad:
        raise InputError(f"symbols_map[{name!r}] holds a {type(bad[0]).__name__} ({str(bad[0])[:60]!r}), not a SymPy "
                         "symbol; map each input to a Symbol, a Matrix/Array of Symbols or a list of them "
                         "(symgrad never parses strings)")
    return flat


def _sympy_view(st: SymTensor):
    """An input's symbols as SymPy sees them: a scalar, a column Matrix (1-d), a Matrix or an Array."""
    conv = [sp.Symbol(str(e)) if getattr(e, "is_Symbol", False) else sp.sympify(e) for e in st.data.ravel()]
    if st.ndim == 0:
        return conv[0]
    if st.ndim == 1:
        return sp.Matrix(st.shape[0], 1, conv)
    if st.ndim == 2:
        return sp.Matrix(st.shape[0], st.shape[1], conv)
    return sp.Array(conv, st.shape)


def _symbolic_output(fn, symbolic, sym_inputs, symbols_map) -> SymTensor:
    if symbolic is None:
        symbolic = fn
    if isinstance(symbolic, (sp.Basic, sp.MatrixBase, sp.NDimArray)):
        return _explode(symbolic, sym_inputs, symbols_map)
    if not callable(symbolic):
        raise InputError(f"symbolic must be a callable or a SymPy expression, not {type(symbolic).__name__}")
    # First on SymTensors (sg.* functions, operators); then, for forwards written with SymPy
    # functions (X.applyfunc(sympy.tanh), sympy.exp(x)), on SymPy matrices of the same symbols.
    attempts = (("symbolic tensors", lambda: list(sym_inputs.values())),
                ("SymPy matrices", lambda: [_sympy_view(st) for st in sym_inputs.values()]))
    errors = []
    for label, make_args in attempts:
        if errors and "SymTensor" in errors[-1] and "must be Tensor" in errors[-1]:
            continue  # a torch function refused the symbolic tensors: SymPy matrices fare no better
        try:
            out = symbolic(*make_args())
            break
        except SymgradError:
            raise
        except Exception as err:  # noqa: BLE001 - reported below with every attempt's error
            errors.append(f"on {label}: {type(err).__name__}: {err}")
    else:
        raise UnsupportedOp(
            "the symbolic forward could not run (" + "; ".join(errors) + "). Write it with symgrad's functions "
            "(sg.tanh, sg.sum, sg.mse_loss, ...) or SymPy, or pass symbolic=..."
        )
    if isinstance(out, (sp.Basic, sp.MatrixBase, sp.NDimArray)) and not isinstance(out, SymTensor):
        return _explode(out, sym_inputs, symbols_map)
    if out is None or isinstance(out, (str, bytes, dict)) or (
            isinstance(out, (tuple, list)) and any(isinstance(o, SymTensor) for o in out)):
        kind = f"a {type(out).__name__}" + (f" of {len(out)}" if isinstance(out, (tuple, list, dict)) else "")
        raise InputError(f"the symbolic forward returned {kind if out is not None else 'None'}, not one tensor: "
                         "symgrad differentiates a single output. Fix: return one tensor (out[0] of a tuple, "
                         "one value of a dict; for None, the missing return)")
    if isinstance(out, SymTensor):
        return out
    if (type(out).__module__ or "").startswith("torch"):
        raise UnsupportedOp("the symbolic forward returned a torch tensor: write it with sg.* functions or SymPy, not torch")
    return as_symtensor(out)


def _check_symbols(out: SymTensor, sym_inputs: dict[str, SymTensor], wrt: list[str], from_sympy: bool):
    known = {str(s) for st in sym_inputs.values() for s in st.data.ravel()}
    free = {str(s) for e in out.data.ravel() for s in e.free_symbols} if out.numel() else set()
    unknown = free - known
    if unknown:
        names = ", ".join(sorted(map(str, unknown))[:5])
        raise InputError(f"the symbolic forward uses symbols that belong to no input: {names}. "
                         "Name MatrixSymbols/Symbols after the inputs, or map them with symbols_map={'name': matrix}")
    if from_sympy:
        for w in wrt:
            if not free & {str(s) for s in sym_inputs[w].data.ravel()}:
                raise InputError(f"input {w!r} has no symbol in the symbolic forward; name a Symbol/MatrixSymbol {w!r}, "
                                 f"pass symbols_map={{{w!r}: ...}}, or leave {w!r} out of wrt")


def _closed_form_text(arr: np.ndarray) -> tuple[str, str]:
    """The first entry's closed form, labelled as such when the derivative has more entries."""
    text, latex = entry_form(arr)
    if arr.size <= 1:
        return text, latex
    return f"{text}  (entry [{', '.join('0' for _ in arr.shape)}])", latex


@with_progress("symgrad check")
@grad_enabled
@recursion_guard
def check(
    fn: Callable | None,
    inputs,
    symbolic=None,
    *,
    wrt=None,
    via: str | None = None,
    v=None,
    tangents=None,
    loss=None,
    target=None,
    engine: str = "auto",
    backend: str = "auto",
    rtol: float | None = None,
    atol: float | None = None,
    backward_calls: int = 1,
    symbols_map: Mapping[str, object] | None = None,
    title: str | None = None,
    memory_budget: int | None = None,
    quiet: bool | None = None,
    reference: str | None = None,
    strict: bool = False,
) -> Report:
    reference = reference or reference_mode.get()  # None: "auto", or the mode of the check this one runs inside
    check_accuracy_options(reference, strict)
    token, depth = reference_mode.set(reference), nesting.set(nesting.get() + 1)
    try:
        report = _check(fn, inputs, symbolic, wrt=wrt, via=via, v=v, tangents=tangents, loss=loss, target=target,
                        engine=engine, backend=backend, rtol=rtol, atol=atol, backward_calls=backward_calls,
                        symbols_map=symbols_map, title=title, memory_budget=memory_budget, quiet=quiet)
    finally:
        reference_mode.reset(token)
        nesting.reset(depth)
    return apply_strict(report, strict, warn=nesting.get() == 0)


def _check(
    fn: Callable | None,
    inputs,
    symbolic=None,
    *,
    wrt=None,
    via: str | None = None,
    v=None,
    tangents=None,
    loss=None,
    target=None,
    engine: str = "auto",
    backend: str = "auto",
    rtol: float | None = None,
    atol: float | None = None,
    backward_calls: int = 1,
    symbols_map: Mapping[str, object] | None = None,
    title: str | None = None,
    memory_budget: int | None = None,
    quiet: bool | None = None,
) -> Report:
    """Check torch autograd's derivatives of ``fn`` at ``inputs`` against the closed form.

    Returns a ``Report`` (``report.passed``; ``report.raise_for_failure()``; ``report.write(path)``).
    A wrong derivative is a failing row, not an exception; bad input raises ``SymgradError``.

    Parameters
    ----------
    fn : a torch callable, a custom ``autograd.Function``'s ``apply``, or an ``nn.Module`` (checked
        through ``symgrad.nn.check_module``); ``None`` lowers ``symbolic`` to torch.
    inputs : ``{name: tensor}`` or a tuple of tensors (named after ``fn``'s parameters).
    symbolic : the same function built symbolically -- a callable on ``SymTensor``s (written with
        ``sg.*`` functions, or returning SymPy objects) or a SymPy expression / matrix expression
        whose (Matrix)Symbols are named after the inputs.  ``None``: ``fn`` itself, if written with
        ``sg.*``, else ``fn`` is imported through ``torch.fx``.
    wrt : input names to differentiate (default: those with ``requires_grad``, else all floats).
    via : how autograd runs: ``"backward"``, ``"autograd.grad"``, ``"functional.jacobian"``,
        ``"functional.hessian"``, ``"functional.vjp"``, ``"functional.jvp"``, ``"jacrev"``,
        ``"jacfwd"``, ``"func.vjp"``, ``"func.jvp"``, ``"func.hessian"`` (``symgrad.autograd.VIAS``).
        Default: ``"backward"`` for a scalar output or with ``v``, else ``"functional.jacobian"``.
    v : the cotangent for ``backward(v)`` and the vjps, shaped like the output.  A random ``v``
        (``torch.randn_like(out)``) checks that a backward uses its ``grad_output``; a cotangent of
        ones (``.sum()``) does not.
    tangents : a tensor or ``{name: tensor}`` for the jvps.
    loss, target : for an ``nn.Module``: the loss (``"mse"``, a loss module or callable) and its target.
    engine : ``"auto"``, ``"elementwise"`` (one exact expression per entry), ``"matrix"`` (the
        matrix-calculus engine, modules with a loss) or ``"graph"`` (the op graph's tensor back end:
        any size; reverse and forward mode).  ``"auto"`` picks by size (Note [Memory guard]).
    backend : the elementwise engine's differentiation: ``"auto"`` (symengine) or ``"sympy"`` (slow;
        for cross-checking the fast path).
    rtol : relative tolerance (default by dtype: 1e-7 float64, 1e-5 float32); adds to the rounding bound.
    atol : an absolute tolerance added to every entry's allowance (it never replaces the bound).
    backward_calls : call ``backward`` this many times and check the accumulated ``.grad``.
    symbols_map : ``{input name: Matrix/Array of the user's own symbols}`` for a SymPy ``symbolic``.
    title : the report's title.
    memory_budget : bytes the exploded (elementwise) back end may use (Note [Memory guard] in
        ``symgrad/graph/budget.py``); beyond it ``"auto"`` goes to the tensor back end and a forced
        ``"elementwise"`` is refused.
    quiet : ``True`` never shows progress (also: environment variable ``SYMGRAD_QUIET=1``); progress
        appears on stderr only for checks that take more than 2 s.
    reference : ``"auto"`` (the default; the closed form in extended precision with a rounding bound, re-evaluated
        over mpmath where that bound is not small against an ulp of the checked dtype), ``"mpmath"``
        (every entry over mpmath) or ``"float"`` (never); each record states its reference's accuracy.
    strict : ``True`` makes an ``inaccurate`` record (right, but less accurate than the problem's
        conditioning allows; a warning by default) a failure.
    """
    if engine not in ENGINES:
        raise InputError(f"engine must be one of {ENGINES}, not {engine!r}")
    _check_options(rtol, atol, backward_calls)
    check_callable(fn)
    check_wrt_type(wrt)
    check_backend(backend)
    if _is_module(fn):
        from .nn.check import check_module

        return check_module(fn, inputs, symbolic=symbolic, wrt=wrt, via=via, v=v, loss=loss, target=target,
                            engine=engine, backend=backend, rtol=rtol, atol=atol, title=title, tangents=tangents,
                            backward_calls=backward_calls)
    if loss is not None or target is not None:
        raise InputError("loss=/target= apply to nn.Module checks; for a function, put the loss inside it")
    if engine == "matrix":
        raise InputError("engine='matrix' needs an nn.Module (symgrad.check(model, ...)) or a matrix expression "
                         "(symgrad.matrix.grad); plain functions use the elementwise engine")
    import torch

    stage("building the symbolic forward")
    named = normalize_inputs(fn, symbolic, inputs, finite=engine != "graph")
    wrt_names = _choose_wrt(named, wrt)
    dtype = lowest_precision(named.values())
    dtype_name = str(dtype).replace("torch.", "")
    leaves = {n: t.detach().clone().requires_grad_(n in wrt_names) for n, t in named.items()}
    if _tensor_back_end(fn, symbolic, named, wrt_names, via, tangents, engine, memory_budget):
        from .graph import check_graph

        stage("op graph: trace, differentiate, compare")
        return check_graph(fn, named, symbolic=symbolic, wrt=wrt_names, via=via, v=v, tangents=tangents,
                           backward_calls=backward_calls, rtol=rtol, atol=atol, title=title)

    sym_in = symbolic_inputs(named)
    try:
        out = _symbolic_output(fn, symbolic, sym_in, symbols_map)
    except UnsupportedOp as err:
        graph_ok = engine == "auto" and fn is not None and (symbolic is None or callable(symbolic))
        if (symbolic is not None and not graph_ok) or fn is None or tangents is not None or backward_calls != 1:
            raise
        # A plain torch function with no symbolic twin: import it through torch.fx, else trace it into
        # the op graph (ops the exploded back end has no rule for: layer_norm, cumsum, normalize, ...)
        from .nn.check import check_function

        try:
            if symbolic is not None:
                raise err
            return check_function(fn, named, wrt=wrt, via=via, v=v, engine=engine, backend=backend,
                                  rtol=rtol, atol=atol, title=title)
        except Exception as fx_err:  # noqa: BLE001 - the fx importer's own failures lead to the op graph
            if not graph_ok or not isinstance(fx_err, (SymgradError, AttributeError, TypeError, KeyError)):
                if isinstance(fx_err, SymgradError):
                    raise UnsupportedOp(f"{err}\nImporting it with torch.fx failed too: {fx_err}") from fx_err
                raise
            from .graph import check_graph

            stage("op graph: trace, differentiate, compare")
            try:
                return check_graph(fn, named, symbolic=symbolic, wrt=wrt_names, via=via, v=v,
                                   backward_calls=backward_calls, rtol=rtol, atol=atol, title=title)
            except UnsupportedOp as graph_err:
                fx_part = "" if symbolic is not None else f"\nImporting it with torch.fx failed too: {fx_err}"
                raise UnsupportedOp(f"{err}{fx_part}\nTracing it into the op graph failed as well: {graph_err}") \
                    from graph_err
    from_sympy = symbolic is not None and not callable(symbolic)
    _check_symbols(out, sym_in, wrt_names, from_sympy)

    torch_fn = fn if fn is not None else _lowered_forward(out, sym_in, dtype)
    out_t, autograd_fn = forward_once(torch_fn, leaves)
    if not isinstance(out_t, torch.Tensor):
        raise InputError(f"the torch function returned a {type(out_t).__name__}, not a tensor: symgrad differentiates "
                         "one tensor output. Fix: return one tensor (for a tuple or dict, check a wrapper such as "
                         "lambda x: fn(x)[0]; for None, add the missing return)")
    if tuple(out_t.shape) != out.shape and _same_but_unit_dims(tuple(out_t.shape), out.shape):
        out = out.reshape(tuple(out_t.shape))  # SymPy has no 1-d matrices: (n, 1) stands for (n,)
    if tuple(out_t.shape) != out.shape:
        raise ShapeMismatch(f"the torch function returns shape {tuple(out_t.shape)} but the symbolic forward returns "
                            f"{out.shape}; they must compute the same thing")

    scalar = out.numel() == 1
    if via is None:
        via = default_via(scalar, v is not None)
    if backward_calls != 1 and via != "backward":
        raise InputError(f"backward_calls={backward_calls} accumulates .grad over repeated backward() calls; "
                         f"it needs via='backward' (a scalar output, or a cotangent v), not via={via!r}")
    quantity = quantity_of(via, v is not None)
    check_via_keywords(via, quantity, v, tangents)
    cot_sym = tan_sym = None
    extra_args, extra_vals = [], []
    if quantity == "vjp":
        if v is None:
            raise InputError(f"via={via!r} computes a vector-Jacobian product: pass the cotangent v (shape {out.shape})")
        v = torch.as_tensor(v, dtype=dtype)
        refuse_nonfinite({"v": v}, "cotangent")
        if tuple(v.shape) != out.shape:
            raise ShapeMismatch(f"v has shape {tuple(v.shape)}, the output has {out.shape}")
        cot_sym = symbols(_fresh("v", named), out.shape)
        extra_args += list(cot_sym.data.ravel())
        extra_vals += list(v.detach().double().numpy().ravel())
    elif quantity == "grad" and not scalar:
        raise ShapeMismatch(f"via={via!r} differentiates a scalar, but the output has shape {out.shape}; "
                            "pass v=torch.ones_like(out) for backward(v), or use via='functional.jacobian'")
    if quantity in ("hessian",) and not scalar:
        raise ShapeMismatch(f"a Hessian needs a scalar output; the output has shape {out.shape}")
    if quantity == "jvp":
        if tangents is None:
            raise InputError(f"via={via!r} computes a Jacobian-vector product: pass tangents (one per input in wrt)")
        if isinstance(tangents, torch.Tensor):
            tangents = {wrt_names[0]: tangents} if len(wrt_names) == 1 else None
        if not isinstance(tangents, Mapping) or set(tangents) != set(wrt_names):
            raise InputError(f"tangents must map each of {wrt_names} to a tensor of its shape")
        tan_sym = {}
        for w in wrt_names:
            t = torch.as_tensor(tangents[w], dtype=dtype)
            if tuple(t.shape) != tuple(named[w].shape):
                raise ShapeMismatch(f"tangent for {w!r} has shape {tuple(t.shape)}, the input has {tuple(named[w].shape)}")
            refuse_nonfinite({w: t}, "tangent for")
            tangents[w] = t
            tan_sym[w] = symbols(_fresh(f"t_{w}", named), tuple(t.shape))
            extra_args += list(tan_sym[w].data.ravel())
            extra_vals += list(t.detach().double().numpy().ravel())

    stage("differentiating in closed form")
    derivs = differentiate(out, {w: sym_in[w] for w in wrt_names}, quantity, cotangent=cot_sym,
                           tangents=tan_sym, backend=backend)

    # Lower the forward and every derivative in one function (shared subexpressions computed once).
    stage("evaluating the closed form")
    keys = list(derivs)
    exprs = list(out.data.ravel())
    sizes = [out.numel()]
    for k in keys:
        exprs += list(derivs[k].ravel())
        sizes.append(derivs[k].size)
    floats = [n for n in named if named[n].is_floating_point()]
    args = [s for n in floats for s in sym_in[n].data.ravel()] + extra_args
    values = [x for n in floats for x in named[n].detach().double().cpu().numpy().ravel()] + extra_vals
    hi = lower(exprs, args, forward=sizes[0])(values, dtype=high_precision(), kink_eps=float(torch.finfo(dtype).eps))

    def split(vals):
        flat = np.array([float(x) for x in vals], dtype=np.float64) if vals else np.zeros(0)
        parts, start = [], 0
        for size in sizes:
            parts.append(flat[start:start + size])
            start += size
        return parts

    main, low, rounding = split(hi.values), split(hi.values_lowp), split(hi.magnitudes)
    band_lo = split(hi.lower) if hi.lower is not None else None
    band_hi = split(hi.upper) if hi.upper is not None else None
    cands = [split(c) for c in hi.candidates] if hi.candidates is not None else []
    kink_rounding = split(hi.kink_magnitudes) if hi.kink_magnitudes is not None else None

    scale = backward_calls if via == "backward" else 1
    matrix_values = {n: t.detach().double().cpu().numpy().reshape(_as_2d(tuple(t.shape))) for n, t in named.items()}
    refs = []
    out_ref = Reference("output", main[0].reshape(out.shape), closed_form="symbolic forward",
                        value_lowp=low[0].reshape(out.shape), rounding=rounding[0].reshape(out.shape))
    for i, k in enumerate(keys, start=1):
        shape = derivs[k].shape
        name = k if isinstance(k, str) else f"({k[0]}, {k[1]})"
        text, latex = _closed_form_text(derivs[k])
        if scale != 1:
            text = f"{scale} * ({text})  [grad accumulated over {scale} backward calls]"
            latex = f"{scale} \\left({latex}\\right)" if latex else ""
        ref = Reference(name, scale * main[i].reshape(shape), text, latex, value_lowp=scale * low[i].reshape(shape),
                        rounding=scale * rounding[i].reshape(shape), structural_zero=structural_zeros(derivs[k]))
        ref.closed_form_expr, ref.entry_form = _printable(derivs[k], latex, scale)
        if from_sympy and quantity == "grad" and isinstance(k, str):
            shown = matrix_closed_form(symbolic, k, matrix_values, ref.value / scale)
            if shown is not None:
                ref.note = shown[2]
                if shown[0]:
                    ref.closed_form, ref.closed_form_latex = shown[0], shown[1]
                    ref.closed_form_expr = None  # the matrix form is shown as text, not the first entry
        if band_lo is not None:
            lo, up = scale * band_lo[i].reshape(shape), scale * band_hi[i].reshape(shape)
            kink = (lo != up) | (lo != ref.value) | (up != ref.value)
            if kink.any():
                ref.lower, ref.upper, ref.kink = lo, up, kink
                ref.kink_rounding = scale * kink_rounding[i].reshape(shape)
                if hi.kink_joint:
                    ref.kink_generators = stack_generators(
                        [[scale * (cands[j][i] - main[i]) for j in ids] for _, ids in hi.kink_groups], shape)
        refs.append(ref)
    evaluator = ExactEvaluator(exprs, args, values)  # Note [Certified reference] (symgrad/lower/exact.py)
    offsets = np.cumsum([0] + sizes)
    for i, ref in enumerate(refs, start=1):
        ref.oracle = EntryOracle(evaluator, lambda j, o=int(offsets[i]): [((o + j, None), float(scale))])

    tangents_t = {w: tangents[w] for w in wrt_names} if quantity == "jvp" else None
    autograd = dict(cotangent=v, tangents=tangents_t, backward_calls=backward_calls)
    stage(f"running autograd (via={via})")
    actual = run_autograd(autograd_fn, leaves, wrt_names, via, **autograd)

    def judge() -> list:
        forward = compare(out_ref, out_t.detach().double().cpu().numpy(), dtype_name, quantity="forward",
                          rtol=rtol, atol=atol)
        if not forward.passed:
            forward.note = ("the symbolic forward and the torch function disagree: the derivatives below are "
                            "derivatives of different functions. Fix the symbolic forward first.")
        return [forward] + compare_all(refs, {ref.name: actual[k] for ref, k in zip(refs, keys)}, dtype_name,
                                       quantity=quantity, rtol=rtol, atol=atol)

    stage("comparing")
    records = judge()
    meta = {"dtype": dtype_name, "via": via, "quantity": quantity, "engine": "elementwise"}
    if hi.kink_conditions:
        meta["kink conditions"] = ", ".join(shorten(c, 40) for c in hi.kink_conditions[:4])
    return Report(records, title=title or "symgrad check", meta=meta)


def _tensor_back_end(fn, symbolic, named, wrt, via, tangents, engine, budget) -> bool:
    """Whether the check goes to the op graph's tensor back end (Note [Memory guard])."""
    import sympy

    from .graph.budget import refuse_exploded, too_big_to_explode

    n_in = sum(t.numel() for t in named.values() if t.is_floating_point())
    n_wrt = sum(named[w].numel() for w in wrt)
    if engine == "graph":
        if fn is None or isinstance(symbolic, (sympy.Basic, sympy.MatrixBase, sympy.NDimArray)):
            raise InputError("engine='graph' traces torch code: pass the torch function (and, as symbolic=, a "
                             "reference forward in torch ops if you have one), not a SymPy expression")
        return True
    forward_mode = tangents is not None or (via or "").endswith(("jvp", "hessian")) or via == "jacfwd"
    if engine == "elementwise" or forward_mode:
        refuse_exploded(n_in, n_wrt, 1, False, budget)
        return False
    traceable = fn is not None and (symbolic is None or callable(symbolic) and
                                    not isinstance(symbolic, (sympy.Basic, sympy.MatrixBase, sympy.NDimArray)))
    if not traceable:
        refuse_exploded(n_in, n_wrt, 1, False, budget)
        return False
    return too_big_to_explode(n_in, n_wrt, 1, False, budget)


def _printable(deriv: np.ndarray, latex: str, scale: int):
    """For the reports: the first entry as a SymPy expression (only where it was short enough for
    LaTeX), and a callable giving any entry's closed form text (the worst entry of a failure)."""
    expr = None
    if latex and deriv.size:
        expr = sp.sympify(deriv.ravel()[0])
        if scale != 1:
            expr = sp.Mul(scale, expr, evaluate=False)

    def entry_text(index: tuple) -> str:
        text = entry_form(np.array([deriv[tuple(index)]], dtype=object))[0]
        return f"{scale} * ({text})" if scale != 1 else text

    return expr, entry_text


def _check_options(rtol, atol, backward_calls) -> None:
    for label, value in (("rtol", rtol), ("atol", atol)):
        if value is not None and not (isinstance(value, (int, float)) and value >= 0 and np.isfinite(value)):
            raise InputError(f"{label} must be a finite number >= 0, not {value!r}")
    if not isinstance(backward_calls, int) or backward_calls < 1:
        raise InputError(f"backward_calls must be an integer >= 1, not {backward_calls!r}")


def lowest_precision(tensors):
    """The floating dtype with the largest roundoff among ``tensors``: the tolerances' dtype (a
    float32 input rounds whatever it touches, even in a float64 computation)."""
    import torch

    floats = [t.dtype for t in tensors if t.is_floating_point()]
    return max(floats, key=lambda d: torch.finfo(d).eps) if floats else torch.float64


def torch_bool():
    import torch

    return torch.bool


def _fresh(name: str, taken) -> str:
    """``name``, or ``name_``, ``name__``, ... if an input already has it."""
    while name in taken:
        name += "_"
    return name


def _same_but_unit_dims(a: tuple, b: tuple) -> bool:
    return tuple(d for d in a if d != 1) == tuple(d for d in b if d != 1)


def _as_2d(shape: tuple) -> tuple:
    return shape if len(shape) == 2 else (shape + (1,) if len(shape) == 1 else (1, 1) if not shape else shape)


def _lowered_forward(out: SymTensor, sym_in: dict[str, SymTensor], dtype):
    """The symbolic forward as a torch function of the inputs (used when fn is None)."""
    from .lower.torch import to_torch

    names = list(sym_in)

    def forward(*tensors):
        env = {}
        for name, t in zip(names, tensors):
            st = sym_in[name]
            if t.is_floating_point():
                for index in np.ndindex(st.shape):
                    env[str(st.data[index])] = t[index] if index else t
        return to_torch(out.data, env, dtype)

    return forward


def assert_correct(
    fn: Callable | None,
    inputs,
    symbolic=None,
    *,
    wrt=None,
    via: str | None = None,
    v=None,
    tangents=None,
    loss=None,
    target=None,
    engine: str = "auto",
    backend: str = "auto",
    rtol: float | None = None,
    atol: float | None = None,
    backward_calls: int = 1,
    symbols_map: Mapping[str, object] | None = None,
    title: str | None = None,
    memory_budget: int | None = None,
    quiet: bool | None = None,
    reference: str | None = None,
    strict: bool = False,
) -> Report:
    """``check(...)`` that raises ``GradientMismatch`` (an AssertionError) when a row fails, and
    returns the passing ``Report`` otherwise.  The keywords are ``check``'s (see ``help(symgrad.check)``)."""
    return check(fn, inputs, symbolic, wrt=wrt, via=via, v=v, tangents=tangents, loss=loss, target=target,
                 engine=engine, backend=backend, rtol=rtol, atol=atol, backward_calls=backward_calls,
                 symbols_map=symbols_map, title=title, memory_budget=memory_budget,
                 quiet=quiet, reference=reference, strict=strict).raise_for_failure()


check.__doc__ = _check.__doc__
