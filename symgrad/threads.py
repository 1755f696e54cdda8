"""numpy's BLAS threads while a check runs (Note [BLAS threads on a busy machine]).

# Note [BLAS threads on a busy machine]
The op graph's arithmetic is numpy's, and its contractions go through the BLAS numpy was built
with (OpenBLAS), whose threads wait for each other by spinning.  Where the machine has no idle core
for them -- other processes running, pytest workers, a CI box of two cores -- every product waits for
a thread that is not scheduled: on this 2-core machine at a load of 5, a 4 x 256 by 256 x 1024 product
took 6 ms with OpenBLAS's two threads and 0.44 ms with one, and a GPT decoder of 3.7M parameters
(float32, loss in forward) took 167 s against 29 s.  So a check runs numpy's BLAS with as many
threads as the machine has idle cores (its 1-minute load average against its core count, at least
one), and leaves it alone where all of them are idle.  ``SYMGRAD_BLAS_THREADS=n`` sets the number
(``0``: leave BLAS alone).  torch's own threads are its own (OpenMP): untouched.  threadpoolctl does
the limiting (it finds the BLAS loaded into the process and sets its threads through its own API).
"""

from __future__ import annotations

import os
from contextlib import contextmanager

__all__ = ["blas_threads", "blas_limited"]


def blas_threads() -> int | None:
    """Threads for numpy's BLAS during a check; None: leave it as it is."""
    given = os.environ.get("SYMGRAD_BLAS_THREADS", "").strip()
    if given:
        try:
            n = int(given)
        except ValueError:
            return None
        return n if n > 0 else None
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on this platform
        return None
    idle = round(cores - load)
    return None if idle >= cores else max(1, idle)


@contextmanager
def blas_limited():
    """Within: numpy's BLAS runs with ``blas_threads()`` threads (where that says to limit it)."""
    n = blas_threads()
    if n is None:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a dependency; an install without it runs unlimited
        yield
        return
    with threadpool_limits(limits=n, user_api="blas"):
        yield
