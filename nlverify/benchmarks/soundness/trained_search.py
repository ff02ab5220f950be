"""The searches the trained planting (:mod:`.trained`) runs inside its loop.

* :func:`pgd`: signed-gradient ascent of the violation ``max_{k != c} y_k - y_c`` from many starts
  (per-row step vectors, :func:`cycled_steps`), projected on the box -- the inner maximisation of
  adversarial training;
* :func:`rim_points` / :func:`push_out`: points of the shell around ``x*``, and points carried into
  the exclusion ball ``E`` moved radially back onto its surface (the violation may live only in ``E``);
* :func:`probe`: a cheap copy of the hiddenness attack's search (uniform points, random corners, PGD
  with the attack's four step sizes) that *mines* the weak points the training then works on.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["violation", "rim_points", "push_out", "pgd", "cycled_steps", "probe"]

PROBE_STEP_SIZES = (0.2, 0.05, 0.01, 0.002)  # the default AttackBudget's, in half-widths
PROBE_CORNERS = 256


def violation(y: torch.Tensor, label: int) -> torch.Tensor:
    """``max_{k != c} y_k - y_c`` per row (``-m``)."""
    others = torch.cat([y[:, :label], y[:, label + 1:]], dim=1)
    return others.max(dim=1).values - y[:, label]


def rim_points(x_star: torch.Tensor, radius: torch.Tensor, count: int, gen: torch.Generator) -> torch.Tensor:
    """``count`` points at L-inf distance in ``[1, 3] * radius`` (per coordinate radius) from ``x_star``."""
    direction = torch.rand((count, x_star.numel()), generator=gen) * 2 - 1
    direction = direction / direction.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    scale = 1 + 2 * torch.rand((count, 1), generator=gen)
    return x_star + scale * direction * radius


def push_out(x: torch.Tensor, x_star: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Points inside the exclusion ball ``||(x - x*) / radius||_inf < 1`` moved radially onto its surface."""
    d = (x - x_star) / radius
    norm = d.abs().amax(dim=1, keepdim=True)
    inside = norm < 1
    fallback = torch.ones_like(d)  # x == x* exactly: push along the all-ones direction
    d = torch.where(norm > 0, d / norm.clamp_min(1e-30), fallback)
    return torch.where(inside, x_star + d * radius, x)


def pgd(model: nn.Module, starts: torch.Tensor, step: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
        label: int, steps: int) -> torch.Tensor:
    """Signed-gradient ascent of the violation from every start (per-row step sizes), projected on the box."""
    x = starts.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(violation(model(x), label).sum(), x)
        with torch.no_grad():
            x = torch.minimum(torch.maximum(x + step * grad.sign(), lo), hi)
    return x.detach()


def cycled_steps(count: int, sizes: tuple[float, ...], half: torch.Tensor) -> torch.Tensor:
    """Per-row PGD step vectors: row ``i`` steps ``sizes[i mod len(sizes)]`` half-widths."""
    fractions = torch.as_tensor(sizes, dtype=torch.float32)[torch.arange(count) % len(sizes)]
    return fractions[:, None] * half


def probe(model: nn.Module, lo: torch.Tensor, hi: torch.Tensor, label: int, config,
          gen: torch.Generator) -> tuple[bool, torch.Tensor]:
    """A cheap copy of the hiddenness attack's search, used to *mine* training points: uniform points,
    random corners, and PGD end points (the attack's step sizes, ``probe_steps`` steps). Returns whether
    any of them violates, and those with violation above ``-kappa`` (worst first, at most
    ``pool_size / 2``). ``config`` is a :class:`.trained.TrainingConfig`."""
    n = lo.shape[1]
    uniform = lo + (hi - lo) * torch.rand((config.probe_samples, n), generator=gen)
    corners = lo + (hi - lo) * (torch.rand((PROBE_CORNERS, n), generator=gen) < 0.5).float()
    starts = lo + (hi - lo) * torch.rand((config.probe_restarts, n), generator=gen)
    step = cycled_steps(config.probe_restarts, PROBE_STEP_SIZES, (hi - lo) / 2)
    ends = pgd(model, starts, step, lo, hi, label, config.probe_steps)
    points = torch.cat([uniform, corners, ends])
    with torch.no_grad():
        v = violation(model(points), label)
    hard = v > -config.robust_margin
    order = torch.argsort(v[hard], descending=True)[: config.pool_size // 2]
    return bool((v >= -config.hidden_margin).any()), points[hard][order]
