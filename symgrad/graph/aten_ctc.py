"""The CTC loss as core nodes: the forward (alpha) recursion over the label lattice, unrolled in time.

Note [CTC as core nodes]
~~~~~~~~~~~~~~~~~~~~~~~~
``aten._ctc_loss(log_probs (T, N, C), targets, input_lengths, target_lengths, blank)`` is
-log of the total probability of every alignment of the target with the input.  With the extended
label sequence l' = (blank, l_1, blank, l_2, ..., blank) of length S = 2 L + 1, the forward
variables in probability space are

    alpha_0[s]  = p_0[l'_s]                                   for s in {0, 1}, else 0
    alpha_t[s]  = (alpha_{t-1}[s] + alpha_{t-1}[s-1] + [skip] alpha_{t-1}[s-2]) p_t[l'_s]
    loss        = -log(alpha_{T-1}[S-1] + alpha_{T-1}[S-2])

where p = exp(log_probs) and the skip term is allowed when l'_s is not blank and differs from
l'_{s-2}.  Each step is one ``select`` (the three predecessors, 0 where there is none), a ``sum`` and
a ``pointwise`` product with a ``select`` of p, batched over the samples: the lattice (which entries
are reachable, which label each state reads) is integer data fixed by the targets and lengths, so it
lives in the selections' index arrays, and the derivative is reverse mode through these nodes like
any other.  A sample whose input is shorter than the longest keeps its alpha unchanged after its own
end (its predecessors are only itself and it reads a constant 1).  Probability space is exact
arithmetic's recursion without torch's log-space shifts; alpha shrinks like C^-T, which float64
(where the graph evaluates) holds for the short sequences a check uses; a longer one is refused.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from ..errors import UnsupportedOp
from .aten import handles

MAX_STEPS = 200  # time steps unrolled; alpha ~ C^-T must stay far from float64's underflow


def _ints(b, x) -> np.ndarray:
    return np.asarray(b.value_of(x) if not isinstance(x, (list, tuple, int)) else x).astype(np.int64).reshape(-1)


def _labels(b, targets, lengths, n):
    """Per sample, its target labels (padded (N, S_max) targets or one concatenated 1-D tensor)."""
    flat = np.asarray(b.value_of(targets)).astype(np.int64)
    if flat.ndim == 2:
        return [flat[i, :lengths[i]] for i in range(n)]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return [flat[s:s + ln] for s, ln in zip(starts, lengths)]


def _lattice(labels, blank):
    """Per sample: the extended labels l' and, per state, whether the skip from s-2 is allowed."""
    out = []
    for lab in labels:
        ext = np.full(2 * len(lab) + 1, blank, np.int64)
        ext[1::2] = lab
        skip = np.zeros(len(ext), bool)
        skip[2:] = (ext[2:] != blank) & (ext[2:] != ext[:-2])
        out.append((ext, skip))
    return out


@handles("aten._ctc_loss.Tensor", "aten._ctc_loss.default", "aten._ctc_loss")
def _ctc_loss(b, args, kwargs, val):
    log_probs, targets, input_lengths, target_lengths = args[:4]
    blank = int(args[4] if len(args) > 4 else kwargs.get("blank", 0))
    zero_infinity = bool(args[5] if len(args) > 5 else kwargs.get("zero_infinity", False))
    lp = b.node_of(log_probs)
    if len(lp.shape) != 3:
        raise UnsupportedOp("symgrad's CTC handler takes batched log_probs of shape (T, N, C): add the batch "
                            "axis (log_probs.unsqueeze(1), targets.unsqueeze(0))")
    steps, n, classes = lp.shape
    if steps > MAX_STEPS:
        raise UnsupportedOp(f"ctc_loss over {steps} time steps: symgrad unrolls its recursion and checks at most "
                            f"{MAX_STEPS}; check on a shorter sequence")
    t_len, l_len = _ints(b, input_lengths), _ints(b, target_lengths)
    lattice = _lattice(_labels(b, targets, l_len, n), blank)
    width = max(len(ext) for ext, _ in lattice)
    probs = b.pointwise(sp.exp, [lp], lp.shape)
    one = b.const(np.ones(1))
    alpha = b.select([probs, one], _emit(lattice, t_len, 0, n, classes, width, steps))
    for t in range(1, int(t_len.max())):
        prev = _predecessors(lattice, t_len, t, n, width)
        total = b.reduce("sum", b.select([alpha], prev), (2,), False)
        emit = b.select([probs, one], _emit(lattice, t_len, t, n, classes, width, steps))
        alpha = b.pointwise(lambda a, p: a * p, [total, emit], total.shape)
    ends = np.zeros((n, 2), np.int64)
    for i, (ext, _) in enumerate(lattice):
        ends[i, 0] = i * width + len(ext)  # 1-based: state S-1 and, where it exists, S-2
        ends[i, 1] = i * width + len(ext) - 1 if len(ext) > 1 else 0
    final = b.reduce("sum", b.select([alpha], ends), (1,), False)
    if zero_infinity and np.any(np.asarray(b.value_of(final)) == 0):
        raise UnsupportedOp("ctc_loss with zero_infinity=True where a sample has no alignment (input shorter than "
                            "its target): check on inputs long enough for every target")
    loss = b.pointwise(lambda a: -sp.log(a), [final], final.shape)
    alpha_shape = tuple(val[1].shape) if isinstance(val, (list, tuple)) else (n, steps, width)
    return loss, b.const(np.zeros(alpha_shape))


def _emit(lattice, t_len, t, n, classes, width, steps):
    """1-based indices into [exp(log_probs) (T, N, C) flattened, a constant 1]: p_t[l'_s] per (n, s);
    0 (alpha stays 0) for unreachable states, the constant 1 after the sample's end."""
    idx = np.zeros((n, width), np.int64)
    for i, (ext, _) in enumerate(lattice):
        if t >= t_len[i]:
            idx[i, :len(ext)] = steps * n * classes + 1
            continue
        reach = len(ext) if t > 0 else min(2, len(ext))
        idx[i, :reach] = (t * n + i) * classes + ext[:reach] + 1
    return idx


def _predecessors(lattice, t_len, t, n, width):
    """1-based indices into alpha (N, width): (n, s, k) is state s, s-1, s-2 (0 where not a predecessor)."""
    idx = np.zeros((n, width, 3), np.int64)
    for i, (ext, skip) in enumerate(lattice):
        s = np.arange(len(ext))
        base = i * width + 1
        idx[i, s, 0] = base + s
        if t >= t_len[i]:
            continue  # after the sample's end: alpha carried over unchanged
        idx[i, s[1:], 1] = base + s[1:] - 1
        idx[i, s[skip], 2] = base + s[skip] - 2
    return idx
