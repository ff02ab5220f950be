import numpy as np
import pytest
import torch

from nlverify.sdp.activations import RELU, maxmin
from nlverify.sdp.residual import (ResidualNetwork, residual_from_mat, residual_lipschitz_bound,
                                   verify_residual_certificate)


def _random_residual(seed, act, n_in=5, width=6, blocks=2, n_out=3, nonneg=False):
    rng = np.random.default_rng(seed)
    draw = (lambda *s: np.abs(rng.normal(size=s))) if nonneg else (lambda *s: rng.normal(size=s))
    return ResidualNetwork(draw(width, n_in), [draw(width, width) / width for _ in range(blocks)],
                           [act] * blocks, draw(n_out, width))


def test_torch_function_matches_the_recursion():
    net = _random_residual(0, maxmin())
    x = torch.randn(4, 5, dtype=torch.float64)
    h = x @ torch.from_numpy(net.embed).T
    for w in net.blocks:
        v = h @ torch.from_numpy(w).T
        pairs = v.reshape(4, -1, 2)
        h = h + torch.stack((pairs.max(-1).values, pairs.min(-1).values), -1).reshape(4, -1)
    torch.testing.assert_close(net.to_torch()(x), h @ torch.from_numpy(net.head).T)


def test_nonnegative_relu_residual_net_is_exact():
    """All weights >= 0: the Jacobian with every ReLU active, W_out (I + W_2)(I + W_1) W_0, has the
    largest norm of all activation patterns (entrywise monotone), so it is the Lipschitz constant;
    the LMI (like LipSDP-Neuron on nonnegative chains) must reach it."""
    net = _random_residual(1, RELU, nonneg=True)
    jac = net.head @ (np.eye(6) + net.blocks[1]) @ (np.eye(6) + net.blocks[0]) @ net.embed
    true = np.linalg.norm(jac, 2)
    cert = residual_lipschitz_bound(net, method="neuron", lower_samples=64)
    assert cert.lower_bound == pytest.approx(true, rel=1e-9)
    assert true <= cert.bound <= true * (1 + 1e-4)
    assert cert.bound < cert.product_bound


@pytest.mark.parametrize("seed", [3, 4])
def test_maxmin_residual_sandwich_elim_vs_qc_and_verification(seed):
    net = _random_residual(seed, maxmin())
    qc = residual_lipschitz_bound(net, method="maxmin-qc", lower_samples=128)
    elim = residual_lipschitz_bound(net, method="maxmin-elim", lower_samples=0)
    assert qc.certified_by == elim.certified_by == "sdp"
    assert qc.lower_bound <= elim.bound <= qc.bound * (1 + 1e-3) <= qc.product_bound * (1 + 1e-3)
    assert elim.sdp_value <= qc.sdp_value * (1 + 1e-5)
    assert verify_residual_certificate(elim, net)
    elim.bound *= 1 - 1e-6
    assert not verify_residual_certificate(elim, net)


def test_perturbed_multipliers_are_not_certified_below_the_optimum():
    """Scaling the multipliers of a solved certificate keeps every proven rho >= the optimum."""
    from nlverify.sdp.residual import certify_residual_rho, normalized_residual, residual_qcs
    from nlverify.sdp.result import unpack_multipliers

    net = _random_residual(5, maxmin())
    cert = residual_lipschitz_bound(net, method="maxmin-elim", lower_samples=0)
    net_n, _ = normalized_residual(net)
    qcs = residual_qcs(net_n, cert.method)
    values = unpack_multipliers(cert.multipliers, len(qcs))
    rng = np.random.default_rng(0)
    for _ in range(4):
        bad = [{k: v * rng.uniform(0.2, 1.0, size=v.shape) for k, v in layer.items()} for layer in values]
        result = certify_residual_rho(net_n.embed, net_n.blocks, net_n.head,
                                      [qc.numpy_blocks(qc.project(v)) for qc, v in zip(qcs, bad)])
        assert (not result.ok) or result.rho >= cert.rho * (1 - 1e-4)


def test_reference_file_structure(lipschitz_file):  # noqa: D103 (fixture from conftest)
    net = residual_from_mat(lipschitz_file("maxmin_resweights_5_32.mat"))
    assert (net.input_dim, net.width, len(net.blocks), net.head.shape[0]) == (784, 32, 3, 10)
