"""Which back end a check goes to, and the memory guard of the exploded (one expression per entry) one.

# Note [Memory guard]
The exploded back end builds one exact SymPy/symengine expression per derivative entry.  Before
it starts, its size is estimated: entries (derivative entries, times output entries for a
Jacobian) times the expression size per entry (the number of input entries each one can read,
capped by a typical op count), at ``BYTES_PER_NODE`` each.  Beyond the memory budget -- a quarter
of the memory available when the check starts, or ``SYMGRAD_MEMORY_BUDGET`` (bytes, or with a
``K``/``M``/``G`` suffix), or the ``memory_budget=`` keyword -- ``engine='auto'`` takes the tensor
back end (``symgrad.graph``), whose cost is what numpy's is; a forced ``engine='elementwise'`` is
refused at once with the estimate, the budget and the alternative.  A check never dies of memory.
"""

from __future__ import annotations

import os

from ..errors import InputError

__all__ = ["memory_budget", "exploded_bytes", "too_big_to_explode", "refuse_exploded", "EXPLODE_ENTRIES"]

BYTES_PER_NODE = 400  # a SymPy/symengine node with its share of hashing tables and generated code
EXPLODE_ENTRIES = 1024  # above this many input entries, 'auto' prefers the tensor back end anyway


def _parse_bytes(text: str) -> int:
    text = text.strip().upper()
    factor = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in "KMG" else text
    try:
        return int(float(number) * factor)
    except ValueError:
        raise InputError(f"SYMGRAD_MEMORY_BUDGET={text!r} is not a size; write bytes, or a number with K, M or G") from None


def memory_budget(budget: int | None = None) -> int:
    """Bytes the exploded back end may use (Note [Memory guard])."""
    if budget is not None:
        if not isinstance(budget, int) or budget <= 0:
            raise InputError(f"memory_budget must be a positive number of bytes, not {budget!r}")
        return budget
    env = os.environ.get("SYMGRAD_MEMORY_BUDGET")
    if env:
        return _parse_bytes(env)
    available = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    return (available or 8 * 2**30) // 4


def exploded_bytes(n_in: int, n_wrt: int, n_out: int, jacobian: bool) -> int:
    """Estimated size of the exploded derivative: entries times expression size per entry."""
    entries = n_wrt * (n_out if jacobian else 1) + n_out
    per_entry = min(max(n_in, 1), 64) * 8  # each entry reads up to n_in inputs through a few ops each
    return entries * per_entry * BYTES_PER_NODE


def too_big_to_explode(n_in: int, n_wrt: int, n_out: int, jacobian: bool, budget: int | None = None) -> bool:
    return n_in > EXPLODE_ENTRIES or exploded_bytes(n_in, n_wrt, n_out, jacobian) > memory_budget(budget)


def refuse_exploded(n_in: int, n_wrt: int, n_out: int, jacobian: bool, budget: int | None = None) -> None:
    """Raise before an exploded evaluation that would not fit (a forced ``engine='elementwise'``)."""
    need, have = exploded_bytes(n_in, n_wrt, n_out, jacobian), memory_budget(budget)
    if need > have:
        raise InputError(
            f"engine='elementwise' would build about {need / 2**30:.1f} GiB of exact expressions "
            f"({n_wrt * (n_out if jacobian else 1):,} derivative entries over {n_in:,} input entries), more than the "
            f"memory budget of {have / 2**30:.1f} GiB (a quarter of the available memory; set memory_budget= or "
            "SYMGRAD_MEMORY_BUDGET to change it). Use engine='graph' (or 'auto'), whose cost is numpy's."
        )
