"""Intermediate CROWN boxes behind selection ops (Slice, Reshape, Transpose, Concat ...): the node a selection
reads from gets its own pass, every box still encloses the node's values, and the boxes the nonlinearities
read are tighter than IBP's."""
from __future__ import annotations

import pytest
import torch

from netgen import export, make_net
from nlverify.bounds.crown import crown, nodes_needing_bounds, refinement_candidates
from nlverify.bounds.interval import interval_bounds
from nlverify.model import load_onnx

SELECTION_FED = ["maxmin", "groupsort", "max2", "mul"]  # torch exports these through Slice/Reshape/Concat


def _model(tmp_path, activation: str, architecture: str):
    net, shape = make_net(activation, architecture, seed=1, width=16, inputs=6)
    return load_onnx(export(net, shape, tmp_path / "net.onnx")), shape


def _box(shape, radius: float, seed: int = 0):
    centre = torch.randn(2, *shape, generator=torch.Generator().manual_seed(seed))
    return centre - radius, centre + radius


def _selects(node) -> bool:
    return getattr(node.op, "selects", False)


@pytest.mark.parametrize("activation", SELECTION_FED)
def test_candidates_reach_through_selections_to_the_node_they_read(tmp_path, activation):
    model, _ = _model(tmp_path, activation, "mlp")
    graph = model.graph
    needed, candidates = nodes_needing_bounds(graph), refinement_candidates(graph)
    assert needed <= candidates
    selections = [graph.nodes[name] for name in needed if _selects(graph.nodes[name])]
    assert selections, "torch exports this activation through a selection op"
    for node in selections:
        assert set(node.inputs) <= candidates, node.name


@pytest.mark.parametrize("activation", SELECTION_FED + ["relu", "sigmoid"])
@pytest.mark.parametrize("architecture", ["mlp", "residual", "cnn"])
@pytest.mark.parametrize("radius", [1e-6, 0.05, 1.0])
def test_every_crown_box_encloses_the_node_values(tmp_path, activation, architecture, radius):
    model, shape = _model(tmp_path, activation, architecture)
    lower, upper = _box(shape, radius)
    _, _, boxes = crown(model.graph, lower, upper, propagator=model.propagator)
    generator = torch.Generator().manual_seed(5)
    for b in range(lower.shape[0]):
        low, up = lower[b:b + 1], upper[b:b + 1]
        uniform = low + (up - low) * torch.rand(2000, *shape, generator=generator)
        corners = torch.where(torch.rand(2000, *shape, generator=generator) < 0.5, low, up)
        with torch.no_grad():
            values = model.graph.run(torch.cat([uniform, corners, low, up]))
        for name in refinement_candidates(model.graph):
            if name == model.graph.input_name:
                continue
            box_low, box_up = boxes[name][0][b:b + 1], boxes[name][1][b:b + 1]
            value = values[name]
            slack = 1e-5 * (1 + value.abs())
            assert (value >= box_low - slack).all() and (value <= box_up + slack).all(), (name, radius)


@pytest.mark.parametrize("activation", ["maxmin", "max2", "mul"])
@pytest.mark.parametrize("architecture", ["mlp", "residual"])
def test_selection_fed_boxes_are_tighter_than_ibp(tmp_path, activation, architecture):
    """Before the selection's source got a pass of its own, these boxes were exactly IBP's (CROWN's output
    on a MaxMin MLP was 3.2x wider)."""
    model, shape = _model(tmp_path, activation, architecture)
    lower, upper = _box(shape, 1.0)
    _, _, boxes = crown(model.graph, lower, upper, propagator=model.propagator)
    interval = interval_bounds(model.graph, lower, upper)
    graph = model.graph
    selections = [name for name in nodes_needing_bounds(graph) if _selects(graph.nodes[name])]
    crown_width = sum(float((boxes[n][1] - boxes[n][0]).sum()) for n in selections)
    ibp_width = sum(float((interval[n][1] - interval[n][0]).sum()) for n in selections)
    assert crown_width < 0.9 * ibp_width
