"""Shared helpers for the core test suite.

Expected values here never come from symgrad itself: they are computed with torch, numpy, or
SymPy's own substitution, so a bug in symgrad cannot make its own test pass.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager

import numpy as np
import sympy as sp
import torch

import symgrad as sg
from symgrad import testing_ops

DTYPES = [torch.float64, torch.float32]
# Tolerances for comparing torch with an exact value computed in float64 (not symgrad's).
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-6)}


def evaluate(st, bindings: dict) -> np.ndarray:
    """Evaluate a SymTensor numerically by plain substitution (symengine's or SymPy's ``subs``).

    ``bindings`` maps each symbolic input (a SymTensor of symbols) to a numpy array of its shape.
    """
    import symengine as se

    subs_se, subs_sp = {}, {}
    for sym_t, arr in bindings.items():
        arr = np.asarray(arr, dtype=np.float64)
        assert sym_t.shape == arr.shape
        for s, v in zip(sym_t.data.ravel(), arr.ravel()):
            subs_se[se.sympify(s)] = se.Float(float(v))
            subs_sp[sp.sympify(s)] = sp.Float(float(v), 30)
    out = np.empty(st.shape, dtype=np.float64)
    for index in np.ndindex(st.shape):
        e = st.data[index]
        if isinstance(e, se.Basic):
            out[index] = float(e.subs(subs_se))
        else:
            out[index] = float(sp.sympify(e).xreplace(subs_sp).evalf(30))
    return out


def run_both(fn, *arrays, names=None):
    """Run ``fn`` on symbolic tensors and on float64 torch tensors holding ``arrays``.

    Returns ``(symbolic value evaluated by SymPy, torch value)`` as numpy arrays.
    """
    names = names or [f"a{i}" for i in range(len(arrays))]
    syms = [sg.symbols(n, np.shape(a)) for n, a in zip(names, arrays)]
    tens = [torch.tensor(np.asarray(a, dtype=np.float64)) for a in arrays]
    sym_out = sg.as_symtensor(fn(*syms))
    torch_out = fn(*tens)
    return evaluate(sym_out, dict(zip(syms, arrays))), torch_out.detach().numpy()


def assert_matches_torch(fn, *arrays, rtol=1e-10, atol=1e-12):
    got, want = run_both(fn, *arrays)
    assert got.shape == want.shape, f"symbolic shape {got.shape} != torch shape {want.shape}"
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


@contextmanager
def time_limit(seconds: float):
    """Raise TimeoutError if the block runs longer than ``seconds`` (main thread, POSIX only)."""

    def handler(signum, frame):
        raise TimeoutError(f"took longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def custom(fwd, bwd):
    """A torch.autograd.Function from a forward ``fwd(*xs)`` and a backward ``bwd(g, *xs)``
    (the inputs are saved for it): the code under test in seeded-bug cases
    (``symgrad.testing_ops.custom``, whose backward takes the cotangent last)."""
    return testing_ops.custom(fwd, lambda *saved_and_g: bwd(saved_and_g[-1], *saved_and_g[:-1]))
