"""Shared pointwise check for binary relaxations (Max, Min, Mul): random boxes of every kind and a
dense 2-D grid with corners and the diagonal ``x == y``, checked in float64.

Test tolerance ``TEST_ULPS`` float64 ulps covers only the test's own evaluation; the relaxations' own
margins must make the checks pass.
"""
from __future__ import annotations

import torch

TEST_ULPS = 4.0
EPS64 = torch.finfo(torch.float64).eps
GRID = 17
DIAGONAL_POINTS = 33
N_BOXES = 10_000


def random_boxes(n: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Boxes mixing tiny, degenerate, wide, dominated, tied (lx == ly, ux == uy) and 0-touching ones."""
    g = torch.Generator().manual_seed(seed)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)

    def widths() -> torch.Tensor:
        kind = torch.randint(0, 4, (n,), generator=g)
        tiny = torch.exp(uniform(torch.log(torch.tensor(1e-6)).item(), torch.log(torch.tensor(1e-3)).item()))
        return torch.where(kind == 0, tiny, torch.where(kind == 1, torch.zeros(n, dtype=torch.float64),
                                                        torch.where(kind == 2, uniform(0, 2), uniform(0, 100))))

    scale = torch.where(torch.rand(n, generator=g) < 0.8, torch.tensor(5.0), torch.tensor(1e4)).double()
    lx = uniform(-1, 1) * scale
    ly = lx + uniform(-1, 1) * torch.where(torch.rand(n, generator=g) < 0.5, torch.tensor(1.0),
                                           torch.tensor(1e-4)).double() * scale
    wx, wy = widths(), widths()
    kind = torch.randint(0, 6, (n,), generator=g)
    ly = torch.where(kind == 0, lx, ly)                         # tie of lower ends
    lx = torch.where(kind == 1, torch.zeros_like(lx), lx)       # endpoint at 0
    ux, uy = lx + wx, ly + wy
    uy = torch.where(kind == 2, ux, uy)                         # tie of upper ends
    ly = torch.minimum(ly, uy)
    lx = torch.where(kind == 3, uy, lx)                         # dominance with equality lx == uy
    ux = torch.maximum(ux, lx)
    return lx, ux, ly, uy


def grid_points(lx, ux, ly, uy):
    """(n, P) points: the full GRID x GRID product (corners included) and the in-box diagonal."""
    t = torch.linspace(0, 1, GRID, dtype=torch.float64)
    xs = lx[:, None] + (ux - lx)[:, None] * t
    ys = ly[:, None] + (uy - ly)[:, None] * t
    xs[:, -1], ys[:, -1] = ux, uy  # the far corners exactly, whatever the rounding of l + (u-l)*1
    gx = xs[:, :, None].expand(-1, GRID, GRID).reshape(len(lx), -1)
    gy = ys[:, None, :].expand(-1, GRID, GRID).reshape(len(lx), -1)
    lo, hi = torch.maximum(lx, ly), torch.minimum(ux, uy)
    hi = torch.maximum(hi, lo)  # empty diagonal: collapse (points then outside are filtered below)
    d = lo[:, None] + (hi - lo)[:, None] * torch.linspace(0, 1, DIAGONAL_POINTS, dtype=torch.float64)
    d[:, -1] = hi
    has_diagonal = (torch.maximum(lx, ly) <= torch.minimum(ux, uy))[:, None]
    dx = torch.where(has_diagonal, d, lx[:, None].expand_as(d))
    dy = torch.where(has_diagonal, d, ly[:, None].expand_as(d))
    return torch.cat([gx, dx], dim=1), torch.cat([gy, dy], dim=1)


def assert_sound(op, lx, ux, ly, uy, planes):
    n = lx.numel()
    lx, ux, ly, uy = (t.double().reshape(n) for t in (lx, ux, ly, uy))
    x, y = grid_points(lx, ux, ly, uy)
    f = op.function(x, y)
    for side in ("lower", "upper"):
        a, b, c = (getattr(planes, f"{side}_{k}").double().reshape(n, 1) for k in ("x", "y", "intercept"))
        plane = a * x + b * y + c
        tol = TEST_ULPS * EPS64 * (1 + f.abs() + (a * x).abs() + (b * y).abs() + c.abs())
        gap = (plane - f) if side == "lower" else (f - plane)
        bad = ((gap - tol) > 0).any(dim=1)
        i = int(bad.nonzero()[0]) if bad.any() else 0
        assert not bad.any(), (f"{op.name} {side} plane crosses f on {int(bad.sum())} boxes, e.g. "
                               f"x in [{lx[i].item()!r}, {ux[i].item()!r}], y in [{ly[i].item()!r}, {uy[i].item()!r}]")


def alpha_variants(n: int, seed: int, dtype: torch.dtype, n_alpha: int):
    """Default, random, all-0, all-1 alphas (and, for two parameters, one at 0 and one at 1)."""
    g = torch.Generator().manual_seed(seed)
    yield None
    yield torch.rand(n_alpha, n, generator=g, dtype=torch.float64).to(dtype)
    yield torch.zeros(n_alpha, n, dtype=dtype)
    yield torch.ones(n_alpha, n, dtype=dtype)
    if n_alpha == 2:
        yield torch.tensor([[0.0], [1.0]], dtype=dtype).expand(2, n)
