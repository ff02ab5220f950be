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

from _binary_relax_checks import N_BOXES, alpha_variants, assert_sound, grid_points, random_boxes
from nlverify.bounds.relax.mul import Mul

OP = Mul()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_dense_pointwise_soundness(dtype):
    boxes = [b.to(dtype) for b in random_boxes(N_BOXES, seed=1)]
    # straddling zero in one or both variables
    g = torch.Generator().manual_seed(4)
    flip = torch.rand(N_BOXES, generator=g) < 0.3
    boxes[0] = torch.where(flip, -boxes[1].abs(), boxes[0])
    boxes[2] = torch.where(flip, -boxes[3].abs() - 1, boxes[2])
    for alpha in alpha_variants(N_BOXES, seed=2, dtype=dtype, n_alpha=2):
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
