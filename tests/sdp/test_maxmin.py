import numpy as np
import pytest
import torch
from scipy.stats import ortho_group
from torch import nn

from nlverify.sdp import from_torch, from_weights, lipschitz_bound
from nlverify.sdp.activations import GroupSort, MaxMin, groupsort, maxmin


@pytest.mark.parametrize("method", ["maxmin-qc", "maxmin-elim", "neuron"])
def test_orthogonal_maxmin_net_is_one(method):
    weights = [ortho_group.rvs(6, random_state=i) for i in range(3)]
    cert = lipschitz_bound(from_weights(weights, maxmin()), method=method, lower_samples=64)
    assert 1.0 <= cert.sdp_certified <= 1.0 + 1e-5 and cert.bound <= cert.sdp_certified
    assert cert.lower_bound == pytest.approx(1.0, abs=1e-9)


def _random_maxmin(seed, dims=(5, 8, 8, 3)):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(dims[i + 1], dims[i])) for i in range(len(dims) - 1)]


@pytest.mark.parametrize("seed", [0, 1])
def test_elimination_is_at_least_as_tight_as_qc(seed):
    net = from_weights(_random_maxmin(seed), maxmin())
    qc = lipschitz_bound(net, method="maxmin-qc", lower_samples=128)
    elim = lipschitz_bound(net, method="maxmin-elim", lower_samples=0)
    assert elim.sdp_value <= qc.sdp_value * (1 + 1e-5)
    assert qc.lower_bound <= elim.bound <= qc.bound * (1 + 1e-3) <= qc.product_bound * (1 + 1e-3)


def test_torch_groupsort_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), GroupSort(4), nn.Linear(8, 8), MaxMin(), nn.Linear(8, 2)).double()
    net = from_torch(model)
    assert [a.group_size for a in net.activations] == [4, 2]
    cert = lipschitz_bound(model, method="maxmin-qc", lower_samples=128)
    assert cert.lower_bound <= cert.bound <= cert.product_bound * (1 + 1e-9)
    with pytest.raises(ValueError, match="group size 2"):
        lipschitz_bound(model, method="maxmin-elim")


def test_halves_grouping_is_a_permutation_of_consecutive():
    """MaxMin on halves == consecutive MaxMin conjugated by the interleaving permutation, so the
    certified bounds agree; the torch modules agree with that identity too."""
    rng = np.random.default_rng(5)
    w = _random_maxmin(5, dims=(4, 6, 6, 2))
    n = 6
    perm = np.arange(n).reshape(2, n // 2).T.reshape(-1)  # consecutive position -> halves index
    x = torch.from_numpy(rng.normal(size=(10, n)))
    torch.testing.assert_close(MaxMin("halves")(x)[:, perm], MaxMin()(x[:, perm]))
    halves = from_weights(w, maxmin("halves"))
    permuted = from_weights([w[0][perm], w[1][np.ix_(perm, perm)], w[2][:, perm]], maxmin())
    for method in ("maxmin-qc", "maxmin-elim"):
        a = lipschitz_bound(halves, method=method, lower_samples=64)
        b = lipschitz_bound(permuted, method=method, lower_samples=0)
        assert a.sdp_value == pytest.approx(b.sdp_value, rel=1e-4)
        assert a.lower_bound <= a.bound <= a.product_bound


def test_groupsort_module_halves():
    x = torch.tensor([[1.0, 5.0, 2.0, 3.0, 0.0, 4.0]])  # g = 3 on halves: groups (x0, x2, x4), (x1, x3, x5)
    y = GroupSort(3, "halves")(x)
    assert y.tolist() == [[2.0, 5.0, 1.0, 4.0, 0.0, 3.0]]
    assert groupsort(3, "halves").grouping == "halves"
