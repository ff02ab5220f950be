"""Pointwise soundness and tightness of the ReLU / LeakyReLU relaxations (see _unary_relax_checks).

The float64 reference uses the exact (Python float64) negative slope, so float32 relaxations are also
checked against the rounding of ``a`` (e.g. 0.01 is not a float32 number).
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _unary_relax_checks import alpha_variants, assert_sound, random_intervals
from nlverify.bounds.relax.relu import LeakyRelu, Relu

SPECIAL = [0.0]
N_INTERVALS = 10_000
# a = 0 (ReLU), the usual 0.01 (not representable in float32), negative (|x|-like, still convex),
# and > 1 (concave).
FAMILIES = {"relu": Relu(), "leaky_0.01": LeakyRelu(0.01), "leaky_-0.3": LeakyRelu(-0.3), "leaky_2.5": LeakyRelu(2.5)}


def reference_for(relaxation):
    a = relaxation.negative_slope
    return lambda x: torch.where(x >= 0, x, a * x)


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dense_pointwise_soundness(name, dtype):
    relaxation = FAMILIES[name]
    lower, upper = random_intervals(N_INTERVALS, SPECIAL, far=1e4, seed=21)
    lower, upper = lower.to(dtype), upper.to(dtype)
    for label, alpha in alpha_variants(relaxation.n_alpha, lower.shape, dtype, seed=22):
        result = relaxation.relax(lower, upper, alpha)
        assert result.lower_slope.dtype == dtype and result.lower_slope.shape == lower.shape
        assert_sound(result, reference_for(relaxation), lower, upper, SPECIAL, f"{name} {dtype} alpha={label}")


def _relax(relaxation, lower, upper, alpha=None):
    return relaxation.relax(torch.tensor(lower, dtype=torch.float64), torch.tensor(upper, dtype=torch.float64), alpha)


def test_relu_default_is_crown():
    relu = Relu()
    r = _relax(relu, [-1.0, -3.0, 0.0, 1.0, -2.0, -1.0], [3.0, 1.0, 2.0, 4.0, -1.0, 1.0])
    # mixed boxes: upper = chord u (x - l) / (u - l); lower slope 1 if u >= -l else 0
    assert torch.allclose(r.upper_slope[:2], torch.tensor([0.75, 0.25], dtype=torch.float64))
    assert torch.allclose(r.upper_intercept[:2], torch.tensor([0.75, 0.75], dtype=torch.float64))
    assert r.lower_slope[:2].tolist() == [1.0, 0.0] and r.lower_intercept[:2].tolist() == [0.0, 0.0]
    # stable boxes are exact, no margin at all
    assert r.lower_slope[2:4].tolist() == [1.0, 1.0] and r.upper_intercept[2:4].tolist() == [0.0, 0.0]
    assert r.lower_slope[4].item() == 0.0 and r.upper_intercept[4].item() == 0.0
    # tie u == -l picks slope 1
    assert r.lower_slope[5].item() == 1.0


def test_alpha_is_the_lower_slope():
    relu, leaky = Relu(), LeakyRelu(0.1)
    alpha = torch.tensor([[0.0, 0.25, 1.0]], dtype=torch.float64)
    r = _relax(relu, [-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], alpha)
    assert r.lower_slope.tolist() == [0.0, 0.25, 1.0]
    r = _relax(leaky, [-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], alpha)
    assert torch.allclose(r.lower_slope, torch.tensor([0.1, 0.325, 1.0], dtype=torch.float64))
    # concave (a > 1): alpha moves the upper line, the lower line is the chord
    concave = LeakyRelu(3.0)
    r = _relax(concave, [-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], alpha)
    assert r.upper_slope.tolist() == [3.0, 2.5, 1.0]
    assert torch.allclose(r.lower_slope, torch.tensor([2.0] * 3, dtype=torch.float64))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_init_alpha_reproduces_default(name):
    relaxation = FAMILIES[name]
    lower, upper = random_intervals(2000, SPECIAL, far=1e4, seed=23)
    alpha = relaxation.init_alpha(lower, upper)
    assert alpha.shape == (1, *lower.shape)
    default, explicit = relaxation.relax(lower, upper), relaxation.relax(lower, upper, alpha)
    for field in ("lower_slope", "lower_intercept", "upper_slope", "upper_intercept"):
        assert torch.equal(getattr(default, field), getattr(explicit, field)), field


def test_broadcasting_and_gradients():
    relu = Relu()
    batch, specs, neurons = 2, 3, 30
    g = torch.Generator().manual_seed(24)
    lower = -torch.rand(batch, 1, neurons, generator=g, dtype=torch.float64)
    upper = torch.rand(batch, 1, neurons, generator=g, dtype=torch.float64)
    alpha = torch.rand(1, batch, specs, neurons, generator=g, dtype=torch.float64).requires_grad_(True)
    r = relu.relax(lower, upper, alpha)
    assert r.lower_slope.shape == r.upper_slope.shape == (batch, specs, neurons)
    r.lower_slope.sum().backward()
    assert torch.equal(alpha.grad, torch.ones_like(alpha))


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_interval_encloses_image(name, dtype):
    relaxation = FAMILIES[name]
    lower, upper = random_intervals(3000, SPECIAL, far=1e4, seed=25)
    lower, upper = lower.to(dtype), upper.to(dtype)
    low, high = relaxation.interval(lower, upper)
    t = torch.linspace(0, 1, 65, dtype=torch.float64)
    lo64, up64 = lower.double()[:, None], upper.double()[:, None]
    x = torch.cat([lo64 * (1 - t) + up64 * t, torch.zeros_like(lo64)], dim=1)
    x = torch.minimum(torch.maximum(x, lo64), up64)
    f = reference_for(relaxation)(x)
    assert (f >= low.double()[:, None]).all() and (f <= high.double()[:, None]).all()


def test_rejects_non_finite_slope():
    with pytest.raises(ValueError):
        LeakyRelu(float("nan"))
    with pytest.raises(ValueError):
        LeakyRelu(float("inf"))


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(boxes=st.lists(st.tuples(finite, finite, st.floats(0, 1)), min_size=1, max_size=25),
       negative_slope=st.one_of(st.just(0.0), st.floats(-3, 3)), single=st.booleans())
def test_property_any_interval_any_slope(boxes, negative_slope, single):
    relaxation = LeakyRelu(negative_slope)
    dtype = torch.float32 if single else torch.float64
    lower = torch.tensor([min(a, b) for a, b, _ in boxes], dtype=dtype)
    upper = torch.tensor([max(a, b) for a, b, _ in boxes], dtype=dtype)
    alpha = torch.tensor([[al for _, _, al in boxes]], dtype=dtype)
    for al in (alpha, None):
        assert_sound(relaxation.relax(lower, upper, al), reference_for(relaxation), lower, upper, SPECIAL, "hypothesis")


@pytest.mark.parametrize("negative_slope", [1.8291233639443332e-175, 1e-40, 0.01, 1.0 + 1e-12])
def test_slope_not_representable_in_float32(negative_slope):
    """Found by hypothesis: a = 1.8e-175 rounds to 0 in float32 and the margin must not underflow with it."""
    relaxation = LeakyRelu(negative_slope)
    lower = torch.tensor([-1.0, -1.0, -1e4, 0.0, -1e-30], dtype=torch.float32)
    upper = torch.tensor([0.0, 1.0, 2.0, 0.0, 1e-30], dtype=torch.float32)
    for alpha in (None, torch.zeros(1, 5), torch.ones(1, 5)):
        assert_sound(relaxation.relax(lower, upper, alpha), reference_for(relaxation), lower, upper, SPECIAL, "tiny a")
