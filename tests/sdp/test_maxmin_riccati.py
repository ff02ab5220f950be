"""The eliminated MaxMin LMI (Riccati objective, L-BFGS, stage-wise proof): maxmin_stages,
maxmin_lbfgs, maxmin_certify, maxmin_bound and their wiring into the API and the CLI."""
import argparse

import numpy as np
import pytest
import torch
from scipy.stats import ortho_group

from nlverify.sdp import from_weights, lipschitz_bound
from nlverify.sdp.activations import RELU, maxmin
from nlverify.sdp.cli import add_parser
from nlverify.sdp.maxmin_bound import (residual_riccati_bound, riccati_lipschitz_bound,
                                       verify_riccati_certificate)
from nlverify.sdp.maxmin_certify import certify_stages
from nlverify.sdp.maxmin_stages import feasible_multipliers, maxmin_stage, plain_stages, riccati_value
from nlverify.sdp.network import from_mat
from nlverify.sdp.residual import ResidualNetwork, residual_lipschitz_bound


def _weights(seed, dims):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(dims[i + 1], dims[i])) / np.sqrt(dims[i]) for i in range(len(dims) - 1)]


@pytest.mark.parametrize("grouping", ["consecutive", "halves"])
def test_stage_reproduces_maxmin(grouping):
    """q = A p + D^T relu(C p) is MaxMin(W p), and its residual form is p + MaxMin(W p)."""
    from nlverify.sdp.activations import MaxMin
    rng = np.random.default_rng(0)
    w, p = rng.normal(size=(6, 6)), rng.normal(size=(6, 5))
    expected = MaxMin(grouping)(torch.from_numpy(w @ p).T).T.numpy()
    for residual, target in ((False, expected), (True, expected + p)):
        st = maxmin_stage(w, maxmin(grouping), residual)
        np.testing.assert_allclose(st.a @ p + st.d.T @ np.maximum(st.c @ p, 0), target, atol=1e-12)


@pytest.mark.parametrize("mu, nu", [(0.0, 0.0), (1e-2, 0.0), (1e-2, 0.1)])
def test_gradient_matches_finite_differences(mu, nu):
    """Smoothed eigenvalue (Danskin trajectory) and log-barrier (adjoint pass) gradients."""
    stages, out = plain_stages(_weights(1, (5, 8, 8, 6, 3)), [maxmin()] * 3)
    t = feasible_multipliers(stages, out) * np.random.default_rng(2).uniform(1, 2, size=11)
    val = riccati_value(stages, out, t, mu, nu)
    d = np.random.default_rng(3).normal(size=t.size) * t * 1e-6
    fd = (riccati_value(stages, out, t + d, mu, nu).smoothed - riccati_value(stages, out, t - d, mu, nu).smoothed) / 2
    assert val.gradient @ d == pytest.approx(fd, rel=1e-5, abs=1e-14)


def test_single_hidden_layer_agrees_with_cvxpy():
    """One hidden layer: the layer-wide free multiplier of the cvxpy models is every multiplier of the
    equality, so both optima coincide."""
    net = from_weights(_weights(4, (6, 10, 4)), maxmin())
    ref = lipschitz_bound(net, method="maxmin-elim", solver="SCS-CVXPY", eps=1e-8, lower_samples=0)
    fast = lipschitz_bound(net, method="maxmin-elim", solver="riccati", lower_samples=128)
    assert fast.solver == "RICCATI" and fast.certified_by == "sdp"
    assert fast.sdp_value == pytest.approx(ref.sdp_value, rel=1e-4)
    assert fast.lower_bound <= fast.bound <= fast.product_bound


@pytest.mark.parametrize("seed", [0, 1])
def test_deep_net_at_least_as_tight_as_cvxpy(seed):
    net = from_weights(_weights(seed, (5, 8, 8, 8, 3)), maxmin())
    qc = lipschitz_bound(net, method="maxmin-qc", solver="SCS-CVXPY", lower_samples=0)
    fast = lipschitz_bound(net, method="maxmin-qc", solver="riccati", lower_samples=256, seed=seed)
    assert fast.lower_bound <= fast.bound <= qc.bound * (1 + 1e-4)
    assert fast.bound <= fast.product_bound
    assert fast.bound <= fast.sdp_value * (1 + 1e-6)  # the proof loses only rounding margins


def test_shared_2fc_16_agrees_with_cvxpy(lipschitz_file):
    net = from_mat(lipschitz_file("maxmin_weights_l2_2fc_16.mat"), "maxmin")
    ref = lipschitz_bound(net, method="maxmin-qc", solver="SCS-CVXPY", eps=1e-7, lower_samples=0)
    fast = riccati_lipschitz_bound(net, method="maxmin-qc", lower_samples=64)
    assert fast.sdp_value == pytest.approx(ref.sdp_value, rel=1e-4)
    assert fast.bound == pytest.approx(22.0744, rel=1e-4)  # results/h2, cvxpy + SCS
    assert fast.lower_bound <= fast.bound <= fast.product_bound


def test_orthogonal_maxmin_net_is_one():
    weights = [ortho_group.rvs(6, random_state=i) for i in range(3)]
    cert = lipschitz_bound(from_weights(weights, maxmin()), solver="riccati", lower_samples=64, eps=1e-5)
    assert 1.0 <= cert.sdp_certified <= 1.0 + 1e-5
    assert cert.lower_bound == pytest.approx(1.0, abs=1e-9)


def test_scaling_a_weight_scales_the_bound():
    w = _weights(5, (4, 6, 6, 2))
    base = lipschitz_bound(from_weights(w, maxmin()), solver="riccati", lower_samples=0, max_iters=300)
    scaled = lipschitz_bound(from_weights([w[0], 3.0 * w[1], w[2]], maxmin()), solver="riccati", lower_samples=0,
                             max_iters=300)
    assert scaled.bound == pytest.approx(3.0 * base.bound, rel=1e-5)


def test_stored_certificate_reverifies_and_tampering_is_caught():
    net = from_weights(_weights(9, (5, 8, 8, 3)), maxmin())
    cert = lipschitz_bound(net, solver="riccati", lower_samples=0, max_iters=300)
    assert verify_riccati_certificate(cert, net)
    cert.rho *= 0.9  # a smaller rho than the multipliers prove
    assert not verify_riccati_certificate(cert, net)


def test_proof_rejects_infeasible_multipliers():
    stages, out = plain_stages(_weights(6, (5, 8, 8, 3)), [maxmin()] * 2)
    t = feasible_multipliers(stages, out)
    assert certify_stages(stages, out, t).ok
    bad = t.copy()
    bad[:4] = 1e-9 * t[:4]  # G_1 = T_1 - D P_1 D^T no longer positive definite
    assert riccati_value(stages, out, bad, 0.0) is None
    assert not certify_stages(stages, out, bad).ok


def test_residual_matches_cvxpy_and_brackets():
    rng = np.random.default_rng(7)
    net = ResidualNetwork(rng.normal(size=(6, 5)), [rng.normal(size=(6, 6)) / 6 for _ in range(2)],
                          [maxmin()] * 2, rng.normal(size=(3, 6)))
    ref = residual_lipschitz_bound(net, method="maxmin-elim", solver="SCS", lower_samples=0)
    fast = residual_riccati_bound(net, lower_samples=256)
    assert fast.certified_by == "sdp"
    assert fast.lower_bound <= fast.bound <= ref.bound * (1 + 1e-4)
    assert fast.bound <= fast.product_bound
    assert verify_riccati_certificate(fast, net)


def test_auto_selects_riccati_for_large_maxmin_nets_only():
    big = from_weights(_weights(8, (40, 40, 40, 4)), maxmin())
    assert lipschitz_bound(big, lower_samples=0).solver == "RICCATI"
    small = from_weights(_weights(8, (4, 6, 4)), maxmin())
    assert lipschitz_bound(small, lower_samples=0).solver != "RICCATI"
    with pytest.raises(ValueError, match="riccati"):
        lipschitz_bound(from_weights(_weights(8, (4, 6, 4)), [RELU]), solver="riccati", lower_samples=0)


def test_cli_help_lists_every_solver():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    help_text = add_parser(sub).format_help().lower()
    for name in ("auto", "barrier", "dual-scaling", "lbfgs", "riccati", "scs", "scs-full", "scs-cvxpy", "clarabel"):
        assert name in help_text
