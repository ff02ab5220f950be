"""Adapter from the project's :class:`nlverify.graph.Graph` (ONNX frontend) to a :class:`LipNetwork`.

Accepted graphs are chains: ``input -> affine ops -> elementwise activation -> affine ops -> ... ->
output``, every activation reading one value computed from the previous activation (or the input)
by linear nodes only. Each affine segment becomes one dense matrix ``W = [f(e_i) - f(0)]`` (float64),
evaluated with the graph's own ops. Skip connections, binary nonlinearities (Max/Min/Mul) and
activations without a slope class are rejected with the node named.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import activations as act
from .activations import ActivationSpec
from .network import MAX_UNROLL_INPUTS, LipNetwork


def spec_for_unary(op) -> ActivationSpec | None:
    name = op.activation
    table = {"relu": act.RELU, "sigmoid": act.SIGMOID, "tanh": act.TANH, "sin": act.SIN,
             "cos": act.slope("cos", -1.0, 1.0)}
    if name in table:
        return table[name]
    if name == "gelu":
        return act.gelu()
    if name == "leaky_relu":
        return act.leaky_relu(op.params["negative_slope"])
    return None


def _segment(graph, source: str, target: str) -> tuple[np.ndarray, np.ndarray]:
    """Matrix and offset of the affine map from node ``source`` to node ``target``."""
    src = graph.nodes[source]
    n = src.size
    if n > MAX_UNROLL_INPUTS:
        raise ValueError(f"node {source}: {n} values are too many to unroll")
    basis = torch.cat([torch.zeros(1, n, dtype=torch.float64), torch.eye(n, dtype=torch.float64)])
    values = {source: basis.reshape(n + 1, *src.shape)}
    for node in graph:
        if node.name in values or node.kind != "linear":
            continue
        if node.inputs and all(i in values for i in node.inputs):
            values[node.name] = node.op.forward(*(values[i] for i in node.inputs))
    if target not in values:
        raise ValueError(f"node {target} is not an affine function of {source} alone "
                         "(skip connection or unsupported op): not a chain")
    out = values[target].reshape(n + 1, -1)
    return (out[1:] - out[0]).T.numpy().copy(), out[0].numpy().copy()


def from_graph(graph) -> LipNetwork:
    graph.to(dtype=torch.float64)
    specs: list[ActivationSpec] = []
    sources, targets = [graph.input_name], []
    for node in graph:
        if node.kind == "binary":
            raise ValueError(f"node {node.name} ({node.op.describe() if hasattr(node.op, 'describe') else node.kind}): "
                             "binary nonlinearities are not supported by the Lipschitz module")
        if node.kind == "unary":
            spec = spec_for_unary(node.op)
            if spec is None:
                raise ValueError(f"node {node.name}: activation {node.op.activation} has no slope class")
            specs.append(spec)
            targets.append(node.inputs[0])
            sources.append(node.name)
    targets.append(graph.output_name)
    weights, biases = [], []
    for source, target in zip(sources, targets):
        w, b = _segment(graph, source, target)
        weights.append(w)
        biases.append(b)
    return LipNetwork(weights, specs, biases, tuple(graph.input_shape) or (math.prod(graph.input_shape),))


def load_onnx_network(path) -> tuple[LipNetwork, torch.nn.Module]:
    """LipNetwork and a float64 torch callable (the graph) for an ONNX file."""
    from nlverify.frontend import load_graph

    graph = load_graph(path)
    net = from_graph(graph)

    class _GraphModule(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return graph.forward(x.reshape(x.shape[0], -1))

    return net, _GraphModule()
