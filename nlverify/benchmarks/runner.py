"""Run ``nlverify verify`` over VNN-COMP benchmark folders and score the answers against ground truth.

Each instance runs in its own process (``python -m nlverify.cli verify ...``) in a new session, under a
hard wall-clock limit ``min(instance timeout, cap) + GRACE_S``; past it the whole process group is killed
and the instance counts as ``timeout``. Results are appended to the CSV as they arrive, so an interrupted
run keeps what it finished. A ``sat`` answer is re-checked here: its counterexample must validate in
onnxruntime on the original file, otherwise it is scored as WRONG.
"""
from __future__ import annotations

import csv
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterable

GRACE_S = 10.0  # start-up (python, torch, onnxruntime imports) and result writing beyond the verifier's budget
VERDICTS = ("sat", "unsat", "unknown", "timeout", "error")


@dataclass(frozen=True)
class Instance:
    benchmark: str
    folder: Path
    onnx: str  # relative to folder, as in instances.csv
    vnnlib: str
    timeout: float


@dataclass
class InstanceResult:
    benchmark: str
    onnx: str
    vnnlib: str
    timeout: float
    result: str  # sat / unsat / unknown / timeout / error
    time_s: float  # wall clock of the whole process, start-up included
    verifier_s: float  # the verifier's own reported time (its budget clock), -1 when not reported
    exit_code: int
    peak_rss_mb: float
    expected: str = ""
    status: str = ""  # verified / falsified / unknown / timeout / error / WRONG
    note: str = ""


def find_benchmarks(root: Path) -> list[Path]:
    """``root`` itself when it holds ``instances.csv``, else its sub-folders that do (sorted)."""
    root = Path(root)
    if (root / "instances.csv").is_file():
        return [root]
    return sorted(p for p in root.iterdir() if (p / "instances.csv").is_file()) if root.is_dir() else []


def read_instances(folder: Path) -> list[Instance]:
    """Rows ``onnx,vnnlib,timeout`` of ``folder/instances.csv`` (blank lines skipped)."""
    instances = []
    with open(folder / "instances.csv", newline="") as stream:
        for row in csv.reader(stream):
            if not row or not row[0].strip():
                continue
            onnx, vnnlib, timeout = (c.strip() for c in row[:3])
            instances.append(Instance(folder.name, folder, onnx, vnnlib, float(timeout)))
    return instances


def read_ground_truth(root: Path) -> dict[tuple[str, str, str], str]:
    """``(benchmark, onnx, vnnlib) -> expected`` from ``ground_truth.csv`` in ``root`` or its parent."""
    for candidate in (Path(root) / "ground_truth.csv", Path(root).parent / "ground_truth.csv"):
        if candidate.is_file():
            with open(candidate, newline="") as stream:
                return {(r["benchmark"], r["onnx"], r["vnnlib"]): r["expected"].strip()
                        for r in csv.DictReader(stream)}
    return {}


def score(result: str, expected: str) -> str:
    """verified / falsified / unknown / timeout / error, or WRONG when a sat/unsat answer contradicts a
    sat/unsat expectation (DISPUTED and unknown expectations never make an answer wrong)."""
    if result in ("sat", "unsat") and expected in ("sat", "unsat") and result != expected:
        return "WRONG"
    return {"sat": "falsified", "unsat": "verified"}.get(result, result if result in VERDICTS else "error")


def _verdict_of(path: Path) -> str:
    try:
        words = path.read_text().split(None, 1)
    except OSError:
        return "error"
    word = words[0].lower() if words else ""
    return {"violated": "sat", "holds": "unsat"}.get(word, word if word in VERDICTS else "error")


def _check_counterexample(instance: Instance, result_path: Path) -> str:
    """'' when the sat result file's counterexample validates on the original model, else why not."""
    from nlverify.verifier.result import read_result_file, validate_counterexample
    from nlverify.verifier.spec import parse_vnnlib

    try:
        result = read_result_file(result_path)
        if result.x is None:
            return "sat without a counterexample"
        spec = parse_vnnlib(instance.folder / instance.vnnlib)
        ok, _, message = validate_counterexample(instance.folder / instance.onnx, spec, result.x)
        return "" if ok else f"counterexample rejected: {message}"
    except Exception as exc:  # noqa: BLE001 - any failure means the counterexample is not confirmed
        return f"counterexample unreadable: {exc}"


@dataclass
class Launch:
    """One ``nlverify verify`` process, finished: its exit code (None when killed at the hard limit),
    the verdict read from its result file (``timeout`` when killed, ``error`` when absent), a note, wall
    seconds, its own peak RSS (MB) and CPU seconds (user + system, from ``wait4``), and its output."""

    code: int | None
    verdict: str
    note: str
    elapsed: float
    peak_rss_mb: float
    cpu_s: float
    stdout: str
    stderr: str


def _wait(process: subprocess.Popen, limit: float) -> tuple[int | None, float, float]:
    """Wait up to ``limit`` seconds; returns ``(exit code or None if still running, peak RSS in MB, CPU
    seconds)`` using ``wait4`` so the rusage is this child's own."""
    end = time.monotonic() + limit
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return process.returncode, usage.ru_maxrss / 1024.0, usage.ru_utime + usage.ru_stime
        if time.monotonic() >= end:
            return None, 0.0, -1.0
        time.sleep(0.02)


def launch(instance: Instance, budget: float, extra_args: Iterable[str] = (), grace: float = GRACE_S,
           live: set[int] | None = None, cwd: Path | None = None) -> Launch:
    """Run ``nlverify verify`` on one instance with ``--timeout budget`` in its own process group, killed
    past ``budget + grace`` s. ``live`` (optional) holds the group while it runs, so that a caller
    interrupted meanwhile can kill it. A ``sat`` verdict's counterexample is re-checked in onnxruntime
    (the note says why it was rejected)."""
    with tempfile.TemporaryDirectory(prefix="nlverify-bench-") as scratch:
        result_path = Path(scratch) / "result.txt"
        command = [sys.executable, "-m", "nlverify.cli", "verify", str(instance.folder / instance.onnx),
                   str(instance.folder / instance.vnnlib), "--timeout", f"{budget:g}",
                   "--result-file", str(result_path), *extra_args]
        start = time.monotonic()
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            process = subprocess.Popen(command, stdout=out, stderr=err, start_new_session=True, cwd=cwd)
            if live is not None:
                live.add(process.pid)
            try:
                code, rss, cpu = _wait(process, budget + grace)
                if code is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    _, rss, _ = _wait(process, 5.0)
                    verdict, note = "timeout", "killed at the hard limit"
                else:
                    verdict, note = _verdict_of(result_path) if result_path.is_file() else "error", ""
            finally:
                if live is not None:
                    live.discard(process.pid)
            elapsed = time.monotonic() - start
            out.seek(0), err.seek(0)
            stdout, stderr = (f.read().decode(errors="replace").strip() for f in (out, err))
        if verdict == "error" and not note:
            note = stderr.splitlines()[-1] if stderr else f"exit code {code}"
        if verdict == "sat":
            note = _check_counterexample(instance, result_path) or note
    return Launch(code, verdict, note, elapsed, rss, cpu, stdout, stderr)


def run_instance(instance: Instance, cap: float | None, extra_args: Iterable[str] = ()) -> InstanceResult:
    """Run one instance in its own process group under a hard wall-clock limit."""
    budget = min(instance.timeout, cap) if cap else instance.timeout
    run = launch(instance, budget, extra_args)
    return InstanceResult(instance.benchmark, instance.onnx, instance.vnnlib, instance.timeout, run.verdict,
                          round(run.elapsed, 3), _reported_time(run.stdout), -1 if run.code is None else run.code,
                          round(run.peak_rss_mb, 1), note=run.note)


def _reported_time(stdout: str) -> float:
    """The ``time: X s`` line ``nlverify verify`` prints, or -1."""
    for line in stdout.splitlines():
        if line.startswith("time:"):
            try:
                return float(line.split()[1].rstrip("s"))
            except (IndexError, ValueError):
                return -1.0
    return -1.0


class CsvLog:
    """Appends one row per finished instance and flushes it (an interrupted run keeps what is done)."""

    def __init__(self, path: Path | None) -> None:
        self.stream = open(path, "w", newline="") if path else None
        self.writer = csv.DictWriter(self.stream, [f.name for f in fields(InstanceResult)]) if self.stream else None
        if self.writer:
            self.writer.writeheader()
            self.stream.flush()

    def add(self, result: InstanceResult) -> None:
        if self.writer:
            self.writer.writerow(asdict(result))
            self.stream.flush()

    def close(self) -> None:
        if self.stream:
            self.stream.close()


def run_benchmarks(root: Path, cap: float | None = None, jobs: int = 1, out: Path | None = None,
                   names: list[str] | None = None, progress: Callable[[str], None] = print,
                   extra_args: Iterable[str] = ()) -> list[InstanceResult]:
    """Run every instance of the benchmark folders under ``root`` (only ``names`` when given)."""
    folders = [f for f in find_benchmarks(root) if not names or f.name in names]
    instances = [i for f in folders for i in read_instances(f)]
    truth = read_ground_truth(root)
    log = CsvLog(out)
    results: list[InstanceResult] = []
    extra = list(extra_args)

    def one(index_instance: tuple[int, Instance]) -> InstanceResult:
        index, instance = index_instance
        result = run_instance(instance, cap, extra)
        result.expected = truth.get((instance.benchmark, instance.onnx, instance.vnnlib), "")
        result.status = "WRONG" if result.note.startswith("counterexample") else score(result.result,
                                                                                           result.expected)
        return result

    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for done, result in enumerate(pool.map(one, enumerate(instances)), 1):
                results.append(result)
                log.add(result)
                flag = "   <<< WRONG ANSWER" if result.status == "WRONG" else ""
                progress(f"[{done}/{len(instances)}] {result.benchmark} {Path(result.onnx).name} "
                         f"{Path(result.vnnlib).name}: {result.result} ({result.time_s:.1f}s"
                         f"{', expected ' + result.expected if result.expected else ''}){flag}")
    finally:
        log.close()
    return results


STATUSES = ("verified", "falsified", "unknown", "timeout", "error", "WRONG")


def summary_table(results: list[InstanceResult]) -> str:
    """Per benchmark: counts per status, total and median wall time (start-up included), median time the
    verifier itself reported; then every WRONG instance, loudly."""
    by_benchmark: dict[str, list[InstanceResult]] = {}
    for r in results:
        by_benchmark.setdefault(r.benchmark, []).append(r)
    header = f"{'benchmark':<14}{'n':>4}" + "".join(f"{s:>10}" for s in STATUSES) + f"{'total_s':>10}{'median_s':>10}{'med_verif_s':>12}"
    lines = [header, "-" * len(header)]
    groups = list(by_benchmark.items()) + ([("ALL", results)] if len(by_benchmark) > 1 else [])
    for name, group in groups:
        counts = [sum(r.status == s for r in group) for s in STATUSES]
        times = [r.time_s for r in group]
        own = [r.verifier_s for r in group if r.verifier_s >= 0]
        lines.append(f"{name:<14}{len(group):>4}" + "".join(f"{c:>10}" for c in counts)
                     + f"{sum(times):>10.1f}{statistics.median(times) if times else 0:>10.2f}"
                     + f"{statistics.median(own) if own else -1:>12.2f}")
    wrong = [r for r in results if r.status == "WRONG"]
    if wrong:
        lines.append("")
        lines.append(f"!!! {len(wrong)} WRONG ANSWER(S) !!!")
        lines += [f"!!! {r.benchmark} {r.onnx} {r.vnnlib}: answered {r.result}, expected {r.expected}"
                  f"{' (' + r.note + ')' if r.note else ''}" for r in wrong]
    return "\n".join(lines)
