"""A folded op that will not run on its input moved by the input's bound still carries that bound
(Note [Unmovable folds] in symgrad/graph/fold_error.py)."""

import numpy as np
import torch

from symgrad.graph.fold_error import fold_error


def _picky(x):
    """Doubles x, but only the x it was folded from: a moved input raises (as an op with a
    data-dependent check would)."""
    if not torch.equal(x, torch.tensor([1.0, -3.0, 0.5], dtype=torch.float64)):
        raise ValueError("moved input")
    return 2 * x


def test_an_op_that_refuses_its_moved_input_keeps_the_inputs_bound():
    x = torch.tensor([1.0, -3.0, 0.5], dtype=torch.float64)
    err = np.array([1e-7, 3e-7, 0.0])
    out = _picky(x)
    bound = fold_error(_picky, [x], {}, out, {id(x): err}, torch.float32)
    # 2x is held exactly in float32 (no rounding of its own); the input's largest bound (3e-7) and
    # its largest relative bound (1e-7) times |2x| are kept
    assert np.all(bound >= 3e-7)
    assert np.all(bound >= 1e-7 * np.abs(out.numpy()))
    # an op that takes the moved input gets the change itself: 2 * err, no more
    doubled = fold_error(lambda t: 2 * t, [x], {}, out, {id(x): err}, torch.float64)
    assert np.allclose(doubled, 2 * err, rtol=1e-6, atol=1e-15)  # plus an ulp of 2x
