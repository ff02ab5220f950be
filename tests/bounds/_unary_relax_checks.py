"""Dense pointwise soundness checks shared by the unary relaxation tests (relu, s_shaped, gelu).

A relaxation is checked by evaluating, in float64, both lines and a float64 reference ``f`` on a
dense grid of every interval -- endpoints, a uniform grid, log-spaced points around the family's
special points (0, inflection points, the GELU minimum), and two rounds of zooming into the cell
where each line comes closest to ``f`` (that is where a tangent touches, and where a crossing
would first show). Everything is a tensor of shape ``(n_intervals, n_points)``.

Test tolerance: ``TEST_TOLERANCE_ULPS`` float64 ulps of ``|k x| + |b| + |f(x)|`` (about 2e-15
relative), which only absorbs the rounding of *this* float64 evaluation of the line and of the
reference ``f``. It is far below every relaxation's own margin (16 ulps of the relaxation's dtype),
so the relaxation's margin -- not the test -- must make these checks pass.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

TEST_TOLERANCE_ULPS = 8.0
EPS64 = torch.finfo(torch.float64).eps
TINY64 = torch.finfo(torch.float64).tiny

Reference = Callable[[Tensor], Tensor]


def accurate_normal_cdf(x: Tensor) -> Tensor:
    """Phi(x) in float64 to a few ulps, also in the left tail (erfc(-x/sqrt2) alone is off by up to
    x^2/2 ulps): Phi(x) = erfcx(-x/sqrt2) exp(-x^2/2) / 2 with x^2 split exactly (Veltkamp)."""
    split = 134217729.0 * x
    high = split - (split - x)
    low = x - high
    gaussian = torch.exp(-0.5 * high * high) * torch.exp(-(high * low + 0.5 * low * low))
    negative = x < 0
    z = -x / math.sqrt(2.0)
    left = 0.5 * torch.special.erfcx(torch.where(negative, z, torch.zeros_like(z))) * gaussian
    return torch.where(negative, left, 0.5 * torch.special.erfc(z))


def random_intervals(n: int, special_points: Sequence[float], far: float, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` float64 intervals mixing every kind that has broken relaxations before.

    Categories (roughly equal shares): degenerate (l == u, including at special points and far
    out); tiny (width 1e-6..1e-3, half of them centred on special points); moderate (centre ~ N(0,
    3^2), width log-uniform 1e-3..30); wide (width up to 2 far); far out (centres up to +-far);
    one endpoint exactly at a special point; both endpoints at special points.
    """
    g = torch.Generator().manual_seed(seed)
    special = torch.tensor(list(special_points), dtype=torch.float64)

    def uniform(size: int, lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(size, generator=g, dtype=torch.float64)

    def pick_special(size: int) -> Tensor:
        return special[torch.randint(len(special), (size,), generator=g)]

    def log_uniform(size: int, lo: float, hi: float) -> Tensor:
        return torch.exp(uniform(size, math.log(lo), math.log(hi)))

    k = n // 7 + 1
    parts: list[tuple[Tensor, Tensor]] = []
    # degenerate
    points = torch.cat([pick_special(k // 3), uniform(k // 3, -10, 10), uniform(k - 2 * (k // 3), -far, far)])
    parts.append((points, points.clone()))
    # tiny
    centres = torch.cat([pick_special(k // 2) + uniform(k // 2, -1e-3, 1e-3), uniform(k - k // 2, -12, 12)])
    widths = log_uniform(k, 1e-6, 1e-3)
    parts.append((centres - widths / 2, centres + widths / 2))
    # moderate
    centres = 3.0 * torch.randn(k, generator=g, dtype=torch.float64)
    widths = log_uniform(k, 1e-3, 30.0)
    parts.append((centres - widths / 2, centres + widths / 2))
    # wide
    lows = uniform(k, -far, far / 4)
    parts.append((lows, lows + log_uniform(k, 1.0, 2 * far)))
    # far out: both endpoints far on one side, or straddling from far to far
    lows = uniform(k, -far, far)
    parts.append((lows, lows + log_uniform(k, 1e-6, far)))
    # one endpoint exactly at a special point
    anchors = pick_special(k)
    widths = log_uniform(k, 1e-6, far)
    left_anchor = torch.rand(k, generator=g) < 0.5
    parts.append((torch.where(left_anchor, anchors, anchors - widths), torch.where(left_anchor, anchors + widths, anchors)))
    # both endpoints at special points
    first, second = pick_special(k), pick_special(k)
    parts.append((torch.minimum(first, second), torch.maximum(first, second)))

    lower = torch.cat([p[0] for p in parts])[:n].clamp(-far, far)
    upper = torch.cat([p[1] for p in parts])[:n].clamp(-far, far)
    return torch.minimum(lower, upper), torch.maximum(lower, upper)


def _grid(lower: Tensor, upper: Tensor, special_points: Sequence[float], n_uniform: int) -> Tensor:
    lo, hi = lower[:, None], upper[:, None]
    t = torch.linspace(0.0, 1.0, n_uniform, dtype=torch.float64)
    columns = [lo * (1 - t) + hi * t, lo, hi]
    offsets = torch.logspace(-9, 3, 9, dtype=torch.float64)
    for s in special_points:
        columns += [torch.full_like(lo, s), s + offsets, s - offsets]
    x = torch.cat([c.expand(lower.shape[0], -1) for c in columns], dim=1)
    return torch.minimum(torch.maximum(x, lo), hi).sort(dim=1).values


def _zoom(x: Tensor, closeness: Tensor, lower: Tensor, upper: Tensor, n_points: int) -> Tensor:
    """Points in the two grid cells around each row's argmin of ``closeness``."""
    j = closeness.argmin(dim=1, keepdim=True)
    left = x.gather(1, (j - 1).clamp(min=0))
    right = x.gather(1, (j + 1).clamp(max=x.shape[1] - 1))
    t = torch.linspace(0.0, 1.0, n_points, dtype=torch.float64)
    return torch.minimum(torch.maximum(left * (1 - t) + right * t, lower[:, None]), upper[:, None])


def max_violation(relaxation, reference: Reference, lower: Tensor, upper: Tensor,
                  special_points: Sequence[float], n_uniform: int = 49, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """Per interval, ``max over the grid of (violation - tolerance)`` for the lower and upper line
    (<= 0 means sound). The lines' coefficients are cast to float64 and evaluated exactly as stated.
    Works through the intervals in chunks (small tensors stay in cache)."""
    lower, upper = lower.double().reshape(-1), upper.double().reshape(-1)
    coefficients = [t.detach().double().reshape(-1, 1) for t in
                    (relaxation.lower_slope, relaxation.lower_intercept, relaxation.upper_slope, relaxation.upper_intercept)]
    if not all(torch.isfinite(t).all() for t in coefficients):
        raise AssertionError("relaxation has non-finite coefficients")
    worst_lo, worst_up = [], []
    for start in range(0, lower.shape[0], chunk):
        part = slice(start, start + chunk)
        k_lo, b_lo, k_up, b_up = (t[part] for t in coefficients)
        lo_part, up_part = _chunk_violation(reference, lower[part], upper[part], k_lo, b_lo, k_up, b_up,
                                            special_points, n_uniform)
        worst_lo.append(lo_part)
        worst_up.append(up_part)
    return torch.cat(worst_lo), torch.cat(worst_up)


def _excess(f: Tensor, x: Tensor, slope: Tensor, intercept: Tensor, sign: float) -> Tensor:
    """``sign * (line - f) - tolerance`` on the points x (positive: the line is on the wrong side)."""
    kx = slope * x
    tolerance = (kx.abs() + intercept.abs() + f.abs()).mul_(TEST_TOLERANCE_ULPS * EPS64).add_(TEST_TOLERANCE_ULPS * TINY64)
    return (kx + intercept - f).mul_(sign).sub_(tolerance)


def _chunk_violation(reference: Reference, lower: Tensor, upper: Tensor, k_lo: Tensor, b_lo: Tensor,
                     k_up: Tensor, b_up: Tensor, special_points: Sequence[float], n_uniform: int) -> tuple[Tensor, Tensor]:
    x = _grid(lower, upper, special_points, n_uniform)
    f = reference(x)
    worst = []
    for slope, intercept, sign in ((k_lo, b_lo, 1.0), (k_up, b_up, -1.0)):
        points = x
        excess = _excess(f, points, slope, intercept, sign)
        side_worst = excess.max(dim=1).values
        for _ in range(2):   # zoom twice into the cell where the line comes closest to f
            points = _zoom(points, -excess, lower, upper, 17)
            excess = _excess(reference(points), points, slope, intercept, sign)
            side_worst = torch.maximum(side_worst, excess.max(dim=1).values)
        worst.append(side_worst)
    return worst[0], worst[1]


def assert_sound(relaxation, reference: Reference, lower: Tensor, upper: Tensor,
                 special_points: Sequence[float], label: str = "") -> None:
    """Fail with the worst interval if any line crosses the reference anywhere on the grid."""
    worst_lo, worst_up = max_violation(relaxation, reference, lower, upper, special_points)
    for side, worst in (("lower", worst_lo), ("upper", worst_up)):
        if (worst > 0).any():
            i = int(worst.argmax())
            raise AssertionError(
                f"{label}: {side} line crosses f on {int((worst > 0).sum())} intervals; worst on "
                f"[{lower.reshape(-1)[i].item()!r}, {upper.reshape(-1)[i].item()!r}] by {worst[i].item():.3e}")


def alpha_variants(n_alpha: int, shape: torch.Size, dtype: torch.dtype, seed: int) -> list[tuple[str, Tensor | None]]:
    """alpha=None, random in [0, 1], all 0, all 1."""
    g = torch.Generator().manual_seed(seed)
    full = (n_alpha, *shape)
    return [("default", None),
            ("random", torch.rand(full, generator=g, dtype=torch.float64).to(dtype)),
            ("zeros", torch.zeros(full, dtype=dtype)),
            ("ones", torch.ones(full, dtype=dtype))]
