import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from nlverify.sdp import from_weights, lipschitz_bound  # noqa: E402
from nlverify.sdp.activations import TANH  # noqa: E402


def _write_mlp(path, weights, biases, activation="Tanh"):
    nodes, inits, prev = [], [], "x"
    for k, (w, b) in enumerate(zip(weights, biases)):
        inits += [numpy_helper.from_array(w.T.astype(np.float32), f"W{k}"),
                  numpy_helper.from_array(b.astype(np.float32), f"b{k}")]
        nodes += [helper.make_node("MatMul", [prev, f"W{k}"], [f"m{k}"]),
                  helper.make_node("Add", [f"m{k}", f"b{k}"], [f"a{k}"])]
        prev = f"a{k}"
        if k < len(weights) - 1:
            nodes.append(helper.make_node(activation, [prev], [f"h{k}"]))
            prev = f"h{k}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weights[0].shape[1]])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, weights[-1].shape[0]])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def test_onnx_chain_matches_weights(tmp_path):
    rng = np.random.default_rng(0)
    dims = (4, 6, 5, 2)
    weights = [rng.normal(size=(dims[i + 1], dims[i])).astype(np.float32).astype(np.float64) for i in range(3)]
    biases = [rng.normal(size=d) for d in dims[1:]]
    path = tmp_path / "mlp.onnx"
    _write_mlp(path, weights, biases)
    from nlverify.sdp.graph_adapter import load_onnx_network

    net, _ = load_onnx_network(path)
    assert [a.name for a in net.activations] == ["tanh", "tanh"]
    for w, w_onnx in zip(weights, net.weights):
        np.testing.assert_allclose(w_onnx, w, rtol=1e-6, atol=1e-6)
    cert = lipschitz_bound(path, lower_samples=64)
    ref = lipschitz_bound(from_weights(weights, TANH), lower_samples=0)
    assert cert.lower_bound <= cert.bound
    assert cert.bound == pytest.approx(ref.bound, rel=1e-4)
