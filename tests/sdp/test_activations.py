import math

import numpy as np
import pytest
import torch
from torch import nn

from nlverify.sdp import activations as act


def _dense_derivative(fn, lo=-30.0, hi=30.0, n=600_001):
    x = torch.linspace(lo, hi, n, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(fn(x).sum(), x)
    return g.detach().numpy()


@pytest.mark.parametrize("spec_fn, module", [(act.gelu, nn.GELU()), (act.silu, nn.SiLU())])
def test_smooth_slope_range_encloses_autograd_derivative(spec_fn, module):
    spec = spec_fn()
    d = _dense_derivative(module)
    assert spec.alpha <= d.min() and d.max() <= spec.beta
    assert d.min() - spec.alpha < 1e-4 and spec.beta - d.max() < 1e-4  # and is tight


def test_gelu_range_matches_closed_form_extrema():
    r = math.sqrt(2.0)
    lo, hi = act.gelu_derivative(np.array([-r, r]))
    a, b = act.gelu_slope_range()
    assert a <= lo < a + 1e-4 and b - 1e-4 < hi <= b
    assert abs(lo + 0.128904) < 1e-6 and abs(hi - 1.128904) < 1e-6


@pytest.mark.parametrize("module, alpha, beta", [
    (nn.ReLU(), 0, 1), (nn.LeakyReLU(0.1), 0.1, 1), (nn.Tanh(), 0, 1), (nn.Sigmoid(), 0, 0.25),
    (act.Sin(), -1, 1), (nn.Softplus(), 0, 1)])
def test_closed_form_slope_ranges(module, alpha, beta):
    spec = act.spec_for_module(module)
    assert (spec.alpha, spec.beta) == (alpha, beta)
    d = _dense_derivative(module, -10, 10, 20_001)
    assert alpha <= d.min() + 1e-15 and d.max() <= beta + 1e-15


def test_maxmin_and_groupsort_modules():
    x = torch.tensor([[1.0, 3.0, 5.0, -2.0]])
    assert torch.equal(act.MaxMin()(x), torch.tensor([[3.0, 1.0, 5.0, -2.0]]))
    assert torch.equal(act.GroupSort(4)(x), torch.tensor([[5.0, 3.0, 1.0, -2.0]]))
    assert act.spec_for_module(act.GroupSort(2)).is_maxmin
