"""The public entry point: ``symgrad.check(fn, inputs, symbolic=...) -> Report``.

One driver for functions and modules alike: it checks the arguments, hands an ``nn.Module`` to the
module driver (``symgrad.nn.check``) and anything else to the plain-function pipeline
(``symgrad.elementwise``: symbolic forward, closed-form derivative, numpy, autograd, compare), or
to the op graph's tensor back end (``symgrad.graph``) where the size calls for it.  Bad input
raises a ``SymgradError`` naming the cause and the fix; a wrong derivative does not raise here: it
is a failing row of the report (``report.raise_for_failure()`` or ``symgrad.assert_correct`` turn
it into an ``AssertionError``).  This module sits on top: nothing in the package imports it.
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping, ParamSpec

import numpy as np

from .autograd.forward import grad_enabled
from .elementwise import check_plain
from .compare.accuracy import apply_strict, check_accuracy_options, nesting, reference_mode
from .errors import InputError
from .compare.worst import joined
from .ops import float32_scoped
from .inputs import check_options, lowest_precision  # noqa: F401 - lowest_precision re-exported
from .progress import with_progress
from .threads import blas_limited
from .report.report import Report
from .symbolic.forward import symbolic_inputs  # noqa: F401 - re-exported
from .validate import check_backend, check_callable, check_wrt_type, recursion_guard, refuse_zero_products

__all__ = ["check", "assert_correct", "symbolic_inputs", "lowest_precision"]

ENGINES = ("auto", "elementwise", "matrix", "graph")
P = ParamSpec("P")


def _is_module(fn) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return isinstance(fn, torch.nn.Module)


@with_progress("symgrad check")
@grad_enabled
@recursion_guard
@float32_scoped  # Note [Float32 constants of a check] in symgrad/ops.py
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
    order: int = 1,
    reference: str | None = None,
    strict: bool = False,
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
        ``sg.*``, else ``fn`` is traced into the op graph.
    wrt : input names to differentiate (default: those with ``requires_grad``, else all floats).
    via : how autograd runs: ``"backward"``, ``"autograd.grad"``, ``"functional.jacobian"``,
        ``"functional.hessian"``, ``"functional.vjp"``, ``"functional.jvp"``, ``"jacrev"``,
        ``"jacfwd"``, ``"func.vjp"``, ``"func.jvp"``, ``"func.hessian"``, ``"forward_ad"``
        (``symgrad.autograd.VIAS``).  Forward mode of a custom ``autograd.Function`` (its ``jvp``
        staticmethod) is run by ``"forward_ad"`` (dual tensors) and ``"func.jvp"``; ``"functional.jvp"``
        is not forward mode (torch's double-vjp trick runs ``backward``) and never calls ``jvp``.
        Default: ``"backward"`` for a scalar output or with ``v``, else ``"functional.jacobian"``.
    v : the cotangent for ``backward(v)`` and the vjps, shaped like the output.  A random ``v``
        (``torch.randn_like(out)``) checks that a backward uses its ``grad_output``; a cotangent of
        ones (``.sum()``) does not.
    tangents : a tensor or ``{name: tensor}`` for the jvps.
    loss, target : for an ``nn.Module``: the loss (``"mse"``, a loss module or callable) and its target.
    engine : ``"auto"``, ``"elementwise"`` (one exact expression per entry) or ``"graph"`` (the op
        graph's tensor back end: any size; reverse and forward mode; ``"matrix"``, the retired
        matrix-calculus engine's name, is another name for it).  ``"auto"`` picks by size (Note [Memory guard]).
    backend : the elementwise engine's differentiation: ``"auto"`` (symengine) or ``"sympy"`` (slow;
        for cross-checking the fast path).
    rtol : an extra relative tolerance: ``rtol * |closed form|`` is added to each entry's allowance.
        Default 0: the allowance is the entry's rounding bound alone (README, "Tolerances").
    atol : an absolute tolerance added to every entry's allowance (it never replaces the bound).
    backward_calls : call ``backward`` this many times and check the accumulated ``.grad``.
    symbols_map : ``{input name: Matrix/Array of the user's own symbols}`` for a SymPy ``symbolic``.
    title : the report's title.
    memory_budget : bytes the exploded (elementwise) back end may use (Note [Memory guard] in
        ``symgrad/graph/budget.py``); beyond it ``"auto"`` goes to the tensor back end and a forced
        ``"elementwise"`` is refused.  The tensor back end refuses, right after tracing, a graph whose
        estimated peak is beyond it (Note [Memory guard of the op graph]).  None: a quarter of the
        available memory for the exploded back end and half of it for the tensor back end, or
        ``SYMGRAD_MEMORY_BUDGET`` for both.
    quiet : ``True`` never shows progress (also: environment variable ``SYMGRAD_QUIET=1``); progress
        appears on stderr only for checks that take more than 2 s.
    order : ``2`` checks double backward (``gradgradcheck``'s question) against the exact second
        derivative: ``g = autograd.grad(f(x), x, v, create_graph=True)`` (``v``: the given cotangent, a
        random one for a tensor output, 1 for a scalar), then ``autograd.grad(g, x, w)`` for three random
        directions ``w`` (or ``tangents=``), each entry compared with ``w^T d2<v, f>/dx2`` (quantity
        ``hvp``).  A backward torch cannot differentiate (``@once_differentiable``, ``.detach()``/numpy
        inside) fails with a note saying so.  Small functions: exploded back end; modules and larger
        ones: the op graph (linear-algebra nodes refused).  Default ``1``.
    reference : ``"auto"`` (the default; the closed form in extended precision with a rounding bound, re-evaluated
        over mpmath where that bound is not small against an ulp of the checked dtype), ``"mpmath"``
        (every entry over mpmath) or ``"float"`` (never); each record states its reference's accuracy.
    strict : ``True`` makes an ``inaccurate`` record (right, but less accurate than the problem's
        conditioning allows; a warning by default) a failure.
    """
    reference = reference or reference_mode.get()  # None: "auto", or the mode of the check this one runs inside
    check_accuracy_options(reference, strict)
    token, depth = reference_mode.set(reference), nesting.set(nesting.get() + 1)
    try:
        # bounds may overflow to inf (a band that says "anything"), and inf * 0 is NaN: both are read
        # as such where verdicts are made, so numpy's warnings about them are noise to the user
        with np.errstate(all="ignore"), blas_limited():  # Note [BLAS threads on a busy machine]
            report = _route(fn, inputs, symbolic, wrt=wrt, via=via, v=v, tangents=tangents, loss=loss, target=target,
                            engine=engine, backend=backend, rtol=rtol, atol=atol, backward_calls=backward_calls,
                            symbols_map=symbols_map, title=title, memory_budget=memory_budget, order=order)
    finally:
        reference_mode.reset(token)
        nesting.reset(depth)
    _note_unchecked(report, fn, inputs, wrt)
    return apply_strict(report, strict, warn=nesting.get() == 0)


def _note_unchecked(report: Report, fn, inputs, wrt) -> None:
    """With no ``wrt``, a function's inputs that do not require grad are left out when others do:
    the report says which, so a skipped gradient is never mistaken for a checked one."""
    import torch

    if wrt is not None or _is_module(fn) or not report.records:
        return
    tensors = inputs.items() if isinstance(inputs, Mapping) else enumerate(inputs) if isinstance(inputs, (list, tuple)) else ()
    floats = {str(k): t for k, t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point()}
    left = [k for k, t in floats.items() if not t.requires_grad]
    if left and len(left) < len(floats):
        report.records[0].note = joined(report.records[0].note, (
            f"Not checked: {', '.join(left)} (requires_grad=False, while the other inputs require grad); pass "
            f"wrt={list(floats)!r} to check every input."))


def _route(fn, inputs, symbolic, *, wrt, via, v, tangents, loss, target, engine, backend, rtol, atol,
           backward_calls, symbols_map, title, memory_budget, order) -> Report:
    """``check``'s dispatch: second derivatives, modules, plain functions."""
    if engine not in ENGINES:
        raise InputError(f"engine must be one of {ENGINES}, not {engine!r}")
    engine = "graph" if engine == "matrix" else engine  # the matrix engine's successor, for functions too
    check_options(rtol, atol, backward_calls)
    check_callable(fn, symbolic=symbolic)
    check_wrt_type(wrt)
    check_backend(backend)
    refuse_zero_products(v, tangents)
    if via is not None:
        from .autograd.run import quantity_of

        quantity_of(via, v is not None)  # an unknown via: its error names the choices
    if order != 1:  # second derivatives: symgrad/order2.py
        from .graph.order2 import check_order
        from .order2 import check_second_order

        check_order(order, via)
        if backward_calls != 1:
            raise InputError("backward_calls applies to first-order checks (via='backward'), not to order=2")
        return check_second_order(fn, inputs, symbolic, wrt=wrt, via=via, v=v, tangents=tangents, engine=engine,
                                  backend=backend, rtol=rtol, atol=atol, symbols_map=symbols_map, title=title,
                                  memory_budget=memory_budget, loss=loss, target=target)
    if _is_module(fn):
        from .nn.check import check_module

        return check_module(fn, inputs, symbolic=symbolic, wrt=wrt, via=via, v=v, loss=loss, target=target,
                            engine=engine, backend=backend, rtol=rtol, atol=atol, title=title, tangents=tangents,
                            backward_calls=backward_calls, memory_budget=memory_budget)
    return check_plain(fn, inputs, symbolic, wrt=wrt, via=via, v=v, tangents=tangents, loss=loss, target=target,
                       engine=engine, backend=backend, rtol=rtol, atol=atol, backward_calls=backward_calls,
                       symbols_map=symbols_map, title=title, memory_budget=memory_budget)


# Note [One keyword list]
# ``assert_correct`` takes exactly ``check``'s arguments.  It is built from ``check`` rather than
# written with a second copy of the keyword list (which every new keyword had to be added to twice):
# ``functools.wraps`` sets ``__wrapped__``, so ``inspect.signature`` and ``help()`` show check's
# full signature, and the ``ParamSpec`` carries the same parameters to type checkers and IDEs
# (the package ships ``py.typed``).  Name and docstring are assert_correct's own.
def _raising(run: Callable[P, Report]) -> Callable[P, Report]:
    @functools.wraps(run)
    def assert_correct(*args: P.args, **kwargs: P.kwargs) -> Report:
        return run(*args, **kwargs).raise_for_failure()

    assert_correct.__name__ = assert_correct.__qualname__ = "assert_correct"
    assert_correct.__doc__ = (
        "``check(...)`` that raises ``GradientMismatch`` (an AssertionError) when a row fails (with\n"
        "    ``strict=True``, also when one is ``inaccurate``), and returns the passing ``Report`` otherwise.\n"
        "    The arguments are ``check``'s (see ``help(symgrad.check)``).")
    return assert_correct


assert_correct = _raising(check)
