"""l_inf -> |.| bounds of one output / a logit difference (nlverify.sdp.linf)."""
import subprocess
import sys

import numpy as np
import pytest

from nlverify.sdp import from_weights, lipschitz_bound, verify_certificate
from nlverify.sdp.activations import RELU, maxmin
from nlverify.sdp.network import LipNetwork


def test_linear_layer_is_the_l1_norm_of_the_row():
    w = np.random.default_rng(0).normal(size=(3, 6))
    cert = lipschitz_bound(LipNetwork([w], []), norm="inf", output=1, lower_samples=16)
    exact = np.abs(w[1]).sum()
    assert exact * (1 - 1e-9) <= cert.bound <= exact * (1 + 1e-4)
    assert cert.lower_bound == pytest.approx(exact)
    assert verify_certificate(cert, [w])


@pytest.mark.parametrize("act, method, output", [(RELU, "neuron", 0), (maxmin(), "maxmin-elim", (0, 1)),
                                                 (maxmin(), "maxmin-qc", 1)])
def test_lower_le_certified_le_product_and_verifies(act, method, output):
    rng = np.random.default_rng(1)
    dims = (6, 8, 8, 3)
    net = from_weights([rng.normal(size=(dims[i + 1], dims[i])) for i in range(3)], act,
                       [rng.normal(size=d) for d in dims[1:]])
    cert = lipschitz_bound(net, norm="inf", output=output, method=method, lower_samples=256)
    assert cert.certified_by == "sdp" and cert.norm == "inf"
    assert 0 < cert.lower_bound <= cert.bound <= cert.product_bound
    assert verify_certificate(cert, net.weights)
    cert.bound *= 1 - 1e-6
    assert not verify_certificate(cert, net.weights)


def test_linf_needs_an_output_for_vector_valued_nets():
    net = from_weights([np.eye(3), np.ones((2, 3))], RELU)
    with pytest.raises(ValueError, match="output"):
        lipschitz_bound(net, norm="inf")


def test_cli_norm_inf(lipschitz_file):
    path = lipschitz_file("lipsdp_random_weights.mat")
    out = subprocess.run([sys.executable, "-m", "nlverify", "lipschitz", str(path), "--norm", "inf",
                          "--output", "0,1", "--samples", "16"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lower, bound, product = (float(v) for v in out.stdout.splitlines()[0].split(" <= "))
    assert lower <= bound <= product
