"""``nlverify bench DIR``: run ``nlverify verify`` on VNN-COMP benchmark folders and score the answers."""
from __future__ import annotations

from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="run the verifier over VNN-COMP benchmark folders",
                              description="Run `nlverify verify` on every instance of a VNN-COMP benchmark "
                                          "folder (with instances.csv) or of a folder of them, each in its "
                                          "own process under a hard time limit; score against "
                                          "ground_truth.csv when present (in DIR or its parent).")
    p.add_argument("dir", help="a benchmark folder (instances.csv) or a folder of benchmark folders")
    p.add_argument("--timeout-cap", type=float, default=None, help="cap every instance's timeout (seconds)")
    p.add_argument("--jobs", type=int, default=1, help="instances run in parallel (default 1)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads of each instance (default 1); jobs x threads should not exceed "
                        "the cores")
    p.add_argument("--out", default="results.csv", help="results CSV, written as instances finish "
                                                       "(default results.csv)")
    p.add_argument("--benchmark", nargs="+", metavar="NAME", help="only these benchmark folders")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(run=run)


def run(args) -> int:
    from nlverify.benchmarks.runner import find_benchmarks, run_benchmarks, summary_table
    from nlverify.cli import BadInput

    root = Path(args.dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no such directory: {root}")
    folders = find_benchmarks(root)
    if not folders:
        raise BadInput(f"{root}: no instances.csv here nor in its sub-folders")
    if args.benchmark:
        unknown = sorted(set(args.benchmark) - {f.name for f in folders})
        if unknown:
            raise BadInput(f"unknown benchmark(s) {', '.join(unknown)}; found {', '.join(f.name for f in folders)}")
    if args.timeout_cap is not None and not args.timeout_cap > 0:
        raise BadInput(f"--timeout-cap must be positive, got {args.timeout_cap:g}")
    if args.jobs < 1:
        raise BadInput(f"--jobs must be at least 1, got {args.jobs}")
    if args.threads < 1:
        raise BadInput(f"--threads must be at least 1, got {args.threads}")
    results = run_benchmarks(root, args.timeout_cap, args.jobs, Path(args.out) if args.out else None,
                             args.benchmark, progress=lambda line: print(line, flush=True),
                             extra_args=["--threads", str(args.threads)])
    print()
    print(summary_table(results))
    print(f"\nresults written to {args.out}")
    return 0
