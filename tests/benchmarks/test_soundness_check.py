"""certify_plant: the float64 gate every generator applies before writing an instance."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nlverify.benchmarks.soundness.check import MIN_MARGIN, certify_plant


def _linear(bias: list[float]) -> nn.Sequential:
    layer = nn.Linear(2, 2).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        layer.bias.copy_(torch.tensor(bias))
    return nn.Sequential(layer)


def test_planted_point_gets_a_margin_and_a_certified_ball():
    x_star = np.array([0.5, 0.5])
    low, up = np.zeros(2), np.ones(2)
    margin, radius = certify_plant(_linear([0.0, 0.1]), (2,), x_star, low, up, label=0, target=1, classes=2,
                                   planted=True, start_radius=0.4)
    assert margin == pytest.approx(0.1)
    assert 0 < radius <= 0.05  # y1 - y0 = x1 - x0 + 0.1 stays >= the certification tolerance only inside 0.05


def test_planted_point_without_margin_is_refused():
    with pytest.raises(RuntimeError, match="margin"):
        certify_plant(_linear([0.0, MIN_MARGIN / 10]), (2,), np.array([0.5, 0.5]), np.zeros(2), np.ones(2),
                      label=0, target=1, classes=2, planted=True, start_radius=0.4)


def test_clean_instance_needs_no_ball():
    margin, radius = certify_plant(_linear([0.1, 0.0]), (2,), np.array([0.5, 0.5]), np.zeros(2), np.ones(2),
                                   label=0, target=1, classes=2, planted=False, start_radius=0.4)
    assert margin == pytest.approx(-0.1) and radius == 0.0
