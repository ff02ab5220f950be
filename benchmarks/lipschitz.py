"""Lipschitz benchmark: certified LipSDP / MaxMin-QC bounds against published and reference values.

    python benchmarks/lipschitz.py [--only NAME ...] [--out DIR] [--quick]
    python benchmarks/lipschitz.py --relu-table [--largest 10x300 12x400 ...] [--solver auto]

``--relu-table`` prints only the random-ReLU table (2x100, 5x100, 8x200, then the ``--largest``
nets in the order given, each with a solver time limit leaving room for certification within
300 s in all): certified bound, raw SDP value (the solver's lower estimate for the interior-point
solvers; the best iterate's own value for ``lbfgs``), product bound, sampled lower bound, the
optimum (a barrier solve to a relative gap of 1e-7, computed once per net up to 8x200 and stored
in DIR/relu_reference.json with its lower estimate; delete it to recompute),
the gap of the certified bound to it, the time, and the 1-minute load average at the end of the row.

Rows: the LipSDP README network (targets Neuron 36.482, Layer 39.839), Pauli et al.'s MaxMin MNIST
MLPs (18fc_32: their SDP about 17432, product 73402.96), random ReLU nets 2x100, 5x100 and 8x200
(input 10, output 10, N(0, 1/fan_in) weights, seed 0; targets: 5x100 certified within 0.1 % of the
optimum in <= 15 s, 8x200 within 1 % in <= 60 s). The reference for the ReLU rows is
:func:`reference_optimum` (within about 1e-7 of the optimum), and for 2x100 also the direct SCS
solve at eps 1e-7.
l_inf rows: one logit (output 0) of the l_inf-trained MaxMin nets.
Prints a table and writes ``lipschitz.csv`` / ``lipschitz.json`` to DIR.
The reference weights are read from $NLVERIFY_SHARED/lipschitz (default ../shared/lipschitz).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nlverify.sdp import from_weights, lipschitz_bound  # noqa: E402
from nlverify.sdp.activations import RELU  # noqa: E402

SHARED = Path(os.environ.get("NLVERIFY_SHARED", ROOT / ".." / "shared")) / "lipschitz"


def random_relu(hidden_layers: int, width: int = 100, n_in: int = 10, n_out: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    dims = [n_in] + [width] * hidden_layers + [n_out]
    weights = [rng.normal(size=(dims[i + 1], dims[i])) / np.sqrt(dims[i]) for i in range(len(dims) - 1)]
    return from_weights(weights, RELU)


def cases(quick: bool):
    lip = SHARED / "lipsdp_random_weights.mat"
    yield "lipsdp_random/neuron", lip, dict(method="neuron"), 36.482
    yield "lipsdp_random/layer", lip, dict(method="layer"), 39.839
    for name in ["2fc_16", "5fc_32"] + ([] if quick else ["8fc_32", "18fc_32"]):
        path = SHARED / f"maxmin_weights_l2_{name}.mat"
        for method in ("maxmin-qc", "maxmin-elim"):
            ref = 17432.0 if name == "18fc_32" and method == "maxmin-qc" else None
            yield f"maxmin_{name}/{method}", path, dict(method=method), ref
    for layers, width in ((2, 100), (5, 100), (8, 200)):
        net = random_relu(layers, width)
        yield f"relu_{layers}x{width}/neuron", net, dict(method="neuron"), lambda net=net: reference_optimum(net)["certified"]
    if not quick:
        yield "relu_2x100/neuron-SCS", random_relu(2, 100), dict(method="neuron", solver="SCS"), None
    for name in ["2fc_16", "8fc_32"]:
        path = SHARED / f"maxmin_weights_linf_{name}.mat"
        yield f"maxmin_linf_{name}/y0", path, dict(method="maxmin-elim", norm="inf", output=0), None


LARGE_NET_SECONDS = 300.0


def reference_optimum(net) -> dict:
    """A barrier solve to a relative gap of 1e-7 (the dual-scaling method stalls on 8x200): the
    certified value and the central-path lower estimate ``rho - nu mu`` (not a proof)."""
    start = time.perf_counter()
    cert = lipschitz_bound(net, solver="barrier", eps=1e-9, lower_samples=0, max_resolves=0,
                           max_iters=3000)
    return dict(certified=cert.sdp_certified, lower_estimate=cert.sdp_value, status=cert.status,
                solver="barrier", seconds=time.perf_counter() - start)


def solver_time_limit(layers: int, width: int) -> float:
    """Solver seconds for a large net: 300 s less an allowance for the dense float64 certification
    (up to four attempts of two ~n^3/3-flop Cholesky factorisations of the n x n LMI at ~3 GFlop/s;
    measured on 10x300: 2.5 s per attempt) and 20 s for the sampled lower bound."""
    n = 10 + layers * width
    return max(LARGE_NET_SECONDS - 4 * (2 * n ** 3 / 3) / 3e9 - 20.0, 30.0)


def relu_table(out: Path, largest: list[str], solver: str, only: list[str] | None = None) -> int:
    """The random-ReLU rows only; references are cached (they cost far more than the rows)."""
    import torch
    torch.set_num_threads(1)
    ref_file = out / "relu_reference.json"
    refs = json.loads(ref_file.read_text()) if ref_file.is_file() else {}
    large = [tuple(int(x) for x in name.lower().split("x")) for name in largest]
    print(f"{'net':8s} {'lower':>9s} {'certified':>11s} {'raw SDP':>11s} {'product':>10s} {'optimum':>11s} "
          f"{'vs opt':>9s} {'solver':>12s} {'status':>10s} {'time s':>7s} {'load':>5s}")
    rows = []
    for layers, width in [(2, 100), (5, 100), (8, 200)] + large:
        name = f"{layers}x{width}"
        if only and not any(o in name for o in only):
            continue
        net = random_relu(layers, width)
        is_large = (layers, width) in large
        if name not in refs and not is_large:
            refs[name] = reference_optimum(net)
            out.mkdir(parents=True, exist_ok=True)
            ref_file.write_text(json.dumps(refs, indent=2))
        ref = refs.get(name, {})
        ref = ref.get("certified", math.nan) if isinstance(ref, dict) else ref
        limit = solver_time_limit(layers, width) if is_large else None
        start = time.perf_counter()
        cert = lipschitz_bound(net, solver=solver, time_limit=limit)
        total = time.perf_counter() - start
        load = os.getloadavg()[0]
        rows.append(dict(case=f"relu_{name}", lower=cert.lower_bound, certified=cert.bound,
                         raw_sdp=cert.sdp_value, product=cert.product_bound, optimum=ref,
                         vs_optimum=cert.bound / ref - 1, solver=cert.solver, status=cert.status,
                         iterations=cert.iterations, lmi_size=cert.lmi_size, solve_s=cert.solve_s,
                         certify_s=cert.certify_s, lower_s=cert.lower_s, total_s=total, load1=load,
                         time_limit=limit))
        print(f"{name:8s} {cert.lower_bound:9.4g} {cert.bound:11.7g} {cert.sdp_value:11.7g} "
              f"{cert.product_bound:10.5g} {ref:11.7g} {cert.bound / ref - 1:9.2e} {cert.solver:>12s} "
              f"{cert.status:>10s} {total:7.1f} {load:5.2f}", flush=True)
        write_results(out, rows)
    return 0


def write_results(out: Path, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "lipschitz.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["case"])
        writer.writeheader()
        writer.writerows(rows)
    (out / "lipschitz.json").write_text(json.dumps(rows, indent=2, default=float))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="substrings of row names to run")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "lipschitz")
    parser.add_argument("--quick", action="store_true", help="skip the 8- and 18-layer MaxMin nets")
    parser.add_argument("--relu-table", action="store_true", help="only the random-ReLU table")
    parser.add_argument("--largest", nargs="*", default=["10x300"],
                        help="LxW of larger ReLU nets, each certified within 300 s in all")
    parser.add_argument("--solver", default="auto", help="solver for the --relu-table rows")
    args = parser.parse_args()
    if args.relu_table:
        return relu_table(args.out, args.largest, args.solver, args.only)
    rows = []
    header = f"{'case':28s} {'lower':>11s} {'certified':>11s} {'raw SDP':>11s} {'gap':>9s} {'product':>11s} " \
             f"{'reference':>11s} {'vs ref':>9s} {'build':>6s} {'solve':>7s} {'cert':>6s} {'total':>7s}"
    print(header)
    for name, model, opts, ref in cases(args.quick):
        if args.only and not any(s in name for s in args.only):
            continue
        if isinstance(model, Path) and not model.is_file():
            print(f"{name:28s} skipped: {model} not found")
            continue
        ref_start = time.perf_counter()
        if callable(ref):
            ref = ref()
        ref_s = time.perf_counter() - ref_start
        start = time.perf_counter()
        cert = lipschitz_bound(model, **opts)
        total = time.perf_counter() - start
        vs_ref = cert.bound / ref - 1 if ref else math.nan
        row = dict(case=name, lower=cert.lower_bound, certified=cert.bound, sdp_certified=cert.sdp_certified,
                   raw_sdp=cert.sdp_value, gap=cert.gap, product=cert.product_bound, reference=ref,
                   vs_reference=vs_ref, build_s=cert.build_s, solve_s=cert.solve_s, certify_s=cert.certify_s,
                   lower_s=cert.lower_s, total_s=total, status=cert.status, certified_by=cert.certified_by,
                   iterations=cert.iterations, resolves=cert.resolves, lmi_size=cert.lmi_size,
                   eps=cert.tolerances.get("eps_abs", cert.tolerances.get("eps_gap")), solver=cert.solver,
                   norm=cert.norm, reference_s=ref_s)
        rows.append(row)
        print(f"{name:28s} {cert.lower_bound:11.6g} {cert.bound:11.6g} {cert.sdp_value:11.6g} {cert.gap:9.2e} "
              f"{cert.product_bound:11.6g} {ref if ref else float('nan'):11.6g} {vs_ref:9.2e} "
              f"{cert.build_s:6.2f} {cert.solve_s:7.2f} {cert.certify_s:6.2f} {total:7.2f}", flush=True)
        write_results(args.out, rows)  # after every row, so an interrupted run keeps its figures
    print(f"wrote {args.out / 'lipschitz.csv'} and {args.out / 'lipschitz.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
