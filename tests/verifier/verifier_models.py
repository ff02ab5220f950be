"""Tiny ONNX models and properties with known answers, shared by the verifier tests."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = Path(os.environ.get("NLVERIFY_BENCHMARKS", REPO.parent / "shared" / "benchmarks"))
TEST_SUITE = BENCHMARKS / "test"

HEADER = "(declare-const X_0 Real)(declare-const X_1 Real)(declare-const Y_0 Real)\n" \
         "(assert (>= X_0 -1)) (assert (<= X_0 1)) (assert (>= X_1 -1)) (assert (<= X_1 1))\n"
# y = relu(x0 + x1) + relu(x0 - x1) on [-1, 1]^2 has range [0, 2] (max at x0 = 1).
UNSAT_SPEC = HEADER + "(assert (>= Y_0 3.5))\n"  # CROWN bounds y <= x0 + 2 <= 3
SAT_SPEC = HEADER + "(assert (>= Y_0 1.9))\n"
SAT_DISJUNCTION_SPEC = HEADER + "(assert (or (>= Y_0 5) (>= Y_0 1.9)))\n"


def relu_net(path: Path) -> Path:
    """``y = relu(x0 + x1) + relu(x0 - x1)``, input ``[1, 2]``, output ``[1, 1]``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w1 = numpy_helper.from_array(np.array([[1.0, 1.0], [1.0, -1.0]], dtype=np.float32), "W1")
    w2 = numpy_helper.from_array(np.array([[1.0], [1.0]], dtype=np.float32), "W2")
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu1"),
             helper.make_node("MatMul", ["r", "W2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "tiny_relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def constant_net(path: Path, value: float = 0.3) -> Path:
    """``y = relu(x0 - 5) + value``: exactly ``value`` on ``[-1, 1]^2`` (the ReLU is always off)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.array([[1.0], [0.0]], dtype=np.float32), "W")
    shift = numpy_helper.from_array(np.array([-5.0], dtype=np.float32), "shift")
    offset = numpy_helper.from_array(np.array([value], dtype=np.float32), "offset")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="fc"),
             helper.make_node("Add", ["h", "shift"], ["z"], name="shift_add"),
             helper.make_node("Relu", ["z"], ["r"], name="relu"),
             helper.make_node("Add", ["r", "offset"], ["y"], name="offset_add")]
    graph = helper.make_graph(nodes, "constant_output",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])], [w, shift, offset])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def softmax_net(path: Path) -> Path:
    """A model with an op the frontend rejects (Softmax)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], name="soft", axis=1)], "soft",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
