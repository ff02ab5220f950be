"""``nlverify tables``: build the branching-point tables, and measure what they buy.

``nlverify tables build [--out DIR] [--activations A ...] [--step S] [-v]`` optimises and writes one
``<activation>.npz`` per activation (default: into the package's ``nlverify/data/branching``, the
shipped tables; see :mod:`nlverify.verifier.tables` for grids and method). ``--step`` replaces every
table's default grid step. ``--threads`` sets torch's CPU threads (default 1).

``nlverify tables evaluate [--samples N] [--seed S] [--exact] [--json FILE]`` samples random intervals
per activation (``l, u`` the sorted pair of two uniform draws on ``[-R, R]``, ``R`` the table's range,
and again on ``[-3R, 3R]`` to exercise the out-of-grid rules), splits them at the looked-up point and
at the midpoint, and prints the mean looseness reduction ``1 - J(p) / J(midpoint)`` (``J`` = total
area between the children's relaxation lines) and the reduction of the summed looseness. With
``--exact`` it also optimises ``p`` directly per interval, the upper limit of what a table can give.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

#: Half-width ``R`` of the evaluation's sampling range, per activation.
EVALUATION_RADIUS: dict[str, float] = {
    "sigmoid": 8.0, "tanh": 4.0, "gelu": 6.0, "sin": 2.0 * math.pi, "cos": 2.0 * math.pi, "exp": 8.0,
}


def add_parser(subparsers) -> None:
    from nlverify.verifier.tables import TABLE_ACTIVATIONS

    p = subparsers.add_parser("tables", help="build / evaluate the branching-point tables",
                              description="Pre-optimised branching points for branch-and-bound over "
                                          "general nonlinearities.")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(run=run)
    sub = p.add_subparsers(dest="tables_command", metavar="ACTION")

    b = sub.add_parser("build", help="optimise and write the tables (.npz)")
    b.add_argument("--out", type=Path, default=None,
                   help="output folder (default: the package's nlverify/data/branching)")
    b.add_argument("--activations", nargs="+", default=list(TABLE_ACTIVATIONS), choices=TABLE_ACTIVATIONS,
                   metavar="A", help=f"which tables (default all: {' '.join(TABLE_ACTIVATIONS)})")
    b.add_argument("--step", type=float, default=None, help="grid step for every table (default per table)")
    b.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    b.add_argument("-v", "--verbose", action="store_true")
    b.set_defaults(run=run)

    e = sub.add_parser("evaluate", help="looseness reduction of the looked-up points vs the midpoint")
    e.add_argument("--activations", nargs="+", default=list(TABLE_ACTIVATIONS), choices=TABLE_ACTIVATIONS,
                   metavar="A")
    e.add_argument("--samples", type=int, default=2000, help="random intervals per activation and range")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--exact", action="store_true", help="also optimise each interval directly")
    e.add_argument("--json", type=Path, default=None, help="write the figures here")
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("-v", "--verbose", action="store_true")
    e.set_defaults(run=run)


def run(args) -> int:
    import torch

    from nlverify.cli import BadInput

    action = getattr(args, "tables_command", None)
    if action is None:
        raise BadInput("nlverify tables: choose an action: build or evaluate")
    if args.threads < 1:
        raise BadInput(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    return _build(args) if action == "build" else _evaluate(args)


def _build(args) -> int:
    from nlverify.cli import BadInput
    from nlverify.verifier.lookup import table_directory
    from nlverify.verifier.tables import build_table, default_spec, save_table

    if args.step is not None and not (0.0 < args.step <= 2.0):
        raise BadInput(f"--step must be in (0, 2], got {args.step:g}")
    out = args.out if args.out is not None else table_directory()
    total = time.perf_counter()
    print(f"{'activation':<10} {'grid':>11} {'cells':>7} {'seconds':>8} {'KiB':>6} {'mean red.':>9}")
    for activation in args.activations:
        spec = default_spec(activation, args.step)
        progress = _progress(activation) if args.verbose else None
        built = build_table(spec, progress=progress)
        path = save_table(built, out)
        print(f"{activation:<10} {spec.n_lower:>5}x{spec.n_upper:<5} {int(built.valid.sum()):>7} "
              f"{built.seconds:>8.1f} {path.stat().st_size / 1024:>6.1f} {built.mean_reduction:>9.1%}")
    print(f"wrote {len(args.activations)} table(s) to {out} in {time.perf_counter() - total:.1f} s")
    return 0


def _progress(activation: str):
    def report(done: int, total: int) -> None:
        print(f"  {activation}: {done}/{total} cells", file=sys.stderr)
    return report


def _evaluate(args) -> int:
    import torch

    from nlverify.cli import BadInput
    from nlverify.verifier.lookup import branching_points
    from nlverify.verifier.tables import best_anchor, default_spec, optimal_relative_split, split_looseness

    if args.samples < 1:
        raise BadInput(f"--samples must be positive, got {args.samples}")
    generator = torch.Generator().manual_seed(args.seed)
    rows = []
    print(f"{'activation':<10} {'range':>8} {'mean red.':>9} {'sum red.':>9}" + ("  exact mean" if args.exact else ""))
    for activation in args.activations:
        for scale in (1.0, 3.0):
            radius = EVALUATION_RADIUS[activation] * scale
            draws = (torch.rand(2, args.samples, generator=generator, dtype=torch.float64) * 2 - 1) * radius
            lower, upper = draws.min(dim=0).values, draws.max(dim=0).values
            with torch.no_grad():
                mid = split_looseness(activation, lower, upper, 0.5 * (lower + upper))
                looked_up = split_looseness(activation, lower, upper, branching_points(activation, lower, upper))
                row = {"activation": activation, "radius": radius, "samples": args.samples,
                       "mean_reduction": float((1 - looked_up / mid).mean()),
                       "sum_reduction": float(1 - looked_up.sum() / mid.sum())}
                if args.exact:
                    _, best = optimal_relative_split(activation, lower, upper)
                    _, best = best_anchor(default_spec(activation), lower, upper, best)
                    row["exact_mean_reduction"] = float((1 - torch.minimum(best, mid) / mid).mean())
            rows.append(row)
            exact = f"  {row['exact_mean_reduction']:>10.1%}" if args.exact else ""
            print(f"{activation:<10} {radius:>8.2f} {row['mean_reduction']:>9.1%} {row['sum_reduction']:>9.1%}{exact}")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0
