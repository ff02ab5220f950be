"""Forward affine bounds (``nlverify.bounds.forward``): sound on every activation, never looser than IBP."""
from __future__ import annotations

import pytest
import torch

from netgen import ACTIVATIONS, export, make_net
from nlverify.bounds.forward import forward_bounds
from nlverify.bounds.interval import interval_bounds
from nlverify.model import load_onnx


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("architecture", ["mlp", "residual"])
def test_forward_bounds_contain_samples_and_beat_ibp(tmp_path, activation, architecture):
    net, shape = make_net(activation, architecture, seed=7, width=12)
    model = load_onnx(export(net, shape, tmp_path / "net.onnx"))
    model.to(dtype=torch.float64)
    n = 1
    for s in shape:
        n *= s
    g = torch.Generator().manual_seed(11)
    centre = torch.randn(6, n, generator=g, dtype=torch.float64)
    radius = torch.rand(6, n, generator=g, dtype=torch.float64) ** 2 * torch.tensor([0, 1e-6, 0.01, 0.3, 1, 3])[:, None]
    lower, upper = centre - radius, centre + radius
    bounds = forward_bounds(model.graph, lower, upper, model.propagator)
    ibp = interval_bounds(model.graph, lower, upper)
    t = torch.rand(2000, *lower.shape, generator=g, dtype=torch.float64)
    t[:8] = (t[:8] > 0.5).double()  # some corners
    values = model.graph.run((lower + t * (upper - lower)).reshape(-1, n))
    for name, (low, up) in bounds.items():
        v = values[name].reshape(2000, *low.shape)
        tol = 1e-9 * (1 + v.abs())
        assert (v >= low - tol).all() and (v <= up + tol).all(), name
        assert (low >= ibp[name][0] - 1e-12).all() and (up <= ibp[name][1] + 1e-12).all(), name
