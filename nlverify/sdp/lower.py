"""Sampled lower bounds on the Lipschitz constant (torch): ``max_x ||J(x)||_2``.

Any Jacobian of a Lipschitz map (and any element of its Clarke Jacobian, which is what autograd
returns at kinks) has spectral norm <= L, so every sample is a lower bound, up to float64 rounding
of the Jacobian (relative ~1e-15; this is a *sampled* figure, not a certificate). Points are drawn
from Gaussians at several scales (biases place the interesting region anywhere), then the best ones
are improved by normalised gradient ascent on ``||J(x)||_2`` (no-op for piecewise-linear nets).
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from torch import nn
from torch.func import grad, jacrev, vmap


def _scalar_input_fn(model: nn.Module, input_shape: Sequence[int]):
    def f(x: torch.Tensor) -> torch.Tensor:
        return model(x.reshape(1, *input_shape)).reshape(-1)
    return f


def jacobian_norms(model: nn.Module, input_shape: Sequence[int], points: torch.Tensor) -> torch.Tensor:
    """``||J(x_i)||_2`` for a batch of flattened points."""
    f = _scalar_input_fn(model, input_shape)
    jac = vmap(jacrev(f))(points)
    return torch.linalg.matrix_norm(jac, ord=2)


def sampled_lower_bound(model: nn.Module, input_shape: Sequence[int], samples: int = 256,
                        scales: Sequence[float] = (0.1, 1.0, 10.0), ascent_steps: int = 20,
                        ascent_points: int = 8, seed: int = 0, chunk: int = 256) -> float:
    if samples <= 0:
        return 0.0
    model = copy.deepcopy(model).double().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    n = math.prod(input_shape)
    gen = torch.Generator().manual_seed(seed)
    per_scale = max(1, samples // len(scales))
    points = torch.cat([s * torch.randn(per_scale, n, generator=gen, dtype=torch.float64) for s in scales])
    point_scale = torch.cat([torch.full((per_scale,), float(s), dtype=torch.float64) for s in scales])
    norms = torch.cat([jacobian_norms(model, input_shape, points[i:i + chunk])
                       for i in range(0, len(points), chunk)])
    best = float(norms.max())
    if ascent_steps <= 0:
        return best
    top = torch.topk(norms, min(ascent_points, len(norms))).indices
    x, step = points[top].clone(), 0.05 * point_scale[top]
    f = _scalar_input_fn(model, input_shape)
    objective = grad(lambda z: torch.linalg.matrix_norm(jacrev(f)(z).reshape(-1, n), ord=2))
    try:
        for _ in range(ascent_steps):
            g = vmap(objective)(x)
            gnorm = g.norm(dim=1, keepdim=True)
            if not torch.isfinite(g).all() or float(gnorm.max()) == 0.0:
                break
            x = x + step[:, None] * g / gnorm.clamp_min(1e-300)
            best = max(best, float(jacobian_norms(model, input_shape, x).max()))
    except RuntimeError:  # an op without double backward: keep the sampled value
        pass
    return best
