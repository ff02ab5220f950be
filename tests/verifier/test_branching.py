"""Branching: scores are vectorised (one per candidate neuron and domain), split points lie inside
their intervals, the anchored BBPS estimate ranks neurons like their actual one-split improvement, a
product picks one of its two inputs, and the recording option of the backward pass changes nothing."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from netgen import export, make_net
from nlverify.bounds.crown import DefaultRelaxations, crown, spec_coefficients
from nlverify.model import load_onnx
from nlverify.verifier.bab import bound_activation_domains, linear_minimiser
from nlverify.verifier.branching import (
    anchor_values, bbps_scores, choose_splits, coefficients_at, input_split_scores, split_points, split_targets,
    width_scores,
)


def _setup(tmp_path: Path, activation: str, batch: int = 1, seed: int = 3, shift: float | None = None):
    net, shape = make_net(activation, "mlp", seed=seed, width=12, inputs=3, outputs=1)
    model = load_onnx(export(net, shape, tmp_path / f"{activation}.onnx"))
    g = model.graph
    centre = torch.linspace(-0.5, 0.5, batch).unsqueeze(1).repeat(1, 3)
    if shift is not None:
        centre = torch.full((batch, 3), shift)
    lo, up = centre - 1, centre + 1
    C = torch.ones(batch, 1, 1)
    _, _, bounds = crown(g, lo, up, C, need_upper=False)
    boxes = {t: bounds[t] for t in split_targets(g)}
    boxes[g.input_name] = (lo.reshape(batch, *g.input_shape), up.reshape(batch, *g.input_shape))
    names = [n.name for n in g.nonlinear_nodes()] + [g.input_name]
    _, coefficients = coefficients_at(g, model.propagator, boxes, spec_coefficients(C, g, batch, lo), names)
    coefficients = {n: a[:, 0] for n, a in coefficients.items()}
    x_star = linear_minimiser(coefficients[g.input_name].reshape(batch, -1), lo, up)
    return model, boxes, coefficients, anchor_values(g, x_star, boxes), C


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "sin", "gelu"])
def test_scores_and_decisions_are_vectorised(tmp_path, activation):
    model, boxes, coefficients, anchors, _ = _setup(tmp_path, activation, batch=5)
    g = model.graph
    targets = split_targets(g)
    points = {t: split_points(g, t, *boxes[t]) for t in targets}
    for scores in (bbps_scores(g, boxes, coefficients, points, anchors), bbps_scores(g, boxes, coefficients, points),
                   width_scores(g, boxes, coefficients, targets)):
        assert set(scores) == set(targets)
        for t in targets:
            assert scores[t].shape == boxes[t][0].shape
    for method in ("bbps", "width"):
        decision = choose_splits(g, boxes, coefficients, method, anchors)
        assert decision.target.shape == decision.neuron.shape == decision.point.shape == (5,)
        for b in range(5):
            low, up = (x[b].flatten()[decision.neuron[b]] for x in boxes[targets[decision.target[b]]])
            assert low < decision.point[b] < up
    for t in targets:
        low, up = boxes[t]
        inside = (points[t] > low) & (points[t] < up)
        assert inside[up > low].all()
    if activation == "relu":  # 0 is the point whenever it is inside
        t = targets[0]
        low, up = boxes[t]
        straddle = (low < 0) & (up > 0)
        assert (points[t][straddle] == 0).all()


def _actual_improvements(model, boxes, C, targets):
    """Worse-child CROWN bound minus the parent's, for every neuron, by bounding the children."""
    g = model.graph
    base = bound_activation_domains(g, model.propagator, boxes, C, 0, 0.1)[0].item()
    result = {}
    for t in targets:
        points = split_points(g, t, *boxes[t]).flatten()
        for j in range(points.numel()):
            children = {}
            for name, (low, up) in boxes.items():
                low2, up2 = low.repeat(2, *[1] * (low.dim() - 1)), up.repeat(2, *[1] * (up.dim() - 1))
                if name == t:
                    up2.view(2, -1)[0, j] = points[j]
                    low2.view(2, -1)[1, j] = points[j]
                children[name] = (low2, up2)
            child = bound_activation_domains(g, model.propagator, children, C.repeat(2, 1, 1), 0, 0.1)[0]
            result[(t, j)] = child.min().item() - base
    return result


def _spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    rx, ry = x.argsort().argsort().double(), y.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([rx, ry]))[0, 1])


@pytest.mark.parametrize("activation", ["sigmoid", "sin"])
def test_bbps_estimate_correlates_with_actual_improvement(tmp_path, activation):
    """Rank correlation of the anchored estimate with the measured worse-child improvement (CROWN on the
    children), averaged over three boxes; measured here: sigmoid ~0.13-0.8, sin ~0.11-0.96."""
    correlations = []
    for shift in (-0.5, 0.0, 0.5):
        model, boxes, coefficients, anchors, C = _setup(tmp_path, activation, shift=shift)
        g = model.graph
        targets = split_targets(g)
        points = {t: split_points(g, t, *boxes[t]) for t in targets}
        scores = bbps_scores(g, boxes, coefficients, points, anchors)
        actual = _actual_improvements(model, boxes, C, targets)
        keys = [k for k in actual if torch.isfinite(scores[k[0]].flatten()[k[1]])]
        estimate = torch.tensor([scores[t].flatten()[j].item() for t, j in keys])
        truth = torch.tensor([actual[k] for k in keys])
        correlations.append(_spearman(estimate, truth))
    assert sum(correlations) / 3 > 0.2, correlations


def test_product_splits_one_of_its_inputs(tmp_path):
    net, shape = make_net("mul", "mlp", seed=2, width=8, inputs=3, outputs=1)
    model = load_onnx(export(net, shape, tmp_path / "mul.onnx"))
    g = model.graph
    lo, up = -torch.ones(2, 3), torch.ones(2, 3)
    C = torch.ones(2, 1, 1)
    _, _, bounds = crown(g, lo, up, C, need_upper=False)
    targets = split_targets(g)
    boxes = {t: bounds[t] for t in targets}
    boxes.setdefault(g.input_name, (lo.reshape(2, *g.input_shape), up.reshape(2, *g.input_shape)))
    names = [n.name for n in g.nonlinear_nodes()]
    _, coefficients = coefficients_at(g, model.propagator, boxes, spec_coefficients(C, g, 2, lo), names)
    coefficients = {n: a[:, 0] for n, a in coefficients.items()}
    mul_inputs = {i for n in g.nonlinear_nodes() if n.op.activation == "mul" for i in n.inputs}
    assert mul_inputs
    decision = choose_splits(g, boxes, coefficients, "bbps")
    assert torch.isfinite(decision.score).all()
    assert all(targets[int(t)] in set(targets) for t in decision.target)


def test_record_option_returns_coefficients_without_changing_the_bound(tmp_path):
    model, boxes, _, _, C = _setup(tmp_path, "sigmoid", batch=3)
    g = model.graph
    coeffs = spec_coefficients(C, g, 3, C)
    plain = model.propagator.lower_bound(g.output_name, coeffs, boxes, DefaultRelaxations(boxes))
    record = {g.output_name: None, g.input_name: None}
    recorded = model.propagator.lower_bound(g.output_name, coeffs, boxes, DefaultRelaxations(boxes), record=record)
    torch.testing.assert_close(plain, recorded, rtol=1e-5, atol=1e-6)  # the plain walk may fuse its last step (rounding only)
    assert torch.equal(record[g.output_name], coeffs)
    # the bound is affine in the input box through the recorded input coefficients
    a = record[g.input_name].reshape(3, -1)
    lo, up = (b.reshape(3, -1) for b in boxes[g.input_name])
    shift = 0.25 * (up - lo)
    moved = dict(boxes)
    moved[g.input_name] = ((lo + shift).reshape(boxes[g.input_name][0].shape), boxes[g.input_name][1])
    bound2 = model.propagator.lower_bound(g.output_name, coeffs, moved, DefaultRelaxations(moved))
    # raising the lower input bound changes the concretised input term by a+ . shift (relaxations of the
    # hidden nodes read their own stored boxes, which did not move)
    assert torch.allclose(bound2[:, 0] - plain[:, 0], (a.clamp(min=0) * shift).sum(1), atol=1e-5)


def test_input_split_scores_prefer_wide_sensitive_dimensions():
    a = torch.tensor([[1.0, -3.0, 0.0]])
    lo, up = torch.zeros(1, 3), torch.tensor([[2.0, 1.0, 5.0]])
    scores = input_split_scores(a, lo, up)
    assert scores.tolist() == [[2.0, 3.0, 0.0]]
    thin = input_split_scores(a, lo, lo)
    assert torch.isinf(thin).all()


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_midpoint_rule_is_the_ablation_baseline(tmp_path, activation):
    model, boxes, _, _, _ = _setup(tmp_path, activation, batch=2)
    g = model.graph
    for t in split_targets(g)[1:] if split_targets(g)[0] == g.input_name else split_targets(g):
        low, up = boxes[t]
        mid = split_points(g, t, low, up, rule="midpoint")
        straddle = (low < 0) & (up > 0)
        if activation == "relu":  # ReLU splits at 0 under either rule
            assert (mid[straddle] == 0).all() and torch.equal(mid[~straddle], ((low + up) / 2)[~straddle])
        else:
            assert torch.equal(mid, (low + up) / 2)
            table = split_points(g, t, low, up)
            assert not torch.equal(table, mid)  # the table moves the point somewhere
    with pytest.raises(ValueError, match="split-point rule"):
        split_points(g, split_targets(g)[-1], *boxes[split_targets(g)[-1]], rule="golden")
