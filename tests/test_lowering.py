"""Note [Sums kept as built] (symgrad/lower/numpy.py): the closed forms are printed as built, shared
nodes first, where symengine's cse (with every sum hidden from it) ran before.  On random closed
forms with shared subexpressions, cancelling sums, long products, kinks and rational constants
(1/3, 3/10: exact to the evaluation's precision, Note [Constants in the reference] in
runtime.py), the new printing gives
the values of the old one (each within both evaluations' own rounding bounds), and its rounding
bound holds the true error of an evaluation in float32 and in high precision (the exact value from
SymPy at 50 digits)."""

from __future__ import annotations

import importlib
import random

import mpmath as mp
import numpy as np
import pytest
import sympy as sp

from symgrad.lower import codegen
from symgrad.lower.exact import REFERENCE_ULPS, hp_eps
from symgrad.lower.numpy import high_precision, lower

numpy_module = importlib.import_module("symgrad.lower.numpy")


# -- the old path: symengine's cse with every sum wrapped in an opaque function, then unwrapped ------
def _rebuild(e, args):
    import symengine as se

    kind = type(e).__name__
    if kind == "Piecewise":
        return se.Piecewise(*[(args[i], args[i + 1]) for i in range(0, len(args), 2)])
    builders = {"Add": se.Add, "Mul": se.Mul, "Pow": se.Pow, "And": se.And, "Or": se.Or, "Not": se.Not,
                "StrictLessThan": se.Lt, "LessThan": se.Le, "Equality": se.Eq, "Unequality": se.Ne}
    return builders[kind](*args) if kind in builders else e.func(*args)


def _transform(exprs, rule):
    memo: dict = {}

    def visit(e):
        if e not in memo:
            new = [visit(a) for a in e.args]
            hit = rule(e, new) if e.args else None
            memo[e] = hit if hit is not None else (_rebuild(e, new) if e.args and new != list(e.args) else e)
        return memo[e]

    return [visit(e) for e in exprs]


def _old_generate(reps, reduced, names, forward=0, calls=None, shared=()):
    import symengine as se

    wrap = se.Function("_SUM")
    hidden = _transform(reduced, lambda e, new: wrap(*new) if type(e).__name__ == "Add" else None)
    reps, red = se.cse(hidden)
    unwrap = lambda e, new: se.Add(*new) if type(e).__name__ == "FunctionSymbol" and e.get_name() == "_SUM" else None  # noqa: E731
    values = _transform([v for _, v in reps] + list(red), unwrap)
    return codegen.generate(list(zip([s for s, _ in reps], values[: len(reps)])), values[len(reps):], names, forward,
                            calls)


# -- random closed forms ----------------------------------------------------------------------------
X = sp.symbols("a b c d e", real=True)


def _random_forms(seed: int) -> list:
    rng = random.Random(seed)
    pool = list(X)
    unary = [sp.sin, sp.exp, sp.tanh, lambda u: sp.log(u**2 + 1), lambda u: sp.sqrt(u**2 + 2), lambda u: sp.Max(u, 0),
             lambda u: sp.Piecewise((u, u > 0), (u / 8, True)), lambda u: 1 / (1 + sp.exp(-u))]
    for _ in range(14):
        kind = rng.random()
        if kind < 0.3:
            node = rng.choice(unary)(rng.choice(pool))
        elif kind < 0.55:
            terms = rng.sample(pool, min(len(pool), rng.randint(2, 5)))
            node = sp.Add(*terms) - sp.Add(*terms[:2]) * sp.Rational(rng.randint(1, 3), rng.choice([2, 3, 10]))
        elif kind < 0.8:
            node = sp.Mul(*rng.sample(pool, min(len(pool), rng.randint(2, 4))))  # long products, shared factors
        else:
            node = rng.choice(pool) / (rng.choice(pool) ** 2 + 1) + sp.Float(0.3) * rng.choice(pool)
        pool.append(node)
    return pool[-5:] + [sp.diff(pool[-1], X[0])]  # a derivative, as the checks lower


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("kink_eps", [2.0**-23, 2.0**-52])
def test_the_new_printing_keeps_values_and_bounds(seed, kink_eps, monkeypatch):
    exprs = _random_forms(seed)
    rng = np.random.default_rng(seed)
    values = list(rng.normal(size=len(X)) * 2)
    new = lower(exprs, list(X))(values, dtype=high_precision(), kink_eps=kink_eps)
    with monkeypatch.context() as m:
        m.setattr(numpy_module, "generate", _old_generate)
        old = lower(exprs, list(X))(values, dtype=high_precision(), kink_eps=kink_eps)
    eps_hp = hp_eps()
    low_dtype = np.float32 if kink_eps > 1e-10 else np.float64
    at = {x: sp.Rational(float(v)) for x, v in zip(X, values)}
    with mp.workdps(50):
        for k, expr in enumerate(exprs):
            # float constants as the exact binary numbers the code holds, before anything is multiplied
            exact_consts = expr.xreplace({f: sp.Rational(f) for f in expr.atoms(sp.Float)})
            exact_form = exact_consts.subs(at)
            exact = mp.mpf(str(sp.N(exact_form, 50)))
            if not mp.isfinite(exact):
                continue
            v_new, v_old = _exactly(new.values[k]), _exactly(old.values[k])
            m_new, m_old = abs(float(new.magnitudes[k])), abs(float(old.magnitudes[k]))
            assert abs(v_new - v_old) <= REFERENCE_ULPS * eps_hp * (m_new + m_old), (k, expr)
            # the true error of the high-precision value, and of the closed form evaluated in the checked
            # dtype, within the new bound (in float32: four units of roundoff a counted rounding, as compare.py)
            assert abs(v_new - exact) <= REFERENCE_ULPS * eps_hp * m_new, (k, expr)
            low = float(new.values_lowp[k])
            if new.lower is None or float(new.lower[k]) == float(new.upper[k]):  # off a kink
                # torch is given its inputs in its dtype: the exact value there
                rounded = {x: sp.Rational(float(np.asarray(v, low_dtype))) for x, v in zip(X, values)}
                exact_low = mp.mpf(str(sp.N(exact_consts.subs(rounded), 50)))
                assert abs(low - exact_low) <= 4 * kink_eps * m_new, (k, expr, low, exact_low, m_new)


def _exactly(v) -> mp.mpf:
    """A high-precision numpy value as an mpmath number, exactly (its float64 part and the rest)."""
    v = np.asarray(v, high_precision())
    head = float(v)
    return mp.mpf(head) + mp.mpf(float(v - high_precision()(head)))


def test_shared_nodes_are_printed_once_children_first():
    a, b = X[:2]
    shared = sp.sin(a * b)
    exprs = [shared + a, shared * b, sp.exp(shared)]
    source = lower(exprs, [a, b]).source
    assert source.count("sin(") == 1  # computed once, however many parents
    lines = [line for line in source.splitlines() if "sin(" in line or "exp(" in line]
    assert "sin(" in lines[0]


def test_a_condition_on_a_large_dag_is_named_not_printed():
    """A relu on a DAG whose tree is exponentially larger (no cse temporaries to print it through):
    lowering is linear in the DAG and the condition's text is short."""
    import symengine as se

    x, y = se.symbols("x y")
    e = x
    for _ in range(60):  # 2**60 leaves as a tree, 120 nodes as a DAG
        e = e * e / 4 + y
    lowered = lower([se.Piecewise((e, se.Gt(e, 0)), (0, True))], [x, y])
    assert lowered.relationals == 1 and len(lowered._rel_text[0]) < 80
    assert len(lowered.source.splitlines()) < 1000


@pytest.mark.parametrize("form", [lambda x: x / 10, lambda x: x * sp.sqrt(2), lambda x: sp.pi * x / 3,
                                  lambda x: sp.exp(x) * sp.log(3) / 7])
def test_constants_are_exact_to_each_evaluation(form):
    """Note [Constants in the reference] (runtime.py): 1/10, sqrt(2), pi/3 held as float64 made the
    extended-precision reference err by half an ulp of float64, beyond its own bound."""
    x = sp.Symbol("x", real=True)
    expr = form(x)
    ev = lower([expr], [x])([1.25], dtype=high_precision(), kink_eps=2.0**-52)
    with mp.workdps(60):
        exact = mp.mpf(str(sp.N(expr.subs(x, sp.Rational(5, 4)), 60)))
        assert abs(_exactly(ev.values[0]) - exact) <= REFERENCE_ULPS * hp_eps() * abs(float(ev.magnitudes[0]))
    from symgrad.lower.exact import ExactEvaluator

    values, bounds, dps = ExactEvaluator([expr], [x], [1.25]).exact([(0, None)], lambda v: 2.0**-200 * abs(v))
    with mp.workdps(dps + 20):
        exact = mp.mpf(str(sp.N(expr.subs(x, sp.Rational(5, 4)), dps + 20)))
        assert abs(values[0] - exact) <= bounds[0] < 2.0**-200 * abs(exact)
