"""Grad mode and in-place calls while tracing (Note [Grad mode inside forward]): each fx node notes
whether torch recorded it under ``no_grad`` (NO_GRAD) and inside an in-place call (IN_PLACE); the
interpreter (``interpret._no_grad_result``) turns them into the stops torch's autograd has."""

from __future__ import annotations

import sys
from contextlib import contextmanager

__all__ = ["refuse_differentiated_function", "NO_GRAD", "IN_PLACE", "IN_FUNCTION", "SEQUENTIAL", "EXP_SLOPE", "BACKWARD_UNSEEN", "DECOMPOSED", "marking_grad_mode", "sequential_sums",
           "slope_from_input", "OWN_STOP", "own_stop", "CHOSEN", "chosen_from_values", "marking"]


# Note [Grad mode inside forward]
# Code under ``torch.no_grad()`` (a running statistic, a normaliser, a target) is a constant to
# torch's backward, but make_fx records its ops like any other: read as they stand, the closed form
# would differentiate through them and disagree with a right backward (a false alarm).  While
# tracing, every fx node notes whether grad mode was on when it was recorded (NO_GRAD in its meta;
# the trace itself runs under ``enable_grad``, so only the traced code's own ``no_grad`` counts), and
# the interpreter wraps the float results of such nodes in a ``stop`` that holds for reverse mode
# only: torch's forward-mode AD ignores grad mode (``detach`` stops both and stays a plain stop).
# torch runs a custom ``autograd.Function``'s forward under ``no_grad`` too, but those ops are the
# function checked: inside ``Function.apply`` the grad mode of its caller counts.  An in-place op
# under ``no_grad`` on a tracked tensor (cosine_similarity clamps its norms so, in C++) keeps the
# tensor's history: its gradient passes straight through (``_no_grad_result`` in interpret.py), as
# does one on a detached alias of it (``F.embedding(max_norm=)`` renorms ``weight.detach()``).  An
# in-place call is seen by wrapping torch's in-place methods and functions while tracing (IN_PLACE:
# functionalization writes it out of place) or where the trace keeps it in place (cosine_similarity's
# C++ ``clamp_min_``).
NO_GRAD = "symgrad_no_grad"
IN_PLACE = "symgrad_in_place"  # recorded inside an in-place call (functionalization writes it out of place)


# Note [Inside a custom Function's forward]
# torch runs ``Function.forward`` with autograd off, so its ``detach()`` and ``.data`` change no
# history: the Function checked is the map its forward computes, values included, and its backward
# must give that map's derivative.  Read as a stop, ``x * exp(x.detach())`` would have the closed
# form exp(x), and a backward that forgot the second term (the true derivative is exp(x) (1 + x))
# would pass while the right one failed.  So every fx node recorded inside a Function's forward notes
# IN_FUNCTION, and there ``detach`` is the identity.  A value the forward takes out of torch
# (``.numpy()``, ``.tolist()``, ``np.asarray``) comes back as a constant the trace cannot follow,
# so the trace refuses it, naming ``symbolic=``; outside a Function, such a value was detached first
# and is a constant to torch's autograd too.
IN_FUNCTION = "symgrad_in_function"

# Note [.data in the trace]
# ``w.data`` is ``w`` cut from autograd's history, but make_fx records no op for it: read as it stands,
# ``w * w.data`` would be differentiated as ``w * w``.  While tracing, reading ``.data`` is
# ``detach()``, which the trace records (a stop; inside a Function's forward the identity, Note
# [Inside a custom Function's forward]); writing ``.data`` is left as torch does it.
_LEAVING = ("numpy", "tolist", "__array__")


# Notes on fx nodes by the stretch of tracing that records them: while ``marking(key, value)`` is
# open, every fx node created notes ``meta[key] = value`` (the innermost, where they nest).
_MARKS: dict = {}


@contextmanager
def marking(key: str, value):
    """The fx nodes recorded inside note ``key`` = ``value``."""
    _MARKS.setdefault(key, []).append(value)
    try:
        yield
    finally:
        _MARKS[key].pop()


# fx nodes recorded inside ``sequential_sums(dtypes)``: their reverse sums are torch's one-term-at-a-time
# additions in those dtypes (Note [Sequential reverse sums] in graph/approx.py)
SEQUENTIAL = "symgrad_sequential"


def sequential_sums(dtypes: tuple):
    return marking(SEQUENTIAL, tuple(dtypes))


# Note [elu's slope from its input]
# elu, selu and celu trace to ``where(x > 0, scale x, alpha scale expm1(c x))``, and torch's own
# expm1 backward is ``g (result + 1)``: read so, the derivative's bound charged the rounding of a
# result near -1 against a slope of exp(c x), and below x = -15 in float32 (-20 in float64) a
# negated elu gradient passed (allowed 463 times its value).  torch's elu_backward takes the slope
# from the input, ``alpha scale c exp(c x)``, to an ulp, except in place (``F.elu(x, inplace=True)``,
# ``nn.ELU(inplace=True)``, ``selu_``, ``celu_``), where the input is gone and it uses the result,
# with that cancellation.  So the expm1 nodes of those three decompositions note EXP_SLOPE, and one
# recorded outside an in-place call (IN_PLACE) is read as ``expm1_exp`` (graph/functions.py), whose
# derivative is exp.
# A custom Function's backward is not torch's: one that saves the result (InPlace-ABN, memory-saving
# kernels, the in-place form written by hand) computes torch's in-place slope, ``result + 1``, and
# read with exp's bound it failed at x = -5 in float64 (40 ulps) and by 6 % in bfloat16, while the
# same numbers from ``F.selu(x, inplace=True)`` passed.  Inside a Function's forward (IN_FUNCTION)
# or a reference forward given as ``symbolic=`` (BACKWARD_UNSEEN: the backward checked is not the
# one torch would run for it), such an expm1 is ``expm1_either`` (graph/functions.py): either slope
# is allowed, the result's rounding capped at the slope's own size: where ``result + 1`` cannot
# resolve the slope at all (below x = -9 in bfloat16, -17 in float32) a result-based backward may
# give 0, and a negated gradient still fails.
EXP_SLOPE = "symgrad_exp_slope"
BACKWARD_UNSEEN = "symgrad_backward_unseen"
DECOMPOSED = "symgrad_decomposed"  # recorded inside one of the trace's decompositions (trace.decompositions)


def slope_from_input():
    return marking(EXP_SLOPE, True)


# A detach symgrad's own decomposition writes (the flash kernel's max shift, Note [Attention as the
# flash kernel computes it]) is a stop wherever it is traced, inside a custom Function's forward too:
# Note [Inside a custom Function's forward] reads only the user's own detach as the identity.
OWN_STOP = "symgrad_own_stop"


def own_stop():
    return marking(OWN_STOP, True)


# fx nodes of a decomposition whose form was chosen from the traced values (the matrix
# exponential's number of squarings): the graph holds at those values only and is never cached
# (``graph.specialized``, Note [Value-dependent branches] in interpret_data.py)
CHOSEN = "symgrad_chosen_from_values"


def chosen_from_values(reason: str):
    return marking(CHOSEN, reason)


@contextmanager
def marking_grad_mode():
    """Every fx node created inside notes ``NO_GRAD`` when grad mode is off (Note [Grad mode inside forward])."""
    import torch
    import torch.fx as fx

    import torch.autograd.function as function

    create, setup_defined = fx.Graph.create_node, function._is_setup_context_defined
    apply_code = torch.autograd.Function.apply.__func__.__code__
    calls: dict = {}  # id(frame of Function.apply) -> (that frame, grad mode of its caller)

    def noting(*args, **kwargs):  # the first thing Function.apply calls
        frame = sys._getframe(1)
        if frame.f_code is apply_code:
            refuse_differentiated_function(frame.f_locals.get("cls"))
            calls[id(frame)] = (frame, torch.is_grad_enabled())
        return setup_defined(*args, **kwargs)

    def apply_call(depth: int):
        """(frame, caller's grad mode) of the innermost ``Function.apply`` running, or None."""
        if not calls:
            return None
        frame = sys._getframe(depth + 1)
        while frame is not None:
            got = calls.get(id(frame))
            if got is not None and got[0] is frame:
                return got
            frame = frame.f_back
        return None

    in_place: list = []

    def marked(self, *args, **kwargs):
        node = create(self, *args, **kwargs)
        inside = apply_call(1)  # inside a custom Function's forward: its caller's grad mode counts
        if not (torch.is_grad_enabled() or (inside is not None and inside[1])):
            node.meta[NO_GRAD] = True
        if inside is not None:  # Note [Inside a custom Function's forward]
            node.meta[IN_FUNCTION] = True
        if in_place:
            node.meta[IN_PLACE] = True
        for key, stack in _MARKS.items():
            if stack:
                node.meta[key] = stack[-1]
        return node

    def leaving(name):
        method = getattr(torch.Tensor, name)

        def run(self, *args, **kwargs):
            if self.is_floating_point() and apply_call(1) is not None:
                from ..errors import UnsupportedOp

                raise UnsupportedOp(
                    f"a custom autograd.Function's forward takes values out of torch (Tensor.{name}): the trace "
                    "sees a constant where the Function computes from its inputs, so the derivative of the map "
                    "it computes cannot be read from it. Fix: pass symbolic= with the same forward written in "
                    "torch ops (Note [Inside a custom Function's forward])")
            return method(self, *args, **kwargs)

        return run

    data = torch._C.TensorBase.data  # Note [.data in the trace]

    saved = {name: torch.Tensor.__dict__.get(name) for name in _LEAVING + ("data",)}
    fx.Graph.create_node, function._is_setup_context_defined = marked, noting
    for name in _LEAVING:
        setattr(torch.Tensor, name, leaving(name))
    torch.Tensor.data = property(lambda self: self.detach(), lambda self, new: data.__set__(self, new))
    try:
        with _noting_in_place(in_place):
            yield
    finally:
        fx.Graph.create_node, function._is_setup_context_defined = create, setup_defined
        for name, old in saved.items():
            if old is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, old)
        calls.clear()


# Note [A custom Function differentiated inside the forward]
# A forward that takes a derivative with torch.func (a PINN's residual from ``vmap(grad(u))``, a MAML
# inner step, a gradient penalty through ``func.grad``) is traced through that transform: make_fx
# records the ops that compute the inner derivative.  Where the inner derivative goes through a
# custom autograd.Function, those ops are the Function's hand-written backward (or jvp), and the
# op graph, the reference, was built from the code under test: a backward 1e-3 off inside a PINN's
# residual passed at every size and dtype, the loss itself 1e-3 off.  A Function applied under a
# grad or jvp transform during the trace is refused, naming the fix.  (Under vmap alone only its
# forward runs, which the trace reads as ever; the legacy ``autograd.grad`` inside forward is refused
# by trace.NESTED_GRAD.)
def refuse_differentiated_function(cls) -> None:
    """Raise ``UnsupportedOp`` where custom Function ``cls`` is applied under a torch.func grad or jvp
    transform (Note [A custom Function differentiated inside the forward])."""
    import torch
    from torch._C._functorch import TransformType, get_interpreter_stack

    if not torch._C._are_functorch_transforms_active():
        return
    kinds = {i.key() for i in (get_interpreter_stack() or [])}
    if not kinds & {TransformType.Grad, TransformType.Jvp}:
        return
    from ..errors import UnsupportedOp

    name = getattr(cls, "__qualname__", "a custom autograd.Function")
    raise UnsupportedOp(
        f"the forward differentiates through the custom autograd.Function {name} (torch.func.grad, vjp, jvp, "
        "jacrev or jacfwd inside the forward runs its hand-written backward or jvp), so a reference traced from "
        "it would contain that derivative, the code under test. Fix: check the computation as a function of its "
        f"inputs and weights, symgrad.check(f, {{...}}, symbolic=g), with g the same function in torch ops in place "
        f"of {name} (the inner derivative is then taken exactly, and torch's run through {name} is checked "
        f"against it); and check {name} itself with symgrad.check({name}.apply, ..., order=2).")


_IN_PLACE_DUNDERS = ("__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__ipow__", "__imod__",
                     "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__", "__imatmul__")


# in-place functions functionalization cannot follow (torch.selu_ is a composite whose output
# aliases its input: "custom (non-ATen) operator whose output has alias annotations"), traced as the
# out-of-place op copied back, as torch's own in-place kernel leaves them
def _selu_in_place(x):
    import torch

    return x.copy_(torch.selu(x))


_FUNCTIONAL_TWINS = {(True, "selu_"): _selu_in_place}

# the in-place ATen packets whose trace depends on it (Note [elu's slope from its input])
_ATEN_IN_PLACE = ("elu_", "celu_", "selu_")


class _NotingPacket:
    """An ATen op packet whose calls note IN_PLACE; every attribute (``.default``, the schema) is the
    packet's own."""

    def __init__(self, packet, call):
        self._packet, self._call = packet, call

    def __call__(self, *args, **kwargs):
        return self._call(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._packet, name)


@contextmanager
def _noting_in_place(flag: list):
    """While inside, every in-place tensor method and ``torch.*_`` function pushes onto ``flag`` for
    the duration of its call, however deep in torch's Python code it is made (a TorchFunctionMode
    would not see the calls inside ``F.gaussian_nll_loss``'s own ``var.clamp_``)."""
    import torch

    def wrapped(fn):
        def run(*args, **kwargs):
            flag.append(True)
            try:
                return fn(*args, **kwargs)
            finally:
                flag.pop()
        return run

    saved = []
    names = [n for n in dir(torch._C.TensorBase) if n.endswith("_") and not n.startswith("_")
             and n not in ("requires_grad_", "retain_grad_", "share_memory_")] + list(_IN_PLACE_DUNDERS)
    for name in names:
        fn = getattr(torch.Tensor, name, None)
        if callable(fn):
            saved.append((torch.Tensor, name, torch.Tensor.__dict__.get(name)))
            setattr(torch.Tensor, name, wrapped(fn))
    for owner in (torch, torch._C._nn):  # torch._C._nn: F.elu's in-place kernel, elu_ (and hardtanh_, ...)
        for name in [n for n in dir(owner) if n.endswith("_") and not n.startswith("_") and n[:-1].isidentifier()]:
            fn = getattr(owner, name, None)
            if callable(fn) and not isinstance(fn, type):
                saved.append((owner, name, fn))
                setattr(owner, name, wrapped(_FUNCTIONAL_TWINS.get((owner is torch, name), fn)))
    for name in _ATEN_IN_PLACE:  # torch.ops.aten.elu_(x): the packet called (its overloads stay as they are)
        packet = getattr(torch.ops.aten, name, None)
        if packet is not None:
            saved.append((torch.ops.aten, name, packet))
            setattr(torch.ops.aten, name, _NotingPacket(packet, wrapped(packet)))
    try:
        yield
    finally:
        for owner, name, old in reversed(saved):
            if old is None:
                delattr(owner, name)
            else:
                setattr(owner, name, old)
