"""alpha-CROWN's loss: the box-width term steers the search and never costs soundness."""
from __future__ import annotations

import math

import torch

from netgen import export, make_net
from nlverify.bounds.alpha import AlphaOptions, _box_width_penalty, alpha_crown
from nlverify.model import load_onnx


def test_box_width_penalty_counts_finite_widths_of_grad_boxes_only():
    low = torch.tensor([[0.0, -1.0, -math.inf]], requires_grad=True)
    up = torch.tensor([[1.0, 2.0, 0.0]])
    fixed = (torch.zeros(1, 3), torch.full((1, 3), 5.0))  # no grad: not the alphas' doing
    penalty = _box_width_penalty({"a": (low, up), "fixed": fixed})
    assert abs(float(penalty) - 4 / 3) < 1e-6
    penalty.backward()
    torch.testing.assert_close(low.grad, torch.tensor([[-1 / 3, -1 / 3, 0.0]]))
    assert _box_width_penalty({"fixed": fixed}) == 0.0


def test_width_weight_changes_the_search_and_both_enclose_samples(tmp_path):
    net, shape = make_net("sigmoid", "mlp", seed=11, width=24)
    model = load_onnx(export(net, shape, tmp_path / "net.onnx"))
    centre = torch.randn(1, *shape, generator=torch.Generator().manual_seed(2))
    lower, upper = centre - 0.6, centre + 0.6
    samples = lower + (upper - lower) * torch.rand(4000, *shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        outputs = net(samples)
    results = []
    for weight in (0.0, 1.0):
        options = AlphaOptions(iterations=15, box_width_weight=weight)
        lb, ub, _, _ = alpha_crown(model.graph, lower, upper, options=options, propagator=model.propagator)
        assert (outputs >= lb - 1e-5).all() and (outputs <= ub + 1e-5).all()
        results.append(torch.cat([lb, ub], 1))
    assert not torch.equal(results[0], results[1])

