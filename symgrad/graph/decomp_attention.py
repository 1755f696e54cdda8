"""Attention as torch's CPU flash kernel computes it (stage "trace": a decomposition into core ops).

# Note [Attention as the flash kernel computes it]
# torch's decomposition of ``_scaled_dot_product_flash_attention_for_cpu`` is the math path:
# softmax(q k^T) v, whose derivative reaches the scores as P * (dP - rowsum(P * dP)), the row sum
# read from the same dP.  torch's CPU flash kernel (what ``F.scaled_dot_product_attention`` runs on
# 4-d float inputs) computes O = (E v) / l with E = exp(S - max), l = rowsum(E), and its backward
# takes the row sum from the output instead, D = rowsum(dO * O) (FlashAttention's form): equal in
# exact arithmetic, but two roundings that do not cancel.  Where a query attends to one key alone
# (the first row of a causal mask), P = 1 and the math form cancels exactly to 0, and the
# statistical allowance of its gradient, modelled on that form, was about 1e-8: torch's own float32
# gradient there (3.8e-7 at most over 200 cotangents, 0 with the math backend) failed on a machine
# whose vector width made the two dot products round differently.  So the op is read as the kernel
# computes it, O = (E v) / l: its derivative gives D from the rounded U = E v and l, a computation of
# its own, and the rounding the kernel's form adds is in the bound and the reruns.  The shift by
# the row's max is detached (it cancels; the kernel takes it as a constant, as graph/aten_shift.py
# does for logsumexp), so ties of the max are no kink.
"""

from __future__ import annotations

import math

__all__ = ["ATTENTION_DECOMPOSITIONS"]


def _flash_attention_for_cpu(query, key, value, dropout_p: float = 0.0, is_causal: bool = False, *,
                             attn_mask=None, scale=None):
    """``(output, logsumexp)`` of torch's CPU flash attention (Note [Attention as the flash kernel
    computes it])."""
    import torch

    torch._check(dropout_p == 0.0, lambda: f"dropout probability must be zero, got {dropout_p}")
    if query.size(1) != key.size(1):  # grouped-query attention: each key head serves several queries
        repeat = query.size(1) // key.size(1)
        key, value = key.repeat_interleave(repeat, dim=1), value.repeat_interleave(repeat, dim=1)
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    s = (query @ key.transpose(-2, -1)) * scale
    if is_causal:
        keep = torch.ones(query.size(-2), key.size(-2), dtype=torch.bool, device=query.device).tril()
        s = s.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else s + attn_mask
    from .trace_grad import own_stop

    with own_stop():  # a stop inside a custom Function's forward too
        shift = s.amax(dim=-1, keepdim=True).detach()
        # a fully masked row (every score -inf): the flash kernel's output and gradients there are 0
        # (the math path's are NaN), so its shift is 0, its terms exp(-inf) = 0 and its sum taken as 1
        shift = shift.masked_fill(shift == float("-inf"), 0.0)
    e = torch.exp(s - shift)
    total = e.sum(dim=-1, keepdim=True)
    total = total.masked_fill(total == 0, 1.0)
    output = (e @ value) / total
    lse = (shift + torch.log(total)).squeeze(-1)
    # the layout torch's own decomposition returns (its note: the flash kernel's output is (N, L, H, E) in memory)
    output = output.permute(2, 0, 1, 3).contiguous(memory_format=torch.contiguous_format).permute(1, 2, 0, 3)
    return output, lse


def _attention_decompositions() -> dict:
    import torch

    return {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default: _flash_attention_for_cpu}


ATTENTION_DECOMPOSITIONS = _attention_decompositions
