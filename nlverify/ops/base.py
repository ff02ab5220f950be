"""Base classes of the ops: what a node computes, independent of any bound method."""
from __future__ import annotations

from typing import ClassVar, Sequence

import torch
from torch import Tensor


class Op:
    """A node's operation. ``forward`` takes batched tensors (leading batch axis) and returns one."""

    kind: ClassVar[str] = "abstract"

    def forward(self, *inputs: Tensor) -> Tensor:
        raise NotImplementedError

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Op":
        """Move every tensor attribute (weights, constants) to ``device`` / ``dtype`` in place."""
        for name, value in vars(self).items():
            if isinstance(value, Tensor):
                if value.is_floating_point():
                    setattr(self, name, value.to(device=device, dtype=dtype))
                else:
                    setattr(self, name, value.to(device=device))
        return self

    def describe(self) -> str:
        return type(self).__name__


class InputOp(Op):
    kind = "input"


class LinearOp(Op):
    """An op that is affine in its variable inputs: ``forward(x) = L(x) + offset``.

    ``forward_abs`` applies ``|L|`` (the linear part with absolute coefficients, no offset) -- IBP's radius
    map. ``backward`` maps a coefficient tensor ``A`` of shape ``(B, S, *out_shape)`` to ``A L`` per input,
    shapes ``(B, S, *in_shape)``; the default uses autograd's vector-Jacobian product, which is exact for
    an affine map and keeps this class free of per-op transposes. ``offset`` is ``forward(0)``.
    """

    kind = "linear"
    # True when every output entry is a copy of one input entry or a constant: IBP through such an op
    # is exact, so a tighter method has nothing to add once its inputs are bounded.
    selects = False
    # True when every output entry is an affine function of a single input entry (elementwise scaling,
    # reshapes, transposes, slices). If moreover the output has no more entries than the input, no input
    # entry feeds two outputs, and the image of a box is exactly a box: IBP is exact through the op and a
    # linear function of the output has the same minimum over the output's box as over the input's.
    entrywise = False

    def forward_abs(self, *radii: Tensor) -> Tensor:
        raise NotImplementedError

    def backward(self, coeffs: Tensor, input_shapes: Sequence[Sequence[int]]) -> list[Tensor]:
        batch, specs = coeffs.shape[:2]
        flat = coeffs.reshape(batch * specs, *coeffs.shape[2:])
        zeros = [torch.zeros(batch * specs, *shape, dtype=coeffs.dtype, device=coeffs.device)
                 for shape in input_shapes]
        _, vjp = torch.func.vjp(self.forward, *zeros)
        grads = vjp(flat)
        return [g.reshape(batch, specs, *shape) for g, shape in zip(grads, input_shapes)]

    def offset(self, input_shapes: Sequence[Sequence[int]], like: Tensor) -> Tensor:
        """The constant term ``forward(0)`` as a tensor of shape ``(1, *out_shape)``."""
        zeros = [torch.zeros(1, *shape, dtype=like.dtype, device=like.device) for shape in input_shapes]
        return self.forward(*zeros)


def unbroadcast(coeffs: Tensor, shape: Sequence[int]) -> Tensor:
    """Sum ``coeffs`` of shape ``(B, S, *out)`` down to ``(B, S, *shape)`` where the forward op broadcast
    an input of per-sample ``shape`` up to ``out`` (the transpose of broadcasting is summation)."""
    target = tuple(shape)
    out = tuple(coeffs.shape[2:])
    if out == target:
        return coeffs
    extra = len(out) - len(target)
    if extra > 0:
        coeffs = coeffs.sum(dim=tuple(range(2, 2 + extra)))
    axes = tuple(2 + i for i, (o, t) in enumerate(zip(coeffs.shape[2:], target)) if t == 1 and o != 1)
    if axes:
        coeffs = coeffs.sum(dim=axes, keepdim=True)
    return coeffs


class UnaryOp(Op):
    """An elementwise nonlinearity; ``activation`` names its relaxation family, ``params`` its constants."""

    kind = "unary"
    _functions = {
        "relu": torch.relu,
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "sin": torch.sin,
        "cos": torch.cos,
        "exp": torch.exp,
        "gelu": lambda x: torch.nn.functional.gelu(x, approximate="none"),
        "reciprocal": torch.reciprocal,
        "floor": torch.floor,
    }

    def __init__(self, activation: str, **params: float) -> None:
        self.activation = activation
        self.params = params

    def forward(self, x: Tensor) -> Tensor:
        if self.activation == "leaky_relu":
            return torch.nn.functional.leaky_relu(x, self.params["negative_slope"])
        if self.activation == "pow":
            return torch.pow(x, self.params["exponent"])
        return self._functions[self.activation](x)

    def describe(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.activation}({extra})" if extra else self.activation


class BinaryOp(Op):
    """An elementwise nonlinearity of two variable tensors of the same shape: max, min or mul."""

    kind = "binary"
    _functions = {"max": torch.maximum, "min": torch.minimum, "mul": torch.mul}

    def __init__(self, activation: str) -> None:
        self.activation = activation

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self._functions[self.activation](x, y)

    def describe(self) -> str:
        return self.activation
