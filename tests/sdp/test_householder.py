import numpy as np
import pytest
import torch
from scipy.stats import ortho_group
from torch import nn

from nlverify.sdp import from_torch, from_weights, lipschitz_bound, verify_certificate
from nlverify.sdp.activations import ActivationSpec
from nlverify.sdp.householder import Householder, complement_rows, householder


def _reference_householder(x: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Per consecutive group: x if r^T x > 0 else the reflection of x across r^perp."""
    g = r.shape[1]
    out = x.reshape(-1, g).copy()
    rr = np.broadcast_to(r, out.shape)
    for i, (xg, rg) in enumerate(zip(out, rr)):
        if rg @ xg <= 0:
            out[i] = xg - 2 * rg * (rg @ xg) / (rg @ rg)
    return out.reshape(x.shape)


@pytest.mark.parametrize("g,grouping", [(2, "consecutive"), (3, "consecutive"), (2, "halves")])
def test_module_is_the_householder_reflection_and_norm_preserving(g, grouping):
    rng = np.random.default_rng(g)
    n = 6
    r = rng.normal(size=(n // g, g))
    module = Householder(r, grouping)
    x = rng.normal(size=(50, n))
    y = module(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1), rtol=1e-12)
    perm = np.arange(n) if grouping == "consecutive" else np.arange(n).reshape(g, n // g).T.reshape(-1)
    expected = np.stack([_reference_householder(row[perm], r) for row in x])
    np.testing.assert_allclose(y[:, perm], expected, atol=1e-12)
    # 1-Lipschitz on random pairs (the first fact behind the QC)
    x2 = rng.normal(size=(50, n))
    y2 = module(torch.from_numpy(x2)).detach().numpy()
    assert np.all(np.linalg.norm(y - y2, axis=1) <= np.linalg.norm(x - x2, axis=1) * (1 + 1e-12))


def test_complement_rows_annihilate_the_reflection_exactly():
    r = np.random.default_rng(0).normal(size=(20, 4))
    rows = complement_rows(r)
    assert rows.shape == (20, 3, 4)
    assert np.all(np.einsum("gij,gj->gi", rows, r) == 0.0)  # exact, not approximate
    assert all(np.linalg.matrix_rank(rows[i]) == 3 for i in range(20))


def test_orthogonal_householder_net_has_bound_one():
    weights = [ortho_group.rvs(6, random_state=i) for i in range(3)]
    rng = np.random.default_rng(0)
    specs = [householder(rng.normal(size=(3, 2))), householder(rng.normal(size=2))]
    cert = lipschitz_bound(from_weights(weights, specs), lower_samples=64)
    assert 1.0 <= cert.sdp_certified <= 1.0 + 1e-5
    assert cert.lower_bound == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_random_householder_nets_sandwich_and_verify(seed):
    rng = np.random.default_rng(seed)
    dims = [5, 8, 8, 3]
    weights = [rng.normal(size=(dims[k + 1], dims[k])) for k in range(3)]
    specs = [householder(rng.normal(size=(4, 2))), householder(rng.normal(size=(4, 2)), "halves")]
    net = from_weights(weights, specs)
    cert = lipschitz_bound(net, lower_samples=256)
    assert cert.certified_by == "sdp"
    assert cert.lower_bound <= cert.bound <= cert.product_bound
    assert cert.bound < 0.999 * cert.product_bound  # the QCs do better than the product here
    assert verify_certificate(cert, net.weights)  # the reflection vectors travel in the certificate
    assert ActivationSpec.from_dict(specs[1].to_dict()) == specs[1]
    cert.bound *= 1 - 1e-6
    assert not verify_certificate(cert, net.weights)


def test_torch_model_with_householder_is_extracted():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), Householder(torch.randn(3, 2)), nn.Linear(6, 2)).double()
    net = from_torch(model)
    assert net.activations[0].kind == "householder"
    x = torch.randn(7, 4, dtype=torch.float64)
    torch.testing.assert_close(net.to_torch()(x), model(x))
    cert = lipschitz_bound(model, lower_samples=128)
    assert cert.lower_bound <= cert.bound <= cert.product_bound


def test_zero_reflection_is_rejected():
    with pytest.raises(ValueError, match="nonzero"):
        householder(np.zeros((2, 2)))
