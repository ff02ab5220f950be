"""Affine ops: matrix products, convolutions, elementwise scale-and-shift, sums of tensors."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from nlverify.ops.base import LinearOp, unbroadcast


class MatMulConst(LinearOp):
    """``y = x @ weight + bias`` over the last axis (ONNX MatMul / Gemm with a constant right operand).

    ``weight`` has shape ``(in, out)``; ``bias`` broadcasts against ``(..., out)`` or is None.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        self.weight = weight
        self.bias = bias

    def forward(self, x: Tensor) -> Tensor:
        y = x @ self.weight
        return y if self.bias is None else y + self.bias

    def forward_abs(self, radius: Tensor) -> Tensor:
        return radius @ self.weight.abs()

    def backward(self, coeffs: Tensor, input_shapes: Sequence[Sequence[int]]) -> list[Tensor]:
        # one 2-D product over every (box, row, leading axis): a broadcast batched product would copy
        # the weight per row when the coefficients are not contiguous (e.g. shared by every box)
        flat = coeffs.reshape(-1, coeffs.shape[-1]) @ self.weight.transpose(0, 1)
        return [flat.reshape(*coeffs.shape[:-1], self.weight.shape[0])]

    def describe(self) -> str:
        return f"MatMul{tuple(self.weight.shape)}"


def _merge_model_batch(x: Tensor, spatial_dims: int) -> tuple[Tensor, tuple[int, ...]]:
    """Fold the engine batch axis and the model's own batch axis into one, as conv kernels expect."""
    lead = x.shape[: x.dim() - spatial_dims - 1]
    return x.reshape(-1, *x.shape[x.dim() - spatial_dims - 1:]), tuple(lead)


class ConvOp(LinearOp):
    """ONNX Conv (1-D/2-D/3-D) with constant weight and optional bias; tensors ``(B, N, C, *spatial)``."""

    def __init__(self, weight: Tensor, bias: Tensor | None, stride: Sequence[int], padding: Sequence[int],
                 dilation: Sequence[int], groups: int) -> None:
        self.weight = weight
        self.bias = bias
        self.stride = tuple(stride)
        self.padding = tuple(padding)
        self.dilation = tuple(dilation)
        self.groups = groups

    @property
    def spatial_dims(self) -> int:
        return self.weight.dim() - 2

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[self.spatial_dims]
        merged, lead = _merge_model_batch(x, self.spatial_dims)
        y = fn(merged, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        return y.reshape(*lead, *y.shape[1:])

    def forward(self, x: Tensor) -> Tensor:
        return self._conv(x, self.weight, self.bias)

    def forward_abs(self, radius: Tensor) -> Tensor:
        return self._conv(radius, self.weight.abs(), None)

    def backward(self, coeffs: Tensor, input_shapes: Sequence[Sequence[int]]) -> list[Tensor]:
        """The transpose of a convolution is the transposed convolution with the same weight; the
        output padding restores input sizes that the stride rounded away."""
        dims = self.spatial_dims
        in_shape = tuple(input_shapes[0])
        flat = coeffs.reshape(-1, *coeffs.shape[coeffs.dim() - dims - 1:])
        produced = [(o - 1) * s - 2 * p + d * (k - 1) + 1 for o, s, p, d, k in
                    zip(flat.shape[2:], self.stride, self.padding, self.dilation, self.weight.shape[2:])]
        output_padding = [want - got for want, got in zip(in_shape[-dims:], produced)]
        fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[dims]
        out = fn(flat, self.weight, None, self.stride, self.padding, output_padding, self.groups, self.dilation)
        return [out.reshape(*coeffs.shape[:2], *in_shape)]

    def describe(self) -> str:
        return f"Conv{tuple(self.weight.shape)}"


class ConvTransposeOp(LinearOp):
    """ONNX ConvTranspose (2-D) with constant weight, optional bias, output padding."""

    def __init__(self, weight: Tensor, bias: Tensor | None, stride: Sequence[int], padding: Sequence[int],
                 output_padding: Sequence[int], dilation: Sequence[int], groups: int) -> None:
        self.weight = weight
        self.bias = bias
        self.stride = tuple(stride)
        self.padding = tuple(padding)
        self.output_padding = tuple(output_padding)
        self.dilation = tuple(dilation)
        self.groups = groups

    def _deconv(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        dims = weight.dim() - 2
        fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[dims]
        merged, lead = _merge_model_batch(x, dims)
        y = fn(merged, weight, bias, self.stride, self.padding, self.output_padding, self.groups,
               self.dilation)
        return y.reshape(*lead, *y.shape[1:])

    def forward(self, x: Tensor) -> Tensor:
        return self._deconv(x, self.weight, self.bias)

    def forward_abs(self, radius: Tensor) -> Tensor:
        return self._deconv(radius, self.weight.abs(), None)

    def backward(self, coeffs: Tensor, input_shapes: Sequence[Sequence[int]]) -> list[Tensor]:
        """The transpose of a transposed convolution is the convolution with the same weight."""
        dims = self.weight.dim() - 2
        in_shape = tuple(input_shapes[0])
        flat = coeffs.reshape(-1, *coeffs.shape[coeffs.dim() - dims - 1:])
        fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
        out = fn(flat, self.weight, None, self.stride, self.padding, self.dilation, self.groups)
        return [out.reshape(*coeffs.shape[:2], *in_shape)]

    def describe(self) -> str:
        return f"ConvTranspose{tuple(self.weight.shape)}"


class ElementwiseAffine(LinearOp):
    """``y = x * scale + shift`` with constant, broadcastable ``scale`` and ``shift`` (either may be None).

    Normalises Add/Sub/Mul/Div by constants, Neg, inference-mode BatchNormalization and Identity.
    """

    entrywise = True

    def __init__(self, scale: Tensor | None = None, shift: Tensor | None = None) -> None:
        self.scale = scale
        self.shift = shift

    def forward(self, x: Tensor) -> Tensor:
        y = x if self.scale is None else x * self.scale
        return y if self.shift is None else y + self.shift

    def forward_abs(self, radius: Tensor) -> Tensor:
        out = radius if self.scale is None else radius * self.scale.abs()
        if self.shift is None:
            return out
        # a broadcasting shift widens the output even where the scale does not; the radius must too
        return out.expand(torch.broadcast_shapes(out.shape, self.shift.shape))

    def backward(self, coeffs: Tensor, input_shapes: Sequence[Sequence[int]]) -> list[Tensor]:
        scaled = coeffs if self.scale is None else coeffs * self.scale
        return [unbroadcast(scaled, input_shapes[0])]

    def describe(self) -> str:
        return "ElementwiseAffine"


class LinearCombination(LinearOp):
    """``y = sum_i coefficient_i * x_i`` of variable tensors (Add, Sub of two variables), broadcasting."""

    def __init__(self, coefficients: Sequence[float]) -> None:
        self.coefficients = tuple(float(c) for c in coefficients)

    def forward(self, *xs: Tensor) -> Tensor:
        total = xs[0] * self.coefficients[0]
        for c, x in zip(self.coefficients[1:], xs[1:]):
            total = total + c * x
        return total

    def forward_abs(self, *radii: Tensor) -> Tensor:
        total = radii[0] * abs(self.coefficients[0])
        for c, r in zip(self.coefficients[1:], radii[1:]):
            total = total + abs(c) * r
        return total

    def backward(self, coeffs: Tensor, input_shapes: Sequence[Sequence[int]]) -> list[Tensor]:
        return [unbroadcast(coeffs * c, shape) for c, shape in zip(self.coefficients, input_shapes)]

    def describe(self) -> str:
        return f"LinearCombination{self.coefficients}"


class ReduceSumOp(LinearOp):
    """ONNX ReduceSum over ``axes`` (already shifted past the engine batch axis)."""

    def __init__(self, axes: Sequence[int], keepdims: bool) -> None:
        self.axes = tuple(axes)
        self.keepdims = keepdims

    def forward(self, x: Tensor) -> Tensor:
        return x.sum(dim=self.axes, keepdim=self.keepdims) if self.axes else x

    def forward_abs(self, radius: Tensor) -> Tensor:
        return self.forward(radius)
