"""Pointwise soundness of the Floor relaxation: ``lower(x) <= floor(x) <= upper(x)`` on dense grids
over 10,000+ intervals (tiny, degenerate, wide, far-out, endpoints on integers and just below them),
in float64 and float32, plus the exact interval image."""
from __future__ import annotations

import torch

from nlverify.bounds.relax.floor import Floor

N = 12_000
GRID = 257


def _intervals(dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    centre = (torch.rand(N, generator=g, dtype=torch.float64) * 2 - 1) * torch.tensor([5.0, 1e4])[torch.randint(0, 2, (N,), generator=g)]
    width = torch.tensor([0.0, 1e-6, 1e-3, 0.5, 3.0, 200.0], dtype=torch.float64)[torch.randint(0, 6, (N,), generator=g)]
    lower = centre - width / 2
    kind = torch.randint(0, 4, (N,), generator=g)
    lower = torch.where(kind == 0, torch.round(lower), lower)                           # on an integer
    lower = torch.where(kind == 1, torch.nextafter(torch.round(lower), torch.tensor(-1e9, dtype=torch.float64)), lower)  # just below
    upper = lower + width
    upper = torch.where(kind == 2, torch.round(upper).clamp(min=lower), upper)          # upper on an integer
    return lower.to(dtype), upper.to(dtype)


def test_lines_enclose_floor_everywhere():
    relax = Floor()
    for dtype in (torch.float64, torch.float32):
        lower, upper = _intervals(dtype)
        lines = relax.relax(lower, upper)
        t = torch.linspace(0, 1, GRID, dtype=torch.float64)
        l64, u64 = lower.double(), upper.double()
        x = l64[:, None] + (u64 - l64)[:, None] * t
        x[:, 0], x[:, -1] = l64, u64
        fx = torch.floor(x)
        low = lines.lower_slope.double()[:, None] * x + lines.lower_intercept.double()[:, None]
        up = lines.upper_slope.double()[:, None] * x + lines.upper_intercept.double()[:, None]
        tolerance = 4 * torch.finfo(torch.float64).eps * (1 + x.abs())
        assert (low <= fx + tolerance).all() and (up >= fx - tolerance).all()
        image_low, image_up = relax.interval(lower, upper)
        assert (image_low.double()[:, None] <= fx).all() and (image_up.double()[:, None] >= fx).all()


def test_constant_when_no_integer_is_crossed():
    lines = Floor().relax(torch.tensor([1.2, -3.7]), torch.tensor([1.9, -3.1]))
    assert torch.equal(lines.lower_slope, torch.zeros(2)) and torch.equal(lines.lower_intercept, torch.tensor([1.0, -4.0]))
    assert torch.equal(lines.upper_intercept, lines.lower_intercept)
