"""Which back end a check goes to, and the memory guard of the exploded (one expression per entry) one.

# Note [Memory guard]
The exploded back end builds one exact SymPy/symengine expression per derivative entry.  Before
it starts, its size is estimated: entries (derivative entries, times output entries for a
Jacobian) times the expression size per entry (the number of input entries each one can read,
capped by a typical op count), at ``BYTES_PER_NODE`` each.  Beyond the memory budget -- a quarter
of the memory available when the check starts, or ``SYMGRAD_MEMORY_BUDGET`` (bytes, or with a
``K``/``M``/``G`` suffix), or the ``memory_budget=`` keyword; the memory available is the
machine's, or less where a container's cgroup or an address-space limit (``prlimit --as``) leaves
less -- ``engine='auto'`` takes the tensor
back end (``symgrad.graph``), whose cost is what numpy's is; a forced ``engine='elementwise'`` is
refused at once with the estimate, the budget and the alternative.  A check never dies of memory.

# Note [Memory guard of the op graph]
The tensor back end holds every node's value and rounding bound in float64 for the whole check,
and its stages each hold a few more copies at once: the random-rounding reruns of the forward
(Note [Statistical kinks]) a rerun's values, the squared moves and the caps; a reverse sweep (kink
units, their generators) the cotangents and every rule's temporaries; the statistical reruns
(Note [Statistical allowance]) the unperturbed and the perturbed forward beside the check's own.
Measured peaks (resident memory past the trace, ResNet-18-like models, a GPT-like decoder, small
CNNs, float32 and float64) were 8 to 16 times the bytes of the non-leaf
nodes' float64 values, on top of the parameters' own.  So right after tracing, before the forward
runs, ``graph_bytes`` estimates the check at ``GRAPH_BYTES_PER_ENTRY`` bytes per entry of every
non-leaf node plus ``LEAF_BYTES_PER_ENTRY`` per leaf entry, and a check whose estimate is past the
memory budget (by default half the available memory: twice the exploded back end's, since the
estimate came within 0.7 to 1.2 of the measured peaks) is refused with an ``InputError`` naming the
estimate, the budget, the largest nodes and what to do, instead of growing until it is killed.
"""

from __future__ import annotations

import os

from ..errors import InputError

__all__ = ["memory_budget", "exploded_bytes", "too_big_to_explode", "refuse_exploded", "EXPLODE_ENTRIES",
           "graph_bytes", "refuse_graph", "refuse_jacobian"]

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


def memory_budget(budget: int | float | None = None) -> int:
    """Bytes the exploded back end may use (Note [Memory guard])."""
    if budget is not None:
        whole = isinstance(budget, (int, float)) and not isinstance(budget, bool) and float(budget).is_integer()
        if not whole or budget <= 0:
            raise InputError(f"memory_budget must be a positive whole number of bytes (such as 2e9 or 2 * 2**30), "
                             f"not {budget!r}")
        return int(budget)
    env = os.environ.get("SYMGRAD_MEMORY_BUDGET")
    if env:
        return _parse_bytes(env)
    return _available() // 4


def _available() -> int:
    """Memory this process may still take: the machine's available memory, or less where a cgroup
    (a container's memory.max) or an address-space limit (``prlimit --as``) leaves less."""
    limits = [_read_bytes("/proc/meminfo", "MemAvailable:")]
    try:
        with open("/sys/fs/cgroup/memory.max") as fh:
            cap = fh.read().strip()
        if cap.isdigit():
            limits.append(int(cap) - (_read_int("/sys/fs/cgroup/memory.current") or 0))
    except OSError:
        pass
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            limits.append(soft - (_read_bytes("/proc/self/status", "VmSize:") or 0))
    except (ImportError, OSError, ValueError):
        pass
    known = [x for x in limits if x is not None]
    return max(min(known), 0) if known else 8 * 2**30


def _read_bytes(path: str, key: str) -> int | None:
    """A ``key: N kB`` line of a /proc file, in bytes."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_int(path: str) -> int | None:
    try:
        with open(path) as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


def size_text(n: int) -> str:
    """``n`` bytes as a person reads them: GiB, MiB, KiB or bytes, two significant digits at least."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale / 10:
            return f"{n / scale:.2g} {unit}" if n < 10 * scale else f"{n / scale:,.0f} {unit}"
    return f"{n:,} bytes"


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
        explicit = budget is not None or os.environ.get("SYMGRAD_MEMORY_BUDGET")
        raise InputError(
            f"engine='elementwise' would build about {size_text(need)} of exact expressions "
            f"({n_wrt * (n_out if jacobian else 1):,} derivative entries over {n_in:,} input entries), more than the "
            f"memory budget of {size_text(have)} (" + ("as set" if explicit else "a quarter of the available memory")
            + "; memory_budget= or SYMGRAD_MEMORY_BUDGET changes it). Use engine='graph' (or 'auto'), whose cost is "
            "numpy's."
        )


GRAPH_SHARE = 2  # the op graph's default budget: twice the exploded back end's (half the available memory)
GRAPH_BYTES_PER_ENTRY = 96  # a non-leaf node's entry: value, bound and the stages' copies (Note [Memory guard of the op graph])
LEAF_BYTES_PER_ENTRY = 64  # a leaf's entry: its value, bound, cotangents and the reruns' changes


def graph_bytes(graph) -> int:
    """Estimated peak memory of a tensor back-end check of ``graph`` past what tracing it took, from its
    nodes' sizes alone (Note [Memory guard of the op graph])."""
    inner = sum(n.size for n in graph.nodes if n.kind != "leaf")
    leaves = sum(n.size for n in graph.nodes if n.kind == "leaf")
    return GRAPH_BYTES_PER_ENTRY * inner + LEAF_BYTES_PER_ENTRY * leaves


def refuse_graph(graph, budget: int | None = None) -> None:
    """Raise before the op graph's forward runs where the check would not fit the memory budget."""
    need = graph_bytes(graph)
    # the estimate came within 0.7-1.2 of the measured peaks: half the available memory by default
    explicit = budget is not None or os.environ.get("SYMGRAD_MEMORY_BUDGET")
    have = memory_budget(budget) if explicit else GRAPH_SHARE * memory_budget()
    if need <= have:
        return
    inner = [n for n in graph.nodes if n.kind != "leaf"]
    largest = sorted(inner, key=lambda n: n.size, reverse=True)[:3]
    named = ", ".join(f"{n.origin or n.name or n.kind} ({'x'.join(map(str, n.shape))})" for n in largest)
    raise InputError(
        f"this check would use about {size_text(need)} on the op graph (tensor back end): its "
        f"{len(inner):,} nodes hold {sum(n.size for n in inner):,} values, each kept in float64 with its rounding "
        f"bound and a few copies for the random-rounding reruns; the largest are {named}. That is more than the "
        f"memory budget of {size_text(have)} ("
        + ("as set" if explicit else "half of the available memory") + "; memory_budget= or "
        "SYMGRAD_MEMORY_BUDGET changes it). The cost grows with every activation's size: check a smaller batch "
        "or smaller images / shorter sequences (a quarter of the values is about a quarter of the memory and "
        "of the time), or one block of the model on its own; engine='elementwise' is far costlier at this size. "
        "To run it anyway, pass memory_budget= (bytes) above the estimate."
    )


# Note [Memory guard of a full Jacobian]
# A full Jacobian (``via='jacrev'``, ``'functional.jacobian'``, ``cotangents='full'``) holds, beside
# torch's own Jacobian, its reference's values, bounds and kink sides and the comparison's arrays,
# one entry per output entry and differentiated input entry: measured 114 to 121 bytes per entry
# (a 64-64-64 tanh MLP, batch 8 and 16, float64: 0.49 and 0.92 GB past the start for 4.3 and 8.5
# million entries), and row by row a one-hot cotangent per output entry (8 m**2 bytes).  The
# graph's own guard does not see it (its nodes are the forward's), so a 2,048-output Jacobian of a
# 16k-parameter MLP died of a numpy MemoryError in the comparison after minutes.  It is estimated
# before autograd runs and refused past the op graph's budget, naming the way that scales.
JACOBIAN_BYTES_PER_ENTRY = 128


def refuse_jacobian(n_out: int, n_in: int, budget: int | None = None) -> None:
    """Raise before a full Jacobian is built where it would not fit the memory budget."""
    need = JACOBIAN_BYTES_PER_ENTRY * n_out * n_in + 8 * n_out * n_out
    explicit = budget is not None or os.environ.get("SYMGRAD_MEMORY_BUDGET")
    have = memory_budget(budget) if explicit else GRAPH_SHARE * memory_budget()
    if need <= have:
        return
    raise InputError(
        f"the full Jacobian asked for ({n_out:,} output entries x {n_in:,} differentiated input entries = "
        f"{n_out * n_in:,} entries) would take about {size_text(need)}, more than the memory budget of "
        f"{size_text(have)} (" + ("as set" if explicit else "half of the available memory") + "). Leave "
        "via= out to check exact vector-Jacobian products with random cotangents and Jacobian-vector products "
        "with random tangents, every entry against its own bound (gradcheck's fast mode, exact); or pass v= (one "
        "cotangent), a smaller batch, or memory_budget= (bytes) above the estimate to run it anyway."
    )
