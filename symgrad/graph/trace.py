"""Trace torch code into the op graph: ``make_fx`` down to core ATen ops, then one handler per op.

Stage "trace": a module, a plain torch function or a reference forward is run once under
``torch.fx.experimental.proxy_tensor.make_fx`` (functionalized, with torch's own decompositions
of composite ops such as ``layer_norm``, ``silu``, ``nll_loss`` and ``lstm``), and every ATen call
of the resulting graph becomes core nodes through the handler table of ``symgrad.graph.aten``.

Constant folding: a call none of whose tensor arguments depends on an input or parameter (target
masks, class-index arithmetic, buffers) runs in torch at float64 and becomes a constant leaf.
Integer results that depend on floats (the indices of ``max.dim``) are taken from the traced run.
"""

from __future__ import annotations

import traceback
import warnings
from contextlib import contextmanager

import numpy as np
import sympy as sp

from ..errors import InputError, SymgradError, UnsupportedOp
from .approx import Approx
from .ir import Graph, Node
from .scalar import Ctx
from .trace_fused import keeping_fused_ops
from .trace_grad import marking_grad_mode

__all__ = ["Builder", "trace_callable", "decompositions", "number"]

_DECOMPOSE = (
    "gelu", "native_layer_norm", "silu", "native_group_norm",
    "_native_batch_norm_legit_no_training", "native_batch_norm", "mish", "hardswish",
    "hardsigmoid", "nll_loss_forward", "nll_loss2d_forward", "elu", "softplus", "leaky_relu",
    "hardtanh", "glu", "lstm", "gru", "rnn_tanh", "rnn_relu", "linalg_vector_norm", "addmm",
    "baddbmm", "addbmm", "_scaled_dot_product_flash_attention_for_cpu", "mse_loss", "binary_cross_entropy",
    "huber_loss", "smooth_l1_loss", "soft_margin_loss",
    "logit", "_adaptive_avg_pool2d", "adaptive_avg_pool1d", "upsample_bilinear2d", "upsample_nearest2d",
    "pixel_shuffle", "rrelu_with_noise", "threshold", "softshrink", "hardshrink", "celu", "selu", "prelu",
    "_prelu_kernel", "addcmul", "addcdiv", "lerp", "logaddexp", "hypot", "norm", "dist",
    "mv", "dot", "vdot", "addmv", "addr", "outer", "triu", "tril", "diag_embed", "trace", "std", "var_mean",
    "std_mean", "nan_to_num", "deg2rad", "rad2deg", "log10", "log2", "exp2",
    "huber_loss", "_euclidean_dist", "cosine_similarity", "logcumsumexp",
    "native_dropout", "margin_ranking_loss", "poisson_nll_loss", "kl_div", "cosine_embedding_loss",
    "hinge_embedding_loss", "triplet_margin_loss", "multi_margin_loss", "im2col", "col2im", "reflection_pad1d",
    "reflection_pad2d", "reflection_pad3d", "replication_pad1d", "replication_pad2d", "replication_pad3d",
    "avg_pool1d", "max_pool1d", "linalg_cross", "roll", "rot90", "repeat", "unfold", "embedding_dense_backward",
    "_upsample_nearest_exact1d", "_upsample_nearest_exact2d", "_upsample_nearest_exact3d", "upsample_nearest1d",
    "upsample_nearest3d",
    "upsample_trilinear3d", "upsample_bicubic2d", "grid_sampler_2d", "upsample_linear1d",
)

_TABLE = None


def decompositions() -> dict:
    """torch's core-ATen decompositions plus those of the composites above (built once per process)."""
    global _TABLE
    if _TABLE is None:
        import torch
        import torch._decomp as decomp

        packets = [getattr(torch.ops.aten, n) for n in _DECOMPOSE if hasattr(torch.ops.aten, n)]
        # the core-ATen table itself (torch.export's public helper also collects every implicit op,
        # half a second, which make_fx decomposes on its own anyway)
        table = dict(decomp._core_aten_decompositions_post_autograd())
        table.update(decomp.get_decompositions(packets))
        keep = {"convolution", "max_pool2d_with_indices", "avg_pool2d", "avg_pool3d", "max_pool3d_with_indices",
                "mm", "bmm", "sigmoid", "tanh", "expm1", "log1p", "xlogy",
                "detach",  # the core table writes it as alias: unfunctionalized traces would lose the stop
                "special_xlog1py",  # Note [xlog1py as torch's kernel] in graph/aten.py
                "logsumexp",  # read by graph/aten_shift.py, max shift detached (its decomposition shadowed it)
                "multilabel_margin_loss_forward",  # torch 2.13's decomposition of it computes another value
                "cumsum",  # graph/aten_scan.py: in blocks (Note [A running sum in blocks])
                "eye",  # a constant; torch 2.13's decomposition takes a uint16 arange from n = 256, which CPU lacks
                "log_sigmoid_forward",  # Note [logsigmoid as torch's kernel] in graph/aten_ext.py
                "sinc",  # Note [sinc at 0] in graph/aten.py
                "special_log_ndtr"}  # Note [log_ndtr as torch's kernel] in graph/functions_stats.py
        _TABLE = {k: v for k, v in table.items() if getattr(k, "__name__", "").split(".")[0] not in keep}
        for op in (torch.ops.aten.elu.default, torch.ops.aten.selu.default, torch.ops.aten.celu.default):
            if op in _TABLE:  # Note [elu's slope from its input] in trace_grad.py
                _TABLE[op] = _slope_from_input(_TABLE[op])
        for op in (torch.ops.aten.celu.default,):
            if op in _TABLE:
                _TABLE[op] = _noting_float32_reciprocal(_TABLE[op])
        from .decomp_vision import VISION_DECOMPOSITIONS, kept_size_scales

        _TABLE.update(VISION_DECOMPOSITIONS())  # kernels torch has no decomposition of
        from .decomp_attention import ATTENTION_DECOMPOSITIONS

        _TABLE.update(ATTENTION_DECOMPOSITIONS())  # Note [Attention as the flash kernel computes it]
        kept_size_scales(_TABLE)  # Note [Scales of a kept size]
        # hardsigmoid' holds 1/6 as a float literal (1.0f / 6.0f) even in float64 kernels; hardswish'
        # is x / 3 + 0.5 in the kernel's own dtype, exact to float64's rounding there
        op = torch.ops.aten.hardsigmoid.default
        if op in _TABLE:
            _TABLE[op] = _noting_float32_reciprocal(_TABLE[op], 6.0)
        op = torch.ops.aten.native_layer_norm.default
        if op in _TABLE:
            _TABLE[op] = _sequential_affine(_TABLE[op])
        _TABLE = {op: _decomposing(fn) for op, fn in _TABLE.items()}
    return _TABLE


def _decomposing(decomposed):
    """A decomposition whose fx nodes note DECOMPOSED: the dtypes inside it are the decomposition's
    (glu, std, instance_norm upcast a half input to float32 there), not torch's kernel's (Note
    [Nodes computed in a wider dtype] in graph/approx.py)."""
    from .trace_grad import DECOMPOSED, marking

    def run(*args, **kw):
        with marking(DECOMPOSED, True):
            return decomposed(*args, **kw)

    return run


def _sequential_affine(decomposed):
    """native_layer_norm's decomposition with its weight and bias applied after it, under
    ``sequential_sums``: torch's CPU kernel adds their gradients up row by row, in every dtype (the
    half ones in the half dtype; Note [Sequential reverse sums] in graph/approx.py)."""
    from .trace_grad import sequential_sums

    def run(x, shape, weight=None, bias=None, eps=1e-5):
        out, mean, rstd = decomposed(x, shape, None, None, eps)
        with sequential_sums(("float32", "float64", "float16", "bfloat16")):
            if weight is not None:
                out = out * weight
            if bias is not None:
                out = out + bias
        return out, mean, rstd

    return run


def _slope_from_input(decomposed):
    """elu's (selu's, celu's) decomposition with its nodes noting EXP_SLOPE (Note [elu's slope from
    its input] in trace_grad.py)."""
    from .trace_grad import slope_from_input

    def run(*args, **kw):
        with slope_from_input():
            return decomposed(*args, **kw)

    return run


def _noting_float32_reciprocal(decomposed, fixed: float | None = None):
    """A decomposition that first notes a reciprocal torch's float64 backward rounds to float32:
    celu's 1/alpha, hardsigmoid's 1/6 (Note [Float32 constants of a check] in symgrad/ops.py; graph/scalar.py constant_error)."""
    from ..ops import note_float32_reciprocal

    def run(x, *rest, **kw):
        note_float32_reciprocal(fixed if fixed is not None else (rest[0] if rest else kw.get("alpha", 1.0)))
        return decomposed(x, *rest, **kw)

    return run


# Note [Functionalization and numpy]
# The forward is traced functionalized (in-place ops and views become out-of-place ops).  A value
# that leaves torch -- ``torch.from_numpy(x.detach().numpy() * 2)``, a detached constant -- is read
# under functionalization from the wrapper's own storage, which holds garbage (9e-310), and the
# graph's forward disagrees with torch's.  A fresh functionalized graph whose forward disagrees is
# traced once more without functionalization (the constant is then read from the real tensor), and
# that graph's forward row decides.
def trace_callable(fn, args: tuple, functional: bool = True):
    """``fn(*args)`` as an fx graph of core ATen ops (every tensor op ``fn`` runs, once);
    ``functional=False``: without functionalization (Note [Functionalization and numpy])."""
    import torch
    from torch.fx.experimental.proxy_tensor import make_fx

    def run(wrapped):
        table = decompositions()  # built before marking_grad_mode wraps torch's in-place packets
        with warnings.catch_warnings(), _no_stack_capture(), marking_grad_mode():
            warnings.simplefilter("ignore")
            with torch.backends.mkldnn.flags(enabled=False), torch.enable_grad(), keeping_fused_ops():  # the decomposed RNNs, not oneDNN's kernel
                return make_fx(wrapped, decomposition_table=table, tracing_mode="real",
                               _error_on_data_dependent_ops=False)(*args)

    try:
        try:
            if not functional:
                return run(fn)
            return run(torch.func.functionalize(fn, remove="mutations_and_views"))
        except RuntimeError as err:
            if "setup_context" not in str(err) and "custom_function_call" not in str(err):
                raise
            # an autograd.Function: functorch transforms refuse the old style (forward(ctx, ...)), and
            # functionalization has no rule for the new one (setup_context, "custom_function_call"),
            # so trace without functionalization (in-place ops are then read as out-of-place ones,
            # and the forward row catches any aliasing this misreads)
            return run(fn)
    except SymgradError:  # symgrad's own refusal raised inside the traced code (a memory guard): as it is
        raise
    except RuntimeError as err:
        if "mutating a non-functional tensor" not in str(err):
            raise _untraceable(err) from err
        if functional:  # a buffer written under no_grad (spectral_norm's power iteration): read as written
            try:
                return run(fn)
            except Exception:  # noqa: BLE001 - the refusal below says what to do
                pass
        raise UnsupportedOp(
            "forward writes in place into a tensor it does not compute (a buffer or parameter updated under "
            "no_grad, such as a running average, or spectral_norm's power iteration in training mode): the "
            "trace cannot follow that write. Fix: check the module in eval mode (model.eval()), or move the "
            "update out of forward") from err
    except Exception as err:  # noqa: BLE001 - torch's tracer raises many kinds
        raise _untraceable(err) from err


NESTED_GRAD = ("the forward takes a derivative itself (torch.autograd.grad or requires_grad_() inside it, as a "
               "WGAN-GP gradient penalty does), which symgrad's trace cannot follow. Check the network without the "
               "penalty, and its second derivatives with order=2 (what the penalty's backward uses)")


def nested_grad(err: Exception) -> bool:
    text = str(err)
    return "requires_grad_()" in text or "does not require grad" in text or "autograd.functional" in text


def _untraceable(err: Exception) -> UnsupportedOp:
    if nested_grad(err):
        return UnsupportedOp(f"{NESTED_GRAD} ({type(err).__name__}: {str(err)[:160]})")
    return UnsupportedOp(
        f"torch could not trace the function into ATen ops ({type(err).__name__}: {str(err)[:300]}). "
        "Code that leaves torch (numpy, .item(), Python control flow on values) cannot be traced: "
        "pass symbolic= with a reference forward written in torch ops.")


@contextmanager
def _no_stack_capture():
    """make_fx in real mode makes a FakeTensorMode for every node's metadata, and each one records
    the Python stack for debugging (3 ms a node: seconds for an LSTM); symgrad never reads it."""
    from torch._subclasses import fake_tensor

    saved = fake_tensor.traceback
    fake_tensor.traceback = _NoTraceback()
    try:
        yield
    finally:
        fake_tensor.traceback = saved


class _NoTraceback:
    def __getattr__(self, name):
        return getattr(traceback, name)

    @staticmethod
    def extract_stack(*args, **kwargs):
        return traceback.StackSummary()


# Note [Folded constants]
# A float tensor the trace computes from constants alone (interpolation weights from an arange, a
# batch norm's 1/sqrt(var + eps)) is folded once in float64, but torch computes it in the checked
# dtype, a few roundings deep: it carries FOLDED_ULPS units of its own size.  Unless torch computes
# it the same way: every op of its chain traced in float64 (the fold's own precision), or a cast of
# such a value (rounding it to bfloat16 gives the same bits in both).  Those folds are exact
# (``exact_folds``): a discount matrix built in float64 inside forward and cast to bfloat16 was
# charged 4 units on each of its 90,000 entries, and a backward 1 % off passed.  The units are those
# of the narrowest dtype on the fold's way: log of a float32 constant cast to float64 is float32's
# log (charged in float64 units, torch's own float64 gradient failed by 1e-8 relative).  Past a cast,
# or where the result is exact, the charge is settled otherwise (Note [A cast settles a fold]).
FOLDED_ULPS = 4.0


def number(v) -> sp.Expr:
    """A Python scalar from the traced graph as a SymPy number (never a string: Note in the guide)."""
    if isinstance(v, (bool, np.bool_)):
        return sp.Integer(int(v))
    if isinstance(v, (int, np.integer)):
        return sp.Integer(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if f.is_integer() and abs(f) < 2**53:
            return sp.Integer(int(f))
        if f == float("inf"):
            return sp.oo
        if f == float("-inf"):
            return -sp.oo
        return sp.Float(f)
    raise InputError(f"a scalar argument of the traced graph is a {type(v).__name__} ({v!r:.40}); only numbers "
                     "are accepted as op parameters")


class Builder:
    """Builds a :class:`Graph` from an fx graph, op by op (handlers in ``symgrad.graph.aten``)."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self._const_nodes: dict = {}
        self.fx_node = None  # the fx node being converted (for error messages and origins)
        self._values: dict = {}
        self.folded: dict = {}  # id -> float tensors computed by constant folding (kept alive here)
        # ids of folds torch computes alike, or bounded by a cast (Note [A cast settles a fold])
        self.exact_folds: set = set()
        self.fold_deep: set = set()  # ids of folds computed through a reduction (Note [A cast settles a fold])
        self.fold_eps: dict = {}  # id -> the eps of the narrowest dtype a fold went through (Note [Folded constants])
        self.fold_abs: dict = {}  # id -> a fold's absolute bound (Note [Rounding of folded constants] in fold_error.py)
        self.buffers: dict = {}  # id -> (tensor, node): constants written into (Note [Writes into a new buffer])
        self.data_from_values: dict = {}  # id -> integer data computed from float values (Note [Value-dependent branches])
        self.torch_run = None  # () -> {fx node: torch's own value}, or None (Note [Torch's own picks])
        self._torch_values: dict | None = None

    # ------------------------------------------------------------------ leaves and constants
    def leaf(self, name: str, value, role: str) -> Node:
        node = Node("leaf", attrs={"role": role, "value": np.asarray(value, np.float64), "error": 0.0},
                    shape=np.shape(value), name=name)
        self.graph.inputs[name] = node
        return self.graph.add(node)

    def const(self, t, error: float = 0.0) -> Node:
        """A constant tensor as a leaf (cached per tensor object)."""
        key = id(t)
        got = self._const_nodes.get(key)
        if got is not None:
            return got[0]
        value = t.detach().double().cpu().numpy() if hasattr(t, "detach") else np.asarray(t, np.float64)
        attrs = {"role": "const", "value": value, "error": error}
        if key in self.folded and key not in self.exact_folds and not error:
            attrs["error"] = FOLDED_ULPS  # Note [Folded constants]
            if self.fold_eps.get(key):
                attrs["error_eps"] = self.fold_eps[key]  # units of that dtype's eps, not the check's
        if key in self.fold_abs and np.any(self.fold_abs[key]):
            attrs["error_abs"] = np.broadcast_to(self.fold_abs[key], value.shape)
        node = self.graph.add(Node("leaf", attrs=attrs, shape=value.shape, name="const"))
        self._const_nodes[key] = (node, t)
        return node

    def torch_value(self, fx_node):
        """torch's own value of ``fx_node`` in the checked dtype (the traced graph run as torch runs it),
        or None where it is not known (Note [Torch's own picks] in aten_order.py)."""
        if self._torch_values is None:
            self._torch_values = (self.torch_run() if self.torch_run is not None else None) or {}
        return self._torch_values.get(fx_node)

    def value_of(self, x):
        """The float64 value (a torch tensor) of a node built so far: for integer results that depend
        on floats (the indices of ``max.dim``, ``any``), which are data, not functions to differentiate."""
        import torch

        if not isinstance(x, Node):
            return x
        from .rules import forward

        for node in self.graph.nodes:
            if node in self._values:
                continue
            if node.kind == "leaf":
                self._values[node] = Approx(node.attrs["value"])
            else:
                self._values[node] = forward(node, [self._values[a] for a in node.args], Ctx())
            if node is x:
                break
        return torch.from_numpy(np.array(self._values[x].v))

    def node_of(self, x) -> Node:
        return x if isinstance(x, Node) else self.const(x)

    def add(self, kind: str, args, shape, **attrs) -> Node:
        origin = str(getattr(self.fx_node, "target", "")) if self.fx_node is not None else ""
        name = self.fx_node.name if self.fx_node is not None else ""
        return self.graph.add(Node(kind, tuple(args), attrs, tuple(shape), name=name, origin=origin))

    # ------------------------------------------------------------------ core node constructors
    def pointwise(self, fn, operands, shape=None) -> Node:
        """``fn(*sympy_operands)`` over tensor operands (Nodes or constants) and Python numbers."""
        from .rules import symbols_for

        tensors = [o for o in operands if _is_tensorish(o)]
        syms = iter(symbols_for(len(tensors)))
        sym_ops = [next(syms) if _is_tensorish(o) else number(o) for o in operands]
        expr = fn(*sym_ops)
        if not isinstance(expr, sp.Basic):
            expr = number(expr)
        nodes = [self.node_of(t) for t in tensors]
        if shape is None:
            shape = np.broadcast_shapes(*(n.shape for n in nodes)) if nodes else ()
        if not nodes:
            raise UnsupportedOp("a pointwise op with no tensor operand")
        return self.add("pointwise", nodes, shape, expr=expr)

    def contract(self, spec: str, *xs) -> Node:
        nodes = [self.node_of(x) for x in xs]
        ins, out = spec.split("->")
        sizes = {}
        for sub, n in zip(ins.split(","), nodes):
            sizes.update(zip(sub, n.shape))
        return self.add("contract", nodes, tuple(sizes[c] for c in out), spec=spec)

    def reduce(self, op: str, x, axes, keepdim: bool) -> Node:
        x = self.node_of(x)
        axes = tuple(sorted(a % len(x.shape) for a in axes)) if x.shape else ()
        if not axes:
            return x
        shape = [1 if i in axes else d for i, d in enumerate(x.shape)] if keepdim else \
            [d for i, d in enumerate(x.shape) if i not in axes]
        return self.add("reduce", [x], shape, op=op, axes=axes, keepdim=keepdim)

    def layout(self, op: str, x, arg) -> Node:
        x = self.node_of(x)
        if op == "reshape":
            shape = tuple(arg)
            if shape == x.shape:
                return x
        elif op == "permute":
            arg = tuple(a % len(x.shape) for a in arg) if x.shape else ()
            if arg == tuple(range(len(x.shape))):
                return x
            shape = tuple(x.shape[a] for a in arg)
        else:
            shape = tuple(arg)
            if shape == x.shape:
                return x
        return self.add("layout", [x], shape, op=op, arg=tuple(arg))

    def select(self, xs, idx: np.ndarray, fill: float = 0.0) -> Node:
        nodes = [self.node_of(x) for x in xs]
        return self.add("select", nodes, idx.shape, idx=np.asarray(idx, np.int64), fill=fill)

    def stop(self, x, reverse_only: bool = False) -> Node:
        """``detach``; ``reverse_only``: a rule of torch's backward alone (embedding's padding_idx)
        that forward mode does not follow."""
        x = self.node_of(x)
        return self.add("stop", [x], x.shape, reverse_only=reverse_only)


def _is_tensorish(x) -> bool:
    return isinstance(x, Node) or hasattr(x, "dtype") and hasattr(x, "shape") and not isinstance(x, (int, float))
