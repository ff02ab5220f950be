"""Pointwise soundness and tightness of the sigmoid / tanh relaxations (see _unary_relax_checks)."""
from __future__ import annotations


import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _unary_relax_checks import alpha_variants, assert_sound, random_intervals
from nlverify.bounds.relax.s_shaped import Sigmoid, Tanh

# points where the S-shaped construction switches case (0), plus where sigmoid/tanh bend hardest
SPECIAL = [0.0, -2.5, 2.5]
N_INTERVALS = 10_000
FAMILIES = {"sigmoid": (Sigmoid(), torch.sigmoid), "tanh": (Tanh(), torch.tanh)}


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    return FAMILIES[request.param]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dense_pointwise_soundness(family, dtype):
    relaxation, reference = family
    lower, upper = random_intervals(N_INTERVALS, SPECIAL, far=1e4, seed=1)
    lower, upper = lower.to(dtype), upper.to(dtype)
    for label, alpha in alpha_variants(relaxation.n_alpha, lower.shape, dtype, seed=2):
        result = relaxation.relax(lower, upper, alpha)
        assert result.lower_slope.dtype == dtype and result.lower_slope.shape == lower.shape
        assert_sound(result, reference, lower, upper, SPECIAL, f"{relaxation.name} {dtype} alpha={label}")


def test_init_alpha_reproduces_default(family):
    relaxation, _ = family
    lower, upper = random_intervals(2000, SPECIAL, far=1e4, seed=3)
    alpha = relaxation.init_alpha(lower, upper)
    assert alpha.shape == (2, *lower.shape)
    assert ((alpha >= 0) & (alpha <= 1)).all()
    default, explicit = relaxation.relax(lower, upper), relaxation.relax(lower, upper, alpha)
    for name in ("lower_slope", "lower_intercept", "upper_slope", "upper_intercept"):
        assert torch.equal(getattr(default, name), getattr(explicit, name)), name


def _at(relaxation, lower: float, upper: float, alpha=None):
    lo, up = torch.tensor([lower], dtype=torch.float64), torch.tensor([upper], dtype=torch.float64)
    return relaxation.relax(lo, up, alpha)


def test_default_is_tight(family):
    relaxation, reference = family
    touch = 1e-12
    # convex part: tangent at the midpoint below, chord above (touching at both endpoints)
    r = _at(relaxation, -3.0, -1.0)
    m = torch.tensor([-2.0], dtype=torch.float64)
    assert (reference(m) - r.lower_at(m)).abs().item() < touch
    assert (r.lower_slope - relaxation.derivative(m)).abs().item() < touch
    for x in (-3.0, -1.0):
        x = torch.tensor([x], dtype=torch.float64)
        assert (r.upper_at(x) - reference(x)).abs().item() < touch
    # concave part: the mirror image
    r = _at(relaxation, 0.5, 2.5)
    m = torch.tensor([1.5], dtype=torch.float64)
    assert (r.upper_at(m) - reference(m)).abs().item() < touch
    for x in (0.5, 2.5):
        x = torch.tensor([x], dtype=torch.float64)
        assert (reference(x) - r.lower_at(x)).abs().item() < touch
    # mixed, chord crosses: tangent from the endpoint touches f at the far endpoint and a tangent point
    r = _at(relaxation, -4.0, 4.0)
    lo, up = torch.tensor([-4.0], dtype=torch.float64), torch.tensor([4.0], dtype=torch.float64)
    assert (reference(up) - r.lower_at(up)).abs().item() < 1e-9
    assert (r.upper_at(lo) - reference(lo)).abs().item() < 1e-9
    grid = torch.linspace(-4, 0, 20001, dtype=torch.float64)
    assert (reference(grid) - r.lower_at(grid)).min().item() < 1e-9   # touches inside too


def test_mixed_chord_used_when_it_does_not_cross():
    # On [-0.5, 5] the chord of sigmoid lies below it (f'(5) is tiny): the lower line is the chord.
    relaxation = Sigmoid()
    r = _at(relaxation, -0.5, 5.0)
    for x in (-0.5, 5.0):
        x = torch.tensor([x], dtype=torch.float64)
        assert (torch.sigmoid(x) - r.lower_at(x)).abs().item() < 1e-12


def test_saturation_and_degenerate_boxes_are_finite(family):
    relaxation, reference = family
    lower = torch.tensor([-1e4, 1e4, -1e4, -1e4, 0.0, 3.0, -7.0, 1e4 - 1e-3], dtype=torch.float64)
    upper = torch.tensor([-1e4, 1e4, 1e4, -9e3, 0.0, 3.0, -7.0, 1e4], dtype=torch.float64)
    for dtype in (torch.float64, torch.float32):
        r = relaxation.relax(lower.to(dtype), upper.to(dtype))
        for t in (r.lower_slope, r.lower_intercept, r.upper_slope, r.upper_intercept):
            assert torch.isfinite(t).all()
        assert_sound(r, reference, lower.to(dtype), upper.to(dtype), SPECIAL, "saturation")
    # a degenerate box gives lines through (l, f(l)) (up to the margin)
    r = _at(relaxation, 0.3, 0.3)
    x = torch.tensor([0.3], dtype=torch.float64)
    assert (r.upper_at(x) - r.lower_at(x)).item() < 1e-14


def test_broadcasting_and_gradients(family):
    relaxation, reference = family
    batch, specs, neurons = 3, 4, 50
    g = torch.Generator().manual_seed(5)
    centre = 4 * torch.randn(batch, 1, neurons, generator=g, dtype=torch.float64)
    width = 6 * torch.rand(batch, 1, neurons, generator=g, dtype=torch.float64)
    lower, upper = centre - width / 2, centre + width / 2
    alpha = torch.rand(2, batch, specs, neurons, generator=g, dtype=torch.float64).requires_grad_(True)
    r = relaxation.relax(lower, upper, alpha)
    assert r.lower_slope.shape == r.upper_intercept.shape == (batch, specs, neurons)
    (r.lower_slope.sum() + r.lower_intercept.sum() - r.upper_slope.sum() - r.upper_intercept.sum()).backward()
    assert alpha.grad is not None and torch.isfinite(alpha.grad).all() and alpha.grad.abs().sum() > 0
    flat = lambda t: t.detach().expand(batch, specs, neurons).reshape(-1)
    detached = type(r)(*(flat(t) for t in (r.lower_slope, r.lower_intercept, r.upper_slope, r.upper_intercept)))
    assert_sound(detached, reference, flat(lower), flat(upper), SPECIAL, "broadcast")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_interval_encloses_image(family, dtype):
    relaxation, reference = family
    lower, upper = random_intervals(3000, SPECIAL, far=1e4, seed=7)
    lower, upper = lower.to(dtype), upper.to(dtype)
    low, high = relaxation.interval(lower, upper)
    t = torch.linspace(0, 1, 65, dtype=torch.float64)
    x = (lower.double()[:, None] * (1 - t) + upper.double()[:, None] * t).clamp(lower.double()[:, None], upper.double()[:, None])
    f = reference(x)
    assert (f >= low.double()[:, None]).all() and (f <= high.double()[:, None]).all()


finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False)


@settings(max_examples=40, deadline=None)
@given(boxes=st.lists(st.tuples(finite, finite, st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=25),
       name=st.sampled_from(sorted(FAMILIES)), single=st.booleans())
def test_property_any_interval_any_alpha(boxes, name, single):
    relaxation, reference = FAMILIES[name]
    dtype = torch.float32 if single else torch.float64
    lower = torch.tensor([min(box[0], box[1]) for box in boxes], dtype=dtype)
    upper = torch.tensor([max(box[0], box[1]) for box in boxes], dtype=dtype)
    alpha = torch.tensor([[box[2 + i] for box in boxes] for i in range(2)], dtype=dtype)
    for al in (alpha, None):
        assert_sound(relaxation.relax(lower, upper, al), reference, lower, upper, SPECIAL, "hypothesis")


def test_checker_catches_a_line_that_crosses_by_a_hair():
    """The dense check must see crossings far smaller than any margin (guards the test itself)."""
    relaxation = Sigmoid()
    lower, upper = random_intervals(2000, SPECIAL, far=20.0, seed=9)
    r = relaxation.relax(lower, upper)
    for shift in (1e-12, 1e-9):
        nudged = type(r)(r.lower_slope, r.lower_intercept + shift, r.upper_slope, r.upper_intercept)
        with pytest.raises(AssertionError):
            assert_sound(nudged, torch.sigmoid, lower, upper, SPECIAL, "nudged")


def test_intercept_gradient_is_the_envelope_theorem(family):
    """d(intercept)/d(slope) = -x* (the minimiser), not the end of a convex piece. A correction term
    that is ~0 in value but has a piece-wide slope derivative once made this gradient wrong, and
    alpha-CROWN stalled on sigmoid networks (eran 9629: -22.8 after 60 iterations instead of -6.2)."""
    relaxation, _ = family
    lo, up = torch.tensor([-6.0], dtype=torch.float64), torch.tensor([-1.0], dtype=torch.float64)
    for position in (0.2, 0.5, 0.9):
        alpha = torch.tensor([[position], [0.5]], dtype=torch.float64, requires_grad=True)
        r = relaxation.relax(lo, up, alpha)
        point = (lo + position * (up - lo)).item()  # the tangent point = the minimiser of f - kx
        slope_grad, = torch.autograd.grad(r.lower_slope.sum(), alpha, retain_graph=True)
        icpt_grad, = torch.autograd.grad(r.lower_intercept.sum(), alpha)
        # intercept = f(d) - f'(d) d, so d intercept / d alpha = -d * d slope / d alpha
        assert torch.allclose(icpt_grad[0], -point * slope_grad[0], rtol=1e-6, atol=1e-12)
