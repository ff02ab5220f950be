"""Pointwise soundness of the McCormick planes for x*y (nlverify.bounds.relax.mul).

Each box is checked in float64 on a dense 2-D grid that contains its four corners (a bilinear minus
a plane is bilinear, so its extremes are at corners; the grid guards against a wrong corner), plus
points on the diagonal ``x == y``.

Tolerance: ``TEST_ULPS * eps64 * (1 + |f| + |a*x| + |b*y| + |c|)`` -- only the float64 rounding of the
test's own evaluation; float32 planes are checked against the float64 product.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from nlverify.bounds.relax.mul import Mul

TEST_ULPS = 4.0
EPS64 = torch.finfo(torch.float64).eps
GRID = 17
DIAGONAL_POINTS = 33
N_BOXES = 10_000
OP = Mul()


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


def alpha_variants(n: int, seed: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(seed)
    yield None
    yield torch.rand(2, n, generator=g, dtype=torch.float64).to(dtype)
    yield torch.zeros(2, n, dtype=dtype)
    yield torch.ones(2, n, dtype=dtype)
    yield torch.tensor([[0.0], [1.0]], dtype=dtype).expand(2, n)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_dense_pointwise_soundness(dtype):
    boxes = [b.to(dtype) for b in random_boxes(N_BOXES, seed=1)]
    # straddling zero in one or both variables
    g = torch.Generator().manual_seed(4)
    flip = torch.rand(N_BOXES, generator=g) < 0.3
    boxes[0] = torch.where(flip, -boxes[1].abs(), boxes[0])
    boxes[2] = torch.where(flip, -boxes[3].abs() - 1, boxes[2])
    for alpha in alpha_variants(N_BOXES, seed=2, dtype=dtype):
        planes = OP.relax(*boxes, alpha)
        assert planes.lower_x.dtype == dtype and planes.lower_x.shape == (N_BOXES,)
        assert_sound(OP, *boxes, planes)


def test_known_planes_and_interval():
    one = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    lx, ux, ly, uy = one(-1.0), one(2.0), one(3.0), one(5.0)
    p = OP.relax(lx, ux, ly, uy, torch.tensor([[1.0], [1.0]], dtype=torch.float64))
    # L1 = ly*x + lx*y - lx*ly, U1 = uy*x + lx*y - lx*uy
    assert torch.allclose(p.lower_x, ly) and torch.allclose(p.lower_y, lx)
    assert torch.allclose(p.lower_intercept, -lx * ly, atol=1e-12)
    assert torch.allclose(p.upper_x, uy) and torch.allclose(p.upper_y, lx)
    assert torch.allclose(p.upper_intercept, -lx * uy, atol=1e-12)
    low, high = OP.interval(lx, ux, ly, uy)
    assert torch.allclose(low, one(-5.0)) and torch.allclose(high, one(10.0))
    assert (low <= -5.0).all() and (high >= 10.0).all()
    lx, ux, ly, uy = random_boxes(2000, seed=3)
    low, high = OP.interval(lx, ux, ly, uy)
    x, y = grid_points(lx, ux, ly, uy)
    f = x * y
    assert (low[:, None] <= f).all() and (f <= high[:, None]).all()


def test_degenerate_box_is_exact():
    lx = ux = torch.tensor([1.5, -2.0], dtype=torch.float64)
    ly, uy = torch.tensor([-3.0, 0.5], dtype=torch.float64), torch.tensor([4.0, 0.5], dtype=torch.float64)
    p = OP.relax(lx, ux, ly, uy)
    for y in (ly, uy, (ly + uy) / 2):
        assert torch.allclose(p.lower_at(lx, y), lx * y, atol=1e-12)
        assert torch.allclose(p.upper_at(lx, y), lx * y, atol=1e-12)


def test_init_alpha_gradients_and_engine_broadcasting():
    g = torch.Generator().manual_seed(5)
    lx = torch.randn(3, 1, 4, generator=g, dtype=torch.float64)
    ly = torch.randn(3, 1, 4, generator=g, dtype=torch.float64)
    ux = lx + torch.rand(3, 1, 4, generator=g, dtype=torch.float64) * 3
    uy = ly + torch.rand(3, 1, 4, generator=g, dtype=torch.float64) * 3
    alpha0 = OP.init_alpha(lx, ux, ly, uy)
    assert alpha0.shape == (2, 3, 1, 4) and (alpha0 == 0.5).all()
    default, again = OP.relax(lx, ux, ly, uy), OP.relax(lx, ux, ly, uy, alpha0)
    assert torch.equal(default.lower_x, again.lower_x) and torch.equal(default.upper_y, again.upper_y)
    alpha = torch.rand(2, 3, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    p = OP.relax(lx, ux, ly, uy, alpha)
    assert p.lower_x.shape == (3, 5, 4)
    (p.lower_at(lx, uy) - p.upper_at(ux, ly)).sum().backward()
    assert torch.isfinite(alpha.grad).all() and alpha.grad.abs().sum() > 0
    expand = lambda t: t.expand(3, 5, 4).reshape(-1)  # noqa: E731
    assert_sound(OP, expand(lx), expand(ux), expand(ly), expand(uy), p)


def test_overflow_gives_no_bound():
    big = torch.tensor([3e38], dtype=torch.float32)
    p = OP.relax(-big, big, -big, big)
    assert (p.lower_intercept == float("-inf")).all() and (p.upper_intercept == float("inf")).all()


@settings(max_examples=200, deadline=None)
@given(
    lx=st.one_of(st.just(0.0), st.floats(-1e3, 1e3)),
    wx=st.one_of(st.just(0.0), st.floats(0, 1e-3), st.floats(0, 1e3)),
    ly=st.one_of(st.just(0.0), st.floats(-1e3, 1e3)),
    wy=st.one_of(st.just(0.0), st.floats(0, 1e-3), st.floats(0, 1e3)),
    alpha=st.tuples(st.floats(0, 1), st.floats(0, 1)), float32=st.booleans(),
)
def test_property_random_box(lx, wx, ly, wy, alpha, float32):
    dtype = torch.float32 if float32 else torch.float64
    box = [torch.tensor([v], dtype=dtype) for v in (lx, lx + wx, ly, ly + wy)]
    box[1], box[3] = torch.maximum(box[1], box[0]), torch.maximum(box[3], box[2])
    for a in (None, torch.tensor(alpha, dtype=dtype)[:, None]):
        assert_sound(OP, *box, OP.relax(*box, a))
