"""Pointwise soundness of the Max / Min planes (nlverify.bounds.relax.minmax).

Each box is checked in float64 on a dense 2-D grid that contains its four corners, plus a dense set
of points on the diagonal ``x == y`` inside the box (where ``max`` has its kink, the only place the
concave violation ``plane - max`` can peak off the corners).

Tolerance: ``TEST_ULPS * eps64 * (1 + |f| + |a*x| + |b*y| + |c|)`` -- only the float64 rounding of the
test's own evaluation; float32 planes are checked against the float64 function.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from _binary_relax_checks import N_BOXES, alpha_variants, assert_sound, grid_points, random_boxes
from nlverify.bounds.relax.minmax import Max, Min

OPS = [Max(), Min()]


@pytest.mark.parametrize("op", OPS, ids=lambda o: o.name)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_dense_pointwise_soundness(op, dtype):
    boxes = [b.to(dtype) for b in random_boxes(N_BOXES, seed=1)]
    for alpha in alpha_variants(N_BOXES, seed=2, dtype=dtype, n_alpha=1):
        planes = op.relax(*boxes, alpha)
        assert planes.lower_x.dtype == dtype and planes.lower_x.shape == (N_BOXES,)
        assert_sound(op, *boxes, planes)


@pytest.mark.parametrize("op", OPS, ids=lambda o: o.name)
def test_dominance_is_exact_and_interval_exact(op):
    lx = torch.tensor([2.0, 0.0, 1.0])
    ux = torch.tensor([3.0, 1.0, 1.0])
    ly = torch.tensor([0.0, 1.0, 1.0])
    uy = torch.tensor([2.0, 5.0, 1.0])
    p = op.relax(lx, ux, ly, uy)
    if op.name == "max":  # max = x, y, x (everything tied)
        expected = ([1.0, 0.0, 1.0], [0.0, 1.0, 0.0])
    else:                 # min = y, x, x
        expected = ([0.0, 1.0, 1.0], [1.0, 0.0, 0.0])
    for side in ("lower", "upper"):
        assert getattr(p, f"{side}_x").tolist() == expected[0]
        assert getattr(p, f"{side}_y").tolist() == expected[1]
        assert getattr(p, f"{side}_intercept").tolist() == [0.0, 0.0, 0.0]
    lx, ux, ly, uy = random_boxes(2000, seed=3)
    low, high = op.interval(lx, ux, ly, uy)
    x, y = grid_points(lx, ux, ly, uy)
    f = op.function(x, y)
    assert torch.equal(low, f.min(dim=1).values) and torch.equal(high, f.max(dim=1).values)


def test_upper_plane_is_the_chord_and_default_lower_picks_larger_centre():
    p = Max().relax(torch.tensor([-1.0]), torch.tensor([3.0]), torch.tensor([0.0]), torch.tensor([1.0]))
    # chord of max(x, 1) over x in [-1, 3]: from (-1, 1) to (3, 3): slope 1/2
    assert torch.allclose(p.upper_x, torch.tensor([0.5])) and p.upper_y.item() == 0.0
    assert torch.allclose(p.upper_intercept, torch.tensor([1.5]), atol=1e-6)
    assert p.lower_x.item() == 1.0 and p.lower_y.item() == 0.0  # centre of x (1) > centre of y (0.5)


@pytest.mark.parametrize("op", OPS, ids=lambda o: o.name)
def test_init_alpha_gradients_and_engine_broadcasting(op):
    g = torch.Generator().manual_seed(5)
    lx = torch.randn(3, 1, 4, generator=g, dtype=torch.float64)
    ly = torch.randn(3, 1, 4, generator=g, dtype=torch.float64)
    ux = lx + torch.rand(3, 1, 4, generator=g, dtype=torch.float64) * 3
    uy = ly + torch.rand(3, 1, 4, generator=g, dtype=torch.float64) * 3
    alpha0 = op.init_alpha(lx, ux, ly, uy)
    assert alpha0.shape == (1, 3, 1, 4)
    default, again = op.relax(lx, ux, ly, uy), op.relax(lx, ux, ly, uy, alpha0)
    assert torch.equal(default.lower_x, again.lower_x) and torch.equal(default.upper_x, again.upper_x)
    alpha = torch.rand(1, 3, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    p = op.relax(lx, ux, ly, uy, alpha)
    assert p.lower_x.shape == (3, 5, 4)
    (p.lower_at(lx, uy) + p.upper_at(ux, ly)).sum().backward()
    assert torch.isfinite(alpha.grad).all()
    expand = lambda t: t.expand(3, 5, 4).reshape(-1)  # noqa: E731
    assert_sound(op, expand(lx), expand(ux), expand(ly), expand(uy), p)


@settings(max_examples=200, deadline=None)
@given(
    lx=st.floats(-1e3, 1e3), wx=st.one_of(st.just(0.0), st.floats(0, 1e-3), st.floats(0, 1e3)),
    ly=st.floats(-1e3, 1e3), wy=st.one_of(st.just(0.0), st.floats(0, 1e-3), st.floats(0, 1e3)),
    alpha=st.floats(0, 1), tie=st.booleans(), minimum=st.booleans(), float32=st.booleans(),
)
def test_property_random_box(lx, wx, ly, wy, alpha, tie, minimum, float32):
    op = Min() if minimum else Max()
    dtype = torch.float32 if float32 else torch.float64
    ly = lx if tie else ly
    box = [torch.tensor([v], dtype=dtype) for v in (lx, lx + wx, ly, ly + wy)]
    box[1], box[3] = torch.maximum(box[1], box[0]), torch.maximum(box[3], box[2])
    for a in (None, torch.tensor([[alpha]], dtype=dtype)):
        assert_sound(op, *box, op.relax(*box, a))
