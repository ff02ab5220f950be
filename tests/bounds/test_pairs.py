"""Pair-wise intermediate refinement (``nlverify.bounds.pairs``): the same numbers as the dense rows,
only for the chosen (box, neuron) pairs, and sound end to end."""
from __future__ import annotations

import pytest
import torch

from netgen import export, make_net
from nlverify.bounds import crown as crown_module
from nlverify.bounds import pairs
from nlverify.bounds.crown import CrownOptions, DefaultRelaxations, _refine_rows, propagate_bounds
from nlverify.bounds.interval import node_interval
from nlverify.model import load_onnx


def _model(tmp_path, activation, architecture):
    net, shape = make_net(activation, architecture, seed=5, width=24)
    model = load_onnx(export(net, shape, tmp_path / "net.onnx"))
    model.to(dtype=torch.float64)
    n = 1
    for s in shape:
        n *= s
    g = torch.Generator().manual_seed(1)
    centre = torch.randn(40, n, generator=g, dtype=torch.float64)
    radius = torch.rand(40, n, generator=g, dtype=torch.float64) ** 3 * 2  # tiny to wide boxes
    radius[0] = 0.0  # a degenerate box
    return model, centre - radius, centre + radius


ARCHITECTURES = [("relu", "mlp"), ("leaky_relu", "mlp"), ("relu", "residual"), ("relu", "cnn")]


@pytest.mark.parametrize("activation,architecture", ARCHITECTURES)
def test_pairs_equal_dense_rows_on_the_same_boxes(tmp_path, activation, architecture):
    model, lower, upper = _model(tmp_path, activation, architecture)
    g, propagator = model.graph, model.propagator
    bounds = propagate_bounds(g, lower, upper, DefaultRelaxations, propagator, CrownOptions())
    relax = DefaultRelaxations(bounds)
    refined = [n for n in g if n.name in crown_module.nodes_needing_bounds(g) and n.kind != "input"
               and crown_module._has_nonlinear_ancestor(propagator, n)]
    assert refined
    mask_generator = torch.Generator().manual_seed(2)
    for node in refined:
        low, up = node_interval(node, [bounds[i] for i in node.inputs])
        batch, n = low.shape[0], node.size
        dense_low, dense_up = _refine_rows(propagator, node, torch.arange(n), low, up, bounds, relax)
        mask = torch.rand(batch, n, generator=mask_generator) < 0.3
        pair_low, pair_up = pairs.refine_pairs(propagator, node, mask, low, up, bounds, relax)
        m = mask.reshape(low.shape)
        torch.testing.assert_close(pair_low[m], dense_low[m], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(pair_up[m], dense_up[m], rtol=1e-12, atol=1e-12)
        assert torch.equal(pair_low[~m], low[~m]) and torch.equal(pair_up[~m], up[~m])  # others untouched


@pytest.mark.parametrize("activation,architecture", ARCHITECTURES[:3])
def test_paired_bounds_contain_sampled_activations(tmp_path, monkeypatch, activation, architecture):
    model, lower, upper = _model(tmp_path, activation, architecture)
    calls = []
    original = pairs.refine_pairs
    monkeypatch.setattr(crown_module, "refine_pairs", lambda *a, **k: calls.append(1) or original(*a, **k))
    monkeypatch.setattr(crown_module, "worth_pairing", lambda mask: mask.shape[0] > 1)
    bounds = propagate_bounds(model.graph, lower, upper, DefaultRelaxations, model.propagator, CrownOptions())
    assert calls, "the pair path was never taken"
    t = torch.rand(256, *lower.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = (lower + t * (upper - lower)).reshape(-1, lower.shape[1])
    values = model.graph.run(x)
    for name, (low, up) in bounds.items():
        if name not in values:
            continue
        v = values[name].reshape(256, *low.shape)
        assert (v >= low - 1e-9).all() and (v <= up + 1e-9).all(), name


def test_worth_pairing_needs_sparse_scattered_pairs():
    mask = torch.zeros(8, 10, dtype=torch.bool)
    assert not pairs.worth_pairing(mask)  # nothing to refine
    mask[torch.arange(8), torch.arange(8)] = True  # one pair per box, 8 distinct rows: 8 of 64
    assert pairs.worth_pairing(mask)
    assert not pairs.worth_pairing(torch.ones(8, 10, dtype=torch.bool))  # dense: rows are cheaper
    assert not pairs.worth_pairing(mask[:1])  # one box: nothing to gain


@pytest.mark.parametrize("activation,architecture", [("sigmoid", "mlp"), ("tanh", "residual")])
def test_refine_after_refines_exactly_the_later_nodes_of_each_box(tmp_path, activation, architecture):
    """``refine_after[b]``: box ``b`` gets CROWN on the nodes after that position and IBP on the others;
    each box equals the run where every box has its setting."""
    model, lower, upper = _model(tmp_path, activation, architecture)
    g, propagator = model.graph, model.propagator
    nodes = list(g)
    middle = len(nodes) // 2
    everywhere = propagate_bounds(g, lower, upper, DefaultRelaxations, propagator, CrownOptions(),
                                  refine_after=torch.full((40,), -1))
    dense = propagate_bounds(g, lower, upper, DefaultRelaxations, propagator, CrownOptions())
    late = propagate_bounds(g, lower, upper, DefaultRelaxations, propagator, CrownOptions(),
                            refine_after=torch.full((40,), middle))
    mixed_after = torch.where(torch.arange(40) % 2 == 0, -1, middle)
    mixed = propagate_bounds(g, lower, upper, DefaultRelaxations, propagator, CrownOptions(), refine_after=mixed_after)
    even, odd = torch.arange(0, 40, 2), torch.arange(1, 40, 2)
    for position, node in enumerate(nodes):
        for which in (0, 1):
            torch.testing.assert_close(everywhere[node.name][which], dense[node.name][which], rtol=0, atol=0)
            torch.testing.assert_close(mixed[node.name][which][even], dense[node.name][which][even],
                                       rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(mixed[node.name][which][odd], late[node.name][which][odd],
                                       rtol=1e-12, atol=1e-12)
        if position <= middle and node.kind != "input":  # no CROWN pass here: plain IBP of the inputs' boxes
            ibp = node_interval(node, [late[i] for i in node.inputs])
            assert torch.equal(late[node.name][0], ibp[0]) and torch.equal(late[node.name][1], ibp[1])
    tighter = [n.name for n in nodes[middle + 1:] if (mixed[n.name][0][even] > late[n.name][0][even] + 1e-9).any()]
    assert tighter, "the refined boxes never beat the late-only run"


@pytest.mark.parametrize("activation,architecture", [("relu", "mlp"), ("relu", "residual")])
def test_refine_after_with_exact_neurons_is_sound(tmp_path, activation, architecture):
    """ReLU skips stable neurons (pairs), so boxes may differ from the dense run; they must still contain
    every sampled value, and be no looser than IBP when intersected with it."""
    model, lower, upper = _model(tmp_path, activation, architecture)
    g = model.graph
    after = torch.where(torch.arange(40) % 2 == 0, -1, len(list(g)) // 2)
    ibp = propagate_bounds(g, lower, upper, DefaultRelaxations, model.propagator, CrownOptions(intermediate="ibp"))
    t = torch.rand(256, *lower.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    values = g.run((lower + t * (upper - lower)).reshape(-1, lower.shape[1]))
    for intersect in (False, True):
        mixed = propagate_bounds(g, lower, upper, DefaultRelaxations, model.propagator,
                                 CrownOptions(intersect_ibp=intersect), refine_after=after)
        for name, (low, up) in mixed.items():
            if name in values:
                v = values[name].reshape(256, *low.shape)
                assert (v >= low - 1e-9).all() and (v <= up + 1e-9).all(), name
            if intersect:
                assert (low >= ibp[name][0] - 1e-9).all() and (up <= ibp[name][1] + 1e-9).all(), name


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "sin", "mul", "maxmin"])
def test_ibp_intersection_is_optional_and_both_are_sound(tmp_path, activation):
    """``CrownOptions.intersect_ibp``: with it, every box lies inside IBP's; without it, a neuron bounded
    by a backward pass keeps that pass's bound alone (so it may stick out of IBP's box). Both contain
    every sampled value."""
    model, lower, upper = _model(tmp_path, activation, "mlp")
    g = model.graph
    ibp = propagate_bounds(g, lower, upper, DefaultRelaxations, model.propagator, CrownOptions(intermediate="ibp"))
    plain = propagate_bounds(g, lower, upper, DefaultRelaxations, model.propagator, CrownOptions())
    both = propagate_bounds(g, lower, upper, DefaultRelaxations, model.propagator, CrownOptions(intersect_ibp=True))
    t = torch.rand(256, *lower.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    values = g.run((lower + t * (upper - lower)).reshape(-1, lower.shape[1]))
    for name in plain:
        for boxes in (plain, both):
            low, up = boxes[name]
            if name in values:
                v = values[name].reshape(256, *low.shape)
                assert (v >= low - 1e-9).all() and (v <= up + 1e-9).all(), name
            assert torch.isfinite(low).all() and torch.isfinite(up).all(), name
        low, up = both[name]
        assert (low >= ibp[name][0] - 1e-9).all() and (up <= ibp[name][1] + 1e-9).all(), name


def test_without_intersection_a_pass_may_stick_out_of_ibp(tmp_path):
    """A deep sigmoid net with large weights and a wide box: IBP (bounded by the activations' range) is
    tighter than CROWN on deep neurons, and without the intersection those keep CROWN's box."""
    torch.manual_seed(0)
    layers = [torch.nn.Linear(4, 16), torch.nn.Sigmoid()]
    for _ in range(3):
        layers += [torch.nn.Linear(16, 16), torch.nn.Sigmoid()]
    layers.append(torch.nn.Linear(16, 2))
    net = torch.nn.Sequential(*layers)
    with torch.no_grad():
        for layer in net:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.mul_(6.0)
    model = load_onnx(export(net, (4,), tmp_path / "deep.onnx"))
    model.to(dtype=torch.float64)
    lower, upper = -torch.ones(1, 4, dtype=torch.float64), torch.ones(1, 4, dtype=torch.float64)
    g = model.graph
    ibp = propagate_bounds(g, lower, upper, DefaultRelaxations, model.propagator, CrownOptions(intermediate="ibp"))
    plain = propagate_bounds(g, lower, upper, DefaultRelaxations, model.propagator, CrownOptions())
    sticks_out = sum(int((plain[n][1] - plain[n][0] > ibp[n][1] - ibp[n][0] + 1e-9).sum()) for n in plain)
    assert sticks_out > 0
    x = lower + (upper - lower) * torch.rand(4096, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    values = g.run(x)
    for name, (low, up) in plain.items():
        if name in values:
            v = values[name].reshape(4096, *low.shape[1:])
            assert (v >= low - 1e-9).all() and (v <= up + 1e-9).all(), name
