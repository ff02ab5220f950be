"""The direct backends (barrier, SCS with/without chordal decomposition) solve the same LMI as cvxpy."""
import numpy as np
import pytest

from nlverify.sdp import from_weights, lipschitz_bound, verify_certificate
from nlverify.sdp.activations import RELU, SIN, TANH, leaky_relu, maxmin
from nlverify.sdp.barrier import build_barrier, solve_barrier
from nlverify.sdp.certify import certify_rho, qc_blocks
from nlverify.sdp.lipsdp import build_lmi_problem, solve_lmi
from nlverify.sdp.methods import make_qcs
from nlverify.sdp.network import normalized
from nlverify.sdp.scs_direct import build_direct, solve_direct, svec


def _net(act, hidden, seed=0, width=8):
    rng = np.random.default_rng(seed)
    dims = [5] + [width] * hidden + [3]
    net = from_weights([rng.normal(size=(dims[i + 1], dims[i])) for i in range(len(dims) - 1)], act)
    return normalized(net)[0]


def _reference(net, qcs):
    return solve_lmi(build_lmi_problem(net.weights, qcs), "CLARABEL", 1e-10, hidden_margin=0.0).rho


def test_svec_is_scs_packing():
    m = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 5.0], [3.0, 5.0, 6.0]])
    r2 = np.sqrt(2)
    np.testing.assert_allclose(svec(m), [1, 2 * r2, 3 * r2, 4, 5 * r2, 6])


@pytest.mark.parametrize("act, method, hidden", [(RELU, "neuron", 0), (leaky_relu(0.1), "neuron", 3),
                                                 (TANH, "layer", 1), (maxmin(), "maxmin-qc", 3),
                                                 (maxmin(), "maxmin-elim", 2)])
def test_direct_scs_matches_clarabel_chordal_and_full(act, method, hidden):
    net = _net(act, hidden)
    qcs = make_qcs(net.activations, net.hidden_dims, method)
    ref = _reference(net, qcs)
    for chordal in (True, False):
        res = solve_direct(build_direct(net.weights, qcs, chordal=chordal), eps=1e-8, hidden_margin=0.0)
        cert = certify_rho(net.weights, qc_blocks(qcs, res.values))
        assert cert.ok and ref * (1 - 1e-9) <= cert.rho <= ref * (1 + 1e-4)


@pytest.mark.parametrize("act, method", [(RELU, "neuron"), (leaky_relu(0.1), "neuron"), (SIN, "neuron"),
                                         (TANH, "layer")])
@pytest.mark.parametrize("hidden", [1, 3])
def test_barrier_matches_clarabel_and_is_strictly_feasible(act, method, hidden):
    net = _net(act, hidden)
    qcs = make_qcs(net.activations, net.hidden_dims, method)
    ref = _reference(net, qcs)
    res = solve_barrier(build_barrier(net.weights, qcs), eps=1e-7)
    cert = certify_rho(net.weights, qc_blocks(qcs, res.values))
    assert cert.ok and ref * (1 - 1e-9) <= cert.rho <= ref * (1 + 1e-5)
    assert cert.rho <= res.rho * (1 + 1e-9)  # the iterate itself is (strictly) feasible


@pytest.mark.parametrize("solver", ["auto", "barrier", "dual-scaling", "lbfgs", "SCS", "SCS-CVXPY"])
def test_every_backend_gives_a_verified_certificate(solver):
    net = _net(RELU, 2, seed=4, width=12)
    cert = lipschitz_bound(net, solver=solver, lower_samples=32)
    assert cert.certified_by == "sdp" and verify_certificate(cert, net.weights)
    assert cert.lower_bound <= cert.bound


def test_random_relu_4x30_barrier_close_to_scs():
    rng = np.random.default_rng(0)
    dims = [10] + [30] * 4 + [10]
    net = from_weights([rng.normal(size=(dims[i + 1], dims[i])) / np.sqrt(dims[i]) for i in range(5)], RELU)
    fast = lipschitz_bound(net, solver="barrier", lower_samples=0)
    slow = lipschitz_bound(net, solver="SCS", eps=1e-6, lower_samples=0)
    assert fast.solver == "BARRIER" and verify_certificate(fast, net.weights)
    assert fast.bound <= slow.bound * (1 + 2e-4)
