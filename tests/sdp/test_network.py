import numpy as np
import pytest
import torch
from torch import nn

from nlverify.sdp.network import from_torch, normalized, reduce_input


def test_conv_batchnorm_flatten_are_folded_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, stride=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(2 * 4 * 4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double()
    for bn in (model[1], model[5]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    model.eval()
    net = from_torch(model, (1, 6, 6))
    assert [w.shape for w in net.weights] == [(32, 36), (6, 32), (3, 6)]
    assert [a.name for a in net.activations] == ["relu", "tanh"]
    x = torch.randn(5, 1, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(net.to_torch()(x.reshape(5, -1)), model(x))


def test_trailing_and_consecutive_activations_get_identity_layers():
    net = from_torch(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Tanh()))
    assert [w.shape for w in net.weights] == [(4, 3), (4, 4), (4, 4)]
    assert np.array_equal(net.weights[2], np.eye(4))


def test_unsupported_module_is_named():
    with pytest.raises(ValueError, match="LSTM"):
        from_torch(nn.Sequential(nn.Linear(3, 4), nn.LSTM(4, 4)))


def test_power_of_two_normalisation_is_exact():
    rng = np.random.default_rng(0)
    from nlverify.sdp.network import from_weights
    from nlverify.sdp.activations import RELU
    net = from_weights([rng.normal(size=(5, 3)) * 37, rng.normal(size=(2, 5)) * 1e-3], RELU)
    net_n, e = normalized(net)
    for w, wn in zip(net.weights, net_n.weights):
        s = w / wn
        assert np.all(s == s.flat[0]) and np.log2(s.flat[0]) == round(np.log2(s.flat[0]))
        assert 0.7 <= np.linalg.norm(wn, 2) <= 1.42


def test_thin_svd_reduction_keeps_singular_values():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(4, 30))
    r = reduce_input(w)
    assert r.shape == (4, 4)
    np.testing.assert_allclose(r @ r.T, w @ w.T, atol=1e-12)
