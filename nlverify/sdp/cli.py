"""``nlverify lipschitz MODEL``: certified l2 Lipschitz bound, printed as ``lower <= certified <= product``.

MODEL is a ``.mat`` weights file (cell array under ``weights`` or ``W``) or an ``.onnx`` model whose
graph is a chain of affine ops and elementwise activations.
"""
from __future__ import annotations

import argparse
import json
import sys

from .methods import METHODS


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("lipschitz", help="certified upper bound on the Lipschitz constant (LipSDP)",
                              description=__doc__)
    p.add_argument("model", metavar="MODEL", help=".mat weights file or .onnx model")
    p.add_argument("--norm", choices=["2", "inf"], default="2", help="2: l2 -> l2 over all outputs; inf: l_inf -> |.| of one output (--output)")
    p.add_argument("--output", default=None,
                   help="with --norm inf: output index k, or i,j for the logit difference y_i - y_j")
    p.add_argument("--method", choices=list(METHODS) + ["auto"], default="auto")
    p.add_argument("--solver", default="auto",
                   help="auto | barrier | dual-scaling | lbfgs | riccati (maxmin-elim) | qc-lbfgs (maxmin-pauli) | SCS (direct, chordal) | "
                        "SCS-FULL | SCS-CVXPY | CLARABEL (or any other cvxpy solver name)")
    p.add_argument("--eps", type=float, default=1e-6, help="initial solver tolerance")
    p.add_argument("--activation", default=None,
                   help="activation for .mat files (relu, tanh, maxmin, ...; default from the file name)")
    p.add_argument("--samples", type=int, default=256, help="random points for the sampled lower bound")
    p.add_argument("--json", action="store_true", help="print the certificate as JSON")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from .api import lipschitz_bound

    try:
        output = None
        if args.output is not None:
            parts = [int(v) for v in str(args.output).split(",")]
            output = parts[0] if len(parts) == 1 else tuple(parts)
        cert = lipschitz_bound(args.model, norm=args.norm, method=args.method, solver=args.solver, eps=args.eps,
                               activation=args.activation, lower_samples=args.samples, output=output)
    except (ValueError, NotImplementedError, OSError) as exc:
        print(f"nlverify lipschitz: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(cert.to_dict(), indent=2, default=float))
        return 0
    print(f"{cert.lower_bound:.6g} <= {cert.bound:.6g} <= {cert.product_bound:.6g}")
    print(f"  method {cert.method}, solver {cert.solver} ({cert.status}, {cert.iterations} iterations, "
          f"{cert.resolves} re-solves), raw SDP {cert.sdp_value:.6g}, gap {cert.gap:+.2e}, "
          f"certified by {cert.certified_by}")
    print(f"  build {cert.build_s:.2f} s, solve {cert.solve_s:.2f} s, certify {cert.certify_s:.2f} s, "
          f"lower {cert.lower_s:.2f} s, LMI size {cert.lmi_size}")
    return 0
