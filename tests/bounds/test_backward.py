"""The batched backward pass (chunks of boxes, shared coefficients, concretisation on box images of the
input) gives every box the bound it gets alone, and the same bound as the plain per-node walk."""
from __future__ import annotations

import torch

from nlverify.bounds import backward
from nlverify.bounds.crown import crown
from nlverify.graph import Graph, Node
from nlverify.ops import ElementwiseAffine, InputOp, MatMulConst, ReshapeOp, UnaryOp


def _net() -> Graph:
    torch.manual_seed(0)
    nodes = [Node("x", InputOp(), [], (1, 2, 6)),
             Node("norm", ElementwiseAffine(torch.tensor(2.0), torch.tensor(-0.5)), ["x"], (1, 2, 6)),
             Node("flat", ReshapeOp((1, 12)), ["norm"], (1, 12))]
    prev, width = "flat", 12
    for k in range(3):
        nodes.append(Node(f"z{k}", MatMulConst(torch.randn(width, 16) / width ** 0.5, torch.randn(16)), [prev], (1, 16)))
        nodes.append(Node(f"h{k}", UnaryOp("sigmoid" if k % 2 else "tanh"), [f"z{k}"], (1, 16)))
        prev, width = f"h{k}", 16
    nodes.append(Node("out", MatMulConst(torch.randn(16, 3), None), [prev], (1, 3)))
    return Graph({n.name: n for n in nodes}, input_name="x", output_name="out")


def test_batch_equals_each_box_alone(monkeypatch):
    graph = _net()
    centre = torch.rand(9, 12)
    radius = torch.rand(9, 12) * 0.3
    monkeypatch.setattr(backward, "CHUNK_BYTES", 1)  # one box per chunk: every path of the chunked walk
    lower, upper, _ = crown(graph, centre - radius, centre + radius)
    for b in range(9):
        alone_lower, alone_upper, _ = crown(graph, (centre - radius)[b:b + 1], (centre + radius)[b:b + 1])
        torch.testing.assert_close(lower[b:b + 1], alone_lower, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(upper[b:b + 1], alone_upper, rtol=1e-5, atol=1e-5)


def test_box_images_do_not_change_bounds(monkeypatch):
    graph = _net()
    low = torch.rand(4, 12)
    up = low + torch.rand(4, 12) * 0.2
    fast = crown(graph, low, up)[:2]
    monkeypatch.setattr(backward.BackwardPropagator, "box_images", lambda self: {self.graph.input_name})
    plain = crown(graph, low, up)[:2]
    for f, p in zip(fast, plain):
        torch.testing.assert_close(f, p, rtol=1e-5, atol=1e-5)
    x = (low + (up - low) * torch.rand(500, 1, 12)).reshape(-1, 1, 2, 6)
    y = graph.forward(x).reshape(500, 4, 3)
    assert (y >= fast[0] - 1e-5).all() and (y <= fast[1] + 1e-5).all()


def test_recorded_input_is_reached_through_a_fused_first_layer(tmp_path):
    """Recording the input's coefficients must not be skipped by the fused last step (BaB's input split
    reads them to choose its split)."""
    from netgen import export, make_net
    from nlverify.bounds.crown import DefaultRelaxations, propagate_bounds, CrownOptions, spec_coefficients
    from nlverify.model import load_onnx

    net, shape = make_net("relu", "mlp", seed=0, width=8, inputs=3, outputs=2)
    model = load_onnx(export(net, shape, tmp_path / "net.onnx"))
    g = model.graph
    lower, upper = -torch.ones(2, 3), torch.ones(2, 3)
    bounds = propagate_bounds(g, lower, upper, DefaultRelaxations, model.propagator, CrownOptions())
    coeffs = spec_coefficients(None, g, 2, lower)
    record = {g.input_name: None}
    recorded = model.propagator.lower_bound(g.output_name, coeffs, bounds, DefaultRelaxations(bounds), record=record)
    plain = model.propagator.lower_bound(g.output_name, coeffs, bounds, DefaultRelaxations(bounds))
    assert record[g.input_name] is not None and record[g.input_name].abs().sum() > 0
    torch.testing.assert_close(recorded, plain, rtol=1e-5, atol=1e-5)


def test_chunked_walk_with_an_empty_split_domain(monkeypatch):
    """An empty split domain adds a (B,) infeasibility mask to the node boxes; the chunked walk must
    skip it rather than read it as a box (dist_shift index9192 crashed there)."""
    from nlverify.bounds.crown import SplitConstraints

    graph = _net()
    monkeypatch.setattr(backward, "CHUNK_BYTES", 1)  # one box per chunk
    centre, radius = torch.rand(3, 12), torch.full((3, 12), 0.2)
    inf = torch.full((3, 1, 16), float("inf"))
    split_low, split_up = -inf.clone(), inf.clone()
    split_low[1, 0, 0], split_up[1, 0, 0] = 5.0, -5.0  # domain 1: an empty interval, infeasible
    splits = SplitConstraints({"z1": split_low}, {"z1": split_up})
    lower, _, _ = crown(graph, centre - radius, centre + radius, splits=splits, need_upper=False)
    assert torch.isinf(lower[1]).all() and (lower[1] > 0).all()  # closed vacuously
    alone, _, _ = crown(graph, (centre - radius)[:1], (centre + radius)[:1], need_upper=False)
    torch.testing.assert_close(lower[:1], alone, rtol=1e-5, atol=1e-5)


def test_a_chain_of_box_exact_ops_feeding_a_nonlinearity_gets_its_own_box():
    """``relu(-2 x + 1)`` with ``-2 x + 1`` a chain of two entrywise ops of the input: the chain is a box
    image, and its own CROWN pass must not try to concretise on the box it is computing (this was a
    KeyError, i.e. an internal error, on any model with e.g. ``relu(-x[:, :1])``)."""
    nodes = [Node("x", InputOp(), [], (1, 3)),
             Node("scaled", ElementwiseAffine(torch.tensor(-2.0), None), ["x"], (1, 3)),
             Node("shifted", ElementwiseAffine(None, torch.tensor(1.0)), ["scaled"], (1, 3)),
             Node("h", UnaryOp("relu"), ["shifted"], (1, 3)),
             Node("out", MatMulConst(torch.tensor([[1.0], [-1.0], [0.5]]), None), ["h"], (1, 1))]
    graph = Graph({n.name: n for n in nodes}, input_name="x", output_name="out")
    low, up = -torch.ones(2, 3), torch.ones(2, 3)
    lower, upper, bounds = crown(graph, low, up)
    torch.testing.assert_close(bounds["shifted"][0], torch.full((2, 1, 3), -1.0))
    torch.testing.assert_close(bounds["shifted"][1], torch.full((2, 1, 3), 3.0))
    x = low + (up - low) * torch.rand(2000, 1, 3)
    y = graph.forward(x.reshape(-1, 1, 3)).reshape(2000, 2)
    assert (y >= lower.reshape(1, 2) - 1e-5).all() and (y <= upper.reshape(1, 2) + 1e-5).all()
