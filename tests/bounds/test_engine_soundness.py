"""End to end: sampled outputs and gradient-maximised outputs lie inside IBP, CROWN and alpha-CROWN
bounds, on random networks with every activation (MLP, small CNN, residual), on batches of boxes.

Also the ordering the methods promise: CROWN no looser than IBP on average (documented exceptions
below), alpha-CROWN never looser than CROWN. Float64 checks are strict (1e-9); float32 checks allow
float32 rounding of the forward pass (1e-5 relative).
"""
from __future__ import annotations

import pytest
import torch

from netgen import ACTIVATIONS, export, make_net
from nlverify.model import load_onnx

SAMPLES = 10_000
BOXES = 3


def _boxes(n_inputs: int, seed: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(BOXES, n_inputs, generator=g, dtype=dtype) * 2 - 1
    radius = torch.tensor([0.02, 0.2, 1.0], dtype=dtype).unsqueeze(1).expand(BOXES, n_inputs)
    return centre - radius, centre + radius


def _extremes(model, lower, upper, dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per box, min and max of each output over random samples, corners and projected gradient steps."""
    g = torch.Generator().manual_seed(seed)
    b, n = lower.shape
    x = lower.unsqueeze(1) + (upper - lower).unsqueeze(1) * torch.rand(b, SAMPLES, n, generator=g, dtype=dtype)
    with torch.no_grad():
        y = model(x.reshape(b * SAMPLES, n)).reshape(b, SAMPLES, -1)
    lowest, highest = y.min(1).values, y.max(1).values
    m = y.shape[-1]
    for sign in (1.0, -1.0):  # gradient ascent on +y_j and -y_j, all outputs at once
        starts = x[:, :32].unsqueeze(2).expand(b, 32, m, n).clone()
        for _ in range(25):
            starts.requires_grad_(True)
            out = model(starts.reshape(-1, n)).reshape(b, 32, m, m)
            objective = sign * torch.diagonal(out, dim1=-2, dim2=-1)
            grad, = torch.autograd.grad(objective.sum(), starts)
            step = (upper - lower).unsqueeze(1).unsqueeze(1) * 0.05
            starts = torch.max(torch.min(starts.detach() + step * grad.sign(), upper[:, None, None]), lower[:, None, None])
        with torch.no_grad():
            out = torch.diagonal(model(starts.reshape(-1, n)).reshape(b, 32, m, m), dim1=-2, dim2=-1)
        lowest, highest = torch.minimum(lowest, out.min(1).values), torch.maximum(highest, out.max(1).values)
    return lowest, highest


def _check_enclosure(low, up, lowest, highest, tolerance):
    scale = 1 + torch.maximum(lowest.abs(), highest.abs())
    assert (low <= lowest + tolerance * scale).all(), (low - lowest).max()
    assert (up >= highest - tolerance * scale).all(), (highest - up).max()


@pytest.mark.parametrize("architecture", ["mlp", "cnn", "residual"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_bounds_enclose_the_network(tmp_path, activation, architecture):
    net, shape = make_net(activation, architecture, seed=3)
    model = load_onnx(export(net, shape, tmp_path / "net.onnx"))
    precisions = [(torch.float64, 1e-9)] + ([(torch.float32, 1e-5)] if architecture == "mlp" else [])
    for dtype, tolerance in precisions:
        model.to(dtype=dtype)
        lower, upper = _boxes(model.num_inputs, seed=7, dtype=dtype)
        lowest, highest = _extremes(model, lower, upper, dtype, seed=11)
        results = {}
        for method in ("ibp", "crown", "alpha-crown"):
            options = {"iterations": 8} if method == "alpha-crown" else {}
            low, up = model.bounds(lower, upper, method=method, **options)
            assert low.shape == up.shape == (lower.shape[0], model.num_outputs)
            assert torch.isfinite(low).all() and torch.isfinite(up).all()
            _check_enclosure(low, up, lowest, highest, tolerance)
            results[method] = (low, up)
        crown_width = (results["crown"][1] - results["crown"][0]).mean()
        ibp_width = (results["ibp"][1] - results["ibp"][0]).mean()
        assert crown_width <= ibp_width * (1 + 1e-6)
        noise = 1e-6 if dtype == torch.float64 else 1e-4
        assert (results["alpha-crown"][0] >= results["crown"][0] - noise).all()
        assert (results["alpha-crown"][1] <= results["crown"][1] + noise).all()


def test_specification_matrix_bounds_are_sound(tmp_path):
    """Bounds of ``C y`` for a spec matrix (the verifier's use), per box, against samples."""
    net, shape = make_net("sigmoid", "mlp", seed=5)
    model = load_onnx(export(net, shape, tmp_path / "net.onnx")).to(dtype=torch.float64)
    lower, upper = _boxes(model.num_inputs, seed=1, dtype=torch.float64)
    C = torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]], dtype=torch.float64)
    x = lower.unsqueeze(1) + (upper - lower).unsqueeze(1) * torch.rand(BOXES, 5000, model.num_inputs, dtype=torch.float64)
    with torch.no_grad():
        cy = model(x.reshape(-1, model.num_inputs)).reshape(BOXES, 5000, -1) @ C.T
    for method in ("ibp", "crown", "alpha-crown"):
        low, up = model.bounds(lower, upper, method=method, C=C)
        assert low.shape == (BOXES, 2)
        assert (low.unsqueeze(1) <= cy + 1e-9).all() and (up.unsqueeze(1) >= cy - 1e-9).all()


def test_crown_is_tighter_than_ibp_on_a_benchmark_net(benchmarks):
    from nlverify.verifier.spec import parse_vnnlib

    model = load_onnx(benchmarks / "mnist_fc" / "onnx" / "mnist-net_256x2.onnx")
    box_low, box_up = parse_vnnlib(benchmarks / "mnist_fc" / "vnnlib" / "prop_0_0.03.vnnlib").input_boxes()[0]
    lower, upper = torch.tensor(box_low, dtype=torch.float32)[None], torch.tensor(box_up, dtype=torch.float32)[None]
    low_i, up_i = model.bounds(lower, upper, method="ibp")
    low_c, up_c = model.bounds(lower, upper, method="crown")
    assert (up_i - low_i).mean() > 0
    assert (up_c - low_c).mean() < 0.5 * (up_i - low_i).mean()
