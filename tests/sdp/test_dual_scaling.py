"""The dual-scaling solver on the block-tridiagonal LMI: same optimum as Clarabel, certified,
its dual bound is a lower bound, and it passes the 2-4-1 counterexample."""
import numpy as np
import pytest

from nlverify.sdp import from_weights, lipschitz_bound, verify_certificate
from nlverify.sdp.activations import RELU, SIN, TANH, leaky_relu
from nlverify.sdp.api import FIRST_ORDER_MIN_SIZE, auto_slope_solver
from nlverify.sdp.barrier import _Lmi, feasible_start
from nlverify.sdp.blocktri import block_cholesky
from nlverify.sdp.certify import certify_rho, qc_blocks
from nlverify.sdp.dual_scaling import TridiagonalLmi, build_dual_scaling, solve_dual_scaling
from nlverify.sdp.lipsdp import build_lmi_problem, solve_lmi
from nlverify.sdp.methods import make_qcs
from nlverify.sdp.network import normalized


def _net(act, hidden, seed=0, width=8):
    rng = np.random.default_rng(seed)
    dims = [5] + [width] * hidden + [3]
    net = from_weights([rng.normal(size=(dims[i + 1], dims[i])) for i in range(len(dims) - 1)], act)
    return normalized(net)[0]


@pytest.mark.parametrize("act", [RELU, leaky_relu(0.1)])
def test_tridiagonal_lmi_matches_dense_matrix_and_barrier_derivatives(act):
    net = _net(act, 2)
    qcs = make_qcs(net.activations, net.hidden_dims, "neuron")
    dense, tri = _Lmi(net.weights, qcs), TridiagonalLmi(net.weights, qcs)
    rho, v = feasible_start(dense)
    v = v * np.random.default_rng(1).uniform(1, 2, size=v.size)
    f = dense.matrix(rho, v)
    np.testing.assert_allclose(tri.blocks(rho, dense.expand(v)).dense(), f, atol=1e-14)
    chol = tri.factor(rho, v)
    assert chol.logdet() == pytest.approx(np.linalg.slogdet(f)[1], rel=1e-12)
    g_inv = chol.inverse()
    np.testing.assert_allclose(g_inv, np.linalg.inv(f), atol=1e-10)
    for ours, theirs in zip(tri.derivatives(g_inv), dense.barrier_parts(g_inv)):
        np.testing.assert_allclose(ours, theirs, atol=1e-12)


def test_block_cholesky_rejects_indefinite():
    net = _net(RELU, 2)
    tri = TridiagonalLmi(net.weights, make_qcs(net.activations, net.hidden_dims, "neuron"))
    assert tri.factor(-1.0, np.ones(16)) is None       # rho < 0: input block indefinite
    assert tri.factor(1.0, -np.ones(16)) is None       # multipliers outside their cone
    blocks = tri.blocks(1e6, [np.full(8, 1e3)] * 2)
    assert block_cholesky(blocks) is not None


@pytest.mark.parametrize("act, method", [(RELU, "neuron"), (leaky_relu(0.1), "neuron"), (SIN, "neuron"),
                                         (TANH, "layer")])
@pytest.mark.parametrize("hidden", [1, 3])
def test_dual_scaling_matches_clarabel_and_lower_bound_holds(act, method, hidden):
    net = _net(act, hidden)
    qcs = make_qcs(net.activations, net.hidden_dims, method)
    ref = solve_lmi(build_lmi_problem(net.weights, qcs), "CLARABEL", 1e-10, hidden_margin=0.0).rho
    res = solve_dual_scaling(build_dual_scaling(net.weights, qcs), eps=1e-7)
    assert res.status == "optimal"
    cert = certify_rho(net.weights, qc_blocks(qcs, res.values))
    assert cert.ok and ref * (1 - 1e-9) <= cert.rho <= ref * (1 + 1e-5)
    assert cert.rho <= res.rho * (1 + 1e-9)  # the iterate is strictly feasible
    assert res.tolerances["lower_bound"] <= ref * (1 + 1e-7)  # the dual bound is a lower bound


def test_dual_scaling_certificate_between_lower_and_product_and_verifiable():
    rng = np.random.default_rng(3)
    dims = [10, 20, 20, 20, 10]
    net = from_weights([rng.normal(size=(dims[i + 1], dims[i])) / np.sqrt(dims[i]) for i in range(4)], RELU)
    cert = lipschitz_bound(net, solver="dual-scaling", lower_samples=64)
    barrier = lipschitz_bound(net, solver="barrier", lower_samples=0)
    assert cert.solver == "DUAL-SCALING" and cert.certified_by == "sdp"
    assert verify_certificate(cert, net.weights)
    assert cert.lower_bound <= cert.bound <= cert.product_bound
    assert cert.sdp_value <= cert.bound <= cert.sdp_value * (1 + 1e-3)  # raw = proven dual bound
    assert cert.bound == pytest.approx(barrier.bound, rel=2e-4)


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
        cert = lipschitz_bound(net, method=method, solver="dual-scaling", lower_samples=0)
        assert cert.bound >= true_norm * (1 - 1e-12)


def test_auto_picks_dual_scaling_below_the_first_order_size():
    small = [np.zeros((10, 5)), np.zeros((3, 10))]
    big = [np.zeros((FIRST_ORDER_MIN_SIZE, 5)), np.zeros((3, FIRST_ORDER_MIN_SIZE))]
    relu = make_qcs([RELU], [FIRST_ORDER_MIN_SIZE], "neuron")
    sin = make_qcs([SIN], [FIRST_ORDER_MIN_SIZE], "neuron")
    assert auto_slope_solver(small) == "DUAL-SCALING"
    assert auto_slope_solver([np.zeros((3, 5))]) == "BARRIER"    # no hidden layer
    assert auto_slope_solver(big, relu) == "LBFGS"
    assert auto_slope_solver(big, sin) == "DUAL-SCALING"   # first-order method needs alpha + beta > 0
