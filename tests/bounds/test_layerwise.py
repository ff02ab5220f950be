"""Layer-wise box tightening: every box it returns encloses the node's values, never grows, and is tighter
than joint alpha-CROWN's where the landscape lets a node be optimised alone."""
from __future__ import annotations

import math
import time

import pytest
import torch

from netgen import box_samples, export, make_net
from nlverify.bounds.alpha import AlphaOptions, alpha_crown
from nlverify.bounds.crown import CrownOptions
from nlverify.bounds.layerwise import LayerwiseOptions, layerwise_targets, tighten_boxes
from nlverify.model import load_onnx
from nlverify.verifier.bound_stages import bound_stage
from nlverify.verifier.pipeline import PipelineOptions
from nlverify.verifier.problem import Problem


def _setup(tmp_path, activation: str, architecture: str, radius: float, seed: int = 3, inputs: int = 4):
    net, shape = make_net(activation, architecture, seed=seed, width=16, inputs=inputs)
    model = load_onnx(export(net, shape, tmp_path / "net.onnx"))
    centre = torch.randn(1, *shape, generator=torch.Generator().manual_seed(seed))
    lower, upper = centre - radius, centre + radius
    _, _, boxes, _ = alpha_crown(model.graph, lower, upper, options=AlphaOptions(iterations=5),
                                 propagator=model.propagator, need_upper=False)
    return model, lower, upper, boxes


def _samples(lower: torch.Tensor, upper: torch.Tensor, count: int) -> torch.Tensor:
    return box_samples(lower, upper, count, torch.Generator().manual_seed(7))


@pytest.mark.parametrize("activation,architecture", [
    ("sigmoid", "mlp"), ("tanh", "residual"), ("relu", "mlp"), ("gelu", "residual"), ("sin", "mlp"),
    ("cos", "residual"), ("groupsort", "mlp"), ("leaky_relu", "residual"), ("square", "mlp"),
])
@pytest.mark.parametrize("radius", [1e-6, 0.05, 1.0, 5.0])
def test_tightened_boxes_enclose_every_sample_and_never_grow(tmp_path, activation, architecture, radius):
    model, lower, upper, boxes = _setup(tmp_path, activation, architecture, radius)
    tightened, alphas = tighten_boxes(model.graph, boxes, LayerwiseOptions(iterations=8, sweeps=2),
                                      model.propagator)
    with torch.no_grad():
        values = model.graph.run(_samples(lower, upper, 3000))
    targets = layerwise_targets(model.graph, model.propagator, CrownOptions())
    assert targets, "every generated net has a node to tighten"
    for node in targets:
        low, up = tightened[node.name]
        old_low, old_up = boxes[node.name]
        assert (low >= old_low).all() and (up <= old_up).all(), node.name
        assert (low <= up).all()
        value = values[node.name]
        slack = 1e-5 * (1 + value.abs())
        assert (value >= low - slack).all() and (value <= up + slack).all(), (node.name, radius)
    assert all(key[0] in {n.name for n in targets} for key in alphas)


def test_a_sweep_tightens_a_deep_sigmoid_net_beyond_joint_alpha(tmp_path):
    """The test that fails if the stage stops doing anything: on a wide box, joint alpha-CROWN leaves
    room that optimising each node alone takes."""
    model, lower, upper, boxes = _setup(tmp_path, "sigmoid", "residual", radius=1.0)
    tightened, _ = tighten_boxes(model.graph, boxes, LayerwiseOptions(iterations=30, sweeps=2), model.propagator)
    width = lambda b, name: float((b[name][1] - b[name][0]).sum())  # noqa: E731
    names = [node.name for node in layerwise_targets(model.graph, model.propagator, CrownOptions())]
    before = sum(width(boxes, n) for n in names)
    after = sum(width(tightened, n) for n in names)
    assert after < 0.99 * before, (before, after)


def test_an_expired_deadline_returns_the_given_boxes(tmp_path):
    model, _, _, boxes = _setup(tmp_path, "tanh", "mlp", radius=1.0)
    tightened, alphas = tighten_boxes(model.graph, boxes, LayerwiseOptions(deadline=time.monotonic() - 1),
                                      model.propagator)
    assert alphas == {}
    for name, (low, up) in boxes.items():
        assert torch.equal(tightened[name][0], low) and torch.equal(tightened[name][1], up)


def test_warm_started_sweep_keeps_every_box_inside_the_first(tmp_path):
    model, _, _, boxes = _setup(tmp_path, "sigmoid", "mlp", radius=1.0)
    first, alphas = tighten_boxes(model.graph, boxes, LayerwiseOptions(iterations=5), model.propagator)
    second, _ = tighten_boxes(model.graph, first, LayerwiseOptions(iterations=5), model.propagator, alphas)
    for name, (low, up) in first.items():
        assert (second[name][0] >= low).all() and (second[name][1] <= up).all()


def _problem(lower, upper, outputs: int) -> Problem:
    C = torch.zeros(1, outputs)
    C[0, 0], C[0, 1] = 1.0, -1.0
    return Problem(0, 0, lower.flatten(), upper.flatten(), C, torch.tensor([1e3]),
                   torch.full((1,), -math.inf))


@pytest.mark.parametrize("free_inputs,deep", [(40, True), (4, False)])
def test_pipeline_stage_runs_on_deep_regions_only_and_never_loosens(tmp_path, free_inputs, deep):
    model, lower, upper, _ = _setup(tmp_path, "sigmoid", "mlp", radius=0.5, inputs=free_inputs)
    problem = _problem(lower, upper, 3)  # d = 1e3: never proved, so every stage runs
    options = PipelineOptions()
    deadline = time.monotonic() + 600
    for method in ("crown", "alpha-crown"):
        bound_stage(model, [problem], method, options, deadline)
    boxes, bound = dict(problem.boxes), problem.best_lower.clone()
    bound_stage(model, [problem], "layerwise", options, deadline)
    assert (problem.best_lower >= bound).all()
    if not deep:
        assert problem.boxes == boxes
        return
    changed = False
    for name, (low, up) in boxes.items():
        assert (problem.boxes[name][0] >= low).all() and (problem.boxes[name][1] <= up).all(), name
        changed |= not (torch.equal(problem.boxes[name][0], low) and torch.equal(problem.boxes[name][1], up))
    assert changed
