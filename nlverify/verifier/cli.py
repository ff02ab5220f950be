"""``nlverify verify MODEL SPEC``: decide a VNN-LIB property on an ONNX model.

Prints the verdict and per-stage timings; ``--result-file`` writes the VNN-COMP result file (first line
``sat``/``unsat``/``unknown``/``timeout``/``error``; for ``sat`` the counterexample). Exit codes: 0 a
verdict was reached (any of them), 2 bad input (one-line message; the result file says ``error``), 1
internal error.
"""
from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("verify", help="verify a VNN-LIB property on an ONNX model",
                              description="Decide a VNN-LIB property on an ONNX model: sat (with a "
                                          "counterexample confirmed by onnxruntime), unsat (proved), "
                                          "unknown or timeout.",
                              epilog="Exit codes: 0 verdict reached, 1 internal error, 2 bad input.")
    p.add_argument("model", help="ONNX model (.onnx or .onnx.gz)")
    p.add_argument("spec", help="VNN-LIB property (.vnnlib or .vnnlib.gz)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds for everything, loading included "
                                                                 "(default 300)")
    p.add_argument("--result-file", help="write the VNN-COMP result file here")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="torch device (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the attack (default 0)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU cores to use (default 1: robust on shared machines; raise it on idle ones): "
                        "torch threads, and input-split branch and bound shards its domains across this "
                        "many worker processes once it has run 2 s alone")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also print why the verdict was reached, stage counts, attack_margin (the smallest "
                        "violation margin the attack reached; <= 0: violated) and any counterexample; on an "
                        "internal error, the traceback")
    # Hidden, for the BaB ablation (benchmarks/ablation.py): which neuron, and where to split it.
    p.add_argument("--bab-branching", choices=["bbps", "width"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--bab-split-points", choices=["table", "midpoint"], default=None, help=argparse.SUPPRESS)
    p.set_defaults(run=run)


def pipeline_options(args):
    """``PipelineOptions`` whose BaB stage uses the ``--bab-*`` choices, or None (the defaults) when
    neither hidden flag is given."""
    if args.bab_branching is None and args.bab_split_points is None:
        return None
    from nlverify.verifier.bab import BabOptions
    from nlverify.verifier.pipeline import PipelineOptions

    choices = {k: v for k, v in (("branching", args.bab_branching), ("split_points", args.bab_split_points))
               if v is not None}

    def configured_bab(model, problems, time_left, device="cpu", seed=0):
        from nlverify.verifier.bab import branch_and_bound

        return branch_and_bound(model, problems, time_left, device=device, seed=seed,
                                options=BabOptions(seed=seed, **choices))

    return PipelineOptions(bab=configured_bab)


def run(args) -> int:
    try:
        return _run(args)
    except BaseException as exc:
        if args.result_file and not isinstance(exc, KeyboardInterrupt):
            _write_error(args.result_file)
        raise


def _write_error(path: str) -> None:
    from nlverify.verifier.result import write_result_file

    try:
        write_result_file(path, "error")
    except OSError:
        pass  # the original error is the one to report


def _run(args) -> int:
    import torch

    from nlverify.cli import BadInput, require_device

    if not args.timeout > 0:
        raise BadInput(f"--timeout must be positive, got {args.timeout:g}")
    if args.threads < 1:
        raise BadInput(f"--threads must be at least 1, got {args.threads}")
    require_device(args.device)
    torch.set_num_threads(args.threads)

    from nlverify.verifier.pipeline import verify
    from nlverify.verifier.result import Verdict, write_result_file

    result = verify(args.model, args.spec, args.timeout, device=args.device, seed=args.seed,
                    options=pipeline_options(args))
    if args.result_file:
        if result.verdict is Verdict.SAT:
            write_result_file(args.result_file, result.verdict, result.x, result.y)
        else:
            write_result_file(args.result_file, result.verdict)
    print(result.verdict.value)
    timings = "  ".join(f"{stage} {seconds:.2f}s" for stage, seconds in result.timings.items())
    print(f"time: {sum(result.timings.values()):.2f}s  ({timings})")
    if args.verbose:
        if result.message:
            print(result.message)
        print("stats: " + ", ".join(f"{k}={v}" for k, v in result.stats.items()))
        if result.x is not None:
            print("counterexample x: " + " ".join(f"{v:.9g}" for v in result.x))
            print("outputs y:        " + " ".join(f"{v:.9g}" for v in result.y))
    sys.stdout.flush()
    return 0
