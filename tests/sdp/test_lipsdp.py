import itertools

import numpy as np
import pytest

from nlverify.sdp import METHODS, from_weights, lipschitz_bound
from nlverify.sdp.activations import RELU, TANH
from nlverify.sdp.network import LipNetwork

RNG = np.random.default_rng(0)


def test_single_linear_layer_is_its_spectral_norm():
    w = RNG.normal(size=(4, 6))
    cert = lipschitz_bound(LipNetwork([w], []), lower_samples=16)
    norm = np.linalg.norm(w, 2)
    assert norm <= cert.bound <= norm * (1 + 1e-6)


def test_relu_between_identities_is_one():
    cert = lipschitz_bound(from_weights([np.eye(5), np.eye(5)], RELU), lower_samples=64)
    assert 1.0 <= cert.bound <= 1.0 + 1e-6
    assert cert.lower_bound == pytest.approx(1.0)


def _random_net(act=TANH, dims=(4, 8, 6, 3), seed=1):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(dims[i + 1], dims[i])) for i in range(len(dims) - 1)], act


@pytest.mark.parametrize("method", ["neuron", "layer"])
def test_scaling_a_weight_scales_the_bound(method):
    weights, act = _random_net()
    base = lipschitz_bound(from_weights(weights, act), method=method, lower_samples=0).bound
    scaled = [weights[0], 3.0 * weights[1], weights[2]]
    cert = lipschitz_bound(from_weights(scaled, act), method=method, lower_samples=0)
    assert cert.bound == pytest.approx(3.0 * base, rel=1e-4)


def test_permuting_hidden_units_changes_nothing():
    weights, act = _random_net(RELU)
    perm = np.random.default_rng(5).permutation(8)
    permuted = [weights[0][perm], weights[1][:, perm], weights[2]]
    a = lipschitz_bound(from_weights(weights, act), lower_samples=0).bound
    b = lipschitz_bound(from_weights(permuted, act), lower_samples=0).bound
    assert a == pytest.approx(b, rel=1e-4)


@pytest.mark.parametrize("method, expected", [("neuron", 36.482), ("layer", 39.839)])
def test_lipsdp_readme_values(lipschitz_file, method, expected):
    cert = lipschitz_bound(lipschitz_file("lipsdp_random_weights.mat"), method=method, lower_samples=64)
    assert cert.certified_by == "sdp"
    assert cert.bound == pytest.approx(expected, rel=1e-3)
    assert cert.lower_bound <= cert.bound <= cert.product_bound


# The README's 2-4-1 counterexample to "LipSDP-Network": the true constant is 1.6625.
W1 = np.array([[0.7317, -0.5014], [0.8792, -1.0718], [0.9145, -0.0201], [-1.2487, -0.3139]])
W2 = np.array([[0.0541, 0.2728, -0.9822, -1.1074]])


def _counterexample_net() -> LipNetwork:
    d = max(itertools.product([0, 1], repeat=4), key=lambda d: np.linalg.norm(W2 @ np.diag(d) @ W1, 2))
    b1 = 10.0 * (2 * np.array(d, dtype=float) - 1)
    return from_weights([W1, W2], RELU, biases=[b1, np.zeros(1)])


@pytest.mark.parametrize("method", METHODS)
def test_lipsdp_network_counterexample_every_method_is_sound(method):
    cert = lipschitz_bound(_counterexample_net(), method=method, lower_samples=256)
    assert cert.lower_bound >= 1.6624  # sampling finds the gradient at x = 0
    assert cert.bound >= 1.6625 - 1e-4 and cert.bound >= cert.lower_bound
