"""The one intermediate representation: a DAG of typed nodes in topological order.

A :class:`Graph` has exactly one variable input and one output. Every node records the per-sample shape
of its output (the full ONNX shape); at run time tensors carry an extra leading batch axis. The graph
knows how to execute itself and nothing about bounds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import Iterator

import torch
from torch import Tensor

from nlverify.ops import Op


@dataclass
class Node:
    name: str
    op: Op
    inputs: list[str]
    shape: tuple[int, ...]
    source: str = ""  # the ONNX node(s) it came from, for messages

    @property
    def kind(self) -> str:
        return self.op.kind

    @property
    def size(self) -> int:
        return prod(self.shape)


def live_nodes(nodes: dict[str, Node], input_name: str, output_name: str) -> dict[str, Node]:
    """``nodes`` (in topological order) restricted to the input and what the output depends on."""
    live = {output_name, input_name}
    for name in reversed(list(nodes)):
        if name in live:
            live.update(nodes[name].inputs)
    return {name: node for name, node in nodes.items() if name in live}


@dataclass
class Graph:
    nodes: dict[str, Node]  # insertion order is a topological order
    input_name: str
    output_name: str
    consumers: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.consumers = {name: [] for name in self.nodes}
        for node in self.nodes.values():
            for source in node.inputs:
                self.consumers[source].append(node.name)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.nodes[self.input_name].shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.nodes[self.output_name].shape

    @property
    def num_inputs(self) -> int:
        return self.nodes[self.input_name].size

    @property
    def num_outputs(self) -> int:
        return self.nodes[self.output_name].size

    @property
    def num_neurons(self) -> int:
        """Neurons of every node, the input and output included (what per-neuron tensors of a pass scale with)."""
        return sum(node.size for node in self.nodes.values())

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes.values())

    def nonlinear_nodes(self) -> list[Node]:
        return [n for n in self if n.kind in ("unary", "binary")]

    def run(self, x: Tensor) -> dict[str, Tensor]:
        """Every node's value for a batch ``x`` of shape ``(B, *input_shape)`` (or ``(B, num_inputs)``)."""
        values = {self.input_name: x.reshape(x.shape[0], *self.input_shape)}
        for node in self:
            if node.kind != "input":
                values[node.name] = node.op.forward(*(values[i] for i in node.inputs))
        return values

    def forward(self, x: Tensor) -> Tensor:
        """Outputs of shape ``(B, num_outputs)`` for inputs of shape ``(B, num_inputs)`` or ``(B, *input_shape)``."""
        values = {self.input_name: x.reshape(x.shape[0], *self.input_shape)}
        remaining = {name: len(users) for name, users in self.consumers.items()}
        for node in self:
            if node.kind == "input":
                continue
            values[node.name] = node.op.forward(*(values[i] for i in node.inputs))
            for i in node.inputs:  # free intermediates as soon as their last consumer ran
                remaining[i] -= 1
                if remaining[i] == 0 and i != self.output_name:
                    del values[i]
        out = values[self.output_name]
        return out.reshape(out.shape[0], -1)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Graph":
        for node in self:
            node.op.to(device=device, dtype=dtype)
        return self

    def summary(self) -> str:
        lines = []
        for node in self:
            ins = ", ".join(node.inputs)
            lines.append(f"{node.name:<40} {node.op.describe():<32} {str(node.shape):<20} <- {ins}")
        return "\n".join(lines)
