"""Intermediate CROWN boxes behind selection ops (Slice, Reshape, Transpose, Concat ...): the node a selection
reads from gets its own pass, every box still encloses the node's values, and the boxes the nonlinearities
read are tighter than IBP's."""
from __future__ import annotations

import pytest
import torch

from netgen import box_samples, export, make_net
from nlverify.bounds.crown import crown, nodes_needing_bounds, refinement_candidates
from nlverify.bounds.interval import interval_bounds, node_interval
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
        with torch.no_grad():
            values = model.graph.run(box_samples(low, up, 2000, generator))
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


@pytest.mark.parametrize("activation", SELECTION_FED)
@pytest.mark.parametrize("architecture", ["mlp", "residual", "cnn"])
@pytest.mark.parametrize("radius", [0.05, 1.0, 5.0])
def test_boxes_behind_selections_stay_inside_their_interval_image(tmp_path, activation, architecture, radius):
    """A node a selection reads from had, before it got a pass, the interval image of its inputs' boxes;
    its box now stays inside that image, so what the selections (and the nonlinearities after them) read
    can only shrink."""
    model, shape = _model(tmp_path, activation, architecture)
    lower, upper = _box(shape, radius)
    _, _, boxes = crown(model.graph, lower, upper, propagator=model.propagator)
    graph = model.graph
    behind = refinement_candidates(graph) - nodes_needing_bounds(graph) - {graph.input_name}
    assert behind
    for name in behind:
        node = graph.nodes[name]
        image_low, image_up = node_interval(node, [boxes[i] for i in node.inputs])
        assert (boxes[name][0] >= image_low).all() and (boxes[name][1] <= image_up).all(), name


@pytest.mark.parametrize("activation,kind,shape,hidden,seed", [
    ("maxmin", "mlp", (8,), (16, 16, 16), 3), ("groupsort", "cnn", (1, 4, 4), (16, 16), 0),
])
def test_behind_selection_boxes_stay_inside_their_image_on_planted_nets(tmp_path, activation, kind, shape,
                                                                        hidden, seed):
    """The soundness suite's planted nets (a needle network merged into a base net) are where a pass
    alone went far outside the interval image: by 443 on this MaxMin MLP and 1021 on this GroupSort CNN,
    and CROWN's output row on one such CNN fell from -6.8 to -16666. Kept inside it, every box sampled
    values reach is still enclosed."""
    from nlverify.benchmarks.soundness.generate import InstanceConfig, build_instance
    from nlverify.benchmarks.soundness.models import build_model, export_onnx

    instance = build_instance(InstanceConfig(kind, shape, hidden, 0.05, True), activation, seed)
    export_onnx(build_model(instance.weights, torch.float32), shape, tmp_path / "planted.onnx")
    model = load_onnx(tmp_path / "planted.onnx")
    lower = torch.tensor(instance.prop.lower, dtype=torch.float32)[None]
    upper = torch.tensor(instance.prop.upper, dtype=torch.float32)[None]
    _, _, boxes = crown(model.graph, lower, upper, propagator=model.propagator)
    graph = model.graph
    for name in refinement_candidates(graph) - nodes_needing_bounds(graph) - {graph.input_name}:
        node = graph.nodes[name]
        image_low, image_up = node_interval(node, [boxes[i] for i in node.inputs])
        assert (boxes[name][0] >= image_low).all() and (boxes[name][1] <= image_up).all(), name
    samples = lower + (upper - lower) * torch.rand(3000, lower.shape[1], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        values = graph.run(torch.cat([samples, lower, upper]).reshape(-1, *shape))
    for name in refinement_candidates(graph) - {graph.input_name}:
        value, (box_low, box_up) = values[name], boxes[name]
        # float32 rounding of sums whose terms reach the node's largest magnitude (weights ~100 here)
        slack = 1e-5 * (1 + value.abs().max())
        assert (value >= box_low - slack).all() and (value <= box_up + slack).all(), name
