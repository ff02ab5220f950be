"""Pointwise soundness and tightness of the GELU relaxation (see _unary_relax_checks).

The reference is ``x * Phi(x)`` in float64 with Phi accurate to a few ulps in the left tail
(``accurate_normal_cdf``), independent of the module's own erfc-based evaluation.
"""
from __future__ import annotations


import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _unary_relax_checks import accurate_normal_cdf, alpha_variants, assert_sound, random_intervals
from nlverify.bounds.relax.gelu import INFLECTION, MINIMUM_X, Gelu

SPECIAL = [0.0, -INFLECTION, INFLECTION, MINIMUM_X, -3.0, 3.0]
N_INTERVALS = 10_000
GELU = Gelu()


def reference(x: torch.Tensor) -> torch.Tensor:
    return x * accurate_normal_cdf(x)


def test_constants():
    x = torch.tensor([MINIMUM_X], dtype=torch.float64)
    assert abs(GELU.derivative(x).item()) < 1e-15
    assert abs(reference(x).item() - (-0.16997120747990363)) < 1e-15
    # gelu'' = phi (2 - x^2) changes sign at +-sqrt 2: check the second difference around them
    for p in (-INFLECTION, INFLECTION):
        h = 1e-3
        xs = torch.tensor([p - 0.1 - h, p - 0.1, p - 0.1 + h, p + 0.1 - h, p + 0.1, p + 0.1 + h], dtype=torch.float64)
        f = reference(xs)
        before, after = f[0] - 2 * f[1] + f[2], f[3] - 2 * f[4] + f[5]
        assert before * after < 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dense_pointwise_soundness(dtype):
    lower, upper = random_intervals(N_INTERVALS, SPECIAL, far=1e4, seed=11)
    lower, upper = lower.to(dtype), upper.to(dtype)
    for label, alpha in alpha_variants(GELU.n_alpha, lower.shape, dtype, seed=12):
        result = GELU.relax(lower, upper, alpha)
        assert result.lower_slope.dtype == dtype and result.lower_slope.shape == lower.shape
        assert_sound(result, reference, lower, upper, SPECIAL, f"gelu {dtype} alpha={label}")


def test_straddling_intervals_with_extreme_alpha():
    """Every combination of endpoints at / around the minimum and both inflection points."""
    anchors = torch.tensor([-1e4, -50.0, -5.0, -3.0, -INFLECTION - 1e-9, -INFLECTION, -1.0, MINIMUM_X,
                            -0.5, 0.0, 0.5, 1.0, INFLECTION, INFLECTION + 1e-9, 3.0, 5.0, 50.0, 1e4],
                           dtype=torch.float64)
    lower, upper = torch.meshgrid(anchors, anchors, indexing="ij")
    keep = lower <= upper
    lower, upper = lower[keep], upper[keep]
    for a0 in torch.linspace(0, 1, 11):
        for a1 in (0.0, 0.3, 1.0):
            alpha = torch.stack([torch.full_like(lower, a0.item()), torch.full_like(lower, a1)])
            assert_sound(GELU.relax(lower, upper, alpha), reference, lower, upper, SPECIAL, f"grid a={a0:.1f},{a1}")


def test_init_alpha_reproduces_default():
    lower, upper = random_intervals(2000, SPECIAL, far=1e4, seed=13)
    alpha = GELU.init_alpha(lower, upper)
    assert alpha.shape == (2, *lower.shape)
    assert ((alpha >= 0) & (alpha <= 1)).all()
    default, explicit = GELU.relax(lower, upper), GELU.relax(lower, upper, alpha)
    for name in ("lower_slope", "lower_intercept", "upper_slope", "upper_intercept"):
        assert torch.equal(getattr(default, name), getattr(explicit, name)), name


def _at(lower: float, upper: float):
    return GELU.relax(torch.tensor([lower], dtype=torch.float64), torch.tensor([upper], dtype=torch.float64))


def _gap(line_at, x: float) -> float:
    x = torch.tensor([x], dtype=torch.float64)
    return (line_at(x) - reference(x)).abs().item()


def test_default_is_tight():
    touch = 1e-12
    # inside the convex piece: the lower line is the tangent at the midpoint, the upper the chord
    r = _at(-1.0, 1.2)
    assert _gap(r.lower_at, 0.1) < touch
    assert _gap(r.upper_at, -1.0) < touch and _gap(r.upper_at, 1.2) < touch
    # inside the right concave piece: chord below, tangent at the midpoint above
    r = _at(2.0, 4.0)
    assert _gap(r.upper_at, 3.0) < touch
    assert _gap(r.lower_at, 2.0) < touch and _gap(r.lower_at, 4.0) < touch
    # inside the left concave piece (gelu decreasing there)
    r = _at(-4.0, -2.0)
    assert _gap(r.upper_at, -3.0) < touch
    assert _gap(r.lower_at, -4.0) < touch and _gap(r.lower_at, -2.0) < touch
    # straddling the minimum and an inflection point: the lower line still touches gelu somewhere
    r = _at(-3.0, 0.5)
    grid = torch.linspace(-3.0, 0.5, 100001, dtype=torch.float64)
    assert (reference(grid) - r.lower_at(grid)).min().item() < 1e-9
    assert (r.upper_at(grid) - reference(grid)).min().item() < 1e-9


def test_every_slope_is_sound_and_alpha_gradients_flow():
    batch, specs, neurons = 2, 3, 40
    g = torch.Generator().manual_seed(14)
    centre = 3 * torch.randn(batch, 1, neurons, generator=g, dtype=torch.float64)
    width = 5 * torch.rand(batch, 1, neurons, generator=g, dtype=torch.float64)
    lower, upper = centre - width / 2, centre + width / 2
    alpha = torch.rand(2, batch, specs, neurons, generator=g, dtype=torch.float64).requires_grad_(True)
    r = GELU.relax(lower, upper, alpha)
    assert r.lower_slope.shape == r.upper_intercept.shape == (batch, specs, neurons)
    (r.lower_intercept.sum() - r.upper_intercept.sum()).backward()
    assert alpha.grad is not None and torch.isfinite(alpha.grad).all() and alpha.grad.abs().sum() > 0
    flat = lambda t: t.detach().expand(batch, specs, neurons).reshape(-1)
    detached = type(r)(*(flat(t) for t in (r.lower_slope, r.lower_intercept, r.upper_slope, r.upper_intercept)))
    assert_sound(detached, reference, flat(lower), flat(upper), SPECIAL, "broadcast")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_interval_encloses_image(dtype):
    lower, upper = random_intervals(3000, SPECIAL, far=1e4, seed=15)
    lower, upper = lower.to(dtype), upper.to(dtype)
    low, high = GELU.interval(lower, upper)
    t = torch.linspace(0, 1, 65, dtype=torch.float64)
    lo64, up64 = lower.double()[:, None], upper.double()[:, None]
    x = torch.cat([(lo64 * (1 - t) + up64 * t), torch.full_like(lo64, MINIMUM_X)], dim=1)
    x = torch.minimum(torch.maximum(x, lo64), up64)
    f = reference(x)
    assert (f >= low.double()[:, None]).all() and (f <= high.double()[:, None]).all()
    # exact where the minimum is inside
    inside = (lower <= MINIMUM_X) & (upper >= MINIMUM_X)
    assert (low[inside].double() - (-0.16997120747990363)).abs().max() < 1e-5


def test_far_out_and_degenerate_are_finite():
    lower = torch.tensor([-1e4, 1e4, -1e4, -1e4, 0.0, MINIMUM_X, -INFLECTION, 1e4 - 1e-3], dtype=torch.float64)
    upper = torch.tensor([-1e4, 1e4, 1e4, -9e3, 0.0, MINIMUM_X, -INFLECTION, 1e4], dtype=torch.float64)
    for dtype in (torch.float64, torch.float32):
        r = GELU.relax(lower.to(dtype), upper.to(dtype))
        for t in (r.lower_slope, r.lower_intercept, r.upper_slope, r.upper_intercept):
            assert torch.isfinite(t).all()
        assert_sound(r, reference, lower.to(dtype), upper.to(dtype), SPECIAL, "far")


finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False)
near_special = st.sampled_from(SPECIAL).flatmap(lambda s: st.floats(s - 1e-3, s + 1e-3))


@settings(max_examples=25, deadline=None)
@given(boxes=st.lists(st.tuples(st.one_of(finite, near_special), st.one_of(finite, near_special),
                                st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=25),
       single=st.booleans())
def test_property_any_interval_any_alpha(boxes, single):
    dtype = torch.float32 if single else torch.float64
    lower = torch.tensor([min(a, b) for a, b, _, _ in boxes], dtype=dtype)
    upper = torch.tensor([max(a, b) for a, b, _, _ in boxes], dtype=dtype)
    alpha = torch.tensor([[al for _, _, al, _ in boxes], [au for _, _, _, au in boxes]], dtype=dtype)
    for al in (alpha, None):
        assert_sound(GELU.relax(lower, upper, al), reference, lower, upper, SPECIAL, "hypothesis")


@pytest.mark.parametrize("piece,side", [((-INFLECTION, INFLECTION), "upper"), ((-8.0, -INFLECTION), "lower"),
                                        ((INFLECTION, 8.0), "lower")])
def test_chord_side_ignores_alpha_inside_one_piece(piece, side):
    """Inside the convex piece the upper line is the chord, inside a concave one the lower line, for every
    alpha (the chord is the best line on that side; see the chord lock in ``Gelu.relax``)."""
    g = torch.Generator().manual_seed(3)
    a, b = (piece[0] + (piece[1] - piece[0]) * torch.rand(5000, generator=g, dtype=torch.float64)
            for _ in range(2))
    lower, upper = torch.minimum(a, b), torch.maximum(a, b)
    family = Gelu()
    default = family.relax(lower, upper)
    for alpha in (torch.rand(2, 5000, generator=g, dtype=torch.float64), torch.zeros(2, 5000),
                  torch.ones(2, 5000)):
        relaxed = family.relax(lower, upper, alpha.to(torch.float64))
        slope, default_slope = ((relaxed.upper_slope, default.upper_slope) if side == "upper"
                                else (relaxed.lower_slope, default.lower_slope))
        torch.testing.assert_close(slope, default_slope, rtol=1e-12, atol=1e-12)
