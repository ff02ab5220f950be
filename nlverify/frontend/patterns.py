"""Recognise multi-node ONNX patterns that are one activation: GELU exported through Erf.

torch exports ``gelu(x)`` (approximate="none") as ``Mul(Mul(x, Add(Erf(Div(x, sqrt 2)), 1)), 0.5)``;
other exporters scale ``x`` by 0.5 first or multiply by ``1/sqrt 2``. Each is exactly
``x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt 2))``, so the chain becomes one GELU node, which has a far
tighter relaxation than the product of its parts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx

SQRT2 = float(np.sqrt(2.0))


@dataclass
class GeluMatch:
    x: str                # the ONNX tensor GELU is applied to
    output: str           # the tensor that equals gelu(x)
    nodes: list[str]      # ONNX node names (or ids) covered by the pattern


def find_gelu_patterns(graph: onnx.GraphProto, constant: Callable[[str], np.ndarray | None]) -> list[GeluMatch]:
    producer = {out: node for node in graph.node for out in node.output}
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)

    def only_user(tensor: str) -> onnx.NodeProto | None:
        found = users.get(tensor, [])
        return found[0] if len(found) == 1 else None

    def other_input(node: onnx.NodeProto, tensor: str) -> str | None:
        rest = [i for i in node.input if i != tensor]
        return rest[0] if len(rest) == 1 else None

    def is_scalar(name: str | None, value: float) -> bool:
        c = constant(name) if name else None
        return c is not None and c.size == 1 and abs(float(c.reshape(-1)[0]) - value) < 1e-5 * abs(value)

    matches = []
    for erf in graph.node:
        if erf.op_type != "Erf":
            continue
        scaled = producer.get(erf.input[0])
        if scaled is None:
            continue
        if scaled.op_type == "Div" and is_scalar(scaled.input[1], SQRT2):
            x = scaled.input[0]
        elif scaled.op_type == "Mul" and is_scalar(scaled.input[1], 1 / SQRT2):
            x = scaled.input[0]
        elif scaled.op_type == "Mul" and is_scalar(scaled.input[0], 1 / SQRT2):
            x = scaled.input[1]
        else:
            continue
        add = only_user(erf.output[0])
        if add is None or add.op_type != "Add" or not is_scalar(other_input(add, erf.output[0]), 1.0):
            continue
        product = only_user(add.output[0])
        if product is None or product.op_type != "Mul":
            continue
        factor = other_input(product, add.output[0])
        covered = [scaled, erf, add, product]
        if factor == x:  # 0.5 comes after: Mul(Mul(x, 1 + erf), 0.5)
            half = only_user(product.output[0])
            if half is None or half.op_type != "Mul" or not is_scalar(other_input(half, product.output[0]), 0.5):
                continue
            covered.append(half)
            output = half.output[0]
        else:  # 0.5 came first: Mul(Mul(x, 0.5), 1 + erf)
            half = producer.get(factor) if factor else None
            if half is None or half.op_type != "Mul" or x not in half.input:
                continue
            if not is_scalar(other_input(half, x), 0.5) or only_user(half.output[0]) is None:
                continue
            covered.insert(0, half)
            output = product.output[0]
        if scaled.output[0] and only_user(scaled.output[0]) is None:
            continue
        matches.append(GeluMatch(x=x, output=output, nodes=[id_of(n) for n in covered]))
    return matches


def id_of(node: onnx.NodeProto) -> str:
    """A stable identity for a node: its first output tensor name (node names may be empty)."""
    return node.output[0]
