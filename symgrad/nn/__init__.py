"""Networks: symbolic twins of torch.nn models (built here or exploded through the op graph), checked.

``symgrad.check(model, inputs, loss=..., target=...)`` lands in ``check_module``; the modules here
(``symgrad.nn.Linear``, ``Sequential``, ``ReLU``, ...) build a network symbolically and give the
equivalent torch module with identical weights (``.to_torch()``).
"""

from .check import LOSSES, ONEHOT_VIA, check_function, check_module, resolve_loss
from .jacobian import WeightJacobian, weight_jacobian
from .modules import *  # noqa: F401,F403
from .modules import __all__ as _modules_all

__all__ = ["check_module", "check_function", "resolve_loss", "LOSSES", "ONEHOT_VIA",
           "trace", "weight_jacobian", "WeightJacobian", *_modules_all]


def trace(fn):
    """The symbolic twin of a torch function or module (``symgrad.import_fn``, Note [Exploded twin])."""
    from ..graph.twin import import_fn

    return import_fn(fn)
