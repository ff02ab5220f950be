"""Bad models give one clear error at load time, naming the op and node where relevant."""
from __future__ import annotations

import gzip

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from nlverify.frontend import ModelError, UnsupportedOpError, load_graph


def _model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _vec(name, n):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, n])


def test_unsupported_op_names_op_and_node(tmp_path):
    model = _model([helper.make_node("Softmax", ["x"], ["y"], name="my_softmax")], [_vec("x", 3)], [_vec("y", 3)])
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    with pytest.raises(UnsupportedOpError) as info:
        load_graph(path)
    assert "Softmax" in str(info.value) and "my_softmax" in str(info.value)


def test_unsupported_attribute_is_named(tmp_path):
    model = _model([helper.make_node("Gemm", ["x", "w2"], ["y"], name="g", transA=1)],
                   [_vec("x", 3)], [_vec("y", 2)], [numpy_helper.from_array(np.ones((3, 2), np.float32), "w2")])
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    with pytest.raises(UnsupportedOpError, match="transA"):
        load_graph(path)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_graph(tmp_path / "absent.onnx")
    corrupt = tmp_path / "bad.onnx"
    corrupt.write_bytes(b"\x08\x07this is not a protobuf model" * 10)
    with pytest.raises(ModelError):
        load_graph(corrupt)


def test_gzipped_model_loads(tmp_path):
    w = numpy_helper.from_array(np.eye(3, dtype=np.float32), "w")
    model = _model([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
                   [_vec("x", 3)], [_vec("y", 3)], [w])
    path = tmp_path / "m.onnx.gz"
    path.write_bytes(gzip.compress(model.SerializeToString()))
    graph = load_graph(path)
    assert graph.num_inputs == 3 and graph.num_outputs == 3


def test_two_inputs_rejected(tmp_path):
    model = _model([helper.make_node("Add", ["a", "b"], ["y"])], [_vec("a", 2), _vec("b", 2)], [_vec("y", 2)])
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelError, match="exactly one model input"):
        load_graph(path)
