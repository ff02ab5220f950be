"""``nlverify soundness``: generate a hidden-counterexample suite, or run a verifier on one.

    nlverify soundness generate OUT [--key KEYDIR] [--activations A ...] [--size small|medium] [--seed N]
                                [--planting constructive|trained]
                                [--prove-clean | --no-prove-clean] [--prove-timeout S] [--time-budget S]
    nlverify soundness run SUITE --key KEYDIR (--vnncomp-scripts DIR | --command 'TEMPLATE')
                           [--json] [--timeout-cap S] [--report-dir DIR]

Exit codes: 0 success (``run``: no unsound claim), 3 ``run`` found unsound
claims, 2 bad arguments or unreadable suite/key (1 stays "internal error", as everywhere).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["add_parser", "run"]

EXIT_OK, EXIT_UNSOUND, EXIT_USAGE = 0, 3, 2  # 1 is reserved for internal errors across nlverify
PROVE_TIMEOUT_S = 20.0
PROVE_CLEAN_BY_DEFAULT = {"small": True, "medium": False}  # small: ~16 decoys, about a minute more
# trained decoys keep a near miss of 0.1 at x*: measured, the prover answered unknown on every one of 6
# (20 s each for the CNNs), so by default they stay 'unknown' instead of spending a third of the budget
PROVE_TRAINED_CLEAN_BY_DEFAULT = False
# seconds after which the trained planting starts no new attempt: a run ends within ~10 minutes on 2 cores
# (one started attempt, the clean prover's last call and the writing come on top); constructive: no limit
TRAINED_TIME_BUDGET_S = 540.0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``soundness`` (with ``generate`` and ``run``) on an argparse subparsers object."""
    from .models import ACTIVATIONS

    parser = subparsers.add_parser("soundness", help="hidden-counterexample suites and verifier soundness checks",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(run=run)
    sub = parser.add_subparsers(dest="soundness_command", required=True)
    gen = sub.add_parser("generate", help="write a suite (VNN-COMP layout) and its answer key")
    gen.add_argument("out", type=Path, help="suite folder (onnx/, vnnlib/, instances.csv)")
    gen.add_argument("--key", type=Path, default=None,
                     help="answer-key folder, never given to a verifier (default: OUT.key next to OUT)")
    gen.add_argument("--activations", nargs="+", default=list(ACTIVATIONS), choices=ACTIVATIONS, metavar="ACT",
                     help=f"activations (default: all of {' '.join(ACTIVATIONS)})")
    gen.add_argument("--size", choices=("small", "medium"), default="small")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--planting", choices=("constructive", "trained"), default="constructive",
                     help="constructive: a needle sub-network (default, seconds); trained: adversarial training "
                          "with a hinge at x* (SoundnessBench-style, minutes for --size small)")
    gen.add_argument("--timeout", type=float, default=60.0, help="per-instance timeout written to instances.csv")
    gen.add_argument("--prove-clean", action=argparse.BooleanOptionalAction, default=None,
                     help="run our verifier (in-process) on every decoy the attack does not break and label "
                          "it 'holds' when it answers unsat (default: on for --size small, off for medium and for "
                          "--planting trained)")
    gen.add_argument("--prove-timeout", type=float, default=PROVE_TIMEOUT_S,
                     help=f"seconds per decoy for --prove-clean (default {PROVE_TIMEOUT_S:g})")
    gen.add_argument("--time-budget", type=float, default=None,
                     help="start no new attempt after this many seconds; slots left empty are reported "
                          f"(default: {TRAINED_TIME_BUDGET_S:g} for --planting trained, none for constructive)")
    gen.add_argument("--quiet", action="store_true")
    runp = sub.add_parser("run", help="run a verifier on a suite and report unsound claims")
    runp.add_argument("suite", type=Path)
    runp.add_argument("--key", type=Path, required=True)
    how = runp.add_mutually_exclusive_group(required=True)
    how.add_argument("--vnncomp-scripts", type=Path, help="folder with prepare_instance.sh and run_instance.sh")
    how.add_argument("--command", help="command template with {onnx} {vnnlib} {result} {timeout}")
    runp.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    runp.add_argument("--timeout-cap", type=float, default=None, help="cap every instance timeout (seconds)")
    runp.add_argument("--category", default="nlverify_soundness", help="category passed to VNN-COMP scripts")
    runp.add_argument("--report-dir", type=Path, default=None, help="also write report.json and report.csv here")
    runp.add_argument("--quiet", action="store_true")
    return parser


def run(args: argparse.Namespace) -> int:
    """Execute a parsed ``soundness`` command; returns the exit code."""
    if args.soundness_command == "generate":
        return _generate(args)
    return _run(args)


def _err(message: str) -> None:
    print(f"nlverify soundness: {message}", file=sys.stderr)


def _generate(args) -> int:
    from .generate import generate_suite, nlverify_clean_prover

    key = args.key or args.out.with_name(args.out.name + ".key")
    log = None if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    prove = args.prove_clean
    if prove is None:
        prove = PROVE_TRAINED_CLEAN_BY_DEFAULT if args.planting == "trained" else PROVE_CLEAN_BY_DEFAULT[args.size]
    try:
        if not args.prove_timeout > 0:
            raise ValueError(f"--prove-timeout must be positive, got {args.prove_timeout:g}")
        time_budget = args.time_budget
        if time_budget is None and args.planting == "trained":
            time_budget = TRAINED_TIME_BUDGET_S
        if time_budget is not None and not time_budget > 0:
            raise ValueError(f"--time-budget must be positive, got {time_budget:g}")
        prover = nlverify_clean_prover(args.prove_timeout, log) if prove else None
        summary = generate_suite(args.out, key, activations=args.activations, size=args.size, seed=args.seed,
                                 timeout=args.timeout, clean_prover=prover, log=log, planting=args.planting,
                                 time_budget=time_budget)
    except (ValueError, OSError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    print(f"{summary['instances']} instances ({summary['planted']} planted) in {args.out}, "
          f"key in {key}, {summary['seconds']:.0f} s")
    for act, counts in summary["per_activation"].items():
        print(f"  {act:11s} planted {counts['planted']:3d}  clean {counts['clean']:3d}"
              + (f" (holds {counts['clean_holds']:d})" if prove else "")
              + f"  planted/attempts mlp {counts['hidden']['mlp']}/{counts['attempts']['mlp']}"
              f" cnn {counts['hidden']['cnn']}/{counts['attempts']['cnn']}  ({counts['seconds']:.0f} s)")
    if summary["discarded"]:
        print(f"  discarded (found by an attack or failed a check): {len(summary['discarded'])} "
              f"(see {key}/summary.json)")
    print(_unfilled_message(summary))
    return EXIT_OK


def _unfilled_message(summary: dict) -> str:
    """What the run produced against its slots, and which slots stayed empty and why."""
    unfilled = summary["unfilled"]
    filled = summary["instances"]
    budget = summary.get("time_budget")
    head = (f"  filled {filled} of {filled + len(unfilled)} slots"
            + (f" (time budget {budget:g} s{', exhausted' if summary.get('budget_exhausted') else ''})"
               if budget else ""))
    if not unfilled:
        return head
    lines = [head + "; empty:"]
    for slot in unfilled:
        config = slot["config"]
        kind = f"{config['kind']}{tuple(config['input_shape'])} eps={config['eps']:g}"
        what = "planted" if config["planted"] else "decoy"
        why = "time budget spent" if slot["why"] == "budget" else "every try discarded"
        lines.append(f"    {slot['activation']:11s} {kind:22s} {what:8s} {slot['attempts']} tries, {why}")
    return "\n".join(lines)


def _run(args) -> int:
    from .harness import format_table, run_harness, write_csv

    for path, what in ((args.suite / "instances.csv", "suite"), (args.key / "key.jsonl", "key")):
        if not path.is_file():
            _err(f"{what}: {path} not found")
            return EXIT_USAGE
    log = None if args.quiet or args.json else (lambda message: print(message, file=sys.stderr, flush=True))
    try:
        report = run_harness(args.suite, args.key, command_template=args.command,
                             vnncomp_scripts=args.vnncomp_scripts, timeout_cap=args.timeout_cap,
                             category=args.category, log=log)
    except (ValueError, OSError, KeyError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    if args.report_dir:
        args.report_dir.mkdir(parents=True, exist_ok=True)
        (args.report_dir / "report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        write_csv(report, args.report_dir / "report.csv")
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_table(report))
    return EXIT_UNSOUND if report.unsound else EXIT_OK
