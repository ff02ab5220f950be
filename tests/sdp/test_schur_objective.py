"""rho(t) = lambda_max of the Schur complement, computed block-tridiagonally: equals the dense
Schur complement, its gradient matches finite differences, the smoothing brackets it."""
import math

import numpy as np
import pytest

from nlverify.sdp import from_weights
from nlverify.sdp.activations import RELU, SIN, leaky_relu
from nlverify.sdp.barrier import _Lmi, feasible_start
from nlverify.sdp.certify import schur_estimate
from nlverify.sdp.dual_scaling import TridiagonalLmi
from nlverify.sdp.methods import make_qcs
from nlverify.sdp.network import normalized
from nlverify.sdp.schur_objective import schur_value


def _lmi(act, hidden, method="neuron", seed=0):
    rng = np.random.default_rng(seed)
    dims = [5] + [8] * hidden + [3]
    net = normalized(from_weights([rng.normal(size=(dims[i + 1], dims[i])) for i in range(len(dims) - 1)], act))[0]
    qcs = make_qcs(net.activations, net.hidden_dims, method)
    return TridiagonalLmi(net.weights, qcs), _Lmi(net.weights, qcs)


def _point(dense, seed=1):
    _, v = feasible_start(dense)
    return v * np.random.default_rng(seed).uniform(1, 2, size=v.size)


@pytest.mark.parametrize("act, method, hidden", [(RELU, "neuron", 1), (RELU, "neuron", 3),
                                                 (leaky_relu(0.2), "neuron", 2), (SIN, "neuron", 2),
                                                 (RELU, "layer", 3)])
def test_rho_is_the_dense_schur_complement_and_gradient_is_exact(act, method, hidden):
    tri, dense = _lmi(act, hidden, method)
    v = _point(dense)
    m0 = -dense.matrix(0.0, v)                     # M(0) = -F(0)
    expected = schur_estimate(m0, tri.n0)
    for mu in (0.0, 0.05):
        val = schur_value(tri, v, mu)
        assert val.rho == pytest.approx(expected, rel=1e-10)
        assert val.rho <= val.smoothed <= val.rho + mu * math.log(tri.n0) + 1e-12
        direction = np.random.default_rng(2).normal(size=v.size) * v
        h = 1e-6
        fd = (schur_value(tri, v + h * direction, mu).smoothed
              - schur_value(tri, v - h * direction, mu).smoothed) / (2 * h)
        assert val.gradient @ direction == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_rho_is_the_best_rho_for_fixed_multipliers():
    """F(rho, t) > 0 just above rho(t), not just below it."""
    tri, dense = _lmi(RELU, 2)
    v = _point(dense)
    rho = schur_value(tri, v, 0.0).rho
    assert np.linalg.eigvalsh(dense.matrix(rho * (1 + 1e-6), v)).min() > 0
    assert np.linalg.eigvalsh(dense.matrix(rho * (1 - 1e-6), v)).min() < 0


def test_infeasible_multipliers_are_rejected():
    tri, dense = _lmi(RELU, 2)
    v = _point(dense)
    assert schur_value(tri, -v, 0.0) is None               # outside the cone
    assert schur_value(tri, v * 1e-9, 0.0) is None          # H(t) = T - W^T W not > 0 (last block)
