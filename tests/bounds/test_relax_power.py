"""Pointwise soundness of Pow (x**n, sqrt), Reciprocal and Exp (nlverify.bounds.relax.power).

Every check evaluates lines and function in float64 on a dense grid of each interval (endpoints
exactly included), then refines the grid around the worst grid point. Infinite intercepts must have
the "no bound" sign (lower -inf, upper +inf), never the other; slopes must be finite.

Tolerance: ``TEST_ULPS * eps64 * (1 + |f(x)| + |slope*x| + |intercept|)`` -- only the float64 rounding
of the test's own evaluation. float32 relaxations are checked against the float64 function.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from nlverify.bounds.relax.power import Exp, Pow, Reciprocal

TEST_ULPS = 4.0
EPS64 = torch.finfo(torch.float64).eps
GRID_POINTS = 129
N_INTERVALS = 10_000

OPS = [Pow(2), Pow(3), Pow(4), Pow(5), Pow(7), Pow(0.5), Reciprocal(), Exp()]


def op_id(op) -> str:
    return f"pow{op.exponent}" if op.name == "pow" else op.name


def random_intervals(op, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiny, degenerate, medium and wide intervals, endpoints exactly at 0, across 0, per op's domain."""
    g = torch.Generator().manual_seed(seed)
    reach = {"exp": 60.0, "reciprocal": 20.0}.get(op.name, 10.0 if getattr(op, "exponent", 2) <= 5 else 4.0)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)

    kind = torch.randint(0, 6, (n,), generator=g)
    tiny = torch.exp(uniform(math.log(1e-6), math.log(1e-3)))
    width = torch.where(kind == 0, tiny, torch.where(kind == 1, torch.zeros(n, dtype=torch.float64),
                                                     torch.where(kind == 2, uniform(0, 1), uniform(0, reach))))
    lower = uniform(-reach, reach)
    at_zero = torch.randint(0, 4, (n,), generator=g)
    lower = torch.where(at_zero == 0, torch.zeros_like(lower), lower)            # l == 0
    lower = torch.where(at_zero == 1, -width, lower)                             # u == 0
    lower = torch.where(at_zero == 2, torch.exp(uniform(math.log(1e-8), math.log(1e-2))), lower)  # near 0
    upper = lower + width
    upper = torch.where(at_zero == 1, torch.zeros_like(upper), upper)
    if op.name == "reciprocal":  # avoid 0 (tested separately); half of them negative
        flip = torch.rand(n, generator=g) < 0.5
        lower, upper = lower.abs() + 1e-3, upper.abs() + 1e-3
        lower, upper = torch.minimum(lower, upper), torch.maximum(lower, upper)
        lower, upper = torch.where(flip, -upper, lower), torch.where(flip, -lower, upper)
    return lower, upper


def max_violation(f, lower, upper, slope, intercept, is_upper: bool) -> torch.Tensor:
    t = torch.linspace(0, 1, GRID_POINTS, dtype=torch.float64)
    finite_c = torch.where(torch.isfinite(intercept), intercept, torch.zeros_like(intercept))

    def violations(xs: torch.Tensor) -> torch.Tensor:
        line = slope[:, None] * xs + intercept[:, None]
        fx = f(xs)
        tol = TEST_ULPS * EPS64 * (1 + fx.abs() + (slope[:, None] * xs).abs() + finite_c[:, None].abs())
        return (fx - line if is_upper else line - fx) - tol

    xs = lower[:, None] + (upper - lower)[:, None] * t
    xs[:, -1] = upper
    coarse = violations(xs)
    worst = coarse.argmax(dim=1)
    left = xs.gather(1, (worst - 1).clamp(min=0)[:, None])
    right = xs.gather(1, (worst + 1).clamp(max=GRID_POINTS - 1)[:, None])
    fine_xs = torch.minimum(left + (right - left) * t, right)  # rounding must not leave [l, u]
    fine = violations(fine_xs)
    return torch.maximum(coarse.max(dim=1).values, fine.max(dim=1).values)


def domain_of(op, lower, upper):
    """Points outside the function's domain carry no network value (sqrt of a negative is NaN)."""
    if op.name == "pow" and op.exponent == 0.5:
        return lower.clamp(min=0.0), upper.clamp(min=0.0)
    return lower, upper


def assert_sound(op, lower, upper, r):
    n = lower.numel()
    lower, upper = domain_of(op, lower.double().reshape(n), upper.double().reshape(n))
    ls, li, us, ui = (t.double().reshape(n) for t in (r.lower_slope, r.lower_intercept,
                                                      r.upper_slope, r.upper_intercept))
    assert torch.isfinite(ls).all() and torch.isfinite(us).all(), "slopes must be finite"
    assert not (li.isnan().any() or ui.isnan().any()), "NaN intercept"
    assert not (li == math.inf).any() and not (ui == -math.inf).any(), "infinite intercept of the wrong sign"
    for slope, intercept, is_upper in ((ls, li, False), (us, ui, True)):
        v = max_violation(op.function, lower, upper, slope, intercept, is_upper)
        bad = v > 0
        assert not bad.any(), (
            f"{op_id(op)} {'upper' if is_upper else 'lower'} crosses f on {int(bad.sum())} intervals, e.g. "
            f"[{lower[bad][0].item()!r}, {upper[bad][0].item()!r}] by {v[bad].max().item():.3g}")


def alpha_variants(op, n: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(7)
    yield None
    yield torch.rand(op.n_alpha, n, generator=g, dtype=torch.float64).to(dtype)
    yield torch.zeros(op.n_alpha, n, dtype=dtype)
    yield torch.ones(op.n_alpha, n, dtype=dtype)


@pytest.mark.parametrize("op", OPS, ids=op_id)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_dense_pointwise_soundness(op, dtype):
    lower, upper = random_intervals(op, N_INTERVALS, seed=1)
    lower_d, upper_d = lower.to(dtype), upper.to(dtype)
    for alpha in alpha_variants(op, N_INTERVALS, dtype):
        r = op.relax(lower_d, upper_d, alpha)
        assert r.lower_slope.dtype == dtype and r.lower_slope.shape == (N_INTERVALS,)
        assert_sound(op, lower_d, upper_d, r)


@pytest.mark.parametrize("op", OPS, ids=op_id)
def test_interval_encloses_image(op):
    lower, upper = random_intervals(op, 3000, seed=2)
    low, high = op.interval(lower, upper)
    dl, du = domain_of(op, lower, upper)
    xs = dl[:, None] + (du - dl)[:, None] * torch.linspace(0, 1, GRID_POINTS, dtype=torch.float64)
    xs = torch.minimum(xs, du[:, None])  # rounding must not leave [l, u]
    fx = op.function(xs)
    assert (low[:, None] <= fx).all() and (fx <= high[:, None]).all()
    assert torch.allclose(low, fx.min(dim=1).values, rtol=1e-9, atol=1e-300) or op.name == "pow"


@pytest.mark.parametrize("op", OPS, ids=op_id)
def test_init_alpha_reproduces_default_and_gradients(op):
    lower, upper = random_intervals(op, 2000, seed=3)
    alpha = op.init_alpha(lower, upper)
    assert alpha.shape == (op.n_alpha, *lower.shape) and ((alpha >= 0) & (alpha <= 1)).all()
    default, again = op.relax(lower, upper), op.relax(lower, upper, alpha)
    for name in ("lower_slope", "lower_intercept", "upper_slope", "upper_intercept"):
        assert torch.equal(getattr(default, name), getattr(again, name))
    keep = (upper - lower) > 1e-3
    alpha = alpha[:, keep].clone().requires_grad_(True)
    r = op.relax(lower[keep], upper[keep], alpha)
    mid = (lower[keep] + upper[keep]) / 2
    gap = r.upper_at(mid) - r.lower_at(mid)
    gap[torch.isfinite(gap)].sum().backward()
    assert torch.isfinite(alpha.grad).all() and alpha.grad.abs().sum() > 0


def test_default_lines_are_the_textbook_ones():
    l, u = torch.tensor([1.0], dtype=torch.float64), torch.tensor([3.0], dtype=torch.float64)
    m = (l + u) / 2
    r = Pow(2).relax(l, u)   # convex: tangent at the midpoint below, chord above
    assert torch.allclose(r.lower_slope, 2 * m) and torch.allclose(r.lower_at(m), m ** 2)
    assert torch.allclose(r.upper_at(l), l ** 2) and torch.allclose(r.upper_at(u), u ** 2)
    r = Pow(0.5).relax(l, u)  # concave: chord below, midpoint tangent above
    assert torch.allclose(r.lower_at(l), l.sqrt()) and torch.allclose(r.upper_at(m), m.sqrt())
    r = Exp().relax(l, u)
    assert torch.allclose(r.lower_at(m), m.exp()) and torch.allclose(r.upper_at(u), u.exp())
    r = Reciprocal().relax(-u, -l)  # concave on x < 0: chord below, tangent above
    assert torch.allclose(r.lower_at(-u), -1 / u) and torch.allclose(r.upper_at(-m), -1 / m)
    # odd power across 0: on [-1, 4] the upper bridge touches at c_3*u = -2 < l, so it is the chord
    r = Pow(3).relax(torch.tensor([-1.0], dtype=torch.float64), torch.tensor([4.0], dtype=torch.float64))
    assert torch.allclose(r.upper_slope, torch.tensor([(64.0 + 1.0) / 5.0], dtype=torch.float64))
    # on [-4, 1] the upper line touches at the midpoint -1.5 (on the concave part, left of -0.5)
    r = Pow(3).relax(torch.tensor([-4.0], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64))
    assert torch.allclose(r.upper_slope, torch.tensor([3 * 1.5 ** 2], dtype=torch.float64))


def test_unbounded_and_overflow_cases():
    r = Reciprocal().relax(torch.tensor([-1.0, 0.0, -2.0]), torch.tensor([1.0, 3.0, 0.0]))
    assert (r.lower_intercept == -math.inf).all() and (r.upper_intercept == math.inf).all()
    assert (r.lower_slope == 0).all() and (r.upper_slope == 0).all()
    low, high = Reciprocal().interval(torch.tensor([-1.0]), torch.tensor([1.0]))
    assert low.item() == -math.inf and high.item() == math.inf
    # float32: e^100 overflows -> no bound on either side (the true offsets there are unknown)
    r = Exp().relax(torch.tensor([50.0, -200.0]), torch.tensor([100.0, -150.0]))
    assert r.upper_intercept[0] == math.inf and r.lower_intercept[0] == -math.inf
    assert torch.isfinite(r.lower_intercept[1]) and torch.isfinite(r.upper_intercept[1])
    assert_sound(Exp(), torch.tensor([50.0, -200.0]), torch.tensor([100.0, -150.0]), r)
    assert (r.upper_at(torch.tensor([-150.0, -150.0]))[1] > 0)  # underflowed exp still bounded by > 0


@pytest.mark.parametrize("exponent", [1, 0, -1, 1.5, 2.5, 0.25, -0.5])
def test_unsupported_exponent_raises(exponent):
    with pytest.raises(ValueError, match="unsupported exponent"):
        Pow(exponent)


def test_engine_broadcasting():
    g = torch.Generator().manual_seed(4)
    lower = torch.randn(2, 1, 3, generator=g, dtype=torch.float64)
    upper = lower + torch.rand(2, 1, 3, generator=g, dtype=torch.float64) * 2
    for op in OPS:
        lo, up = (lower.abs() + 0.1, upper.abs() + 2.2) if op.name == "reciprocal" else (lower, upper)
        alpha = torch.rand(op.n_alpha, 2, 4, 3, generator=g, dtype=torch.float64)
        r = op.relax(lo, up, alpha)
        assert r.lower_slope.shape == (2, 4, 3) and r.upper_intercept.shape == (2, 4, 3)
        expand = lambda t: t.expand(2, 4, 3).reshape(-1)  # noqa: E731
        assert_sound(op, expand(lo), expand(up), r)


@settings(max_examples=200, deadline=None)
@given(
    which=st.integers(0, len(OPS) - 1),
    lower=st.one_of(st.just(0.0), st.floats(-20, 20), st.floats(-1e-3, 1e-3)),
    width=st.one_of(st.just(0.0), st.floats(1e-6, 1e-3), st.floats(0, 30)),
    alpha=st.tuples(st.floats(0, 1), st.floats(0, 1)),
    float32=st.booleans(),
)
def test_property_random_interval(which, lower, width, alpha, float32):
    op = OPS[which]
    dtype = torch.float32 if float32 else torch.float64
    l = torch.tensor([lower], dtype=dtype)
    u = torch.maximum(torch.tensor([lower + width], dtype=dtype), l)
    if op.name == "reciprocal" and l.item() <= 0 <= u.item():
        r = op.relax(l, u)
        assert r.lower_intercept.item() == -math.inf and r.upper_intercept.item() == math.inf
        return
    for a in (None, torch.tensor(alpha[: op.n_alpha], dtype=dtype)[:, None]):
        assert_sound(op, l, u, op.relax(l, u, a))
