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


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_forward_row_bounds_hold_and_beat_the_output_box(tmp_path, activation):
    """``C y`` bounded from the output's affine bounds: below every sampled value, and never looser than
    the bound from the output box (tighter on difference rows, where the affine form keeps the
    correlation between outputs)."""
    from nlverify.bounds.forward import forward_row_bounds

    net, shape = make_net(activation, "mlp", seed=5, width=12, inputs=3, outputs=3)
    model = load_onnx(export(net, shape, tmp_path / "net.onnx"))
    model.to(dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    lower = torch.randn(5, 3, generator=g, dtype=torch.float64)
    upper = lower + torch.rand(5, 3, generator=g, dtype=torch.float64) * torch.tensor([0, 1e-4, 0.1, 0.5, 2])[:, None]
    C = torch.tensor([[1.0, 0, 0], [0, -1.0, 0], [1.0, -1.0, 0], [0.5, 0.25, -2.0]], dtype=torch.float64)
    C = C.expand(5, -1, -1)
    rows = forward_row_bounds(model.graph, lower, upper, model.propagator, C)
    t = torch.rand(4000, 5, 3, generator=g, dtype=torch.float64)
    t[:8] = (t[:8] > 0.5).double()
    y = model.forward((lower + t * (upper - lower)).reshape(-1, 3)).reshape(4000, 5, 3)
    values = torch.einsum("bmo,sbo->sbm", C, y)
    assert (values >= rows - 1e-9 * (1 + values.abs())).all()
    y_low, y_up = forward_bounds(model.graph, lower, upper, model.propagator)[model.graph.output_name]
    y_low, y_up = y_low.reshape(5, 1, -1), y_up.reshape(5, 1, -1)
    from_box = (C.clamp(min=0) * y_low + C.clamp(max=0) * y_up).sum(-1)
    assert (rows >= from_box - 1e-12).all()
    assert (rows > from_box + 1e-9).any()  # the affine form is tighter somewhere


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_forward_bounds_read_boxes_only_where_a_relaxation_needs_them(tmp_path, activation):
    """Inputs of nonlinear nodes and the output get the affine bounds' box (within IBP's); every other node
    keeps the IBP box of its inputs' boxes, since nothing reads it but the next IBP step."""
    from nlverify.bounds.crown import nodes_needing_bounds
    from nlverify.bounds.interval import node_interval

    net, shape = make_net(activation, "residual", seed=3, width=12)
    model = load_onnx(export(net, shape, tmp_path / "net.onnx"))
    model.to(dtype=torch.float64)
    graph = model.graph
    n = graph.num_inputs
    g = torch.Generator().manual_seed(5)
    lower = torch.randn(3, n, generator=g, dtype=torch.float64)
    upper = lower + torch.rand(3, n, generator=g, dtype=torch.float64)
    bounds = forward_bounds(graph, lower, upper, model.propagator)
    read = nodes_needing_bounds(graph) | {graph.output_name}
    skipped = 0
    for node in graph:
        if node.kind == "input":
            continue
        ibp_low, ibp_up = node_interval(node, [bounds[i] for i in node.inputs])
        low, up = bounds[node.name]
        if node.name in read:
            assert (low >= ibp_low - 1e-12).all() and (up <= ibp_up + 1e-12).all(), node.name
        else:
            skipped += 1
            assert torch.equal(low, ibp_low) and torch.equal(up, ibp_up), node.name
    assert skipped > 0  # the residual net has nodes that no relaxation reads


def test_forward_bounds_in_chunks_match_one_pass(tmp_path, monkeypatch):
    """Boxes go through the forward pass in chunks that keep its affine coefficients within CHUNK_BYTES;
    chunking changes the numbers by rounding only (every box is computed on its own; matrix products
    of other batch sizes sum in another order)."""
    import nlverify.bounds.forward as forward
    from nlverify.bounds.forward import boxes_per_chunk, forward_row_bounds

    net, shape = make_net("tanh", "mlp", seed=5, width=12, inputs=3, outputs=3)
    model = load_onnx(export(net, shape, tmp_path / "net.onnx"))
    g = torch.Generator().manual_seed(8)
    lower = torch.randn(10, 3, generator=g)
    upper = lower + torch.rand(10, 3, generator=g)
    C = torch.randn(10, 2, 3, generator=g)
    whole = forward_bounds(model.graph, lower, upper, model.propagator)
    rows = forward_row_bounds(model.graph, lower, upper, model.propagator, C)
    per_box = forward.CHUNK_BYTES // boxes_per_chunk(model.graph, 3, 4)
    monkeypatch.setattr(forward, "CHUNK_BYTES", 3 * per_box)  # 3 boxes per chunk: 4 chunks
    assert boxes_per_chunk(model.graph, 3, 4) == 3
    chunked = forward_bounds(model.graph, lower, upper, model.propagator)
    for name, (low, up) in whole.items():
        torch.testing.assert_close(chunked[name], (low, up), rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(forward_row_bounds(model.graph, lower, upper, model.propagator, C), rows,
                               rtol=1e-5, atol=1e-6)
