"""The record a differentiation engine hands to the comparison stage.

Both engines (the elementwise one in ``symgrad.differentiate`` and the matrix-calculus one in
``symgrad.matrix``) produce one :class:`Reference` per differentiated input.  The comparison stage
(``symgrad.compare``) reads nothing else from them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Reference"]


@dataclass
class Reference:
    """The closed-form derivative with respect to one input, evaluated."""

    name: str  # input or parameter name, e.g. "layer1.weight"
    value: np.ndarray  # closed form evaluated in float64, shaped like autograd's result
    closed_form: str = ""  # text form for the report
    closed_form_latex: str = ""
    lower: np.ndarray | None = None  # one-sided derivative band where an input sits on a kink
    upper: np.ndarray | None = None
    kink: np.ndarray | None = None  # bool mask: entries affected by a kink
    # Note [Joint kink check] (symgrad/compare/kinks.py): candidate - value, shape
    # (groups, generators, *value.shape); None where only the entrywise band is known
    kink_generators: np.ndarray | None = None
    kink_rounding: np.ndarray | None = None  # ``rounding`` on whichever side of the kinks (the largest)
    statistical: int = 0  # entries whose rounding allowance is the op graph's statistical one
    value_lowp: np.ndarray | None = None  # the same closed form evaluated in the checked dtype
    rounding: np.ndarray | None = None  # running error bound of evaluating it, in units of roundoff:
    # a correct evaluation in the checked dtype errs by at most eps(dtype) * rounding, entry by entry
    # entries whose closed form is identically 0 (a cancellation the algebra removed, which torch
    # still computes): judged against the scale of the check's other derivatives (Note [Tolerances])
    structural_zero: np.ndarray | None = None
    # the op graph's bound of what torch sums at those entries, where it was traced: their allowance
    # instead of the share of the check's largest derivative (Note [Allowances of other entries])
    structural_bound: np.ndarray | None = None
    verified: bool = True  # closed form cross-checked against an independent derivation
    # the dtype the checked tensor is stored in, where wider than the check's (an island of a narrower
    # dtype inside: compare.py's one rounding of each entry's own size is charged in it)
    stored_dtype: str | None = None
    note: str = ""
    # for the reports only: the closed form as a SymPy expression (rendered as MathML), and a
    # callable giving any entry's closed form text (index tuple -> str); None where not known
    closed_form_expr: object = None
    entry_form: object = None
    # issue 11: raised-precision values and conditioning of chosen entries (compare/accuracy.py's
    # EntryOracle); None where the engine has none (the accuracy question then stays unanswered)
    oracle: object = None
    # the exact values of a forward's entries where they overflow (compare.py, Note [Overflow is the right answer])
    exact_forward: object = None
    value_eps: float | None = None  # machine epsilon of the evaluation of ``value`` (None: numpy's extended precision)
