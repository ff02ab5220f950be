"""Linear ops that only move, select or copy entries: every one is its own ``|L|``."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from nlverify.ops.base import LinearOp


class _Permutation(LinearOp):
    """Ops whose linear part has 0/1 coefficients and no offset, so ``|L| = L``."""

    selects = True

    def forward_abs(self, *radii: Tensor) -> Tensor:
        return self.forward(*radii)


class ReshapeOp(_Permutation):
    """Reshape/Flatten/Squeeze/Unsqueeze: a view onto ``shape`` (the full ONNX shape)."""

    entrywise = True

    def __init__(self, shape: Sequence[int]) -> None:
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.shape)

    def backward(self, coeffs: Tensor, input_shapes: Sequence[Sequence[int]]) -> list[Tensor]:
        return [coeffs.reshape(*coeffs.shape[:2], *input_shapes[0])]

    def describe(self) -> str:
        return f"Reshape{self.shape}"


class TransposeOp(_Permutation):
    entrywise = True

    def __init__(self, perm: Sequence[int]) -> None:
        self.perm = (0,) + tuple(int(p) + 1 for p in perm)

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(*self.perm)

    def backward(self, coeffs: Tensor, input_shapes: Sequence[Sequence[int]]) -> list[Tensor]:
        inverse = [0] * len(self.perm)
        for position, axis in enumerate(self.perm):
            inverse[axis] = position
        # coefficient tensors carry one more leading axis (the rows) than activations
        return [coeffs.permute(0, 1, *(i + 1 for i in inverse[1:]))]


class SliceOp(_Permutation):
    """ONNX Slice with constant starts/ends/steps, resolved to Python slices per (shifted) axis."""

    entrywise = True

    def __init__(self, slices: Sequence[slice]) -> None:
        self.slices = (slice(None),) + tuple(slices)

    def forward(self, x: Tensor) -> Tensor:
        if any(s.step is not None and s.step < 0 for s in self.slices):
            return _negative_step_slice(x, self.slices)
        return x[self.slices]

    def backward(self, coeffs: Tensor, input_shapes: Sequence[Sequence[int]]) -> list[Tensor]:
        if any(s.step is not None and s.step < 0 for s in self.slices):
            return super().backward(coeffs, input_shapes)
        full = coeffs.new_zeros(*coeffs.shape[:2], *input_shapes[0])
        full[(slice(None),) + self.slices] = coeffs
        return [full]


def _negative_step_slice(x: Tensor, slices: Sequence[slice]) -> Tensor:
    for axis, s in enumerate(slices):
        if s.step is not None and s.step < 0:
            index = torch.tensor(list(range(x.shape[axis]))[s], dtype=torch.long, device=x.device)
            x = x.index_select(axis, index)
        else:
            x = x[(slice(None),) * axis + (s,)]
    return x


class GatherOp(_Permutation):
    """ONNX Gather along ``axis`` with constant integer ``indices`` (any shape, negative allowed)."""

    def __init__(self, indices: Tensor, axis: int) -> None:
        self.indices = indices
        self.axis = axis + 1

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[self.axis]
        flat = torch.remainder(self.indices.reshape(-1), size).to(x.device)
        picked = x.index_select(self.axis, flat)
        return picked.reshape(*x.shape[: self.axis], *self.indices.shape, *x.shape[self.axis + 1:])


class ExpandOp(_Permutation):
    """ONNX Expand of a variable to a constant shape (broadcast copies)."""

    def __init__(self, shape: Sequence[int]) -> None:
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x: Tensor) -> Tensor:
        return x.expand(x.shape[0], *self.shape)


class ConcatOp(LinearOp):
    """ONNX Concat along ``axis``; ``parts`` lists, per piece, either None (the next variable input) or a
    constant tensor (per-sample shape), so constants keep their place and become the offset."""

    selects = True

    def __init__(self, parts: Sequence[Tensor | None], axis: int) -> None:
        self.parts = list(parts)
        self.axis = axis + 1 if axis >= 0 else axis

    def _assemble(self, xs: Sequence[Tensor], constant_scale: float) -> Tensor:
        batch = xs[0].shape[0]
        variables = iter(xs)
        pieces = []
        for part in self.parts:
            if part is None:
                pieces.append(next(variables))
            else:
                const = part.to(dtype=xs[0].dtype, device=xs[0].device) * constant_scale
                pieces.append(const.unsqueeze(0).expand(batch, *part.shape))
        return torch.cat(pieces, dim=self.axis)

    def forward(self, *xs: Tensor) -> Tensor:
        return self._assemble(xs, 1.0)

    def backward(self, coeffs: Tensor, input_shapes: Sequence[Sequence[int]]) -> list[Tensor]:
        # coefficients carry the rows axis too; per-sample shapes lack the batch axis
        axis = self.axis + 1 if self.axis > 0 else self.axis
        sample_axis = self.axis - 1 if self.axis > 0 else self.axis
        sizes, shapes = [], iter(input_shapes)
        for part in self.parts:
            sizes.append(next(shapes)[sample_axis] if part is None else part.shape[sample_axis])
        pieces = torch.split(coeffs, sizes, dim=axis)
        return [piece for piece, part in zip(pieces, self.parts) if part is None]

    def forward_abs(self, *radii: Tensor) -> Tensor:
        return self._assemble(radii, 0.0)

    def to(self, device=None, dtype=None) -> "ConcatOp":
        self.parts = [None if p is None else p.to(device=device, dtype=dtype) for p in self.parts]
        return self


class SelectOp(LinearOp):
    """ONNX Where with a constant condition: ``y = mask * a + (1 - mask) * b``, where each branch is a
    variable input or a constant (``None`` in ``constants`` marks a variable branch)."""

    selects = True

    def __init__(self, mask: Tensor, constants: Sequence[Tensor | None]) -> None:
        self.mask = mask
        self.constants = list(constants)

    def _branches(self, xs: Sequence[Tensor], constant_scale: float) -> list[Tensor]:
        variables = iter(xs)
        return [next(variables) if c is None else c * constant_scale for c in self.constants]

    def forward(self, *xs: Tensor) -> Tensor:
        a, b = self._branches(xs, 1.0)
        mask = self.mask.to(dtype=xs[0].dtype)
        return mask * a + (1 - mask) * b

    def forward_abs(self, *radii: Tensor) -> Tensor:
        a, b = self._branches(radii, 0.0)
        mask = self.mask.to(dtype=radii[0].dtype)
        return mask * a + (1 - mask) * b

    def to(self, device=None, dtype=None) -> "SelectOp":
        self.mask = self.mask.to(device=device)
        self.constants = [None if c is None else c.to(device=device, dtype=dtype) for c in self.constants]
        return self
