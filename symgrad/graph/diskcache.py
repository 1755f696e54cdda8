"""The op graph of a model kept on disk, so a second process checking it skips the trace.

# Note [Disk cache]
Tracing (``make_fx``, and the start-up of torch's tracer) is most of a first check's time.  The
traced op graph -- no verdict, no derivative values, only the graph with its constants -- is stored
under ``$SYMGRAD_CACHE_DIR`` (default ``$XDG_CACHE_HOME/symgrad`` or ``~/.cache/symgrad``), keyed by:

* the function's identity that survives a process: an ``nn.Module``'s ``repr`` (every layer's options),
  the source of every module class in it and its buffers; a module-level function's name and source.
  Lambdas, nested functions, closures and custom Functions' ``apply`` are never cached (their source
  does not say what they compute);
* the leaves' names, shapes and dtypes, the integer inputs, the target and the loss;
* the source of ``symgrad/graph`` itself, symgrad's and torch's versions (any edit invalidates it).

Anything it cannot fingerprint is not cached.  A loaded graph is used exactly like an in-memory one
(Note [Graph cache]): its leaves are refreshed, its linear rules cross-checked, and a forward that
disagrees with torch's makes symgrad trace again.  Files are written atomically, read only when they
belong to the current user and nobody else can write them; ``SYMGRAD_CACHE=0`` turns it off.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import pickle
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["fingerprint", "load", "store", "cache_dir", "module_state"]


def cache_dir() -> Path | None:
    if os.environ.get("SYMGRAD_CACHE", "1").strip() == "0":
        return None
    root = os.environ.get("SYMGRAD_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "symgrad")
    return Path(root) / "graphs"


@lru_cache(maxsize=1)
def _code_version() -> str:
    import torch

    from ..version import __version__

    h = hashlib.sha1(f"{__version__}|{torch.__version__}".encode())
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()


def _describe(obj, h, depth: int = 0) -> None:
    """Feed what defines ``obj``'s computation into ``h``; raises TypeError where it cannot."""
    import torch

    if depth > 3:
        raise TypeError("too deep")
    if obj is None or isinstance(obj, (bool, int, float, str)):
        h.update(repr(obj).encode())
    elif isinstance(obj, torch.Tensor):
        h.update(f"{tuple(obj.shape)}{obj.dtype}".encode())
        h.update(obj.detach().cpu().contiguous().numpy().tobytes())
    elif isinstance(obj, torch.nn.Module):
        h.update(f"{obj!r}".encode())
        for cls in sorted({type(m) for m in obj.modules()}, key=lambda c: f"{c.__module__}.{c.__qualname__}"):
            if "<locals>" in cls.__qualname__:
                raise TypeError("a module class defined inside a function")
            h.update(f"{cls.__module__}.{cls.__qualname__}".encode())
            h.update(inspect.getsource(cls).encode())
            _class_globals(cls, h)
        for _, buf in obj.named_buffers():
            _describe(buf, h, depth + 1)
        h.update(repr(module_state(obj, lambda v: _digest(v, depth + 1))).encode())
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _describe(item, h, depth + 1)
    elif isinstance(obj, type):
        if "<locals>" in obj.__qualname__:
            raise TypeError("a class defined inside a function")
        h.update(f"{obj.__module__}.{obj.__qualname__}".encode())
        h.update(inspect.getsource(obj).encode())
        _class_globals(obj, h)
    elif inspect.isfunction(obj):
        # only module-level functions that close over nothing: a lambda, a nested function or a
        # custom Function's apply (whose source is torch's) could stand for anything
        if "<locals>" in obj.__qualname__ or obj.__name__ == "<lambda>" or obj.__closure__:
            raise TypeError("a nested function, lambda or closure")
        h.update(f"{obj.__module__}.{obj.__qualname__}".encode())
        h.update(inspect.getsource(obj).encode())
        _read_globals(obj, h)
    else:
        raise TypeError(type(obj).__name__)


# Note [Globals a forward reads]
# The source of a class says what its forward computes only together with the module-level names it
# reads: a flag (``MODE = "inf"``), a constant, a helper function of the same module.  Keyed on the
# source alone, a graph traced with one value of such a name was reused from disk for another whose
# forward gave the same numbers (an additive mask of -1e9 where -inf had been cached, a cast removed):
# a stale graph, and a 1 + 1e-6 bug passed.  So the numbers, strings and tensors a method reads from
# its module's globals, and the source of the module's own functions it calls, are in the key too.
def _class_globals(cls, h) -> None:
    for value in vars(cls).values():
        fn = getattr(value, "__func__", value)
        if inspect.isfunction(fn):
            _read_globals(fn, h)


def _read_globals(fn, h) -> None:
    import torch

    code, scope = fn.__code__, fn.__globals__
    names, stack = set(), [code]
    while stack:  # the names of nested code too (comprehensions, lambdas)
        c = stack.pop()
        names.update(c.co_names)
        stack.extend(k for k in c.co_consts if inspect.iscode(k))
    for name in sorted(n for n in names if n in scope):
        value = scope[name]
        if value is None or isinstance(value, (bool, int, float, str)):
            h.update(f"{name}={value!r}".encode())
        elif isinstance(value, torch.Tensor):
            h.update(name.encode())
            _describe(value, h, 3)
        elif inspect.isfunction(value) and value.__module__ == fn.__module__ and value is not fn:
            h.update(f"{name}:".encode() + inspect.getsource(value).encode())


def _digest(obj, depth: int) -> str:
    h = hashlib.sha1()
    _describe(obj, h, depth)
    return h.hexdigest()


# Note [Module state]
# A module's ``repr`` shows its layers' options, not everything its ``forward`` reads: a plain
# attribute (``self.act = MyFunction``, ``self.scale = 0.5``, ``self.training``) or a hook changes
# the computation and the repr stays the same.  Both caches therefore key a module on the state of
# every submodule as well: every instance attribute except the parameters, buffers and submodules
# (keyed separately), and every forward/backward hook.  ``describe`` turns a value into something
# comparable: for the disk cache a digest of what survives a process (numbers, strings, tensors'
# bytes, module-level classes and functions with their source; anything else is refused, so the
# graph is not stored), for the in-memory cache the object's identity.  Without it, a graph traced
# for one model was once used for another that differed only in a custom Function attribute.
_STRUCTURE = ("_parameters", "_buffers", "_modules")
_NOT_COMPUTATION = ("_non_persistent_buffers_set", "_state_dict_hooks", "_state_dict_pre_hooks",
                    "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks", "_is_full_backward_hook")


def module_state(module, describe) -> tuple:
    """Every submodule's attributes that can change what ``forward`` computes (Note [Module state])."""
    parts = []
    for name, m in module.named_modules():
        for k, v in sorted(vars(m).items()):
            if k in _STRUCTURE:
                parts.append((name, k, tuple(v)))
            elif k in _NOT_COMPUTATION:
                continue
            elif "hooks" in k or k.endswith("always_called"):
                if v:
                    parts.append((name, k, tuple(describe(f) for f in v.values())))
            elif isinstance(v, (bool, int, float, str, type(None))):
                parts.append((name, k, repr(v)))
            else:
                parts.append((name, k, describe(v)))
    return tuple(parts)


def fingerprint(fn, symbolic, loss, target, names, tensors) -> str | None:
    """A key that survives the process, or None where something cannot be fingerprinted (or the
    disk cache is off: then no key is needed, and hashing the package's source costs a first check)."""
    if cache_dir() is None:
        return None
    h = hashlib.sha1(_code_version().encode())
    try:
        for part in (fn, symbolic, loss, target):
            _describe(part, h)
    except (TypeError, OSError):
        return None
    for name, t in zip(names, tensors):
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        if not t.is_floating_point():
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load(key: str | None):
    folder = cache_dir()
    if key is None or folder is None:
        return None
    path = folder / f"{key}.pkl"
    try:
        st = path.stat()
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            return None  # someone else could have written it: never unpickle that
        with open(path, "rb") as fh:
            return pickle.load(fh)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
        return None


def store(key: str | None, graph) -> None:
    folder = cache_dir()
    if key is None or folder is None or getattr(graph, "specialized", ""):  # Note [Value-dependent branches]
        return
    saved = {}
    for node in graph.inputs.values():  # inputs and parameters are refreshed on load: not stored
        saved[node] = node.attrs["value"]
        node.attrs["value"] = np.zeros(0)
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = folder / f".{key}.{os.getpid()}.tmp"
        with open(tmp, "wb") as fh:
            pickle.dump(graph, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.chmod(tmp, 0o600)
        os.replace(tmp, folder / f"{key}.pkl")
    except (OSError, pickle.PicklingError, TypeError, AttributeError):
        pass  # a cache that cannot be written is no cache, not an error
    finally:
        for node, value in saved.items():
            node.attrs["value"] = value
