"""SymPy (or symengine) closed forms as symengine expressions, kink functions made explicit.

symengine has no Max, Min, Abs, sign or Heaviside that keeps its kinks: each is rebuilt from
indicators ``Piecewise((1, c), (0, True))`` whose conditions the emitter (``codegen.py``) records,
so that evaluation can find them on a kink and force them (Note [Kinks at evaluation time] in
numpy.py).  An n-ary max is ``Σ a_i I_i / Σ I_i`` (a tie splits evenly, as torch's reductions
do), each max with its own conditions (Note [Each max its own conditions] in ties.py).
"""

from __future__ import annotations

import sympy as sp
from sympy.core.function import Application

from ..errors import UnsupportedOp
from .special import OPAQUE
from .ties import own, window_tag

__all__ = ["to_symengine", "extreme"]


def extreme(compare_name: str):
    """n-ary max ("Ge") or min ("Le"): sum_i a_i I_i / sum_i I_i, I_i = [a_i beats all others].

    A tie splits the derivative evenly among the tied arguments, as torch's max/min reductions
    and torch.maximum/minimum do.  Built in symengine: SymPy folds a Piecewise inside a condition
    into ``ITE`` terms that symengine cannot take.
    """

    def build(*args, tag=None):
        import symengine as se

        if len(args) == 1:
            return args[0]
        compare = getattr(se, compare_name)
        if len(args) > 2:  # Note [Each max its own conditions] in ties.py
            tag = window_tag(args) if tag is None else tag
            cmp_args = [own(a, tag) for a in args]
        else:
            cmp_args = list(args)
        wins = []
        for i, a in enumerate(cmp_args):
            conds = [compare(a, b) for j, b in enumerate(cmp_args) if j != i]
            wins.append(se.Piecewise((1, conds[0] if len(conds) == 1 else se.And(*conds)), (0, True)))
        return se.Add(*(a * w for a, w in zip(args, wins))) / se.Add(*wins)

    return build


def _abs(a):
    import symengine as se

    return se.Piecewise((a, se.Gt(a, 0)), (0, se.Eq(a, 0)), (-a, True))


def _sign(a):
    import symengine as se

    return se.Piecewise((1, se.Gt(a, 0)), (0, se.Eq(a, 0)), (-1, True))


def _heaviside(a, h=None):
    import symengine as se

    return se.Piecewise((1, se.Gt(a, 0)), (se.Rational(1, 2) if h is None else h, se.Eq(a, 0)), (0, True))


# SymPy's kink functions, rebuilt in symengine as Piecewise forms with torch's conventions (see Note
# [Kink conventions] in symgrad/ops.py): symengine leaves d Max/dx unevaluated, and SymPy's
# Heaviside(0) is 1/2.  The relationals then make kinks visible to the evaluation (Note [Kinks at
# evaluation time]).
_KINK_REWRITES = {
    sp.Max: extreme("Ge"),
    sp.Min: extreme("Le"),
    sp.Abs: _abs,
    sp.sign: _sign,
    sp.Heaviside: _heaviside,
}


def _opaque(e) -> bool:
    """SymPy's erfinv and symgrad's round_even: undefined functions in symengine (Note [Special
    functions on the exploded engine] in special.py; as symengine wraps them, they break its sums)."""
    return isinstance(e, sp.Function) and type(e).__name__ in OPAQUE


def _rewrite(e):
    import symengine as se

    return (lambda *a: se.Function(type(e).__name__)(*a)) if _opaque(e) else _KINK_REWRITES[type(e)]


def to_symengine(expr):
    """A SymPy (or symengine) expression as a symengine one; UnsupportedOp if it has no counterpart."""
    import symengine as se

    if isinstance(expr, se.Basic):
        return expr
    if isinstance(expr, sp.Basic) and expr.has(sp.Derivative):
        raise UnsupportedOp(f"the expression holds an unevaluated derivative ({sp.sstr(expr)[:80]}): "
                            "a function symgrad cannot differentiate")
    try:
        if not (isinstance(expr, sp.Basic) and any(type(f) in _KINK_REWRITES or _opaque(f)
                                                   for f in expr.atoms(Application))):  # one walk
            return se.sympify(expr)
        # Swap each kink function for a placeholder (innermost first), then build its form in
        # symengine from its converted arguments and put it back.
        found: dict = {}

        def swap(e):
            slot = sp.Symbol(f"_kink_slot_{len(found)}")
            found[slot] = e
            return slot

        plain = expr.replace(lambda e: type(e) in _KINK_REWRITES or _opaque(e), swap)
        built: dict = {}
        for slot, e in found.items():
            args = [se.sympify(a).xreplace(built) for a in e.args]
            built[se.Symbol(slot.name)] = _rewrite(e)(*args)
        return se.sympify(plain).xreplace(built)
    except Exception as err:
        raise UnsupportedOp(
            f"symgrad's engine (symengine) has no counterpart for part of {sp.sstr(expr)[:80]!r} ({err}); "
            "use functions from symgrad's op table or common SymPy functions"
        ) from err
