"""Executing our Graph in torch reproduces onnxruntime: every shared benchmark model, and generated
models with every activation (MLP, CNN, residual), exported by torch at opsets 17 and 20.

Tolerance: onnxruntime computes in float32, and models with outputs of magnitude ~100 accumulate float32
rounding of about 1e-5 relative (our float64 execution differs from onnxruntime by the same amount), so
we compare ``|ours - ort| <= 1e-5 * max(1, |ort|)``.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from netgen import ACTIVATIONS, export, make_net
from nlverify.frontend import load_graph

TOLERANCE = 1e-5


def _compare(path, samples: int = 6, seed: int = 0) -> float:
    graph = load_graph(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in meta.shape]
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(samples, *shape)).astype(np.float32)
    expected = np.stack([session.run(None, {meta.name: xi})[0].reshape(-1) for xi in x])
    ours = graph.forward(torch.as_tensor(x)).detach().numpy()
    assert ours.shape == expected.shape
    return float((np.abs(ours - expected) / np.maximum(1.0, np.abs(expected))).max())


def _benchmark_models(root):
    seen = {}
    for path in sorted(root.rglob("*.onnx")):
        seen.setdefault(path.name, path)
    return list(seen.values())


def test_every_benchmark_model_matches_onnxruntime(benchmarks):
    models = _benchmark_models(benchmarks)
    assert len(models) >= 10
    worst = {p.name: _compare(p) for p in models}
    bad = {k: v for k, v in worst.items() if v > TOLERANCE}
    assert not bad, bad


@pytest.mark.parametrize("architecture", ["mlp", "cnn", "residual"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_generated_models_match_onnxruntime(tmp_path, activation, architecture):
    net, shape = make_net(activation, architecture, seed=1)
    for opset in (17, 20):
        path = export(net, shape, tmp_path / f"{activation}_{opset}.onnx", opset)
        assert _compare(path) <= TOLERANCE


def test_gelu_erf_pattern_becomes_one_node(tmp_path):
    net, shape = make_net("gelu", "mlp")
    graph = load_graph(export(net, shape, tmp_path / "g.onnx", 17))
    activations = [n.op.activation for n in graph.nonlinear_nodes()]
    assert activations == ["gelu", "gelu"]


def test_groupsort_lowers_to_max_min_comparators(tmp_path):
    net, shape = make_net("groupsort", "mlp")
    graph = load_graph(export(net, shape, tmp_path / "gs.onnx", 17))
    kinds = {n.op.activation for n in graph.nonlinear_nodes()}
    assert kinds == {"max", "min"}
