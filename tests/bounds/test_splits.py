"""Split constraints (branch-and-bound domains): bounds stay sound inside each child domain, beta never
makes them unsound, and an empty domain is closed vacuously."""
from __future__ import annotations

import pytest
import torch

from netgen import export, make_net
from nlverify.bounds.alpha import AlphaOptions, alpha_crown
from nlverify.bounds.crown import SplitConstraints, crown
from nlverify.model import load_onnx

D = torch.float64


def _children(model, lower, upper, node_name, neuron, point):
    """Two domains: pre-activation neuron ``neuron`` of ``node_name`` <= point, and >= point."""
    shape = model.graph.nodes[node_name].shape
    inf = torch.full((2, *shape), float("inf"), dtype=D)
    split_low, split_up = -inf.clone(), inf.clone()
    split_up.view(2, -1)[0, neuron] = point
    split_low.view(2, -1)[1, neuron] = point
    return SplitConstraints({node_name: split_low}, {node_name: split_up}), lower.expand(2, -1), upper.expand(2, -1)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "sin", "gelu"])
def test_child_bounds_are_sound_inside_each_child(tmp_path, activation):
    net, shape = make_net(activation, "mlp", seed=4)
    model = load_onnx(export(net, shape, tmp_path / "n.onnx")).to(dtype=D)
    first = model.graph.nonlinear_nodes()[1].inputs[0]  # the second layer's pre-activation
    lower = torch.full((1, 4), -1.0, dtype=D)
    upper = torch.full((1, 4), 1.0, dtype=D)
    x = lower + (upper - lower) * torch.rand(40_000, 4, dtype=D)
    values = model.graph.run(x)
    pre = values[first].reshape(len(x), -1)
    out = values[model.graph.output_name].reshape(len(x), -1)
    for neuron in range(3):
        point = float(pre[:, neuron].median())
        splits, lo, up = _children(model, lower, upper, first, neuron, point)
        c_low, c_up, _ = crown(model.graph, lo, up, splits=splits)
        a_low, a_up, _, params = alpha_crown(model.graph, lo, up, options=AlphaOptions(iterations=10), splits=splits)
        assert any(k[0] == "beta" for k in params)
        for child, inside in enumerate((pre[:, neuron] <= point, pre[:, neuron] >= point)):
            y = out[inside]
            for low, high in ((c_low, c_up), (a_low, a_up)):
                assert (y >= low[child] - 1e-9).all() and (y <= high[child] + 1e-9).all()
        assert (a_low >= c_low - 1e-9).all() and (a_up <= c_up + 1e-9).all()


def test_empty_domain_is_closed(tmp_path):
    net, shape = make_net("relu", "mlp", seed=4)
    model = load_onnx(export(net, shape, tmp_path / "n.onnx")).to(dtype=D)
    name = model.graph.nonlinear_nodes()[0].inputs[0]
    node_shape = model.graph.nodes[name].shape
    split_low = torch.full((1, *node_shape), -float("inf"), dtype=D)
    split_up = torch.full((1, *node_shape), float("inf"), dtype=D)
    split_low.view(1, -1)[0, 0] = 1e6  # no input reaches this value
    splits = SplitConstraints({name: split_low}, {name: split_up})
    lower, upper = -torch.ones(1, 4, dtype=D), torch.ones(1, 4, dtype=D)
    low, up, _ = crown(model.graph, lower, upper, splits=splits)
    assert torch.isinf(low).all() and (low > 0).all()
    low, _, _, _ = alpha_crown(model.graph, lower, upper, options=AlphaOptions(iterations=3), splits=splits, need_upper=False)
    assert torch.isinf(low).all() and (low > 0).all()


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "sigmoid"])
def test_skipping_exact_neurons_changes_no_bound(tmp_path, activation):
    """Stable ReLU neurons get no backward row; the output bounds must be the same as with every row."""
    from nlverify.bounds.crown import CrownOptions

    net, shape = make_net(activation, "mlp", seed=6, width=24)
    model = load_onnx(export(net, shape, tmp_path / "n.onnx")).to(dtype=D)
    centre = torch.rand(5, 4, dtype=D) * 2 - 1
    radius = torch.tensor([0.001, 0.01, 0.1, 0.5, 2.0], dtype=D).unsqueeze(1)
    results = [crown(model.graph, centre - radius, centre + radius, options=CrownOptions(skip_exact_neurons=skip))
               for skip in (False, True)]
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
