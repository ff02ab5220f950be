"""Read an ONNX file (optionally gzipped) and build the project's :class:`~nlverify.graph.Graph`."""
from __future__ import annotations

import gzip
from pathlib import Path

import onnx

from nlverify.frontend.builder import GraphBuilder
from nlverify.frontend.errors import ModelError
from nlverify.graph import Graph


def read_onnx(path: str | Path) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        data = path.read_bytes()
        if path.suffix == ".gz" or data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        return onnx.load_from_string(data)
    except Exception as exc:  # the onnx package raises several types for corrupt files
        raise ModelError(f"cannot read ONNX model {path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None


def load_graph(path: str | Path, quadratic_forms: bool = True) -> Graph:
    """Parse ``path`` into a Graph; raises :class:`ModelError` for unusable or unsupported models.
    ``quadratic_forms=False`` keeps ``ReduceSum(z * (z @ P))`` patterns as products (see
    :mod:`nlverify.frontend.quadratic`; for ablations)."""
    model = read_onnx(path)
    return GraphBuilder(model, str(path), quadratic_forms).build()
