"""Floor, as used for range reduction inside exported models (e.g. a periodic function by hand).

``floor`` is piecewise constant, so on ``[l, u]``:

* if ``floor(l) == floor(u)`` it is the constant ``floor(l)``: lines of slope 0 through it (exact);
* otherwise ``x - 1 < floor(x) <= x`` for every real x: lower line ``x - 1``, upper line ``x``.

No free parameter. The interval image is ``[floor(l), floor(u)]`` (floor is monotone).
"""
from __future__ import annotations

import torch
from torch import Tensor

from nlverify.bounds.relax.base import LinearRelaxation


class Floor:
    name = "floor"
    n_alpha = 0

    def function(self, x: Tensor) -> Tensor:
        return torch.floor(x)

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        return torch.floor(lower), torch.floor(upper)

    def relax(self, lower: Tensor, upper: Tensor, alpha: Tensor | None = None) -> LinearRelaxation:
        floor_lower = torch.floor(lower)
        constant = floor_lower == torch.floor(upper)
        slope = torch.where(constant, torch.zeros_like(lower), torch.ones_like(lower))
        lower_intercept = torch.where(constant, floor_lower, -torch.ones_like(lower))
        upper_intercept = torch.where(constant, floor_lower, torch.zeros_like(lower))
        return LinearRelaxation(slope, lower_intercept, slope, upper_intercept)

    def init_alpha(self, lower: Tensor, upper: Tensor) -> Tensor:
        return lower.new_zeros((0, *lower.shape))
