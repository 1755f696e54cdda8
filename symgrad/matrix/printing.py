"""Matrix notation for derivatives: ``to_text`` (SymPy str style: ``a*b.T``) and ``to_latex``
(``a b^{T}``, ``\\odot`` for Hadamard, ``X^{-T}``).

Elementwise nodes print as their op (``tanh(Z)``) and derivatives with primes (``tanh'(Z)``);
parameters that differ from the op row's defaults are shown in brackets (``leaky_relu[negative_slope=1/5](Z)``).

# Note [Cheap precedence of matrix products]
SymPy's printers ask every product whether it "could extract a minus sign", and for a ``MatMul``
that builds ``-M`` and runs ``MatMul.doit`` on it: most of the cost of printing a closed form.  The
answer is whether the leading factor is a negative number (``Mul.could_extract_minus_sign``), so
both printers here decide it from the first argument (``_minus``) and use it for the precedence of
products (``_precedence``), which gives the same parentheses and signs as SymPy's own printers.
"""

from __future__ import annotations

import sympy as sp
from sympy import Inverse, MatAdd, MatMul, Transpose
from sympy.core.mul import Mul, _keep_coeff
from sympy.printing.latex import LatexPrinter
from sympy.printing.precedence import PRECEDENCE, precedence, precedence_traditional
from sympy.printing.str import StrPrinter

from symgrad.matrix.nodes import Elementwise, LogSoftmaxRows, SoftmaxRows

__all__ = ["to_text", "to_latex", "TextPrinter", "MatrixLatexPrinter"]

_LATEX_FUNCS = {"exp": r"\exp", "log": r"\log", "sin": r"\sin", "cos": r"\cos", "tanh": r"\tanh", "sigmoid": r"\sigma"}


def _param_suffix(node: Elementwise, fmt) -> str:
    defaults = node.row.params
    shown = {k: v for k, v in node.params.items() if k not in defaults or sp.sympify(defaults[k]) != v}
    if not shown:
        return ""
    return "[" + ", ".join(f"{k}={fmt(v)}" for k, v in sorted(shown.items())) + "]"


def _minus(e) -> bool:
    """``e.could_extract_minus_sign()`` for a product, without building ``-e`` (Note [Cheap
    precedence of matrix products])."""
    first = e.args[0] if e.args else None
    return bool(first is not None and first.is_Number and first.is_extended_negative)


def _mul_precedence(e) -> int:
    """SymPy's ``precedence_Mul`` with ``_minus`` for the minus-sign test."""
    from sympy.core.function import Function

    if any(hasattr(a, "precedence") and isinstance(a, Function) and a.precedence < PRECEDENCE["Mul"] for a in e.args):
        return PRECEDENCE["Mul"]
    return PRECEDENCE["Add"] if _minus(e) else PRECEDENCE["Mul"]


def _precedence(item, traditional: bool = False) -> int:
    """``precedence`` (``precedence_traditional`` for LaTeX), cheap for matrix products."""
    if isinstance(item, MatMul) and not hasattr(item, "precedence"):
        return _mul_precedence(item)
    return precedence_traditional(item) if traditional else precedence(item)


def _negated(a):
    """``-M`` -> ``M`` for a product with a negative leading number, else None (cheap: no doit)."""
    if isinstance(a, MatMul) and a.args[0].is_Number and a.args[0] < 0:
        rest = a.args[1:]
        coeff = -a.args[0]
        if coeff == 1:
            return rest[0] if len(rest) == 1 else MatMul(*rest)
        return MatMul(coeff, *rest)
    return None


def _sum_terms(printer, e) -> str:
    """Sum terms with the negated ones last, so ``yhat - t`` rather than ``-t + yhat``."""
    terms = sorted(((a, _negated(a)) for a in e.args), key=lambda t: t[1] is not None)
    out = ""
    for k, (a, neg) in enumerate(terms):
        s = printer.parenthesize(neg if neg is not None else a, PRECEDENCE["Add"], strict=False)
        out += (" - " if neg is not None else " + ") + s if k else ("-" if neg is not None else "") + s
    return out


class TextPrinter(StrPrinter):
    """SymPy's str printer with symgrad's nodes, ``∘`` for Hadamard products, ``tr``/``det``."""

    def parenthesize(self, item, level, strict=False):
        p = _precedence(item)
        if p < level or (not strict and p <= level):
            return "(%s)" % self._print(item)
        return self._print(item)

    def _print_MatMul(self, expr):
        # StrPrinter._print_MatMul with the cheap precedence (Note [Cheap precedence of matrix products])
        c, m = expr.as_coeff_mmul()
        sign = ""
        if c.is_number:
            re, im = c.as_real_imag()
            if (im.is_zero and re.is_negative) or (re.is_zero and im.is_negative):
                expr = _keep_coeff(-c, m)
                sign = "-"
        level = _mul_precedence(expr)
        return sign + "*".join([self.parenthesize(arg, level) for arg in expr.args])

    def _print_MatAdd(self, e):
        return _sum_terms(self, e)

    def _print_Elementwise(self, e):
        return f"{e.name}{_param_suffix(e, self._print)}{chr(39) * e.order}({self._print(e.arg)})"

    def _print_SoftmaxRows(self, e):
        return f"softmax({self._print(e.arg)})"

    def _print_LogSoftmaxRows(self, e):
        return f"log_softmax({self._print(e.arg)})"

    def _print_HadamardProduct(self, e):
        return " ∘ ".join(self.parenthesize(a, PRECEDENCE["Mul"], strict=False) for a in e.args)

    def _print_HadamardPower(self, e):
        return f"{self.parenthesize(e.args[0], PRECEDENCE['Atom'], strict=False)}^∘{self._print(e.args[1])}"

    def _print_Trace(self, e):
        return f"tr({self._print(e.arg)})"

    def _print_Determinant(self, e):
        return f"det({self._print(e.arg)})"


class MatrixLatexPrinter(LatexPrinter):
    """SymPy's LaTeX printer with ``\\odot``, ``X^{-T}`` and primes for elementwise derivatives."""

    def parenthesize(self, item, level, is_neg=False, strict=False) -> str:
        prec_val = _precedence(item, traditional=True)
        if is_neg and strict:
            return self._add_parens(self._print(item))
        if (prec_val < level) or ((not strict) and prec_val <= level):
            return self._add_parens(self._print(item))
        return self._print(item)

    def _print_MatMul(self, expr):
        # LatexPrinter._print_MatMul with the cheap precedence (Note [Cheap precedence of matrix products])
        level = _mul_precedence(expr)

        def parens(x):
            if isinstance(x, Mul) and not isinstance(x, MatMul):
                return self._print(x)
            return self.parenthesize(x, level, False)

        args = list(expr.args)
        if _minus(expr):
            if args[0] == -1:
                args = args[1:]
            else:
                args[0] = -args[0]
            return "- " + " ".join(map(parens, args))
        return " ".join(map(parens, args))

    def _print_MatAdd(self, e):
        return _sum_terms(self, e)

    def _print_Elementwise(self, e):
        head = _LATEX_FUNCS.get(e.name, r"\operatorname{%s}" % e.name.replace("_", r"\_"))
        suffix = _param_suffix(e, self._print)
        if suffix:
            head += r"_{%s}" % suffix[1:-1]
        return r"%s%s\left(%s\right)" % (head, "'" * e.order, self._print(e.arg))

    def _print_OneMatrix(self, e):
        return r"\mathbb{1}"

    def _print_SoftmaxRows(self, e):
        return r"\operatorname{softmax}\left(%s\right)" % self._print(e.arg)

    def _print_LogSoftmaxRows(self, e):
        return r"\log\operatorname{softmax}\left(%s\right)" % self._print(e.arg)

    def _print_HadamardProduct(self, e):
        return r" \odot ".join(self.parenthesize(a, PRECEDENCE["Mul"], strict=False) for a in e.args)

    def _print_HadamardPower(self, e):
        return r"%s^{\circ %s}" % (self.parenthesize(e.args[0], PRECEDENCE["Atom"], strict=True), self._print(e.args[1]))

    def _print_Inverse(self, e):
        inner = e.arg
        if isinstance(inner, Transpose) and inner.arg.is_symbol:
            return r"%s^{-T}" % self._print(inner.arg)
        if inner.is_symbol:
            return r"%s^{-1}" % self._print(inner)
        return r"\left(%s\right)^{-1}" % self._print(inner)

    def _print_Transpose(self, e):
        if isinstance(e.arg, Inverse) and e.arg.arg.is_symbol:
            return r"%s^{-T}" % self._print(e.arg.arg)
        if isinstance(e.arg, (MatAdd,)) or not (e.arg.is_symbol or isinstance(e.arg, (Elementwise, SoftmaxRows, LogSoftmaxRows))):
            return r"\left(%s\right)^{T}" % self._print(e.arg)
        return r"%s^{T}" % self._print(e.arg)


def to_text(expr) -> str:
    """Matrix notation in SymPy str style: ``a*b.T``, ``X.T**(-1)``, ``tanh'(Z) ∘ G``."""
    return TextPrinter().doprint(expr)


def to_latex(expr) -> str:
    """Matrix notation in LaTeX: ``a b^{T}``, ``X^{-T}``, ``\\tanh'\\left(Z\\right) \\odot G``."""
    return MatrixLatexPrinter().doprint(expr)
