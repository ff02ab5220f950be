"""BaB ablation (issue 4): branching-point tables vs midpoint, BBPS vs the width heuristic.

Configurations (hidden ``nlverify verify`` flags, see ``nlverify/verifier/cli.py``):

    bbps+table      the default: BBPS scores choose the neuron, the pre-optimised table the point
    bbps+midpoint   --bab-split-points midpoint
    width+table     --bab-branching width   (interval width x output sensitivity)
    width+midpoint  both baselines (only with --all-configs)

Benchmarks: ``eran_sigmoid`` from ../shared/benchmarks and a generated one (trained tanh / sin / GELU
MLPs, see ``ablation_generated.py``, written to ``results/ablation/generated``). Only instances that
reach the BaB stage are informative: a *pre-filter* runs the default configuration once on every
instance and keeps those whose printed stage timings include ``bab`` (or whose process was killed
before printing them); its runs count as the default configuration's runs. What reached BaB is cached
in ``results/ablation/reach.json`` (per instance and timeout; ``--refilter`` redoes it, e.g. after the
incomplete stages changed). ``--eran-specs`` takes an explicit list instead.

Every run is ``python -m nlverify.cli verify`` in its own process group under the bench runner's hard
wall-clock limit (``timeout + GRACE_S``, 20 s grace), one instance x configuration at a time (``--jobs``),
instance-major so that load drift hits every configuration alike. A ``sat`` answer's counterexample is
re-validated in onnxruntime; ``sat`` and ``unsat`` on the same instance from two configurations, or an
answer against the ground truth, is reported as WRONG.

Output: a markdown table per benchmark (verified / falsified / unknown / timeout / error / WRONG, median
wall time of verified instances, and the median over instances verified by *every* configuration, the
fair comparison), ``results/ablation/{runs.csv, summary.csv, ablation.md}``.

Run (full, ~25 min on one free core):  ``.venv/bin/python benchmarks/ablation.py``
Quick check (2 eran + 3 generated instances):  ``.venv/bin/python benchmarks/ablation.py --quick``
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import signal
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from nlverify.benchmarks import runner  # noqa: E402

CONFIGS = {
    "bbps+table": [],
    "bbps+midpoint": ["--bab-split-points", "midpoint"],
    "width+table": ["--bab-branching", "width"],
    "width+midpoint": ["--bab-branching", "width", "--bab-split-points", "midpoint"],
}
DEFAULT = "bbps+table"
# Hard limit = timeout + GRACE_S. The verifier's clock starts after its imports, which take ~3 s on an idle
# core but over 10 s under a load of 8 on 2 cores; the bench runner's 10 s grace then kills runs that
# already printed their verdict. The verifier enforces its own budget; this is only the safety net.
GRACE_S = max(runner.GRACE_S, 20.0)
LIVE: set[int] = set()  # process groups of the verifiers running now (killed if the ablation is interrupted)
# --quick: two eran instances that the 60 s bench (results/bench_eran.log) left unknown, i.e. that need BaB
QUICK_ERAN = ["idx_1655_", "idx_1211_"]
STATUSES = ("verified", "falsified", "unknown", "timeout", "error", "WRONG")


@dataclass
class Run:
    benchmark: str
    onnx: str
    vnnlib: str
    config: str
    result: str  # sat / unsat / unknown / timeout / error
    status: str  # verified / falsified / unknown / timeout / error / WRONG
    time_s: float  # wall clock of the process, start-up included
    cpu_s: float  # user + system CPU of the process (robust to load from other processes), -1 if killed
    verifier_s: float  # the verifier's own total (-1 when not printed)
    bab_s: float  # time in the BaB stage (0 when not reached, -1 when unknown: killed)
    expected: str = ""
    note: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return self.benchmark, self.onnx, self.vnnlib

    @property
    def stage(self) -> str:
        """How far the default pipeline got: ``bab`` (reached BaB), ``bounds`` (proved without BaB),
        ``attack`` (falsified without BaB), or ``inconclusive`` (out of time before BaB, an error, or
        killed before printing its timings: under load this changes from run to run, so it is not cached)."""
        if self.bab_s > 0:
            return "bab"
        if self.bab_s < 0:
            return "inconclusive"
        return {"unsat": "bounds", "sat": "attack"}.get(self.result, "inconclusive")


def stage_timings(stdout: str) -> dict[str, float] | None:
    """``{stage: seconds}`` from the ``time: T s  (load 1.2s  attack 0.3s ...)`` line of ``nlverify
    verify``, or None when there is no such line."""
    for line in stdout.splitlines():
        if line.startswith("time:") and "(" in line:
            words = line[line.index("(") + 1:line.rindex(")")].split()
            return {stage: float(value.rstrip("s")) for stage, value in zip(words[::2], words[1::2])}
    return None


def _bab_seconds(timings: dict[str, float]) -> float:
    """Seconds in the BaB stage: 0 only when it was not reached (a reached one counts >= 1 ms even if
    the printed value rounds to 0.00)."""
    return max(round(timings["bab"], 3), 0.001) if "bab" in timings else 0.0


def kill_live() -> None:
    for group in list(LIVE):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)


def run_one(instance: runner.Instance, config: str, timeout: float, expected: str = "") -> Run:
    """One instance under one configuration, in its own process with the runner's hard limit."""
    run = runner.launch(instance, timeout, CONFIGS[config], grace=GRACE_S, live=LIVE, cwd=REPO)
    timings = stage_timings(run.stdout)
    status = "WRONG" if run.note.startswith("counterexample") else runner.score(run.verdict, expected)
    return Run(instance.benchmark, instance.onnx, instance.vnnlib, config, run.verdict, status, round(run.elapsed, 3),
               round(run.cpu_s, 3),
               round(sum(timings.values()), 3) if timings else -1.0,
               -1.0 if timings is None else _bab_seconds(timings), expected, run.note)


def flag_disagreements(runs: list[Run]) -> None:
    """Mark ``sat`` vs ``unsat`` between configurations on one instance as WRONG (both: one of them is)."""
    answers: dict[tuple, set[str]] = {}
    for r in runs:
        answers.setdefault(r.key, set()).add(r.result)
    for r in runs:
        if {"sat", "unsat"} <= answers[r.key] and r.result in ("sat", "unsat"):
            r.status, r.note = "WRONG", (r.note + "; " if r.note else "") + "sat/unsat disagreement across configs"


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summary_rows(runs: list[Run], configs: list[str]) -> list[dict]:
    """One row per benchmark and configuration. ``common`` = instances verified by every configuration;
    ``median_common_s`` is over those (the fair speed comparison)."""
    rows = []
    for benchmark in dict.fromkeys(r.benchmark for r in runs):
        mine = [r for r in runs if r.benchmark == benchmark]
        verified = {c: {r.key for r in mine if r.config == c and r.status == "verified"} for c in configs}
        common = set.intersection(*verified.values()) if verified else set()
        for config in configs:
            group = [r for r in mine if r.config == config]
            row = {"benchmark": benchmark, "config": config, "n": len(group)}
            row.update({s: sum(r.status == s for r in group) for s in STATUSES})
            row["median_verified_s"] = median([r.time_s for r in group if r.status == "verified"])
            row["median_verified_cpu_s"] = median([r.cpu_s for r in group if r.status == "verified"])
            row["common"] = len(common)
            row["median_common_s"] = median([r.time_s for r in group if r.key in common])
            row["median_common_cpu_s"] = median([r.cpu_s for r in group if r.key in common])
            row["median_common_bab_s"] = median([r.bab_s for r in group if r.key in common])
            rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    """The ablation table(s), one per benchmark."""
    fmt = lambda v: "-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))  # noqa: E731
    columns = ["config", "n", *STATUSES, "median_verified_s", "median_verified_cpu_s", "common", "median_common_s",
               "median_common_cpu_s", "median_common_bab_s"]
    out = []
    for benchmark in dict.fromkeys(r["benchmark"] for r in rows):
        out += [f"### {benchmark}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        out += ["| " + " | ".join(fmt(r[c]) for c in columns) + " |" for r in rows if r["benchmark"] == benchmark]
        out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ instances
def eran_instances(shared: Path, names: list[str] | None) -> list[runner.Instance]:
    folder = shared / "eran_sigmoid"
    instances = runner.read_instances(folder)
    if names:
        instances = [i for i in instances if any(n in Path(i.vnnlib).name for n in names)]
    return instances


def generated_instances(out: Path, quick: bool, regenerate: bool) -> list[runner.Instance]:
    from ablation_generated import GeneratedSpec, generate

    folder = generate(out / "generated", GeneratedSpec(), force=regenerate)
    instances = [runner.Instance("generated", i.folder, i.onnx, i.vnnlib, i.timeout)
                 for i in runner.read_instances(folder)]
    return [i for i in instances if i.vnnlib.endswith("_0.vnnlib")] if quick else instances


class RunLog:
    """``runs.csv``: one row per finished run, flushed (an interrupted ablation keeps what it did)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stream = open(path, "w", newline="")
        self.writer = csv.DictWriter(self.stream, [f.name for f in fields(Run)])
        self.writer.writeheader()

    def add(self, run: Run) -> None:
        self.writer.writerow(asdict(run))
        self.stream.flush()

    def rewrite(self, runs: list[Run]) -> None:
        """All rows again (after the statuses were revised by :func:`flag_disagreements`)."""
        self.stream.close()
        self.__init__(self.path)
        for run in runs:
            self.add(run)
        self.stream.close()


class ReachCache:
    """How far the default configuration got on each instance (:attr:`Run.stage`), per timeout (JSON on
    disk). Inconclusive stages are not stored."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path, self.timeout = path, timeout
        self.data = json.loads(path.read_text()) if path.is_file() else {}

    def _key(self, instance: runner.Instance) -> str:
        return f"{instance.benchmark}|{instance.onnx}|{instance.vnnlib}|{self.timeout:g}"

    def get(self, instance: runner.Instance) -> str | None:
        return self.data.get(self._key(instance))

    def put(self, instance: runner.Instance, stage: str) -> None:
        if stage == "inconclusive":
            return
        self.data[self._key(instance)] = stage
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=1, sort_keys=True))


# ---------------------------------------------------------------------------------------------- driver
def ablate(instances: list[runner.Instance], configs: list[str], timeout: float, jobs: int, cache: ReachCache,
           truth: dict, log: RunLog, progress=print) -> tuple[list[Run], dict[str, int]]:
    """Pre-filter (default configuration, cached), then every configuration on what reached BaB.
    Returns the runs and the pre-filter's count per :attr:`Run.stage`."""
    runs: list[Run] = []
    kept: list[runner.Instance] = []
    stages: dict[str, int] = {}  # pre-filter outcome -> instances
    expected = lambda i: truth.get((i.benchmark, i.onnx, i.vnnlib), "")  # noqa: E731

    def record(run: Run) -> None:
        runs.append(run)
        log.add(run)
        progress(f"  {run.config:<15}{Path(run.vnnlib).name:<42}{run.result:<8}{run.time_s:7.1f}s cpu {run.cpu_s:5.1f}s"
                 f"  bab {run.bab_s:6.1f}s{'  <<< WRONG' if run.status == 'WRONG' else ''}")

    for instance in instances:  # pre-filter
        stage = cache.get(instance)
        if stage is None:
            first = run_one(instance, DEFAULT, timeout, expected(instance))
            cache.put(instance, first.stage)
            stage = first.stage
            progress(f"pre-filter {Path(instance.vnnlib).name}: {first.result} in {first.time_s:.1f}s "
                     f"(cpu {first.cpu_s:.1f}s), stage {stage}")
            if stage == "bab" and DEFAULT in configs:
                record(first)
        stages[stage] = stages.get(stage, 0) + 1
        if stage == "bab":
            kept.append(instance)
    done = {(r.key, r.config) for r in runs}
    tasks = [(i, c) for i in kept for c in configs
             if ((i.benchmark, i.onnx, i.vnnlib), c) not in done]
    one = lambda task: run_one(task[0], task[1], timeout, expected(task[0]))  # noqa: E731
    if jobs <= 1:
        for task in tasks:
            record(one(task))
        return runs, stages
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        for run in pool.map(one, tasks):
            record(run)
    finally:  # on an interrupt: no new runs, and the running verifiers killed
        pool.shutdown(wait=False, cancel_futures=True)
        kill_live()
    return runs, stages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=None, help="seconds per run (default 30)")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="2 eran instances (QUICK_ERAN), 1 generated per activation")
    parser.add_argument("--all-configs", action="store_true", help="also width+midpoint")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), help="exactly these configurations")
    parser.add_argument("--benchmarks", nargs="+", choices=["eran_sigmoid", "generated"],
                        default=["eran_sigmoid", "generated"])
    parser.add_argument("--eran-specs", nargs="+", metavar="IDX", help="only eran specs whose file name contains "
                                                                          "one of these (e.g. idx_7903)")
    parser.add_argument("--refilter", action="store_true", help="ignore the cache of which instances reach BaB")
    parser.add_argument("--regenerate", action="store_true", help="rebuild the generated benchmark")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "benchmarks")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "ablation")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind through the cleanup below
    try:
        return _main(args)
    finally:
        kill_live()


def _main(args) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    timeout = args.timeout or 30.0
    if args.quick and not args.eran_specs:
        args.eran_specs = QUICK_ERAN
    configs = args.configs or [c for c in CONFIGS if args.all_configs or c != "width+midpoint"]
    args.out.mkdir(parents=True, exist_ok=True)
    cache = ReachCache(args.out / "reach.json", timeout)
    if args.refilter:
        cache.data = {}
    log = RunLog(args.out / "runs.csv")
    load_before, started = os.getloadavg(), time.monotonic()
    runs: list[Run] = []
    prefilter: dict[str, str] = {}  # benchmark -> how far the default pipeline got, counted
    for name in args.benchmarks:
        if name == "eran_sigmoid":
            if not (args.shared / "eran_sigmoid" / "instances.csv").is_file():
                print(f"skipping eran_sigmoid: not found under {args.shared}")
                continue
            instances, truth = eran_instances(args.shared, args.eran_specs), runner.read_ground_truth(args.shared)
        else:
            instances, truth = generated_instances(args.out, args.quick, args.regenerate), {}
        print(f"== {name}: {len(instances)} instances, configs {', '.join(configs)}, timeout {timeout:g}s", flush=True)
        done, stages = ablate(instances, configs, timeout, args.jobs, cache, truth, log,
                              progress=lambda line: print(line, flush=True))
        runs += done
        prefilter[name] = ", ".join(f"{count} {stage}" for stage, count in sorted(stages.items()))
    flag_disagreements(runs)
    log.rewrite(runs)
    rows = summary_rows(runs, configs)
    with open(args.out / "summary.csv", "w", newline="") as stream:
        summary = csv.DictWriter(stream, list(rows[0]) if rows else ["benchmark"])
        summary.writeheader()
        summary.writerows(rows)
    table = markdown(rows)
    footer = "".join(f"pre-filter {name} (how far the default pipeline got; only 'bab' ones are in the "
                     f"table): {text}\n" for name, text in prefilter.items())
    footer += (f"timeout {timeout:g}s per run, --jobs {args.jobs}, wall {time.monotonic() - started:.0f}s; "
              f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    (args.out / "ablation.md").write_text(table + "\n" + footer + "\n")
    print("\n" + table + "\n" + footer)
    wrong = [r for r in runs if r.status == "WRONG"]
    for r in wrong:
        print(f"!!! WRONG: {r.config} {r.benchmark} {r.vnnlib}: {r.result} ({r.note or 'expected ' + r.expected})")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
