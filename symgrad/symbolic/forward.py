"""The symbolic forward of a plain function: symbols for its inputs, its output as a ``SymTensor``.

``symbolic=`` may be a callable on ``SymTensor``s (``sg.*`` functions, or returning SymPy objects),
a SymPy expression / matrix expression whose (Matrix)Symbols are named after the inputs, or
absent (``fn`` itself, written with ``sg.*``).  Nothing here is sympified from a string.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Mapping

import numpy as np
import sympy as sp

from ..errors import InputError, ShapeMismatch, SymgradError, UnsupportedOp
from ..inputs import torch_bool
from .tensor import TORCH_CODE, SymTensor, as_symtensor, symbols

__all__ = ["symbolic_inputs", "symbolic_output", "check_symbols", "explode_sympy"]


def symbolic_inputs(named: Mapping[str, object]) -> dict[str, SymTensor]:
    """One symbol tensor per floating input (``x[0, 1]``), constants for integer inputs."""
    out = {}
    for name, t in named.items():
        if t.is_floating_point():
            out[name] = symbols(name, tuple(t.shape))
        else:  # integer and bool inputs are constants (bools as 0/1)
            out[name] = as_symtensor(t.detach().cpu().numpy().astype(np.int64) if t.dtype == torch_bool() else t.detach().cpu().numpy())
    return out


def explode_sympy(expr, sym_inputs: dict[str, SymTensor], extra: Mapping[str, object] | None) -> SymTensor:
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


@contextmanager
def _grad_switch_refused(on: bool):
    """Within: torch code that turns grad off (no_grad, set_grad_enabled(False)) raises UnsupportedOp
    (Note [Torch code on symbolic tensors] in tensor.py)."""
    import torch

    original = torch._C._set_grad_enabled
    if not on:
        yield
        return

    def switch(mode):
        if not mode:
            raise UnsupportedOp("the forward turns grad off (torch.no_grad): a stop-gradient, traced through the op graph")
        return original(mode)

    torch._C._set_grad_enabled = switch
    try:
        yield
    finally:
        torch._C._set_grad_enabled = original


def symbolic_output(fn, symbolic, sym_inputs, symbols_map) -> SymTensor:
    torch_code = symbolic is None  # the function under test run as its own twin: torch's semantics apply
    if symbolic is None:
        symbolic = fn
    if isinstance(symbolic, (sp.Basic, sp.MatrixBase, sp.NDimArray)):
        return explode_sympy(symbolic, sym_inputs, symbols_map)
    if not callable(symbolic):
        raise InputError(f"symbolic must be a callable or a SymPy expression, not {type(symbolic).__name__}")
    if "data" in getattr(getattr(symbolic, "__code__", None), "co_names", ()):
        # torch code reading x.data (a constant to autograd): a SymTensor's .data is its entries, so
        # the op graph reads it instead (Note [.data in the trace] in symgrad/graph/trace_grad.py)
        raise UnsupportedOp("the forward reads .data: traced through the op graph, where it is a constant")
    # First on SymTensors (sg.* functions, operators); then, for forwards written with SymPy
    # functions (X.applyfunc(sympy.tanh), sympy.exp(x)), on SymPy matrices of the same symbols.
    attempts = (("symbolic tensors", lambda: list(sym_inputs.values())),
                ("SymPy matrices", lambda: [_sympy_view(st) for st in sym_inputs.values()]))
    errors = []
    for label, make_args in attempts:
        if errors and "SymTensor" in errors[-1] and "must be Tensor" in errors[-1]:
            continue  # a torch function refused the symbolic tensors: SymPy matrices fare no better
        token = TORCH_CODE.set(torch_code)  # Note [Torch code on symbolic tensors]
        try:
            with _grad_switch_refused(torch_code):
                out = symbolic(*make_args())
            break
        except SymgradError:
            raise
        except Exception as err:  # noqa: BLE001 - reported below with every attempt's error
            errors.append(f"on {label}: {type(err).__name__}: {err}")
        finally:
            TORCH_CODE.reset(token)
    else:
        raise UnsupportedOp(
            "the symbolic forward could not run (" + "; ".join(errors) + "). Write it with symgrad's functions "
            "(sg.tanh, sg.sum, sg.mse_loss, ...) or SymPy, or pass symbolic=..."
        )
    if isinstance(out, (sp.Basic, sp.MatrixBase, sp.NDimArray)) and not isinstance(out, SymTensor):
        return explode_sympy(out, sym_inputs, symbols_map)
    if isinstance(out, (tuple, list)) and out and all(isinstance(o, SymTensor) for o in out):
        # several outputs: the op graph checks them together (Note [Structured outputs])
        raise UnsupportedOp(f"the symbolic forward returned a {type(out).__name__} of {len(out)} tensors; several "
                            "outputs are checked through the op graph: pass the torch function as well")
    structured = isinstance(out, dict) or (isinstance(out, (tuple, list)) and any(isinstance(o, SymTensor) for o in out))
    if torch_code and structured:  # torch code: the op graph checks a dict or a tuple with other values
        raise UnsupportedOp(f"the forward returned a {type(out).__name__}: checked through the op graph")
    if out is None or isinstance(out, (str, bytes)) or structured:
        kind = f"a {type(out).__name__}" + (f" of {len(out)}" if isinstance(out, (tuple, list, dict)) else "")
        raise InputError(f"the symbolic forward returned {kind if out is not None else 'None'}, not one tensor: "
                         "symgrad differentiates a single output. Fix: return one tensor (out[0] of a tuple, "
                         "one value of a dict; for None, the missing return)")
    if isinstance(out, SymTensor):
        return out
    if (type(out).__module__ or "").startswith("torch"):
        raise UnsupportedOp("the symbolic forward returned a torch tensor: write it with sg.* functions or SymPy, not torch")
    return as_symtensor(out)


def check_symbols(out: SymTensor, sym_inputs: dict[str, SymTensor], wrt: list[str], from_sympy: bool):
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
