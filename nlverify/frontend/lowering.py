"""Conversions of ONNX ops that take more than one graph node, or fold into an existing one.

Kept apart from :mod:`builder` so that the builder reads as a table of ops. Every function takes the
:class:`~nlverify.frontend.builder.GraphBuilder` and returns the name of the graph node that holds the
result (or a list, for multi-output ops).
"""
from __future__ import annotations

from math import prod
from typing import TYPE_CHECKING

import numpy as np
import torch

from nlverify.frontend.errors import UnsupportedOpError
from nlverify.frontend.patterns import id_of
from nlverify.ops import (
    BinaryOp, ConcatOp, ConvOp, ConvTransposeOp, ElementwiseAffine, MatMulConst, ReduceSumOp, ReshapeOp,
    SliceOp, TransposeOp, UnaryOp,
)

if TYPE_CHECKING:
    from nlverify.frontend.builder import GraphBuilder

MAX_SORT_SIZE = 16  # sorting networks grow as n^2 comparators; beyond this a GroupSort is not lowered


# ---------------------------------------------------------------------------- folding of constants
def _is_exclusive(builder: "GraphBuilder", variable: str) -> bool:
    """True when nothing but the op being converted reads ``variable``, so its op may absorb more."""
    node = builder.nodes[variable]
    if node.kind == "input":
        return False
    if any(variable in other.inputs for other in builder.nodes.values()):
        return False
    tensors = [t for t, v in builder.variables.items() if v == variable]
    return all(builder.onnx_users.get(t, 0) <= 1 for t in tensors) and len(tensors) <= 1


def _right_aligned(c: np.ndarray, rank: int) -> np.ndarray:
    return c.reshape((1,) * (rank - c.ndim) + c.shape)


def _vector_on_axis(c: np.ndarray | None, shape: tuple[int, ...], axis: int) -> np.ndarray | None:
    """``c`` as a vector along ``axis`` of ``shape`` if it varies along no other axis, else None."""
    if c is None:
        return np.ones(shape[axis])
    if c.ndim > len(shape):
        return None
    aligned = _right_aligned(np.asarray(c, dtype=np.float64), len(shape))
    if any(size != 1 for i, size in enumerate(aligned.shape) if i != axis):
        return None
    if aligned.shape[axis] not in (1, shape[axis]):
        return None
    return np.broadcast_to(aligned.reshape(-1), (shape[axis],)).copy()


def fold_affine(builder: "GraphBuilder", variable: str, scale: np.ndarray | None,
                shift: np.ndarray | None) -> str | None:
    """Absorb ``x * scale + shift`` into the op producing ``x`` when that is exact; None otherwise.

    MatMul/Gemm absorb per-output-column constants, Conv per-channel constants (BatchNorm folding),
    and consecutive elementwise affine maps compose when broadcasting does not grow the shape.
    """
    if not _is_exclusive(builder, variable):
        return None
    node = builder.nodes[variable]
    op, shape = node.op, node.shape
    if isinstance(op, MatMulConst):
        s, b = _vector_on_axis(scale, shape, len(shape) - 1), _vector_on_axis(shift if shift is not None else np.zeros(1), shape, len(shape) - 1)
        if s is None or b is None:
            return None
        s_t, b_t = torch.as_tensor(s), torch.as_tensor(b)
        op.weight = op.weight * s_t
        op.bias = b_t if op.bias is None else _bias_vector(op.bias, shape) * s_t + b_t
    elif isinstance(op, ConvOp):
        channel_axis = len(shape) - op.spatial_dims - 1
        s, b = _vector_on_axis(scale, shape, channel_axis), _vector_on_axis(shift if shift is not None else np.zeros(1), shape, channel_axis)
        if s is None or b is None:
            return None
        s_t, b_t = torch.as_tensor(s), torch.as_tensor(b)
        op.weight = op.weight * s_t.reshape(-1, *([1] * (op.weight.dim() - 1)))
        op.bias = b_t if op.bias is None else op.bias * s_t + b_t
    elif isinstance(op, ElementwiseAffine):
        for c in (scale, shift):
            if c is not None and tuple(np.broadcast_shapes(shape, c.shape)) != shape:
                return None
        s = None if scale is None else torch.as_tensor(np.asarray(scale, dtype=np.float64))
        b = None if shift is None else torch.as_tensor(np.asarray(shift, dtype=np.float64))
        new_scale = op.scale if s is None else (s if op.scale is None else op.scale * s)
        new_shift = op.shift if s is None or op.shift is None else op.shift * s
        new_shift = b if new_shift is None else (new_shift if b is None else new_shift + b)
        op.scale, op.shift = new_scale, new_shift
    else:
        return None
    builder.probes[variable] = op.forward(*(builder.probes[i] for i in node.inputs))
    return variable


def _bias_vector(bias: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    vector = _vector_on_axis(bias.numpy(), shape, len(shape) - 1)
    if vector is None:
        raise AssertionError("MatMul bias must be a per-column vector")
    return torch.as_tensor(vector)


def extremum_with_constant(builder, variable: str, bound: np.ndarray, activation: str, node) -> str:
    """``max(x, c) = relu(x - c) + c`` and ``min(x, c) = c - relu(c - x)``: exact, and ReLU is tighter
    to relax than a Max against a degenerate interval."""
    if activation == "max":
        shifted = builder.affine(variable, None, -bound, node)
        rectified = builder.add(UnaryOp("relu"), [shifted], node, hint=f"{variable}_max_relu")
        return builder.affine(rectified, None, bound, node)
    reflected = builder.affine(variable, np.array(-1.0), bound, node)
    rectified = builder.add(UnaryOp("relu"), [reflected], node, hint=f"{variable}_min_relu")
    return builder.affine(rectified, np.array(-1.0), bound, node)


# ---------------------------------------------------------------------------- products
def matmul_right(builder, variable: str, weight: np.ndarray, node) -> str:
    """``x @ W`` with constant W (2-D, or a 1-D vector contracting the last axis)."""
    weight = weight.astype(np.float64)
    if weight.ndim == 2:
        return builder.add(MatMulConst(torch.as_tensor(weight)), [variable], node)
    if weight.ndim == 1:
        column = builder.add(MatMulConst(torch.as_tensor(weight[:, None])), [variable], node)
        return builder.add(ReshapeOp(builder.shape_of(column)[:-1]), [column], node)
    raise UnsupportedOpError("MatMul", node.name, f"constant right operand of rank {weight.ndim}")


def matmul_left(builder, weight: np.ndarray, variable: str, node) -> str:
    """``C @ x`` with constant 2-D C: ``(x^T C^T)^T`` over the last two axes."""
    weight = weight.astype(np.float64)
    if weight.ndim != 2:
        raise UnsupportedOpError("MatMul", node.name, f"constant left operand of rank {weight.ndim}")
    rank = len(builder.shape_of(variable))
    if rank == 1:
        return builder.add(MatMulConst(torch.as_tensor(weight.T)), [variable], node)
    swap = list(range(rank - 2)) + [rank - 1, rank - 2]
    transposed = builder.add(TransposeOp(swap), [variable], node, hint=f"{id_of(node)}_t")
    product = builder.add(MatMulConst(torch.as_tensor(weight.T)), [transposed], node, hint=f"{id_of(node)}_mm")
    return builder.add(TransposeOp(swap), [product], node)


# ---------------------------------------------------------------------------- reductions
def _axes(builder, node, variable: str, input_index: int = 1) -> list[int] | None:
    rank = len(builder.shape_of(variable))
    axes = builder.attr(node, "axes", None)
    if axes is None and len(node.input) > input_index and node.input[input_index]:
        axes = builder.const(node.input[input_index])
        if axes is None:
            raise UnsupportedOpError(node.op_type, node.name, "axes must be constant")
        axes = axes.reshape(-1).tolist()
    if axes is None:
        return None
    return sorted(int(a) + rank if int(a) < 0 else int(a) for a in axes)


def reduce_sum(builder, node, scale: str | None) -> str:
    variable = builder.variables[node.input[0]]
    shape = builder.shape_of(variable)
    axes = _axes(builder, node, variable)
    if axes is None:
        axes = [] if builder.attr(node, "noop_with_empty_axes", 0) else list(range(len(shape)))
    keepdims = bool(builder.attr(node, "keepdims", 1))
    out = builder.add(ReduceSumOp([a + 1 for a in axes], keepdims), [variable], node)
    if scale == "mean" and axes:
        out = builder.affine(out, np.array(1.0 / prod(shape[a] for a in axes)), None, node)
    return out


def _slice_along(builder, variable: str, axis: int, start: int, stop: int, node, hint: str) -> str:
    slices = [slice(None)] * len(builder.shape_of(variable))
    slices[axis] = slice(start, stop)
    return builder.add(SliceOp(slices), [variable], node, hint=hint)


def _lanes(builder, variable: str, axis: int, node) -> list[str]:
    size = builder.shape_of(variable)[axis]
    return [_slice_along(builder, variable, axis, i, i + 1, node, f"{id_of(node)}_lane{i}") for i in range(size)]


def _pairwise(builder, activation: str, a: str, b: str, node) -> str:
    return builder.add(BinaryOp(activation), [a, b], node, hint=f"{id_of(node)}_{activation}")


def reduce_extremum(builder, node, activation: str) -> str:
    """ReduceMax/ReduceMin as a balanced tree of binary Max/Min over slices (how MaxMin exports)."""
    variable = builder.variables[node.input[0]]
    shape = builder.shape_of(variable)
    axes = _axes(builder, node, variable) or list(range(len(shape)))
    current = variable
    for axis in axes:
        level = _lanes(builder, current, axis, node)
        while len(level) > 1:
            paired = [_pairwise(builder, activation, level[i], level[i + 1], node) for i in range(0, len(level) - 1, 2)]
            level = paired + ([level[-1]] if len(level) % 2 else [])
        current = level[0]
    if not builder.attr(node, "keepdims", 1):
        kept = tuple(s for i, s in enumerate(builder.shape_of(current)) if i not in axes)
        current = builder.add(ReshapeOp(kept), [current], node)
    return current


def topk(builder, node) -> list[str]:
    """TopK over a small axis (GroupSort as torch exports ``sort``): an odd-even transposition sorting
    network of binary Max/Min comparators, exact, then the first k lanes."""
    if len(node.output) > 1 and node.output[1] and builder.onnx_users.get(node.output[1], 0):
        raise UnsupportedOpError("TopK", node.name, "the indices output depends on the input and is used")
    variable = builder.variables[node.input[0]]
    shape = builder.shape_of(variable)
    k_const = builder.const(node.input[1]) if len(node.input) > 1 else None
    k = int(k_const.reshape(-1)[0]) if k_const is not None else int(builder.attr(node, "k"))
    axis = builder.attr(node, "axis", -1)
    axis = axis + len(shape) if axis < 0 else axis
    size = shape[axis]
    if size > MAX_SORT_SIZE:
        raise UnsupportedOpError("TopK", node.name, f"sorting {size} > {MAX_SORT_SIZE} entries per group")
    lanes = _lanes(builder, variable, axis, node)
    for round_index in range(size):
        for i in range(round_index % 2, size - 1, 2):
            low = _pairwise(builder, "min", lanes[i], lanes[i + 1], node)
            high = _pairwise(builder, "max", lanes[i], lanes[i + 1], node)
            lanes[i], lanes[i + 1] = low, high
    if builder.attr(node, "largest", 1):
        lanes = lanes[::-1]
    lanes = lanes[:k]
    return [builder.add(ConcatOp([None] * len(lanes), axis), lanes, node)]


# ---------------------------------------------------------------------------- convolutions
def _symmetric_pads(node, pads: list[int], spatial: int) -> list[int]:
    if not pads:
        return [0] * spatial
    begin, end = pads[:spatial], pads[spatial:]
    if begin != end:
        raise UnsupportedOpError(node.op_type, node.name, f"asymmetric padding {pads}")
    return begin


def _check_auto_pad(builder, node) -> None:
    auto_pad = builder.attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "VALID"):
        raise UnsupportedOpError(node.op_type, node.name, f"auto_pad={auto_pad}")


def _conv_parameters(builder, node) -> dict:
    """Constant weight and bias, and the attributes Conv and ConvTranspose share."""
    _check_auto_pad(builder, node)
    if any(builder.is_var(name) for name in node.input[1:]):
        raise UnsupportedOpError(node.op_type, node.name, "weights must be constant")
    weight = torch.as_tensor(builder.constants[node.input[1]].astype(np.float64))
    bias = builder.const(node.input[2]) if len(node.input) > 2 else None
    spatial = weight.dim() - 2
    return dict(weight=weight, bias=None if bias is None else torch.as_tensor(bias.astype(np.float64)),
                stride=builder.attr(node, "strides", [1] * spatial),
                padding=_symmetric_pads(node, builder.attr(node, "pads", []), spatial),
                dilation=builder.attr(node, "dilations", [1] * spatial),
                groups=builder.attr(node, "group", 1))


def conv(builder, node) -> str:
    op = ConvOp(**_conv_parameters(builder, node))
    return builder.add(op, [builder.variables[node.input[0]]], node)


def conv_transpose(builder, node) -> str:
    if builder.attr(node, "output_shape", None):
        raise UnsupportedOpError("ConvTranspose", node.name, "the output_shape attribute")
    parameters = _conv_parameters(builder, node)
    spatial = parameters["weight"].dim() - 2
    op = ConvTransposeOp(**parameters, output_padding=builder.attr(node, "output_padding", [0] * spatial))
    return builder.add(op, [builder.variables[node.input[0]]], node)


def batch_norm(builder, node) -> str:
    """Inference BatchNormalization: ``y = (x - mean) * gamma / sqrt(var + eps) + beta``, one scale and
    shift per channel (axis 1), folded into a preceding Conv when it is that conv's only reader."""
    if builder.attr(node, "training_mode", 0):
        raise UnsupportedOpError("BatchNormalization", node.name, "training_mode=1")
    if len([o for o in node.output if o]) > 1:
        raise UnsupportedOpError("BatchNormalization", node.name, "running-statistics outputs")
    gamma, beta, mean, var = (builder.constants[n].astype(np.float64) for n in node.input[1:5])
    scale = gamma / np.sqrt(var + float(builder.attr(node, "epsilon", 1e-5)))
    shift = beta - mean * scale
    variable = builder.variables[node.input[0]]
    trailing = (1,) * (len(builder.shape_of(variable)) - 2)
    return builder.affine(variable, scale.reshape(-1, *trailing), shift.reshape(-1, *trailing), node)


# ---------------------------------------------------------------------------- views and selections
def reshape(builder, node) -> str:
    variable = builder.variables[node.input[0]]
    current = builder.shape_of(variable)
    target = [int(s) for s in builder.constants[node.input[1]].reshape(-1)]
    allow_zero = builder.attr(node, "allowzero", 0)
    resolved = [current[i] if (s == 0 and not allow_zero) else s for i, s in enumerate(target)]
    if -1 in resolved:
        known = prod(s for s in resolved if s != -1)
        resolved[resolved.index(-1)] = prod(current) // max(known, 1)
    if prod(resolved) != prod(current):
        raise UnsupportedOpError("Reshape", node.name, f"cannot reshape {current} to {target}")
    return builder.add(ReshapeOp(resolved), [variable], node)


def squeeze_unsqueeze(builder, node, squeeze: bool) -> str:
    variable = builder.variables[node.input[0]]
    shape = builder.shape_of(variable)
    axes = builder.attr(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = builder.constants[node.input[1]].reshape(-1).tolist()
    dummy = np.empty(shape)
    if squeeze:
        new = np.squeeze(dummy, axis=None if not axes else tuple(int(a) for a in axes)).shape
    else:
        rank = len(shape) + len(axes)
        new = np.expand_dims(dummy, tuple(int(a) + rank if int(a) < 0 else int(a) for a in axes)).shape
    return builder.add(ReshapeOp(new), [variable], node)


def slice_(builder, node) -> str:
    variable = builder.variables[node.input[0]]
    shape = builder.shape_of(variable)
    if builder.opset < 10:
        starts, ends = builder.attr(node, "starts"), builder.attr(node, "ends")
        axes = builder.attr(node, "axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        values = []
        for index in range(1, 5):
            name = node.input[index] if len(node.input) > index else ""
            if name and builder.is_var(name):
                raise UnsupportedOpError("Slice", node.name, "input-dependent slice bounds")
            values.append(None if not name else builder.constants[name].reshape(-1).tolist())
        starts, ends, axes, steps = values
        axes = axes if axes is not None else list(range(len(starts)))
        steps = steps if steps is not None else [1] * len(starts)
    slices = [slice(None)] * len(shape)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = int(axis) + len(shape) if int(axis) < 0 else int(axis)
        slices[axis] = slice(int(start), int(end), int(step))
    return builder.add(SliceOp(slices), [variable], node)


def split(builder, node) -> list[str]:
    variable = builder.variables[node.input[0]]
    shape = builder.shape_of(variable)
    axis = builder.attr(node, "axis", 0)
    axis = axis + len(shape) if axis < 0 else axis
    sizes = builder.attr(node, "split", None)
    if sizes is None and len(node.input) > 1 and node.input[1]:
        sizes = builder.constants[node.input[1]].reshape(-1).tolist()
    if sizes is None:
        parts = len(node.output)
        chunk = -(-shape[axis] // parts)
        sizes = [min(chunk, shape[axis] - i * chunk) for i in range(parts)]
    outputs, start = [], 0
    for index, size in enumerate(sizes):
        outputs.append(_slice_along(builder, variable, axis, start, start + int(size), node, f"{node.output[index]}"))
        start += int(size)
    return outputs
