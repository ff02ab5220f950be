"""The L-BFGS solver on rho(t): agrees with Clarabel, every returned point certifies, the bound
sits between the sampled lower bound and the product, and the 2-4-1 counterexample is not undercut."""
import numpy as np
import pytest

from nlverify.sdp import from_weights, lipschitz_bound, verify_certificate
from nlverify.sdp.activations import RELU, SIGMOID, SIN, TANH, leaky_relu
from nlverify.sdp.certify import certify_rho, qc_blocks
from nlverify.sdp.first_order import build_first_order, mu_levels, solve_first_order, two_loop
from nlverify.sdp.lipsdp import build_lmi_problem, solve_lmi
from nlverify.sdp.methods import make_qcs
from nlverify.sdp.network import normalized


def _net(act, hidden, seed=0, width=8):
    rng = np.random.default_rng(seed)
    dims = [5] + [width] * hidden + [3]
    net = from_weights([rng.normal(size=(dims[i + 1], dims[i])) for i in range(len(dims) - 1)], act)
    return normalized(net)[0]


@pytest.mark.parametrize("act, method", [(RELU, "neuron"), (leaky_relu(0.1), "neuron"), (SIGMOID, "neuron"),
                                         (TANH, "layer")])
@pytest.mark.parametrize("hidden", [1, 3])
def test_lbfgs_matches_clarabel_and_certifies(act, method, hidden):
    net = _net(act, hidden)
    qcs = make_qcs(net.activations, net.hidden_dims, method)
    ref = solve_lmi(build_lmi_problem(net.weights, qcs), "CLARABEL", 1e-10, hidden_margin=0.0).rho
    res = solve_first_order(build_first_order(net.weights, qcs), eps=1e-6)
    cert = certify_rho(net.weights, qc_blocks(qcs, res.values))
    assert cert.ok and ref * (1 - 1e-8) <= cert.rho <= ref * (1 + 1e-3)
    assert cert.rho <= res.rho * (1 + 1e-9) + 1e-12   # the best iterate is feasible (+ the proof margin)


def test_symmetric_slopes_are_rejected():
    """sin ([-1, 1]): the optimum lies on the boundary of the domain; not offered."""
    net = _net(SIN, 1)
    with pytest.raises(ValueError, match="alpha \\+ beta"):
        build_first_order(net.weights, make_qcs(net.activations, net.hidden_dims, "neuron"))


def test_lbfgs_through_the_api_between_lower_and_product_and_verifiable():
    rng = np.random.default_rng(3)
    dims = [10, 20, 20, 20, 10]
    net = from_weights([rng.normal(size=(dims[i + 1], dims[i])) / np.sqrt(dims[i]) for i in range(4)], RELU)
    cert = lipschitz_bound(net, solver="lbfgs", lower_samples=64)
    barrier = lipschitz_bound(net, solver="barrier", lower_samples=0)
    assert cert.solver == "LBFGS" and cert.certified_by == "sdp" and verify_certificate(cert, net.weights)
    assert cert.lower_bound <= cert.bound <= cert.product_bound
    assert barrier.bound * (1 - 1e-3) <= cert.bound <= barrier.bound * (1 + 1e-3)


def test_time_limit_still_returns_a_certified_point():
    net = _net(RELU, 3, width=30)
    cert = lipschitz_bound(net, solver="lbfgs", lower_samples=0, time_limit=1e-3)
    assert cert.certified_by == "sdp" and verify_certificate(cert, net.weights)


def test_counterexample_2_4_1_is_not_undercut():
    """The 2-4-1 net of ../shared/lipschitz/README.md: true gradient norm 1.6625; the unsound
    'LipSDP-Network' gives 1.4258. Every bound we certify must be >= 1.6625."""
    w1 = np.array([[0.7317, -0.5014], [0.8792, -1.0718], [0.9145, -0.0201], [-1.2487, -0.3139]])
    w2 = np.array([[0.0541, 0.2728, -0.9822, -1.1074]])
    net = from_weights([w1, w2], RELU)
    true_norm = max(np.linalg.norm(w2 @ np.diag(mask) @ w1)
                    for mask in np.array(np.meshgrid(*[[0, 1]] * 4)).T.reshape(-1, 4))
    assert true_norm == pytest.approx(1.6625, abs=1e-4)
    for method in ("neuron", "layer"):
        cert = lipschitz_bound(net, method=method, solver="lbfgs", lower_samples=0)
        assert cert.certified_by == "sdp" and cert.bound >= true_norm * (1 - 1e-12)


def test_two_loop_recovers_a_quadratic_newton_step():
    """With n H-conjugate exact curvature pairs of a quadratic, the direction is the Newton step."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 4))
    hess = a @ a.T + 4 * np.eye(4)
    pairs = [(s, hess @ s) for s in np.linalg.eigh(hess)[1].T]
    g = rng.normal(size=4)
    np.testing.assert_allclose(two_loop(g, pairs), -np.linalg.solve(hess, g), rtol=1e-10)


def test_mu_levels_end_at_eps():
    assert mu_levels(1e-5) == pytest.approx([1e-2, 1e-3, 1e-4, 1e-5])
    assert mu_levels(1e-1) == pytest.approx([1e-2])
