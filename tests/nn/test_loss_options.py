"""Loss options the importer reads (cross-entropy's weight, ignore_index, label_smoothing).

The forward row compares symgrad's loss with torch's, so a misread option fails there first.
"""

import pytest
import torch
import torch.nn as nn

import symgrad as sg


def _model(dtype):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(dtype), torch.randn(6, 4, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("weight,ignore,smoothing,reduction", [
    (None, -100, 0.0, "mean"), (None, -100, 0.1, "sum"), (None, 0, 0.0, "mean"), ([0.5, 2.0, 1.0], -100, 0.0, "mean"),
    ([0.5, 2.0, 1.0], 2, 0.2, "mean"), ([0.5, 2.0, 1.0], 0, 0.1, "sum"),
])
def test_cross_entropy_options_match_torch(dtype, weight, ignore, smoothing, reduction):
    m, x = _model(dtype)
    y = torch.tensor([0, 1, 2, 0, 2, 1])
    loss = nn.CrossEntropyLoss(weight=None if weight is None else torch.tensor(weight, dtype=dtype),
                               ignore_index=ignore, label_smoothing=smoothing, reduction=reduction)
    report = sg.check(m, {"x": x}, loss=loss, target=y)
    assert report.passed, report.to_text()
    assert report["output"].passed


def test_cross_entropy_default_ignore_label():
    m, x = _model(torch.float64)
    y = torch.tensor([0, -100, 2, 0, -100, 1])
    report = sg.check(m, {"x": x}, loss=nn.CrossEntropyLoss(), target=y)
    assert report.passed, report.to_text()


def test_cross_entropy_probability_targets_with_weight_and_smoothing():
    m, x = _model(torch.float64)
    p = torch.softmax(torch.randn(6, 3, dtype=torch.float64), 1)
    loss = nn.CrossEntropyLoss(weight=torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64), label_smoothing=0.2)
    assert sg.check(m, {"x": x}, loss=loss, target=p).passed


def test_a_wrong_class_weight_in_the_symbolic_loss_shows_in_the_forward():
    # the same logits, two different weightings: symgrad's sg.cross_entropy must follow torch's
    z = torch.randn(4, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    w = torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64)
    report = sg.check(lambda z: nn.functional.cross_entropy(z, y, weight=w), {"z": z},
                      symbolic=lambda z: sg.cross_entropy(z, y))
    assert not report["output"].passed
    report = sg.check(lambda z: nn.functional.cross_entropy(z, y, weight=w), {"z": z},
                      symbolic=lambda z: sg.cross_entropy(z, y, weight=w))
    assert report.passed, report.to_text()
