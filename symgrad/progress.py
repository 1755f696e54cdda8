"""Progress on stderr for long checks, and symgrad's logger.

``with progress("symgrad check", quiet=None) as bar: bar.stage("differentiate")`` names the stage
being worked on.  Nothing is shown for work that ends within ``delay`` seconds (2 s), nor when
``quiet=True``, nor with the environment variable ``SYMGRAD_QUIET=1``, nor when stderr is not a
terminal (set ``SYMGRAD_PROGRESS=1`` to show it anyway).  Every stage is also logged at DEBUG level
through ``logging.getLogger("symgrad")``; the library adds no handler (``logging.basicConfig`` or
pytest's ``--log-level=DEBUG`` show it).

Nested checks (``symgrad.check`` handing a module to ``check_module``) share the outer display:
the active one lives in a ``ContextVar``, so threads and pytest-xdist workers never share it.
rich is imported only once a display is really started.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
import sys
import threading
import time
from contextlib import contextmanager

__all__ = ["progress", "stage", "advance", "with_progress", "logger", "is_quiet", "DELAY"]

logger = logging.getLogger("symgrad")
DELAY = 2.0  # seconds of work before anything is shown

_ACTIVE: contextvars.ContextVar["Progress | None"] = contextvars.ContextVar("symgrad_progress", default=None)


def is_quiet(quiet: bool | None = None) -> bool:
    """True when progress must not be shown: ``quiet=True``, ``SYMGRAD_QUIET=1``, or stderr no terminal."""
    if quiet:
        return True
    if os.environ.get("SYMGRAD_QUIET", "").strip() not in ("", "0"):
        return True
    if os.environ.get("SYMGRAD_PROGRESS", "").strip() not in ("", "0"):
        return False
    try:
        return not sys.stderr.isatty()
    except (AttributeError, ValueError):
        return True


class Progress:
    """One piece of work, named by stages; shown on stderr (rich) only after ``delay`` seconds."""

    def __init__(self, description: str, *, quiet: bool | None = None, delay: float = DELAY, stream=None):
        self.description = description
        self.quiet = is_quiet(quiet)
        self.delay = delay
        self.stream = stream
        self.current = "starting"
        self.fraction = ""  # how far the current stage is, " (5/16)" (``advance``)
        self.stages: list[tuple[str, float]] = []  # (name, seconds since start)
        self.shown = False
        self._start = time.perf_counter()
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._display = None
        self._task = None

    def __enter__(self) -> "Progress":
        logger.debug("%s: started", self.description)
        if not self.quiet:
            self._timer = threading.Timer(self.delay, self._show)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            if self._display is not None:
                self._display.stop()
                self._display = None
        logger.debug("%s: done in %.2f s", self.description, self.elapsed)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def stage(self, name: str) -> None:
        """Enter the next stage (logged; shown if the display is up)."""
        self.current, self.fraction = name, ""
        self.stages.append((name, self.elapsed))
        logger.debug("%s: %s (%.2f s)", self.description, name, self.elapsed)
        with self._lock:
            if self._display is not None:
                self._display.update(self._task, description=self._label())

    def advance(self, done: int, total: int) -> None:
        """How far the current stage is: ``done`` of ``total`` steps (shown, not logged)."""
        self.fraction = f" ({done}/{total})" if total else ""
        with self._lock:
            if self._display is not None:
                self._display.update(self._task, description=self._label())

    def _label(self) -> str:
        return f"{self.description}: {self.current}{self.fraction}"

    def _show(self) -> None:
        with self._lock:
            if self._display is not None or self.quiet:
                return
            try:
                from rich.console import Console
                from rich.progress import Progress as RichProgress
                from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn
            except ImportError:  # pragma: no cover - rich is a dependency; without it, one plain line
                print(f"{self._label()} ...", file=self.stream or sys.stderr, flush=True)
                self.shown = True
                return
            console = Console(file=self.stream or sys.stderr, force_terminal=None)
            self._display = RichProgress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                         console=console, transient=True)
            self._task = self._display.add_task(self._label(), total=None)
            self._display.start()
            self.shown = True


@contextmanager
def progress(description: str, *, quiet: bool | None = None, delay: float = DELAY, stream=None):
    """A ``Progress`` for the work in the block; inside a running one, that one is reused."""
    outer = _ACTIVE.get()
    if outer is not None:
        yield outer
        return
    bar = Progress(description, quiet=quiet, delay=delay, stream=stream)
    token = _ACTIVE.set(bar)
    try:
        with bar:
            yield bar
    finally:
        _ACTIVE.reset(token)


def stage(name: str) -> None:
    """Name the stage the running check is in (a no-op, apart from the log, outside ``progress``)."""
    bar = _ACTIVE.get()
    if bar is not None:
        bar.stage(name)
    else:
        logger.debug("%s", name)


def advance(done: int, total: int) -> None:
    """Say how far the running check's current stage is (``done`` of ``total``); a no-op outside ``progress``."""
    bar = _ACTIVE.get()
    if bar is not None:
        bar.advance(done, total)


def with_progress(description: str):
    """Decorator: run the function inside ``progress(description, quiet=<its quiet= keyword>)``."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            with progress(description, quiet=kwargs.get("quiet")):
                return fn(*args, **kwargs)

        return run

    return wrap
