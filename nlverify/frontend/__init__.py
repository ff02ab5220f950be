"""ONNX → Graph: parsing, constant folding, shape inference by execution, op normalisation."""
from nlverify.frontend.errors import ModelError, UnsupportedOpError
from nlverify.frontend.loader import load_graph, read_onnx

__all__ = ["ModelError", "UnsupportedOpError", "load_graph", "read_onnx"]
