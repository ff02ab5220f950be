"""The user-facing model: a Graph plus where it came from, with ``forward`` and ``bounds``."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from nlverify.bounds.alpha import AlphaOptions, alpha_crown
from nlverify.bounds.crown import BackwardPropagator, CrownOptions, crown
from nlverify.bounds.interval import interval_bounds
from nlverify.frontend import load_graph
from nlverify.graph import Graph

METHODS = ("ibp", "crown", "alpha-crown")


@dataclass
class Model:
    graph: Graph
    path: str = ""
    _propagator: BackwardPropagator | None = field(default=None, repr=False)

    @property
    def num_inputs(self) -> int:
        return self.graph.num_inputs

    @property
    def num_outputs(self) -> int:
        return self.graph.num_outputs

    @property
    def propagator(self) -> BackwardPropagator:
        if self._propagator is None:
            self._propagator = BackwardPropagator(self.graph)
        return self._propagator

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "Model":
        self.graph.to(device=device, dtype=dtype)
        self._propagator = None
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Outputs ``(B, num_outputs)`` for inputs ``(B, num_inputs)``."""
        return self.graph.forward(x)

    __call__ = forward

    def bounds(self, lower: Tensor, upper: Tensor, method: str = "crown", C: Tensor | None = None,
               **options) -> tuple[Tensor, Tensor]:
        """Sound bounds ``(lower, upper)`` on ``C y`` (``y`` itself if ``C`` is None) over the boxes.

        ``lower``/``upper``: ``(B, num_inputs)`` or ``(num_inputs,)``; ``C``: ``(S, num_outputs)`` or
        ``(B, S, num_outputs)``. Returns two ``(B, S)`` tensors (``S = num_outputs`` without ``C``).
        ``method`` is ``"ibp"``, ``"crown"`` or ``"alpha-crown"``; alpha-CROWN accepts ``iterations``
        and ``learning_rate``.
        """
        if method not in METHODS:
            raise ValueError(f"unknown method '{method}', expected one of {METHODS}")
        lower, upper = _batched(lower), _batched(upper)
        if method == "ibp":
            with torch.no_grad():
                boxes = interval_bounds(self.graph, lower, upper)
                low, up = boxes[self.graph.output_name]
                return _linear_image(C, low.reshape(low.shape[0], -1), up.reshape(up.shape[0], -1))
        if method == "crown":
            low, up, _ = crown(self.graph, lower, upper, C, CrownOptions(), self.propagator)
            return low, up
        alpha_options = AlphaOptions(**options)
        low, up, _, _ = alpha_crown(self.graph, lower, upper, C, alpha_options, propagator=self.propagator)
        return low, up


def _batched(x: Tensor) -> Tensor:
    x = torch.as_tensor(x)
    return x.unsqueeze(0) if x.dim() == 1 else x


def _linear_image(C: Tensor | None, low: Tensor, up: Tensor) -> tuple[Tensor, Tensor]:
    """Interval image of ``C y`` for ``y`` in ``[low, up]``."""
    if C is None:
        return low, up
    C = C.to(dtype=low.dtype, device=low.device)
    if C.dim() == 2:
        C = C.unsqueeze(0)
    centre, radius = (low + up) / 2, (up - low) / 2
    mid = (C @ centre.unsqueeze(-1)).squeeze(-1)
    rad = (C.abs() @ radius.unsqueeze(-1)).squeeze(-1)
    return mid - rad, mid + rad


def load_onnx(path: str | Path, quadratic_forms: bool = True) -> Model:
    """Load an ONNX model (``.onnx`` or ``.onnx.gz``) into a :class:`Model` (``quadratic_forms``: see
    :func:`~nlverify.frontend.load_graph`)."""
    return Model(load_graph(path, quadratic_forms), str(path))
