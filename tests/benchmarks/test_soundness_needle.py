"""Needle construction, unit emulation, interval arithmetic and the attack, on small random cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nlverify.benchmarks.soundness.attack import AttackBudget, hiddenness_attack
from nlverify.benchmarks.soundness.check import interval_bounds
from nlverify.benchmarks.soundness.generate import InstanceConfig, build_instance, random_base
from nlverify.benchmarks.soundness.models import ACTIVATIONS, build_model
from nlverify.benchmarks.soundness.needle import (GELU_SHARPNESS, RELU_FAMILY, needle_network, relu_units,
                                                  shuffle_units, step_units)

MLP = InstanceConfig("mlp", (4,), (8, 8), 0.05)
CNN = InstanceConfig("cnn", (1, 4, 4), (8, 8), 0.05)


@pytest.mark.parametrize("activation", RELU_FAMILY)
def test_relu_emulation(activation):
    rng = np.random.default_rng(0)
    A, a = rng.normal(size=(6, 3)), rng.normal(size=6)
    v = rng.normal(size=(500, 3)) * 3
    layer = relu_units(activation, A, a)
    got, want = layer.evaluate(activation, v), np.maximum(v @ A.T + a, 0)
    tol = 0.2 / GELU_SHARPNESS if activation == "gelu" else 1e-12
    np.testing.assert_allclose(got, want, atol=tol)


def test_tanh_step_equals_sigmoid():
    rng = np.random.default_rng(1)
    A, a = rng.normal(size=(5, 2)), rng.normal(size=5)
    v = rng.normal(size=(100, 2)) * 4
    np.testing.assert_allclose(step_units("tanh", A, a).evaluate("tanh", v),
                               step_units("sigmoid", A, a).evaluate("sigmoid", v), atol=1e-12)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("config", [MLP, CNN], ids=["mlp", "cnn"])
def test_interval_bounds_enclose_samples(activation, config):
    rng = np.random.default_rng(2)
    weights = random_base(config, activation, rng)
    weights.hidden[0] = (weights.hidden[0][0] * 4, weights.hidden[0][1])  # wide pre-activation ranges
    model = build_model(weights, torch.float64)
    n = int(np.prod(config.input_shape))
    centre = rng.uniform(0, 1, n)
    for radius in (0.0, 1e-3, 0.3, 2.0):
        lo, hi = interval_bounds(model, config.input_shape, centre - radius, centre + radius)
        xs = centre + radius * rng.uniform(-1, 1, (2000, n))
        xs[:2 ** min(n, 10)] = centre + radius * np.where(rng.uniform(size=(2 ** min(n, 10), n)) < 0.5, -1, 1)
        with torch.no_grad():
            ys = model(torch.as_tensor(xs).reshape(-1, *config.input_shape)).numpy()
        slack = 1e-9 * (1 + np.abs(ys))
        assert np.all(ys >= lo - slack) and np.all(ys <= hi + slack)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_shuffle_preserves_the_function(activation):
    rng = np.random.default_rng(3)
    for config in (MLP, CNN):
        weights = random_base(config, activation, rng)
        x = torch.as_tensor(rng.uniform(0, 1, (20, *config.input_shape)))
        with torch.no_grad():
            before = build_model(weights, torch.float64)(x)
            after = build_model(shuffle_units(weights, rng), torch.float64)(x)
        torch.testing.assert_close(before, after, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("config", [MLP, CNN], ids=["mlp", "cnn"])
def test_needle_is_a_bump(activation, config):
    """g peaks at x*; away from the needle (beyond a few widths) g is flat at its reference level."""
    rng = np.random.default_rng(4)
    n = int(np.prod(config.input_shape))
    x0 = rng.uniform(0.3, 0.7, n)
    x_star = x0 + 0.5 * config.eps * rng.uniform(-1, 1, n)
    base = random_base(config, activation, rng)
    needle = build_model(needle_network(activation, x_star, np.full(n, config.eps), x0 - config.eps, base, rng),
                         torch.float64)
    far = x0 + config.eps * rng.uniform(-1, 1, (4000, n))
    far = far[np.abs(far - x_star).max(axis=1) > 0.2 * config.eps]
    with torch.no_grad():
        g = lambda x: needle(torch.as_tensor(x).reshape(-1, *config.input_shape))[:, 0].numpy()  # noqa: E731
        g_star, g_far = g(x_star[None])[0], g(far)
    if activation == "sin":  # random-feature ripples, far below the peak
        assert g_far.max() < 0 < g_star
    else:
        assert np.ptp(g_far) < 1e-3 * (g_star - g_far.min())
        assert g_star - g_far.max() > 0.5


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "sin", "groupsort"])
def test_planted_instance_checks(activation):
    inst = build_instance(MLP, activation, seed=11)
    assert inst.margin_torch64 > 1e-3 and inst.certified_radius > 0
    decoy = build_instance(InstanceConfig("mlp", (4,), (8, 8), 0.05, planted=False), activation, seed=11)
    assert decoy.margin_torch64 < 0


def test_attack_finds_an_easy_violation_and_respects_the_box():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
        model[0].bias.copy_(torch.tensor([2.9, 0.0]))
    budget = AttackBudget(restarts=16, steps=50, random_samples=10, corner_samples=0, max_all_corners=0)
    # y1 >= y0 only near the corner x = (1, 1, 1): found by PGD (random points and corners are too few)
    result = hiddenness_attack(model, np.zeros(3), np.ones(3), label=0, input_shape=(3,), budget=budget)
    assert result.found and result.method == "pgd"
    assert all(0 <= v <= 1 for v in result.x)
    result = hiddenness_attack(model, np.zeros(3), np.full(3, 0.9), label=0, input_shape=(3,), budget=budget)
    assert not result.found and result.margin < 0


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dense_equivalent_of_a_cnn(activation):
    from nlverify.benchmarks.soundness.attack import dense_equivalent

    rng = np.random.default_rng(5)
    config = InstanceConfig("cnn", (2, 3, 5), (8, 8), 0.05, conv_channels=8)
    model = build_model(random_base(config, activation, rng), torch.float64)
    dense = dense_equivalent(model, config.input_shape)
    x = torch.as_tensor(rng.uniform(0, 1, (50, 30)))
    with torch.no_grad():
        torch.testing.assert_close(dense(x), model(x.reshape(-1, 2, 3, 5)), rtol=1e-10, atol=1e-10)


def test_attack_model_matches_the_exported_one():
    from nlverify.benchmarks.soundness.attack import _for_attack

    rng = np.random.default_rng(6)
    for config in (MLP, CNN):
        model = build_model(random_base(config, "groupsort", rng), torch.float64)
        x = torch.as_tensor(rng.uniform(0, 1, (40, int(np.prod(config.input_shape)))))
        with torch.no_grad():
            torch.testing.assert_close(_for_attack(model, config.input_shape)(x),
                                       model(x.reshape(-1, *config.input_shape)), rtol=1e-10, atol=1e-10)
