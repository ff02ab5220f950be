"""Interval bound propagation (IBP): per node, ``[lower, upper]`` boxes pushed forward.

Linear ops use the centre-radius form ``c' = L(c) + offset``, ``r' = |L|(r)``, exact for one affine op;
nonlinear ops use their relaxation family's exact interval image.
"""
from __future__ import annotations

from torch import Tensor

from nlverify.bounds.relax import binary_relaxation, unary_relaxation
from nlverify.graph import Graph, Node

Bounds = tuple[Tensor, Tensor]


def node_interval(node: Node, inputs: list[Bounds]) -> Bounds:
    """The IBP image of one node given its inputs' boxes."""
    if node.kind == "linear":
        centres = [(l + u) / 2 for l, u in inputs]
        radii = [(u - l) / 2 for l, u in inputs]
        centre = node.op.forward(*centres)
        radius = node.op.forward_abs(*radii)
        return centre - radius, centre + radius
    if node.kind == "unary":
        return unary_relaxation(node.op.activation, **node.op.params).interval(*inputs[0])
    if node.kind == "binary":
        (lx, ux), (ly, uy) = inputs
        return binary_relaxation(node.op.activation).interval(lx, ux, ly, uy)
    raise ValueError(f"IBP has no rule for node kind '{node.kind}'")


def interval_bounds(graph: Graph, lower: Tensor, upper: Tensor) -> dict[str, Bounds]:
    """Boxes for every node; ``lower``/``upper`` have shape ``(B, num_inputs)`` or ``(B, *input_shape)``."""
    batch = lower.shape[0]
    bounds = {graph.input_name: (lower.reshape(batch, *graph.input_shape), upper.reshape(batch, *graph.input_shape))}
    for node in graph:
        if node.kind != "input":
            bounds[node.name] = node_interval(node, [bounds[i] for i in node.inputs])
    return bounds
