"""Reference optimum of the eliminated MaxMin LMI (*) of ``nlverify.sdp.maxmin_stages``, by an
interior-point solve (cvxpy + Clarabel) of the *dense* LMI in ``(x, r_1, ..., r_L)``.

    python benchmarks/maxmin_dense_reference.py 5fc_32 8fc_32 18fc_32 [--out DIR]

Measures how far the L-BFGS / Riccati solver (``solver="riccati"``) stops above the optimum: each
row has the dense optimum (raw, not certified: only a yardstick), the Riccati solver's raw value and
certified bound on the same net, and the relative gap. The dense LMI has ``n_0 + sum_k n_k / 2``
rows (thin-SVD reduced input), so this is for the smaller nets only.

The dense form: with ``p_0 = x``, ``u_k = C_k p_{k-1}``, ``p_k = A_k p_{k-1} + D_k^T r_k`` written as
linear maps ``L_k`` of ``xi = (x, r_1, ..., r_L)``, the LMI is
``L_L^T W_out^T W_out L_L - rho E_x + sum_k sym(R_k^T T_k (U_k - R_k)) <= 0``
(``R_k`` selects ``r_k``, ``U_k = C_k L_{k-1}``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("NLVERIFY_SHARED", ROOT / ".." / "shared")) / "lipschitz"


def dense_optimum(stages, output) -> tuple[float, float]:
    """``(rho*, seconds)`` of the dense LMI (module docstring), Clarabel."""
    import cvxpy as cp
    import numpy as np

    n0 = stages[0].a.shape[1]
    total = n0 + sum(s.pairs for s in stages)
    lin = np.eye(total)[:n0]
    pos, terms, ts = n0, [], []
    for s in stages:
        u = s.c @ lin
        sel = np.eye(total)[pos:pos + s.pairs]
        t = cp.Variable(s.pairs, nonneg=True)
        ts.append(t)
        cross = sel.T @ cp.diag(t) @ (u - sel)
        terms.append((cross + cross.T) / 2)
        lin = s.a @ lin + s.d.T @ sel
        pos += s.pairs
    rho = cp.Variable()
    ex = np.zeros((total, total))
    ex[:n0, :n0] = np.eye(n0)
    y = output @ lin
    mat = y.T @ y - rho * ex + sum(terms)
    prob = cp.Problem(cp.Minimize(rho), [(mat + mat.T) / 2 << 0])
    start = time.perf_counter()
    prob.solve(solver="CLARABEL")
    return float(rho.value), time.perf_counter() - start


def run(name: str) -> dict:
    import math

    import numpy as np
    import torch

    torch.set_num_threads(1)
    from nlverify.sdp.maxmin_bound import riccati_lipschitz_bound
    from nlverify.sdp.maxmin_stages import plain_stages
    from nlverify.sdp.network import from_mat, normalized, reduce_input

    net = from_mat(SHARED / f"maxmin_weights_l2_{name}.mat", "maxmin")
    net_n, exponent = normalized(net)
    stages, output = plain_stages([reduce_input(net_n.weights[0])] + net_n.weights[1:], net_n.activations)
    rho, dense_s = dense_optimum(stages, output)
    dense = math.ldexp(math.sqrt(max(rho, 0.0)), exponent)
    start = time.perf_counter()
    cert = riccati_lipschitz_bound(net, lower_samples=0, time_limit=240)
    wall = time.perf_counter() - start
    return dict(case=name, dense_optimum=dense, dense_s=dense_s, riccati_raw=cert.sdp_value,
                riccati_certified=cert.bound, riccati_wall_s=wall, iterations=cert.iterations,
                gap_raw=cert.sdp_value / dense - 1, gap_certified=cert.bound / dense - 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("nets", nargs="+")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.nets:
        rows.append(run(name))
        print(json.dumps(rows[-1]), flush=True)
        (args.out / "maxmin_dense_reference.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
