"""Pointwise soundness of the sin / cos relaxations (nlverify.bounds.relax.sine).

Every check evaluates the lines and the function in float64 on a dense grid of each interval (its
endpoints included), then refines the grid around the worst grid point (a second dense grid between
its neighbours), so a line that crosses the function between coarse grid points is still caught.

Tolerance: ``TEST_ULPS * eps64 * (1 + |f(x)| + |slope*x| + |intercept|)`` -- only the float64
rounding of the test's own evaluation. The relaxation's margin must absorb everything else
(including float32 relaxations checked against the float64 function).
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from nlverify.bounds.relax.sine import Cos, Sin

TEST_ULPS = 4.0
EPS64 = torch.finfo(torch.float64).eps
GRID_POINTS = 257
N_INTERVALS = 12_000

OPS = [Sin(), Cos()]


def random_intervals(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixed intervals: tiny, degenerate, medium, wide (beyond 2*pi, up to 300), huge centres,
    endpoints exactly at multiples of pi/2."""
    g = torch.Generator().manual_seed(seed)
    k = n // 8

    def uniform(lo: float, hi: float, m: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(m, generator=g, dtype=torch.float64)

    def log_uniform(lo: float, hi: float, m: int) -> torch.Tensor:
        return torch.exp(uniform(math.log(lo), math.log(hi), m))

    quarter = math.pi / 2
    special = quarter * torch.randint(-40, 41, (k,), generator=g).double()
    centres = torch.cat([
        uniform(-10, 10, k),                       # tiny widths
        uniform(-10, 10, k),                       # degenerate
        uniform(-10, 10, k),                       # medium widths
        uniform(-50, 50, k),                       # wide widths
        uniform(-1e4, 1e4, k),                     # huge centres, mixed widths
        special,                                   # left endpoint at k*pi/2
        special,                                   # both endpoints at multiples of pi/2
        uniform(-20, 20, n - 7 * k),               # anything
    ])
    widths = torch.cat([
        log_uniform(1e-6, 1e-3, k),
        torch.zeros(k, dtype=torch.float64),
        uniform(0, 2 * math.pi, k),
        uniform(2 * math.pi, 100, k),
        torch.cat([log_uniform(1e-6, 1.0, k // 2), uniform(0, 100, k - k // 2)]),
        uniform(0, 8, k),
        quarter * torch.randint(0, 9, (k,), generator=g).double(),
        log_uniform(1e-6, 300, n - 7 * k),
    ])
    lower = centres.clone()
    lower[: 5 * k] = centres[: 5 * k] - widths[: 5 * k] / 2
    lower[7 * k:] = centres[7 * k:] - widths[7 * k:] / 2
    upper = lower + widths
    return lower, upper


def max_violation(f, lower, upper, slope, intercept, is_upper: bool) -> torch.Tensor:
    """Largest ``line - f`` (lower) or ``f - line`` (upper) minus the test tolerance, per interval."""
    slope, intercept = slope.double(), intercept.double()
    lower, upper = lower.double(), upper.double()
    t = torch.linspace(0, 1, GRID_POINTS, dtype=torch.float64)

    def violations(xs: torch.Tensor) -> torch.Tensor:
        line = slope[:, None] * xs + intercept[:, None]
        fx = f(xs)
        tol = TEST_ULPS * EPS64 * (1 + fx.abs() + (slope[:, None] * xs).abs() + intercept[:, None].abs())
        gap = fx - line if is_upper else line - fx
        return gap - tol

    xs = lower[:, None] + (upper - lower)[:, None] * t
    xs[:, -1] = upper  # the right endpoint exactly, whatever the rounding of l + (u-l)*1
    coarse = violations(xs)
    worst = coarse.argmax(dim=1)
    left = xs.gather(1, (worst - 1).clamp(min=0)[:, None])
    right = xs.gather(1, (worst + 1).clamp(max=GRID_POINTS - 1)[:, None])
    fine_xs = torch.minimum(left + (right - left) * t, right)  # rounding must not leave [l, u]
    return torch.maximum(coarse.max(dim=1).values, violations(fine_xs).max(dim=1).values)


def assert_sound(op, lower, upper, relaxation):
    f = lambda x: op.function(x)  # noqa: E731 -- float64 reference
    n = lower.numel()
    ls, li, us, ui = (t.reshape(n) for t in (relaxation.lower_slope, relaxation.lower_intercept,
                                             relaxation.upper_slope, relaxation.upper_intercept))
    for slope, intercept, is_upper in ((ls, li, False), (us, ui, True)):
        v = max_violation(f, lower.reshape(n), upper.reshape(n), slope, intercept, is_upper)
        bad = v > 0
        assert not bad.any(), (
            f"{op.name} {'upper' if is_upper else 'lower'} crosses f on {int(bad.sum())} intervals, "
            f"e.g. [{lower.reshape(n)[bad][0].item()!r}, {upper.reshape(n)[bad][0].item()!r}] "
            f"by {v[bad].max().item():.3g}")


def alpha_variants(op, n: int, seed: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(seed)
    yield "default", None
    yield "random", torch.rand(op.n_alpha, n, generator=g, dtype=torch.float64).to(dtype)
    yield "zeros", torch.zeros(op.n_alpha, n, dtype=dtype)
    yield "ones", torch.ones(op.n_alpha, n, dtype=dtype)


@pytest.mark.parametrize("op", OPS, ids=lambda o: o.name)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_dense_pointwise_soundness(op, dtype):
    lower, upper = random_intervals(N_INTERVALS, seed=1 if dtype == torch.float64 else 2)
    lower_d, upper_d = lower.to(dtype), upper.to(dtype)
    # the float32 check is against the float64 function on the float32 interval
    lower_ref, upper_ref = lower_d.double(), upper_d.double()
    for _, alpha in alpha_variants(op, N_INTERVALS, seed=3, dtype=dtype):
        relaxation = op.relax(lower_d, upper_d, alpha)
        assert relaxation.lower_slope.dtype == dtype
        assert_sound(op, lower_ref, upper_ref, relaxation)


@pytest.mark.parametrize("op", OPS, ids=lambda o: o.name)
def test_interval_encloses_image(op):
    lower, upper = random_intervals(4000, seed=5)
    low, high = op.interval(lower, upper)
    t = torch.linspace(0, 1, GRID_POINTS, dtype=torch.float64)
    fx = op.function(torch.minimum(lower[:, None] + (upper - lower)[:, None] * t, upper[:, None]))
    assert (low[:, None] <= fx).all() and (fx <= high[:, None]).all()
    assert (low >= -1).all() and (high <= 1).all()
    # exact up to the margin: the grid extremes are close to the returned ends on wide intervals
    wide = (upper - lower) > 2 * math.pi
    assert torch.allclose(high[wide], torch.ones_like(high[wide]))
    assert torch.allclose(low[wide], -torch.ones_like(low[wide]))


@pytest.mark.parametrize("op", OPS, ids=lambda o: o.name)
def test_default_is_tight_at_midpoint(op):
    """The default line minimises its value at the midpoint over all sound slopes, so it is at least
    as good there as the constant bounds of the exact image and as the chord (on the chord side)."""
    lower, upper = random_intervals(4000, seed=7)
    r = op.relax(lower, upper)
    mid = (lower + upper) / 2
    low, high = op.interval(lower, upper)
    # bisection resolution of the default slope: 27 steps in float64 over a slope range of at most 2
    slack = 2.0 ** -25 * (1 + upper - lower + mid.abs())
    assert (r.upper_at(mid) <= high + slack).all()
    assert (r.lower_at(mid) >= low - slack).all()
    # concave stretch of sin: [0.1, 3.0] -> lower is the chord, upper the midpoint tangent
    l, u = torch.tensor([0.1], dtype=torch.float64), torch.tensor([3.0], dtype=torch.float64)
    r = Sin().relax(l, u)
    assert torch.allclose(r.lower_at(l), torch.sin(l), atol=1e-9)
    assert torch.allclose(r.lower_at(u), torch.sin(u), atol=1e-9)
    m = (l + u) / 2
    assert torch.allclose(r.upper_at(m), torch.sin(m), atol=1e-9)
    assert torch.allclose(r.upper_slope, torch.cos(m), atol=1e-8)


@pytest.mark.parametrize("op", OPS, ids=lambda o: o.name)
def test_init_alpha_reproduces_default_and_gradients(op):
    lower, upper = random_intervals(2000, seed=9)
    default = op.relax(lower, upper)
    alpha = op.init_alpha(lower, upper)
    assert alpha.shape == (2, *lower.shape)
    assert ((alpha >= 0) & (alpha <= 1)).all()
    again = op.relax(lower, upper, alpha)
    for name in ("lower_slope", "lower_intercept", "upper_slope", "upper_intercept"):
        assert torch.equal(getattr(default, name), getattr(again, name))
    alpha = alpha.clone().requires_grad_(True)
    r = op.relax(lower, upper, alpha)
    mid = (lower + upper) / 2
    (r.upper_at(mid) - r.lower_at(mid)).sum().backward()
    assert torch.isfinite(alpha.grad).all()
    assert alpha.grad.abs().sum() > 0


@pytest.mark.parametrize("op", OPS, ids=lambda o: o.name)
def test_engine_broadcasting_and_degenerate(op):
    """Bounds (B,1,N) with alpha (n_alpha,B,S,N), as the engine passes them."""
    g = torch.Generator().manual_seed(11)
    lower = torch.randn(3, 1, 5, generator=g, dtype=torch.float64) * 4
    upper = lower + torch.rand(3, 1, 5, generator=g, dtype=torch.float64) * 9
    upper[0, 0, 0] = lower[0, 0, 0]
    alpha = torch.rand(2, 3, 4, 5, generator=g, dtype=torch.float64)
    r = op.relax(lower, upper, alpha)
    assert r.lower_slope.shape == (3, 4, 5) and r.upper_intercept.shape == (3, 4, 5)
    lb, ub = lower.expand(3, 4, 5), upper.expand(3, 4, 5)
    assert_sound(op, lb.reshape(-1), ub.reshape(-1), r)
    x = lower[0, 0, 0]
    for line in (r.lower_at(x)[0, :, 0], r.upper_at(x)[0, :, 0]):
        assert torch.allclose(line, op.function(x).expand(4), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision(dtype):
    lower, upper = random_intervals(2000, seed=13)
    keep = lower.abs() < 100
    lower_h, upper_h = lower[keep].to(dtype), upper[keep].to(dtype)
    for op in OPS:
        r = op.relax(lower_h, upper_h)
        assert r.upper_intercept.dtype == dtype
        assert_sound(op, lower_h.double(), upper_h.double(), r)


@settings(max_examples=150, deadline=None)
@given(
    centre=st.one_of(st.floats(-20, 20), st.floats(-1e4, 1e4),
                     st.integers(-64, 64).map(lambda k: k * math.pi / 2)),
    width=st.one_of(st.just(0.0), st.floats(1e-6, 1e-3), st.floats(0, 2 * math.pi), st.floats(0, 500)),
    alpha=st.tuples(st.floats(0, 1), st.floats(0, 1)),
    cosine=st.booleans(),
    float32=st.booleans(),
)
def test_property_random_interval(centre, width, alpha, cosine, float32):
    op = Cos() if cosine else Sin()
    dtype = torch.float32 if float32 else torch.float64
    lower = torch.tensor([centre - width / 2], dtype=dtype)
    upper = torch.maximum(torch.tensor([centre + width / 2], dtype=dtype), lower)
    for a in (None, torch.tensor(alpha, dtype=dtype)[:, None]):
        assert_sound(op, lower.double(), upper.double(), op.relax(lower, upper, a))


@pytest.mark.parametrize("quarter_turns", [0, 1])
def test_closed_form_default_matches_bisection_on_stretches(quarter_turns):
    """Where ``[l, u]`` holds no inflection point the default slopes come in closed form (midpoint tangent
    and chord); they are the same slopes a fine bisection for the midpoint envelope tangent finds.
    Compared where that is well conditioned (width >= 1e-3, |x| <= 1e3); on micro-intervals far out the
    slope range is below the trig functions' rounding there and either slope is as tight as the margin."""
    from nlverify.bounds.relax import sine

    lower, upper = random_intervals(20000, seed=13)
    (lower_slope, upper_slope), on_stretch = sine._stretch_slopes(lower, upper, quarter_turns)
    assert on_stretch.float().mean() > 0.3 and not on_stretch.all()
    on_stretch &= (upper - lower >= 1e-3) & (torch.maximum(lower.abs(), upper.abs()) <= 1e3)
    assert on_stretch.sum() > 1000
    l, u = lower[on_stretch], upper[on_stretch]
    s_min, s_max = sine._slope_range(l, u, quarter_turns, torch.float64)
    scale = (s_max - s_min).clamp(min=1e-12)
    for slope, want_upper in ((lower_slope, False), (upper_slope, True)):
        bisected = sine._midpoint_envelope_slope(l, u, s_min, s_max, quarter_turns, want_upper, steps=50)
        assert ((slope[on_stretch] - bisected).abs() / scale).max() < 1e-3


@pytest.mark.parametrize("family", [Sin(), Cos()])
def test_chord_side_ignores_alpha_on_a_stretch_without_inflection(family):
    """Between two inflection points the chord is the best line on the chord side, for every alpha."""
    g = torch.Generator().manual_seed(4)
    shift = family.quarter_turns * math.pi / 2
    k = torch.randint(-6, 6, (5000,), generator=g).to(torch.float64)
    a, b = ((k + torch.rand(5000, generator=g, dtype=torch.float64)) * math.pi - shift for _ in range(2))
    lower, upper = torch.minimum(a, b), torch.maximum(a, b)
    default = family.relax(lower, upper)
    concave = torch.sin(0.5 * (lower + upper) + shift) >= 0
    for alpha in (torch.rand(2, 5000, generator=g, dtype=torch.float64), torch.zeros(2, 5000, dtype=torch.float64),
                  torch.ones(2, 5000, dtype=torch.float64)):
        relaxed = family.relax(lower, upper, alpha)
        chord_side = torch.where(concave, relaxed.lower_slope, relaxed.upper_slope)
        default_side = torch.where(concave, default.lower_slope, default.upper_slope)
        torch.testing.assert_close(chord_side, default_side, rtol=1e-9, atol=1e-12)
