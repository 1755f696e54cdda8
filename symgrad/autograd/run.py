"""Stage 4, autograd: run torch's differentiation the way the user names it.

``VIAS`` maps each name to the quantity it computes (see ``symgrad.differentiate.elementwise``)
and a runner.  Every runner takes the torch callable, the input tensors (leaves, ``requires_grad``
set on the differentiated ones) and returns ``{key: tensor}`` keyed like the closed forms.
"""

from __future__ import annotations

from typing import Callable, Mapping

from ..errors import AutogradFailed, InputError

__all__ = ["VIAS", "FORWARD_MODE_VIAS", "quantity_of", "run_autograd", "default_via", "run_double_backward",
           "private", "unmodified", "same_values"]

# name -> quantity it computes
VIAS = {
    "backward": "grad",  # out.backward(v) on a scalar (or with a cotangent: vjp)
    "autograd.grad": "grad",
    "functional.vjp": "vjp",
    "functional.jacobian": "jacobian",
    "functional.jvp": "jvp",
    "functional.hessian": "hessian",
    "jacrev": "jacobian",
    "jacfwd": "jacobian",
    "func.vjp": "vjp",
    "func.jvp": "jvp",
    "func.hessian": "hessian",
    "forward_ad": "jvp",  # torch.autograd.forward_ad dual tensors: runs a custom Function's jvp
    "onehot-vjp": "jacobian",  # one backward(v) per output entry, v one-hot (seed 004's answer)
}

# Note [Which vias run forward mode]
# ``func.jvp`` (torch.func.jvp) and ``forward_ad`` (torch.autograd.forward_ad's dual tensors) are real
# forward mode: a custom ``autograd.Function`` is run through its ``jvp`` staticmethod, so checking
# either checks ``Function.jvp``.  ``functional.jvp`` (torch.autograd.functional.jvp) is *not*: it
# computes the product with the double-vjp trick (two reverse-mode passes), so it runs the Function's
# ``backward`` and never its ``jvp`` -- a wrong ``jvp`` passes under it.
FORWARD_MODE_VIAS = ("func.jvp", "forward_ad")
MISSING_JVP_HINT = (
    "the custom autograd.Function has no jvp staticmethod, which forward mode (torch.func.jvp, "
    "torch.autograd.forward_ad) runs. Fix: define @staticmethod jvp(ctx, *tangents) returning the output's "
    "tangent (saving what it needs in forward/setup_context, e.g. ctx.save_for_forward(x)), or check the "
    "backward instead with via='functional.jvp' (the double-vjp trick) or a reverse-mode via")


def default_via(scalar_output: bool, has_cotangent: bool) -> str:
    return "backward" if scalar_output or has_cotangent else "functional.jacobian"


def quantity_of(via: str, has_cotangent: bool) -> str:
    if via not in VIAS:
        raise InputError(f"via={via!r} is not a way symgrad knows to run autograd; choose one of: {', '.join(VIAS)}")
    q = VIAS[via]
    return "vjp" if q == "grad" and has_cotangent else q


def run_autograd(
    fn: Callable,
    inputs: Mapping[str, object],
    wrt: list[str],
    via: str,
    *,
    cotangent=None,
    tangents: Mapping[str, object] | None = None,
    backward_calls: int = 1,
    record=None,
) -> dict:
    """Run autograd; returns ``{name: tensor}`` (``{(a, b): tensor}`` for Hessians, ``{"jvp": t}``).

    An error torch raises on the way becomes ``AutogradFailed``, saying what usually causes it.
    ``record``, a ``recording_ops()`` context, is entered around the run.
    """
    import contextlib

    try:
        with unmodified(inputs, wrt), record or contextlib.nullcontext():
            return _run(fn, inputs, wrt, via, cotangent=private(cotangent),
                        tangents=None if tangents is None else {k: private(t) for k, t in tangents.items()},
                        backward_calls=backward_calls)
    except (RuntimeError, NotImplementedError) as err:
        raise autograd_failure(err, via) from err
    except Exception as err:  # noqa: BLE001 - forward mode failing in a custom Function's jvp, or in torch
        if via in FORWARD_MODE_VIAS + ("functional.jvp", "jacfwd"):  # (functorch has no jvp rule for torch.cond)
            raise autograd_failure(err, via) from err
        raise


# Note [Code under test owns no reference value]
# The reference is computed from the inputs, the cotangent and the tangents, some of it after torch has
# run.  Code under test can write into what it is given: a backward that zeroes ``grad_output`` in place
# and returns it (``return g.zero_()``), or one that does ``x.add_(1)`` on its saved input.  When torch
# was handed the very tensor the reference reads later (a float64 cotangent is ``v`` itself, and the op
# graph's random cotangent a numpy view of it), the reference moved with the bug: the zeroed cotangent
# made the exact vjp 0 and the wrong backward passed.  So torch gets private copies of every cotangent,
# tangent and direction (``private``), and the differentiated inputs are compared bit for bit before and
# after torch runs (``unmodified``): a function that changed one raises ``AutogradFailed`` naming it,
# since no derivative at the point the user gave was computed.  Only the differentiated inputs are
# watched: a module's buffers (batch-norm running statistics) change in forward by design.
def private(t):
    """A copy of tensor ``t`` that code under test may write into without reaching the reference."""
    import torch

    return t.detach().clone() if isinstance(t, torch.Tensor) else t


def same_values(before, after):
    """Where two tensors of one shape hold the same values, NaN equal to NaN."""
    import torch

    return (before == after) | (torch.isnan(before) & torch.isnan(after))


class unmodified:
    """Raise ``AutogradFailed`` when the code run inside changed a differentiated input in place
    (Note [Code under test owns no reference value])."""

    def __init__(self, inputs: Mapping[str, object], wrt):
        import torch

        self.inputs = inputs
        self.saved = {w: inputs[w].detach().clone() for w in wrt
                      if isinstance(inputs.get(w), torch.Tensor) and inputs[w].is_floating_point()}

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if kind is None:
            for name, before in self.saved.items():
                self._same(name, before, self.inputs[name].detach())
        return False

    @staticmethod
    def _same(name, before, after):
        import torch

        same = same_values(before, after)
        if bool(same.all()):
            return
        i = tuple(int(k) for k in torch.nonzero(~same)[0]) if before.dim() else ()
        index = f"[{', '.join(map(str, i))}]" if i else ""
        raise AutogradFailed(
            f"the function under test changed input {name!r} in place while torch ran it ({name}{index} was "
            f"{before[i].item()!r}, then {after[i].item()!r}): its derivatives were not computed at the point "
            "given, so none can be checked. Fix: do not write into the inputs or the saved tensors in forward "
            "or backward (use out-of-place ops, or clone before an in-place one).")


def autograd_failure(err: Exception, via: str) -> AutogradFailed:
    """The ``AutogradFailed`` for an error torch raised while running autograd ``via``: its first line
    and what usually causes it."""
    text = str(err)
    if "implement the jvp function" in text:
        hint = MISSING_JVP_HINT
    elif isinstance(err, NotImplementedError):
        hint = "torch has no rule for an op of the function under this way of running autograd"
    elif "does not require grad" in text or "does not have a grad_fn" in text:
        hint = ("the torch function's output is not connected to the differentiated inputs: it detaches them, "
                "runs under torch.no_grad(), goes through numpy, or uses an op with no derivative")
    elif "setup_context" in text or "functorch" in text or "vmap" in text:
        hint = ("torch.func transforms (jacrev, jacfwd, func.vjp/jvp/hessian) need a custom autograd.Function "
                "to define setup_context (and vmap support); use via='functional.jacobian', 'backward' or "
                "'autograd.grad' instead")
    else:
        hint = "the torch function (or its backward) failed under this way of running autograd"
    first = text.splitlines()[0] if text else ""
    if not isinstance(err, (RuntimeError, NotImplementedError)):  # a KeyError's text alone says little
        first = f"{type(err).__name__}: {first}" if first else type(err).__name__
    failure = AutogradFailed(f"torch raised while running via={via!r}: "
                             f"{(first or type(err).__name__).rstrip('.')}. Likely cause: {hint}.")
    # a jvp raising NotImplementedError says it is not there, as torch's default jvp does: not a bug
    failure.in_user_jvp = _in_user_jvp(err) and not isinstance(err, NotImplementedError)
    return failure


def _in_user_jvp(err: Exception) -> bool:
    """Whether ``err`` came from a custom Function's own ``jvp``: raised inside one (a frame of a jvp
    whose first argument is a Function's ctx, outside torch), or torch refusing the tangent it
    returned (Note [A jvp that raises] in graph/check.py)."""
    import torch
    from torch.autograd.function import FunctionCtx

    if "forward gradient that has a different size" in str(err):  # torch refusing the tangent a jvp returned
        return True
    tb = err.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_argcount:  # jvp(ctx, *tangents) of a Function, under any name
            first = frame.f_locals.get(frame.f_code.co_varnames[0])
            jvp = getattr(getattr(first, "_forward_cls", None), "jvp", None)
            if isinstance(first, FunctionCtx) and not frame.f_code.co_filename.startswith(torch.__path__[0]) and (
                    frame.f_code.co_name == "jvp" or getattr(jvp, "__code__", None) is frame.f_code):
                return True
        tb = tb.tb_next
    return False


def _run(fn, inputs, wrt, via, *, cotangent=None, tangents=None, backward_calls=1) -> dict:
    import torch

    names = list(inputs)
    idx = [names.index(w) for w in wrt]

    def call_with(diff_args):
        args = [inputs[n] for n in names]
        for i, a in zip(idx, diff_args):
            args[i] = a
        return fn(*args)

    diff = tuple(inputs[w] for w in wrt)
    if via == "backward":
        out = call_with(diff)
        for _ in range(backward_calls):
            out.backward(cotangent, retain_graph=True)
        # .grad None: autograd never reached it (unused, or detached); compared as zeros (see compare_all)
        return {w: None if inputs[w].grad is None else inputs[w].grad.detach() for w in wrt}
    if via == "autograd.grad":
        out = call_with(diff)
        grads = torch.autograd.grad(out, diff, grad_outputs=cotangent, allow_unused=True)
        return {w: _zeros_if_none(g, inputs[w]) for w, g in zip(wrt, grads)}
    if via in ("functional.vjp", "func.vjp"):
        if via == "functional.vjp":
            _, grads = torch.autograd.functional.vjp(lambda *d: call_with(d), diff, cotangent)
        else:
            _, pullback = torch.func.vjp(lambda *d: call_with(d), *diff)
            grads = pullback(cotangent)
        return dict(zip(wrt, grads))
    if via == "forward_ad":
        return {"jvp": _forward_ad(call_with, diff, tuple(tangents[w] for w in wrt))}
    if via in ("functional.jvp", "func.jvp"):
        t = tuple(tangents[w] for w in wrt)
        if via == "functional.jvp":
            _, out = torch.autograd.functional.jvp(lambda *d: call_with(d), diff, t)
        else:
            _, out = torch.func.jvp(lambda *d: call_with(d), diff, t)
        return {"jvp": out}
    if via in ("functional.jacobian", "jacrev", "jacfwd"):
        if via == "functional.jacobian":
            jac = torch.autograd.functional.jacobian(lambda *d: call_with(d), diff)
        else:
            jac = getattr(torch.func, via)(lambda *d: call_with(d), argnums=tuple(range(len(diff))))(*diff)
        return dict(zip(wrt, jac))
    if via == "onehot-vjp":
        return _onehot_jacobian(call_with(diff), diff, wrt)
    if via in ("functional.hessian", "func.hessian"):
        if via == "functional.hessian":
            hes = torch.autograd.functional.hessian(lambda *d: call_with(d), diff)
        else:
            hes = torch.func.hessian(lambda *d: call_with(d), argnums=tuple(range(len(diff))))(*diff)
        return {(a, b): hes[i][j] for i, a in enumerate(wrt) for j, b in enumerate(wrt)}
    raise InputError(f"via={via!r} is not a way symgrad knows to run autograd; choose one of: {', '.join(VIAS)}")


def _onehot_jacobian(out, diff: tuple, wrt: list) -> dict:
    """The Jacobian built row by row from one-hot ``backward(v)`` calls, as seed 004's answer describes."""
    import torch

    flat = out.reshape(-1)
    rows = {w: [] for w in wrt}
    for i in range(flat.numel()):
        onehot = torch.zeros_like(flat)
        onehot[i] = 1
        grads = torch.autograd.grad(out, diff, grad_outputs=onehot.reshape(out.shape), retain_graph=True,
                                    allow_unused=True)
        for w, d, g in zip(wrt, diff, grads):
            rows[w].append(torch.zeros_like(d) if g is None else g)
    return {w: torch.stack(rows[w]).reshape(tuple(out.shape) + tuple(d.shape)) for w, d in zip(wrt, diff)}


def _forward_ad(call_with, diff: tuple, tangents: tuple):
    """The output's tangent through ``torch.autograd.forward_ad`` dual tensors (zero where the output
    does not depend on them)."""
    import torch
    import torch.autograd.forward_ad as fwad

    with fwad.dual_level():
        duals = tuple(fwad.make_dual(d.detach(), t.to(d.dtype)) for d, t in zip(diff, tangents))
        out = call_with(duals)
        tangent = fwad.unpack_dual(out).tangent
        if tangent is not None:
            return tangent.detach().clone()
        zeros = torch.zeros_like(out).detach()
        zeros.symgrad_no_tangent = True  # Note [A tangent torch drops] (forward_mode.py): none, read as zeros
        return zeros


def _zeros_if_none(grad, like):
    import torch

    return torch.zeros_like(like) if grad is None else grad


# Note [Double backward]
# ``order=2`` checks what ``torch.autograd.gradgradcheck`` checks, against the exact second derivative:
# ``g = grad(f(x), x, v, create_graph=True)`` and then ``grad(g, x, w)`` for a few directions ``w``,
# i.e. ``H w`` with ``H`` the Hessian of ``<v, f>``.  A first backward whose result torch cannot
# differentiate (``@once_differentiable``, ``.detach()`` or numpy inside a custom ``backward``, a
# returned tensor built outside the graph) has no ``grad_fn``: torch's second ``grad`` would raise
# "does not require grad".  That is also what a *linear* function gives (its gradient is constant),
# so it is not an error here: the product is compared as zeros -- right where the exact second
# derivative is zero, a failure (with a note naming the non-differentiable backward) where it is not.
# gradgradcheck also differentiates the backward with respect to its cotangent (the second backward
# of a backward that detaches ``grad_output``, or computes on it in numpy, misses that term, and
# every double-vjp jvp through it breaks) and differentiates a first backward run with
# create_graph=True, whose value may differ from the plain one (a fused kernel with a composite
# fallback under grad mode).  So the cotangent requires grad, and the check also gets
# ``d<g, w>/dv = J w`` per direction and ``g`` itself, each against its exact value.
NOT_DIFFERENTIABLE_NOTE = (
    "the first backward's result for {name} has no grad_fn, so torch cannot differentiate it again: the "
    "backward is not differentiable (a custom Function's backward marked @once_differentiable, or one that "
    "uses .detach(), numpy or torch.no_grad, or returns a tensor not built from its inputs and saved "
    "tensors by differentiable torch ops); compared as zeros. Fix: write the backward in differentiable "
    "torch ops on ctx.saved_tensors (save inputs or outputs, not detached intermediates)")


def run_double_backward(fn: Callable, inputs: Mapping[str, object], wrt: list[str], cotangent, directions: list,
                        extras: dict | None = None):
    """``({name: stacked H w}, note)``: torch's double backward of ``fn`` for each direction
    (``{name: tensor}``); a first backward torch cannot differentiate is compared as zeros, with a note
    (Note [Double backward]).  ``extras``, when given, receives ``"grad"``: {name: the first backward
    run with create_graph=True} and ``"jw"``: the stacked derivatives in the cotangent, J w.  Any
    other error torch raises becomes ``AutogradFailed``."""
    import torch

    try:
        with torch.enable_grad(), unmodified(inputs, wrt):
            names = list(inputs)
            diff = [inputs[w] for w in wrt]
            out = fn(*(inputs[n] for n in names))
            if not isinstance(out, torch.Tensor) or not out.requires_grad:
                raise RuntimeError("does not require grad: the output is not connected to the inputs")
            cot = torch.ones_like(out) if cotangent is None else private(cotangent.to(out.dtype))
            cot.requires_grad_(True)  # gradgradcheck's second term: the backward's derivative in it
            grads = torch.autograd.grad(out, diff, cot, create_graph=True, allow_unused=True)
            live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
            per_dir, jw = [], []
            for k, d in enumerate(directions):
                if not live:
                    per_dir.append([None] * len(wrt))
                    jw.append(None)
                    continue
                got = torch.autograd.grad([grads[i] for i in live], diff + [cot],
                                          [private(d[wrt[i]].to(out.dtype)) for i in live],
                                          retain_graph=k + 1 < len(directions), allow_unused=True)
                per_dir.append(list(got[:-1]))
                jw.append(got[-1])
            # no grad_fn, or one that reaches the inputs by no path (it depends on the cotangent alone)
            dead = [repr(w) for i, w in enumerate(wrt) if grads[i] is not None and (
                i not in live or all(got[i] is None for got in per_dir))]
            note = NOT_DIFFERENTIABLE_NOTE.format(name=" and ".join(dead)) if dead else ""
    except (RuntimeError, NotImplementedError) as err:
        text = str(err)
        if "not implemented" in text and "derivative for" in text:
            hint = ("torch has no derivative for this backward (an op whose double backward torch does not "
                    "implement): its second derivatives cannot be checked through it")
        else:
            hint = ("the torch function's output does not depend on the differentiated inputs, or its backward "
                    "fails when run with create_graph=True")
        first = (text.splitlines()[0] if text else type(err).__name__).rstrip(".")
        raise AutogradFailed(f"torch raised while running the double backward (order=2): "
                             f"{first}. Likely cause: {hint}.") from err
    result = {}
    for i, w in enumerate(wrt):
        parts = [torch.zeros_like(inputs[w]) if got[i] is None else got[i].detach() for got in per_dir]
        result[w] = torch.stack(parts)
    if extras is not None:
        extras["grad"] = {w: torch.zeros_like(inputs[w]) if g is None else g.detach() for w, g in zip(wrt, grads)}
        extras["jw"] = torch.stack([torch.zeros_like(out) if j is None else j.detach() for j in jw])
    return result, note
