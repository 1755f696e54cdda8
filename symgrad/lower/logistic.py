"""Note [Logistic terms]: logistic sub-expressions evaluated the way torch computes them.

The derivative of s = 1/(1 + exp(u)) comes out of symengine as exp(u)/(1 + exp(u))**2, which
is accurate where s rounds to 1 or 0; torch's sigmoid backward computes s (1 - s) from the
rounded s and is not (x > 17 in float32: torch gives 0, the truth is 4e-8).  Every term
exp(m u) (1 + exp(u))**(-k) with k > 1 (s**2.5 gives k = 3.5) is therefore evaluated as
(1 - s)**m s**(k - m), and (1 + exp(u))**(-k) as s**k, with s from a stable logistic
function: the same value, and the bound now sees torch's cancellation in 1 - s.  It never
overflows either, where exp(u) does.  With k = 1, exp(u)/(1 + exp(u)) is softplus' (torch
computes it as z/(z + 1), accurate where s rounds to 1) or the derivative of log(s) (torch:
(1/s) s (1 - s), with the cancellation): it is rewritten only where the forward itself holds
the sigmoid (1 + exp(u))**(-j).  Factors are found through cse temporaries, and an exp(u)
merged into a larger exponent (exp(u + s) from exp(sigmoid(x))) is split off it.
"""

from __future__ import annotations

__all__ = ["LogisticTerms"]


class LogisticTerms:
    """The pattern matching of Note [Logistic terms], mixed into ``codegen._Emitter``: it uses the
    emitter's ``aliases`` (cse temporaries), ``names``, ``nodes``, ``value_lines``, ``synthetic``,
    ``logistic`` and ``sigmoids``, and its ``value``."""

    def _resolve(self, e):
        while e in self.aliases:
            e = self.aliases[e]
        return e

    @staticmethod
    def _is_exp(e) -> bool:
        return type(e).__name__ == "Pow" and type(e.args[0]).__name__ == "Exp1"

    def _power(self, e):
        """``(base, exponent)`` of ``e`` through cse temporaries, (x**a)**b folded when b is an integer."""
        import symengine as se

        e = self._resolve(e)
        if type(e).__name__ != "Pow" or self._is_exp(e) or not e.args[1].is_Number:
            return e, se.Integer(1)
        base, ex = self._resolve(e.args[0]), e.args[1]
        if type(base).__name__ == "Pow" and not self._is_exp(base) and base.args[1].is_Number and ex.is_Integer:
            return self._resolve(base.args[0]), base.args[1] * ex
        return base, ex

    def _logistic_base(self, e):
        """``u`` if ``e`` is 1 + exp(u), else None."""
        e = self._resolve(e)
        if type(e).__name__ != "Add" or len(e.args) != 2:
            return None
        for one, other in (e.args, e.args[::-1]):
            if one == 1:
                other = self._resolve(other)
                if self._is_exp(other):
                    return self._resolve(other.args[1])
        return None

    def _exp_multiple(self, e, u):
        """``(m, rest)`` if ``e`` is exp(m u + rest) (rest None when there is none), m > 0 an integer."""
        import symengine as se

        base, ex = self._power(e)
        if not self._is_exp(base) or not (ex.is_Integer and int(ex) > 0) or u == 0:
            return None
        terms = [self._resolve(t) for t in self._flat(base.args[1], "Add")]
        for i, t in enumerate(terms):
            ratio = se.expand(t / u)
            if ratio.is_Integer and int(ratio) > 0:
                rest = terms[:i] + terms[i + 1:]
                return int(ratio) * int(ex), (se.exp(se.Add(*rest) * ex) if rest else None)
        if type(u).__name__ == "Add":  # u = a + b merged into the exponent: exp(m a + m b + rest)
            for m in range(1, 5):
                rest = list(terms)
                for t in se.expand(m * u).args:
                    if t not in rest:
                        break
                    rest.remove(t)
                else:
                    return m * int(ex), (se.exp(se.Add(*rest) * ex) if rest else None)
        return None

    def _flat(self, e, kind: str, depth: int = 4) -> list:
        """The arguments of the Add or Mul ``e``, through cse temporaries that are themselves one."""
        e = self._resolve(e)
        if type(e).__name__ != kind:
            return [e]
        out = []
        for a in e.args:
            out += self._flat(a, kind, depth - 1) if depth and type(self._resolve(a)).__name__ == kind else [a]
        return out

    def sigmoid_arguments(self, roots) -> None:
        """The ``u`` of every (1 + exp(u))**(-j) the forward ``roots`` compute (a sigmoid torch holds)."""
        seen, stack = set(), list(roots)
        while stack:
            e = self._resolve(stack.pop())
            if e in seen:
                continue
            seen.add(e)
            base, ex = self._power(e)
            if ex.is_Number and float(ex) < 0:
                u = self._logistic_base(base)
                if u is not None:
                    self.sigmoids.add(u)
            stack.extend(e.args)

    def _as_logistic(self, e):
        """``e`` rewritten over the logistic symbols of Note [Logistic terms], or None."""
        import symengine as se

        kind = type(e).__name__
        if not any(self._numeric_power(f) for f in (e.args if kind == "Mul" else (e,))):
            return None  # most nodes: no factor can be (1 + exp(u))**(-k) (a quick test before the matching)
        factors = self._flat(e, "Mul") if kind == "Mul" else [e] if kind == "Pow" else []
        for i, f in enumerate(factors):
            base, ex = self._power(f)
            if not (ex.is_Number and float(ex) < 0):
                continue
            u = self._logistic_base(base)
            if u is None:
                continue
            k = -ex
            if float(k) < 1:
                continue
            m, rest = 0, factors[:i] + factors[i + 1:]
            for j, g in enumerate(rest if float(k) > 1 or u in self.sigmoids else ()):  # else softplus'
                found = self._exp_multiple(g, u)
                if found is not None:
                    m = found[0]
                    rest = rest[:j] + ([found[1]] if found[1] is not None else []) + rest[j + 1:]
                    break
            s, one_minus = self._logistic(u)
            return se.Mul(*rest, se.Pow(one_minus, m), se.Pow(s, k - m)) if m else se.Mul(*rest, se.Pow(s, k))
        return None

    def _numeric_power(self, f) -> bool:
        """Whether ``f`` (through cse temporaries) is a power with a number exponent, or a product that may hold one."""
        f = self._resolve(f)
        kind = type(f).__name__
        return kind == "Mul" or (kind == "Pow" and not self._is_exp(f) and f.args[1].is_Number)

    def _logistic(self, u):
        """Symbols standing for s = 1/(1 + exp(u)) and 1 - s, emitted once per u."""
        import symengine as se

        hit = self.logistic.get(u)
        if hit is not None:
            return hit
        k = len(self.logistic)
        s, one_minus = se.Symbol(f"_logistic{k}"), se.Symbol(f"_logistic_complement{k}")
        self.logistic[u] = (s, one_minus)
        for sym, code, rule in ((s, f"_logistic({self.value(u)})", ("s", u)),
                                (one_minus, None, ("1-s", s))):
            var = f"_v{len(self.nodes)}"
            code = code if code is not None else f"(1 - {self.names[s]})"
            self.value_lines.append(f"    {var} = {code}")
            self.nodes.append((sym, var))
            self.names[sym] = var
            self.synthetic[sym] = rule
        return s, one_minus
