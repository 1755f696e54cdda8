"""Import torch models and functions as symbolic twins through ``torch.fx``.

``import_fn(fn)`` gives a callable on ``SymTensor``s that computes what the torch function or
module computes (pass it as ``symbolic=`` to ``symgrad.check``); ``register(...)`` teaches the
importer a user op; ``coverage_rows()`` lists what it knows (the README's coverage table).
"""

from .batch import BATCH_RULES, Mixing
from .interpret import batch_axes, refuse_stateful, run_symbolic, trace
from .table import RULES, Rule, coverage_rows, lookup, register

__all__ = ["import_fn", "register", "coverage_rows", "trace", "run_symbolic", "batch_axes", "refuse_stateful",
           "RULES", "Rule", "lookup", "BATCH_RULES", "Mixing", "SymbolicTwin"]


class SymbolicTwin:
    """A traced torch function or module, callable on ``SymTensor``s.

    ``twin(*inputs)`` runs the graph symbolically; a module's parameters become symbols named after
    them (``layer1.weight[0, 1]``) unless ``params={name: SymTensor}`` is passed.
    """

    def __init__(self, fn):
        import torch.nn as nn

        from ..validate import check_callable, refuse_hooks

        check_callable(fn)
        if isinstance(fn, nn.Module):
            from ..symbolic.numbers import refuse_string_attributes

            refuse_string_attributes(fn)
            refuse_stateful(fn)
            refuse_hooks(fn)
        self.fn = fn
        self.graph_module = trace(fn)

    def parameters(self) -> dict:
        from ..symbolic.tensor import symbols

        return {name: symbols(name, tuple(p.shape)) for name, p in self.graph_module.named_parameters()}

    def __call__(self, *inputs, params=None):
        from ..symbolic.tensor import as_symtensor

        params = self.parameters() if params is None else params
        out = run_symbolic(self.graph_module, [as_symtensor(x) if not isinstance(x, (int, float)) else x for x in inputs],
                           params)
        return as_symtensor(out)


def import_fn(fn) -> SymbolicTwin:
    """The symbolic twin of a torch function (or ``nn.Module``), traced with ``torch.fx``."""
    return SymbolicTwin(fn)
