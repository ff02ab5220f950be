"""Small random torch networks with every supported activation, exported to ONNX for tests.

``make_net(activation, architecture)`` returns an ``nn.Module`` taking ``(N, *input_shape)``;
``export(module, input_shape, path, opset)`` writes it with torch's ONNX exporter.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

ACTIVATIONS = ["relu", "leaky_relu", "sigmoid", "tanh", "gelu", "sin", "cos", "maxmin", "groupsort",
               "mul", "square", "max2"]


class Elementwise(nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def forward(self, x):
        n = self.name
        if n == "relu":
            return torch.relu(x)
        if n == "leaky_relu":
            return nn.functional.leaky_relu(x, 0.1)
        if n == "sigmoid":
            return torch.sigmoid(x)
        if n == "tanh":
            return torch.tanh(x)
        if n == "gelu":
            return nn.functional.gelu(x)
        if n == "sin":
            return torch.sin(x)
        if n == "cos":
            return torch.cos(x)
        if n == "square":
            return x * 0.5 + torch.pow(x, 2) * 0.25
        if n == "maxmin":  # pairs of consecutive units -> (max, min)
            pairs = x.reshape(*x.shape[:-1], -1, 2)
            return torch.cat([pairs.max(-1, keepdim=True)[0], pairs.min(-1, keepdim=True)[0]], -1).reshape(x.shape)
        if n == "groupsort":  # sort within groups of 4
            return x.reshape(*x.shape[:-1], -1, 4).sort(dim=-1)[0].reshape(x.shape)
        if n == "mul":  # product of the two halves, kept next to one half
            a, b = x.chunk(2, dim=-1)
            return torch.cat([a * b, a], -1)
        if n == "max2":  # elementwise Max/Min of the two halves
            a, b = x.chunk(2, dim=-1)
            return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], -1)
        raise ValueError(n)


class Residual(nn.Module):
    def __init__(self, width: int, activation: str) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.act = Elementwise(activation)

    def forward(self, x):
        return x + self.act(self.linear(x))


class ChannelLast(nn.Module):
    """Apply an activation over the channel axis of an image tensor (for grouped activations)."""

    def __init__(self, activation: str) -> None:
        super().__init__()
        self.act = Elementwise(activation)

    def forward(self, x):
        return self.act(x.transpose(1, -1)).transpose(1, -1)


def make_net(activation: str, architecture: str = "mlp", seed: int = 0, width: int = 16,
             inputs: int = 4, outputs: int = 3) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(seed)
    act = lambda: Elementwise(activation)
    if architecture == "mlp":
        net = nn.Sequential(nn.Linear(inputs, width), act(), nn.Linear(width, width), act(), nn.Linear(width, outputs))
        shape = (inputs,)
    elif architecture == "residual":
        net = nn.Sequential(nn.Linear(inputs, width), act(), Residual(width, activation), nn.Linear(width, outputs))
        shape = (inputs,)
    elif architecture == "cnn":
        net = nn.Sequential(nn.Conv2d(1, 4, 3, stride=1, padding=1), ChannelLast(activation),
                            nn.Conv2d(4, 4, 3, stride=2), ChannelLast(activation), nn.Flatten(),
                            nn.Linear(4 * 2 * 2, outputs))
        shape = (1, 6, 6)
    else:
        raise ValueError(architecture)
    return net.eval(), shape


def export(net: nn.Module, input_shape: tuple[int, ...], path: Path, opset: int = 17) -> Path:
    torch.onnx.export(net, torch.zeros(1, *input_shape), str(path), opset_version=opset, dynamo=False,
                      input_names=["x"], output_names=["y"])
    return path


def box_samples(lower: torch.Tensor, upper: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` uniform points of the batch-1 box ``[lower, upper]``, ``count`` random corners (where a
    node's extreme values often lie) and both ends."""
    shape = lower.shape[1:]
    uniform = lower + (upper - lower) * torch.rand(count, *shape, generator=generator)
    corners = torch.where(torch.rand(count, *shape, generator=generator) < 0.5, lower, upper)
    return torch.cat([uniform, corners, lower, upper])
