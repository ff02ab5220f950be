"""Torch models of the soundness suite: plain MLPs and small CNNs, one activation each.

A model is described by float64 numpy weights (:class:`MLPWeights`,
:class:`CNNWeights`) so that planting a needle is linear algebra on arrays;
:func:`build_model` turns the weights into an ``nn.Sequential`` in any dtype
(float32 for export and attacks, float64 for the reference evaluation and the
interval proof).

Activations and the ONNX ops they export to (opset 17, TorchScript exporter):

==============  ===========================================================
relu            Relu
leaky_relu      LeakyRelu (slope :data:`LEAKY_SLOPE`)
sigmoid         Sigmoid
tanh            Tanh
gelu            the exact Erf pattern (Div, Erf, Add, Mul, Mul)
sin             Sin
maxmin          Slice (even / odd units), Max, Min, Unsqueeze, Concat, Reshape
groupsort       Slice (4 lanes), 5 x (Max, Min) -- a sorting network --, Unsqueeze, Concat, Reshape
==============  ===========================================================

Grouped activations act on consecutive units (features of an MLP layer,
channels of a CNN layer): MaxMin maps the pair ``(a, b)`` to ``(max, min)`` in
place; GroupSort sorts each group of 4 in ascending order in place.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "GROUP_SIZE",
    "LEAKY_SLOPE",
    "MaxMin",
    "GroupSort",
    "Sin",
    "make_activation",
    "MLPWeights",
    "CNNWeights",
    "build_model",
    "export_onnx",
    "onnx_op_types",
]

ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh", "gelu", "sin", "maxmin", "groupsort")
GROUP_SIZE = {name: 1 for name in ACTIVATIONS} | {"maxmin": 2, "groupsort": 4}
LEAKY_SLOPE = 0.1


class Sin(nn.Module):
    """Elementwise ``sin``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)


class MaxMin(nn.Module):
    """``(x_{2i}, x_{2i+1}) -> (max, min)`` along dim 1 (features or channels), in place.

    ``shape`` is the per-sample shape of the input (static, so the export has
    no shape arithmetic)."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        if shape[0] % 2:
            raise ValueError(f"MaxMin needs an even number of units, got {shape[0]}")
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x[:, 0::2], x[:, 1::2]
        return torch.stack((torch.maximum(a, b), torch.minimum(a, b)), dim=2).reshape(-1, *self.shape)


class GroupSort(nn.Module):
    """Sort each group of 4 consecutive units along dim 1, ascending, in place.

    Computed by the optimal 4-input sorting network (5 compare-exchanges,
    each an elementwise ``max`` / ``min``), which is exactly a sort and exports
    to plain Slice / Max / Min / Concat / Reshape ops. ``shape`` is the
    per-sample input shape (static, so the export has no shape arithmetic)."""

    _NETWORK = ((0, 1), (2, 3), (0, 2), (1, 3), (1, 2))

    def __init__(self, shape: tuple[int, ...], group: int = 4):
        super().__init__()
        if group != 4:
            raise ValueError("GroupSort is implemented for groups of 4")
        if shape[0] % group:
            raise ValueError(f"GroupSort needs a multiple of {group} units, got {shape[0]}")
        self.shape = tuple(int(s) for s in shape)
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lanes = [x[:, k::self.group] for k in range(self.group)]
        for i, j in self._NETWORK:
            lanes[i], lanes[j] = torch.minimum(lanes[i], lanes[j]), torch.maximum(lanes[i], lanes[j])
        return torch.stack(lanes, dim=2).reshape(-1, *self.shape)


def make_activation(name: str, shape: tuple[int, ...]) -> nn.Module:
    """The activation module ``name`` for a per-sample tensor of ``shape``."""
    if name == "relu":
        return nn.ReLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(LEAKY_SLOPE)
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "tanh":
        return nn.Tanh()
    if name == "gelu":
        return nn.GELU(approximate="none")
    if name == "sin":
        return Sin()
    if name == "maxmin":
        return MaxMin(shape)
    if name == "groupsort":
        return GroupSort(shape, GROUP_SIZE["groupsort"])
    raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}")


@dataclass
class MLPWeights:
    """``h_1 = act(W_1 x + b_1), ..., y = W_out h_L + b_out`` (float64 arrays)."""

    activation: str
    hidden: list[tuple[np.ndarray, np.ndarray]]
    out: tuple[np.ndarray, np.ndarray]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.hidden[0][0].shape[1],)


@dataclass
class CNNWeights:
    """``h_0 = act(conv(x))`` (3x3, padding 1, stride 1), flattened in (C, H, W)
    order, then an MLP: ``h_l = act(W_l h_{l-1} + b_l)``, ``y = W_out h_L + b_out``."""

    activation: str
    image_shape: tuple[int, int, int]  # (C, H, W) of the input
    conv: tuple[np.ndarray, np.ndarray]  # (C_out, C_in, 3, 3), (C_out,)
    hidden: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    out: tuple[np.ndarray, np.ndarray] = (np.zeros((0, 0)), np.zeros(0))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.image_shape)


def _linear(weight: np.ndarray, bias: np.ndarray, dtype: torch.dtype) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0]).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(weight, dtype=dtype))
        layer.bias.copy_(torch.as_tensor(bias, dtype=dtype))
    return layer


def build_model(weights: Union[MLPWeights, CNNWeights], dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """An ``nn.Sequential`` computing the network; input ``(N, *input_shape)``, output ``(N, classes)``."""
    act = weights.activation
    layers: list[nn.Module] = []
    if isinstance(weights, CNNWeights):
        kernel, bias = weights.conv
        conv = nn.Conv2d(kernel.shape[1], kernel.shape[0], 3, padding=1).to(dtype)
        with torch.no_grad():
            conv.weight.copy_(torch.as_tensor(kernel, dtype=dtype))
            conv.bias.copy_(torch.as_tensor(bias, dtype=dtype))
        _, height, width = weights.image_shape
        layers += [conv, make_activation(act, (kernel.shape[0], height, width)), nn.Flatten()]
    for weight, bias in weights.hidden:
        layers += [_linear(weight, bias, dtype), make_activation(act, (weight.shape[0],))]
    layers.append(_linear(*weights.out, dtype))
    return nn.Sequential(*layers).eval()


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: Union[str, Path]) -> bytes:
    """Export a float32 ``model`` for a batch-1 input of ``input_shape`` (opset 17,
    TorchScript exporter, constants folded); writes ``path`` and returns the bytes."""
    import warnings

    buffer = io.BytesIO()
    dummy = torch.zeros((1, *input_shape), dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (dummy,), buffer, opset_version=17, dynamo=False,
                          input_names=["input"], output_names=["output"], do_constant_folding=True)
    data = buffer.getvalue()
    Path(path).write_bytes(data)
    return data


def onnx_op_types(data: bytes) -> list[str]:
    """The op types of an ONNX model's graph, in order (for checking what an export produced)."""
    import onnx

    return [node.op_type for node in onnx.load_from_string(data).graph.node]
