import math

import numpy as np
import pytest

from nlverify.sdp import from_weights, lipschitz_bound, verify_certificate
from nlverify.sdp.activations import RELU, maxmin
from nlverify.sdp.certify import certify_rho, check_rho, prove_negative_definite, qc_blocks
from nlverify.sdp.methods import make_qcs
from nlverify.sdp.network import normalized
from nlverify.sdp.result import unpack_multipliers


def _net(act=RELU, seed=3):
    rng = np.random.default_rng(seed)
    return from_weights([rng.normal(size=(8, 4)), rng.normal(size=(8, 8)), rng.normal(size=(2, 8))], act)


def test_definiteness_proof_accepts_definite_and_rejects_singular():
    a = -np.diag([1.0, 2.0, 3.0])
    assert prove_negative_definite(a, np.abs(a), 3).ok
    singular = -np.ones((3, 3))
    assert not prove_negative_definite(singular, np.abs(singular), 3).ok
    tiny = -np.diag([1.0, 1.0, 1e-18])  # below the rounding allowance: not provable
    assert not prove_negative_definite(tiny, np.abs(tiny), 3).ok


@pytest.mark.parametrize("act", [RELU, maxmin()])
def test_certificates_verify_without_solver_and_tampering_is_caught(act):
    net = _net(act)
    cert = lipschitz_bound(net, lower_samples=0)
    assert cert.certified_by == "sdp" and verify_certificate(cert, net.weights)
    cert.bound *= 1 - 1e-6
    assert not verify_certificate(cert, net.weights)


def test_perturbed_infeasible_multipliers_are_inflated_or_rejected():
    net = _net()
    cert = lipschitz_bound(net, lower_samples=0)
    net_n, e = normalized(net)
    qcs = make_qcs(net_n.activations, net_n.hidden_dims, cert.method)
    values = unpack_multipliers(cert.multipliers, len(qcs))
    rng = np.random.default_rng(0)
    for trial in range(5):
        bad = [{k: v * rng.uniform(0.2, 1.0, size=v.shape) - (0.01 if trial == 4 else 0.0)
                for k, v in layer.items()} for layer in values]
        blocks = qc_blocks(qcs, bad)
        if check_rho(net_n.weights, blocks, cert.rho).ok:
            continue  # still feasible at rho: nothing to inflate
        result = certify_rho(net_n.weights, blocks)
        assert (not result.ok) or result.rho > cert.rho
        if result.ok:
            assert check_rho(net_n.weights, blocks, result.rho).ok
            assert math.ldexp(math.sqrt(result.rho), e) >= cert.bound * (1 - 1e-9)


def test_certified_bound_never_below_sampled_lower_bound_with_loose_solver():
    net = _net(seed=7)
    cert = lipschitz_bound(net, eps=1e-2, max_resolves=0, lower_samples=256)
    assert cert.lower_bound <= cert.bound
    assert verify_certificate(cert, net.weights)
