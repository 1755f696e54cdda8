"""The node cross-check's exact side (Note [Node cross-check]): exact scalar forms of the ``linalg``
nodes it can explode, and the evaluation of an exact derivative in MPFR with its conditions decided.

For the cross-check of one reduced node (matrices of at most 3 x 3, a batch of one) the textbook
formulas are exact and small: the Leibniz determinant and the inverse as adjugate over determinant
(``explode_linalg.det_form``, ``inverse_form``, which the exploded back end writes too), a solve as that inverse
times the right-hand side, ``log|det|`` as ``log(sign * det)`` with the sign of the exact
determinant at the point, and the Cholesky recurrence ``L_jj = sqrt(S_jj - sum_k L_jk^2)``,
``L_ij = (S_ij - sum_k L_ik L_jk) / L_jj`` of ``S = (A + A^T) / 2``: torch's and the graph's
Cholesky rule assume a symmetric input and return the symmetric gradient, which is the gradient
of the factor of ``(A + A^T) / 2``.  None of this reads ``linalg.py``'s rules or numpy's solvers.
"""

from __future__ import annotations

import numpy as np

from ..lower.ties import is_own
from .explode_linalg import det_form, inverse_form

__all__ = ["exact_linalg", "evaluate", "NotExact"]


class NotExact(Exception):
    """No exact derivative here: a singular block, a non-symmetric Cholesky input, a condition that
    rounding cannot decide, a function neither symengine nor mpmath evaluates."""


def _cholesky(m: np.ndarray, value: np.ndarray) -> np.ndarray:
    import symengine as se

    if not np.array_equal(value, value.T):
        raise NotExact("the Cholesky input is not symmetric at these values: its rule assumes it is")
    n = m.shape[0]
    s = (m + m.T) / 2
    low = np.full((n, n), se.Integer(0), object)
    for j in range(n):
        low[j, j] = se.sqrt(s[j, j] - se.Add(*[low[j, k] ** 2 for k in range(j)]))
        for i in range(j + 1, n):
            low[i, j] = (s[i, j] - se.Add(*[low[i, k] * low[j, k] for k in range(j)])) / low[j, j]
    return low


def exact_linalg(op: str, args: list, values: list, env: dict) -> np.ndarray:
    """The output entries of ``op`` on one matrix (leading axes all of size 1) as symengine forms of
    the argument entries ``args`` (object arrays); ``values``: their float values; ``env``: symbol ->
    exact value (to decide singularity and the determinant's sign)."""
    a = args[0]
    batch, n = a.shape[:-2], a.shape[-1]
    m = np.asarray(a, object).reshape(n, n)
    if op == "cholesky":
        return _cholesky(m, np.asarray(values[0]).reshape(n, n)).reshape(a.shape)
    det = det_form(m)
    at = det.xreplace(env)
    if at == 0:
        raise NotExact("the reduced matrix (its leading block) is singular at these values")
    if op == "det":
        return np.array([det], object).reshape(batch)
    if op == "logabsdet":
        import symengine as se

        return np.array([se.log(det if at > 0 else -det)], object).reshape(batch)
    import symengine as se

    inv = inverse_form(m, det)
    if op == "inv":
        return inv.reshape(a.shape)
    b = np.asarray(args[1], object)
    vec = b.ndim == a.ndim - 1
    rhs = b.reshape(n, 1 if vec else b.shape[-1])
    out = np.empty(rhs.shape, object)
    for i in range(rhs.shape[0]):
        for k in range(rhs.shape[1]):
            out[i, k] = se.Add(*[inv[i, j] * rhs[j, k] for j in range(n)])
    return out.reshape(b.shape)


# ------------------------------------------------------------------------------ evaluation

def evaluate(expr, prec: int):
    """``expr`` (symbols already replaced by exact numbers) as a number: exact where it is rational,
    else a real of ``prec`` bits; Piecewise branches chosen by deciding their conditions."""
    import symengine as se

    if isinstance(expr, (se.Integer, se.Rational, se.RealMPFR)):
        return expr
    if is_own(expr):  # the identity inside a max's conditions (Note [Each max its own conditions])
        return evaluate(expr.args[0], prec)
    if type(expr).__name__ in ("ComplexInfinity", "Infinity", "NegativeInfinity", "NaN"):
        raise NotExact(f"the exact value is {expr} here (a derivative at a 0/0 or a pole: Note [Cone points])")
    try:
        return expr.n(prec, real=True)
    except (RuntimeError, TypeError, ValueError) as err:  # symengine evaluates no Piecewise, no polygamma
        if type(expr).__name__ == "Piecewise":
            args = expr.args
            for k in range(0, len(args), 2):
                if _truth(args[k + 1], prec):
                    return evaluate(args[k], prec)
            raise NotExact(f"no branch of {str(expr)[:60]} holds") from err
        if not expr.args:
            raise NotExact(f"symengine cannot evaluate {str(expr)[:60]} ({err})") from err
        args = [evaluate(a, prec) for a in expr.args]
        try:
            return expr.func(*args).n(prec, real=True)
        except (RuntimeError, TypeError, ValueError):
            return _by_mpmath(expr, args, prec)


def _mpf(a, mp, se):
    if isinstance(a, se.RealMPFR):
        return mp.mpf(str(a))
    p, q = a.as_numer_denom()
    return mp.mpf(int(p)) / int(q)


def _by_mpmath(expr, args: list, prec: int):
    """A function symengine cannot evaluate (polygamma), by mpmath's function of that name."""
    import mpmath as mp
    import symengine as se

    from ..lower.special import BESSEL_ULPS, MPMATH

    name = (expr.get_name() if type(expr).__name__ == "FunctionSymbol" else type(expr).__name__).lower()  # erfinv: undefined in symengine
    fn = MPMATH[name][0] if name in BESSEL_ULPS else getattr(mp, name, None)  # symgrad's own names: no mpmath twin
    if fn is None or not all(isinstance(a, (se.Integer, se.Rational, se.RealMPFR)) for a in args):
        raise NotExact(f"neither symengine nor mpmath evaluates {str(expr)[:60]}")
    with mp.workprec(prec):
        got = fn(*(_mpf(a, mp, se) for a in args))
        if not isinstance(got, mp.mpf):
            raise NotExact(f"{str(expr)[:60]} is not real at these values")
        return se.RealMPFR(mp.nstr(got, int(prec * 0.302) + 3, strip_zeros=False), prec)


_RELATIONS = {"StrictLessThan": lambda v: v < 0, "LessThan": lambda v: v <= 0,
              "Equality": lambda v: v == 0, "Unequality": lambda v: v != 0}


def _truth(cond, prec: int) -> bool:
    """A condition decided at exact arguments (a gap rounding could flip: ``NotExact``)."""
    import symengine as se

    if cond == se.true or cond == se.false:
        return cond == se.true
    name = type(cond).__name__
    if name in ("And", "Or"):
        got = [_truth(c, prec) for c in cond.args]
        return all(got) if name == "And" else any(got)
    if name == "Not":
        return not _truth(cond.args[0], prec)
    if name not in _RELATIONS:
        raise NotExact(f"a condition the node cross-check cannot decide: {str(cond)[:60]}")
    lhs, rhs = cond.args
    gap = evaluate(lhs - rhs, prec)
    if isinstance(gap, se.RealMPFR):  # inexact: decided only where it is clear of rounding
        scale = 1.0 + abs(float(evaluate(lhs, prec))) + abs(float(evaluate(rhs, prec)))
        if abs(float(gap)) <= 2.0 ** (8 - prec) * scale:
            raise NotExact(f"the condition {str(cond)[:60]} is a tie within {prec} bits")
    return _RELATIONS[name](float(gap) if not isinstance(gap, (se.Integer, se.Rational)) else
                            (0 if gap == 0 else (1 if gap > 0 else -1)))
