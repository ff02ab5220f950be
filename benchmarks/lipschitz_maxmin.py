"""MaxMin / residual MaxMin / Householder Lipschitz benchmark (issue #5).

    python benchmarks/lipschitz_maxmin.py [--only SUBSTR ...] [--timeout 300] [--out DIR] [--quick]

Rows:

* every ``maxmin_weights_l2_*`` net of Pauli et al. (ICLR 2024) in $NLVERIFY_SHARED/lipschitz, with
  ``maxmin-qc`` (their quadratic constraints: 1-Lipschitz per pair + sum preservation, free
  multipliers), ``maxmin-elim`` (exact elimination through one ReLU per pair) and ``maxmin-pauli``
  (Pauli et al.'s own multiplier set, a restriction of maxmin-qc; solver qc-lbfgs, see
  nlverify.sdp.maxmin_pauli). Published (their MOSEK solve with their multipliers, i.e. the
  maxmin-pauli LMI): 18fc_32 SDP about 17432 (product of norms 73402.96), 18fc_128 about 24271.
  ``--solver auto`` solves nets with an LMI of size >= 64 by ``riccati`` (nlverify.sdp.maxmin_bound:
  the sum preservation substituted exactly, where maxmin-qc and maxmin-elim are the same LMI, at
  least as tight as both cvxpy models) and smaller ones by cvxpy + SCS; ``--solver SCS-CVXPY`` forces
  the cvxpy models (maxmin-qc with their constraints and a layer-wide free equality multiplier).
* the residual MaxMin nets ``maxmin_resweights_5_{32,64}`` (:mod:`nlverify.sdp.residual`), with the
  naive bound ``||W_0|| prod_j (1 + ||W_j||) ||W_out||`` as the product column.
* small Householder nets (:mod:`nlverify.sdp.householder`): orthogonal weights (bound 1) and random
  weights.

Each row runs in its own process under a wall-clock ``--timeout`` (default 300 s, the "5 minutes"
of the issue); a row that does not finish is reported as ``timeout`` rather than left out.
Columns: sampled lower bound, certified bound, raw SDP value, product bound, certified/raw gap,
LMI size, solver, build/solve/certify seconds, wall seconds of the whole row. Writes
``lipschitz_maxmin.csv`` and ``lipschitz_maxmin.md`` to DIR (default results/).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = Path(os.environ.get("NLVERIFY_SHARED", ROOT / ".." / "shared")) / "lipschitz"
# roughly by LMI size, so that an interrupted run has the small rows
PLAIN_NETS = ["2fc_16", "2fc_32", "2fc_64", "2fc_128", "5fc_32", "5fc_64", "8fc_32", "8fc_64",
              "18fc_32", "8fc_128", "18fc_64", "8fc_256", "18fc_128"]
QUICK_NETS = ["2fc_16", "5fc_32"]
PUBLISHED = {"18fc_32": 17432.0, "18fc_128": 24271.0}  # their SDP (Pauli et al. Table 1, as quoted)
# solver seconds per row (the best iterate is certified), leaving room in the 300 s row budget for the
# proof and the sampled lower bound; used by the time-limited solvers (riccati, lbfgs, barrier, SCS direct)
SOLVE_LIMIT = 240.0
COLUMNS = ["case", "method", "solver", "status", "lower", "certified", "raw_sdp", "product", "gap",
           "published", "lmi_size", "build_s", "solve_s", "certify_s", "wall_s", "certified_by"]


def case_names(quick: bool) -> list[str]:
    names = []
    for net in QUICK_NETS if quick else PLAIN_NETS:
        names += [f"maxmin_{net}/maxmin-qc", f"maxmin_{net}/maxmin-elim", f"maxmin_{net}/maxmin-pauli"]
    for width in (32, 64):
        names += [f"res_5_{width}/maxmin-qc", f"res_5_{width}/maxmin-elim"]
    names += ["householder_orthogonal/householder", "householder_random/householder"]
    return names


def _row_from_cert(case: str, cert, wall: float, published=None) -> dict:
    return dict(case=case, method=cert.method, solver=cert.solver, status=cert.status, lower=cert.lower_bound,
                certified=cert.bound, raw_sdp=cert.sdp_value, product=cert.product_bound, gap=cert.gap,
                published=published, lmi_size=cert.lmi_size, build_s=cert.build_s, solve_s=cert.solve_s,
                certify_s=cert.certify_s, wall_s=wall, certified_by=cert.certified_by)


def run_one(case: str, solver: str) -> dict:
    """Compute one row in this process (called in a child process by :func:`main`)."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from nlverify.sdp import from_weights, lipschitz_bound

    net_name, method = case.split("/")
    start = time.perf_counter()
    if net_name.startswith("maxmin_"):
        net = net_name[len("maxmin_"):]
        cert = lipschitz_bound(SHARED / f"maxmin_weights_l2_{net}.mat", method=method, solver=solver,
                               lower_samples=64, time_limit=SOLVE_LIMIT)
        # the published value is shown on every row of the net, for comparison
        return _row_from_cert(case, cert, time.perf_counter() - start, PUBLISHED.get(net))
    if net_name.startswith("res_"):
        from nlverify.sdp.residual import residual_from_mat, residual_lipschitz_bound
        rnet = residual_from_mat(SHARED / f"maxmin_resweights_{net_name[len('res_'):]}.mat")
        cert = residual_lipschitz_bound(rnet, method=method, lower_samples=64, solver=solver,
                                        time_limit=SOLVE_LIMIT)
        return _row_from_cert(case, cert, time.perf_counter() - start)
    from nlverify.sdp.householder import householder
    rng = np.random.default_rng(0)
    dims = [8, 16, 16, 16, 4]
    if net_name == "householder_orthogonal":
        from scipy.stats import ortho_group
        weights = [ortho_group.rvs(16, random_state=k)[:dims[k + 1], :dims[k]] for k in range(4)]
    else:
        weights = [rng.normal(size=(dims[k + 1], dims[k])) / np.sqrt(dims[k]) for k in range(4)]
    specs = [householder(rng.normal(size=(8, 2))) for _ in range(3)]
    cert = lipschitz_bound(from_weights(weights, specs), method="neuron", solver=solver, lower_samples=128)
    return _row_from_cert(case, cert, time.perf_counter() - start)


def run_with_timeout(case: str, solver: str, timeout: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, __file__, "--run-one", case, "--solver", solver],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return dict(case=case, method=case.split("/")[1], solver=solver, status=f"timeout>{timeout:.0f}s",
                    wall_s=time.perf_counter() - start)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return dict(case=case, method=case.split("/")[1], solver=solver, status=f"error: {tail}",
                    wall_s=time.perf_counter() - start)
    return json.loads(lines[-1])


def fmt(value, spec: str = ".6g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def write_results(out: Path, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "lipschitz_maxmin.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    head = "| case | method | lower | certified | raw SDP | product | published | gap | LMI | solver | wall s | status |"
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(f"| {r['case'].split('/')[0]} | {r['method']} | {fmt(r.get('lower'))} | {fmt(r.get('certified'))} | "
                     f"{fmt(r.get('raw_sdp'))} | {fmt(r.get('product'))} | {fmt(r.get('published'))} | "
                     f"{fmt(r.get('gap'), '.1e')} | {fmt(r.get('lmi_size'))} | {r.get('solver', '-')} | "
                     f"{fmt(r.get('wall_s'), '.1f')} | {r.get('status', '-')} |")
    (out / "lipschitz_maxmin.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="substrings of row names to run")
    parser.add_argument("--timeout", type=float, default=300.0, help="wall seconds per row")
    parser.add_argument("--solver", default="auto")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--quick", action="store_true", help="only the 2fc_16 and 5fc_32 plain nets")
    parser.add_argument("--run-one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        print(json.dumps(run_one(args.run_one, args.solver), default=float))
        return 0
    rows = []
    for case in case_names(args.quick):
        if args.only and not any(s in case for s in args.only):
            continue
        row = run_with_timeout(case, args.solver, args.timeout)
        rows.append(row)
        print(f"{case:36s} lower {fmt(row.get('lower')):>11s}  certified {fmt(row.get('certified')):>11s}  "
              f"raw {fmt(row.get('raw_sdp')):>11s}  product {fmt(row.get('product')):>11s}  "
              f"wall {fmt(row.get('wall_s'), '.1f'):>6s}s  {row.get('status')}", flush=True)
        write_results(args.out, rows)  # after every row, so an interrupted run keeps its figures
    print(f"wrote {args.out / 'lipschitz_maxmin.csv'} and {args.out / 'lipschitz_maxmin.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
