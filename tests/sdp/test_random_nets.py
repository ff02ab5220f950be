import numpy as np
import pytest

from nlverify.sdp import from_weights, lipschitz_bound, verify_certificate
from nlverify.sdp.network import activation_by_name

ACTIVATIONS = ["relu", "leaky_relu:0.1", "tanh", "sigmoid", "gelu", "silu", "sin", "softplus",
               "maxmin", "groupsort4"]


@pytest.mark.parametrize("name", ACTIVATIONS)
@pytest.mark.parametrize("method", ["neuron", "layer"])
def test_lower_le_certified_le_product(name, method):
    rng = np.random.default_rng(ACTIVATIONS.index(name))
    dims = (6, 8, 8, 3)
    weights = [rng.normal(size=(dims[i + 1], dims[i])) for i in range(3)]
    biases = [rng.normal(size=d) for d in dims[1:]]
    net = from_weights(weights, activation_by_name(name), biases)
    cert = lipschitz_bound(net, method=method, lower_samples=128)
    assert np.isfinite(cert.sdp_certified)  # the SDP multipliers were proven
    assert 0 < cert.lower_bound <= cert.bound <= cert.product_bound * (1 + 1e-9)
    assert verify_certificate(cert, net.weights)
