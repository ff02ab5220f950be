"""Run any VNN-COMP-style verifier on a soundness suite and name its unsound claims.

A verifier is run once per ``instances.csv`` row, either through a command
template (``{onnx}``, ``{vnnlib}``, ``{result}``, ``{timeout}`` placeholders;
split with ``shlex`` and run without a shell) or through VNN-COMP scripts
(``prepare_instance.sh v1 CATEGORY ONNX VNNLIB`` then ``run_instance.sh v1
CATEGORY ONNX VNNLIB RESULT TIMEOUT``). Each run gets its own process group
and a hard wall-clock limit (the instance timeout plus :data:`GRACE_S`);
past it that group, and only it, is killed.

The verdict is the result file's first word, matched exactly and
case-insensitively against ``sat``, ``unsat``, ``unknown``, ``timeout``,
``error`` (``violated`` = sat, ``holds`` = unsat); anything else is ``error``.
A ``sat`` counterexample (``(X_i v)`` pairs) is validated with onnxruntime on
the suite's ONNX file against the box and property of its VNN-LIB file.

Scoring against the answer key (never shown to the verifier):

* truth ``violated`` + ``unsat``  -> **UNSOUND** (listed with the key's
  counterexample and its onnxruntime output, re-computed now);
* truth ``violated`` + ``sat`` -> falsified (valid or invalid counterexample);
* truth ``holds``/``unknown`` (clean) + ``unsat`` -> verified; + ``sat`` with an
  invalid counterexample -> wrongly falsified; with a valid one -> falsified
  (for ``holds`` that contradicts the key, reported as ``key_contradicted``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Union

import numpy as np

from .check import ort_outputs, violation_margin
from .vnnlib_io import read_property

__all__ = ["GRACE_S", "VERDICTS", "InstanceOutcome", "HarnessReport", "read_verdict", "read_counterexample",
           "run_harness", "format_table", "run_limited"]

GRACE_S = 10.0
PREPARE_LIMIT_S = 300.0
VERDICTS = ("sat", "unsat", "unknown", "timeout", "error")
_ALIASES = {"violated": "sat", "holds": "unsat"}
INPUT_TOL = 1e-6  # a counterexample may leave the box by this much (times max(1, |bound|))
_PAIR = re.compile(r"\(\s*X_(\d+)\s+([^\s()]+)\s*\)")


def read_verdict(text: str) -> tuple[str, str]:
    """``(verdict, first_word)`` of a result file's text, by exact word match."""
    words = text.split(None, 1)
    if not words:
        return "error", ""
    word = words[0].lower()
    word = _ALIASES.get(word, word)
    return (word if word in VERDICTS else "error"), words[0]


def read_counterexample(text: str) -> np.ndarray | None:
    """The ``(X_i v)`` assignment after the first line, dense, or None if absent or malformed."""
    body = text.split("\n", 1)[1] if "\n" in text else ""
    values: dict[int, float] = {}
    for index, literal in _PAIR.findall(body):
        try:
            values[int(index)] = float(literal)
        except ValueError:
            return None
    if not values or sorted(values) != list(range(len(values))):
        return None
    return np.array([values[i] for i in range(len(values))])


def run_limited(argv: list[str], limit_s: float, cwd: Union[str, Path, None] = None) -> tuple[int | None, float, str]:
    """Run ``argv`` (no shell) in a new session; kill its process group after ``limit_s``.

    Returns ``(returncode or None when killed, seconds, last 2000 chars of output)``."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as output:
        try:
            proc = subprocess.Popen(argv, cwd=cwd, stdout=output, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            return -1, 0.0, f"cannot start {argv[0]!r}: {exc}"
        killed = False
        try:
            proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            killed = True
            _kill_group(proc)
        finally:
            # the leader is gone; anything it left in its group goes too
            _kill_group(proc, leader_done=True)
        seconds = time.perf_counter() - started
        output.seek(0)
        tail = output.read().decode(errors="replace")[-2000:]
    return (None if killed else proc.returncode), seconds, tail


def _kill_group(proc: subprocess.Popen, leader_done: bool = False) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM if not leader_done else signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    if leader_done:
        return
    try:
        proc.wait(timeout=2.0)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


@dataclass
class InstanceOutcome:
    onnx: str
    vnnlib: str
    truth: str
    verdict: str
    first_word: str = ""
    seconds: float = 0.0
    timeout: float = 0.0
    killed: bool = False
    category: str = ""  # unsound / falsified / unknown / timeout / error / verified / wrongly_falsified ...
    counterexample_valid: bool | None = None
    counterexample_message: str = ""
    evidence: dict = field(default_factory=dict)


@dataclass
class HarnessReport:
    verifier: str
    suite: str
    outcomes: list[InstanceOutcome]
    counts: dict
    unsound: list[dict]
    seconds: float
    tampered: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"verifier": self.verifier, "suite": self.suite, "counts": self.counts, "unsound": self.unsound,
                "tampered": self.tampered, "seconds": self.seconds,
                "instances": [asdict(o) for o in self.outcomes]}


def _validate(onnx: Path, vnnlib: Path, x: np.ndarray | None) -> tuple[bool, str, list[float] | None]:
    if x is None:
        return False, "sat without a readable (X_i v) counterexample", None
    try:
        prop = read_property(vnnlib)
    except (OSError, ValueError) as exc:
        return False, f"cannot read the property to check the counterexample: {exc}", None
    if x.size != prop.lower.size:
        return False, f"counterexample has {x.size} inputs, the property {prop.lower.size}", None
    x32 = x.astype(np.float32).astype(np.float64)
    slack = INPUT_TOL * np.maximum(1.0, np.abs(prop.lower))
    if not (np.all(x32 >= prop.lower - slack) and np.all(x32 <= prop.upper + slack)):
        return False, "counterexample is outside the input box", None
    try:
        y = ort_outputs(onnx, x)
    except Exception as exc:  # a model we cannot run confirms nothing
        return False, f"onnxruntime could not evaluate the model: {exc}", None
    margin = violation_margin(y, prop.label)
    if margin < 0:
        return False, f"onnxruntime output does not violate the property (margin {margin:.3g})", list(map(float, y))
    return True, f"valid (onnxruntime margin {margin:.3g})", list(map(float, y))


def _categorise(truth: str, verdict: str, valid: bool | None) -> str:
    if truth == "violated":
        return {"unsat": "unsound", "sat": "falsified" if valid else "invalid_counterexample"}.get(verdict, verdict)
    if verdict == "unsat":
        return "verified"
    if verdict == "sat":
        if not valid:
            return "wrongly_falsified"
        return "key_contradicted" if truth == "holds" else "falsified"
    return verdict


def run_harness(suite_dir: Union[str, Path], key_dir: Union[str, Path], command_template: str | None = None,
                vnncomp_scripts: Union[str, Path, None] = None, timeout_cap: float | None = None,
                category: str = "nlverify_soundness", name: str | None = None,
                log: Callable[[str], None] | None = None) -> HarnessReport:
    """Run the verifier on every instance of ``suite_dir`` and score it with ``key_dir/key.jsonl``."""
    if (command_template is None) == (vnncomp_scripts is None):
        raise ValueError("give exactly one of command_template and vnncomp_scripts")
    suite_dir, key_dir = Path(suite_dir).resolve(), Path(key_dir)
    log = log or (lambda message: None)
    key = {}
    for line in (key_dir / "key.jsonl").read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            key[(entry["onnx"], entry["vnnlib"])] = entry
    with open(suite_dir / "instances.csv", newline="") as handle:
        rows = [row for row in csv.reader(handle) if row and row[0].strip()]
    started = time.perf_counter()
    outcomes: list[InstanceOutcome] = []
    tampered: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="nlverify-harness-"))
    try:
        for index, (onnx_rel, vnnlib_rel, timeout_text) in enumerate(rows):
            entry = key.get((onnx_rel, vnnlib_rel))
            truth = entry["truth"] if entry else "unknown"
            onnx, vnnlib = suite_dir / onnx_rel, suite_dir / vnnlib_rel
            if entry and "sha256" in entry:
                for kind, path in (("onnx", onnx), ("vnnlib", vnnlib)):
                    if hashlib.sha256(path.read_bytes()).hexdigest() != entry["sha256"][kind]:
                        tampered.append(str(path.relative_to(suite_dir)))
            timeout = float(timeout_text)
            if timeout_cap is not None:
                timeout = min(timeout, float(timeout_cap))
            result = work / f"result_{index}.txt"
            result.unlink(missing_ok=True)
            if command_template is not None:
                fill = {"{onnx}": str(onnx), "{vnnlib}": str(vnnlib), "{result}": str(result),
                        "{timeout}": f"{timeout:g}"}
                argv = []
                for token in shlex.split(command_template):
                    for placeholder, value in fill.items():
                        token = token.replace(placeholder, value)
                    argv.append(token)
                code, seconds, tail = run_limited(argv, timeout + GRACE_S)
            else:
                scripts = Path(vnncomp_scripts).resolve()
                run_limited(["bash", str(scripts / "prepare_instance.sh"), "v1", category, str(onnx), str(vnnlib)],
                            PREPARE_LIMIT_S, cwd=scripts)
                code, seconds, tail = run_limited(
                    ["bash", str(scripts / "run_instance.sh"), "v1", category, str(onnx), str(vnnlib),
                     str(result), f"{timeout:g}"], timeout + GRACE_S, cwd=scripts)
            outcome = InstanceOutcome(onnx_rel, vnnlib_rel, truth, "error", seconds=round(seconds, 3),
                                      timeout=timeout, killed=code is None)
            text = result.read_text(errors="replace") if result.exists() else ""
            if code is None:
                outcome.verdict = "timeout"
            elif text:
                outcome.verdict, outcome.first_word = read_verdict(text)
            else:
                outcome.counterexample_message = f"no result file (exit {code}): {tail[-300:]}"
            if outcome.verdict == "sat":
                valid, message, y = _validate(onnx, vnnlib, read_counterexample(text))
                outcome.counterexample_valid, outcome.counterexample_message = valid, message
                if y is not None:
                    outcome.evidence["verifier_counterexample_output"] = y
            outcome.category = _categorise(truth, outcome.verdict, outcome.counterexample_valid)
            if outcome.category == "unsound":
                x = np.asarray(entry["counterexample"])
                y = ort_outputs(onnx, x)
                outcome.evidence.update({"counterexample": entry["counterexample"], "output_ort32": list(map(float, y)),
                                         "label": entry["label"], "margin_ort32": violation_margin(y, entry["label"]),
                                         "certified_radius": entry.get("certified_radius")})
            log(f"[{index + 1}/{len(rows)}] {onnx_rel} {outcome.verdict:8s} {outcome.category} ({seconds:.1f}s)")
            outcomes.append(outcome)
    finally:
        for path in work.iterdir():
            path.unlink()
        work.rmdir()
    counts = _count(outcomes)
    unsound = [{"onnx": o.onnx, "vnnlib": o.vnnlib, "verdict": o.verdict, **o.evidence}
               for o in outcomes if o.category == "unsound"]
    verifier = name or (command_template if command_template is not None else str(vnncomp_scripts))
    return HarnessReport(verifier, str(suite_dir), outcomes, counts, unsound,
                         round(time.perf_counter() - started, 3), sorted(set(tampered)))


def _count(outcomes: list[InstanceOutcome]) -> dict:
    planted = [o for o in outcomes if o.truth == "violated"]
    clean = [o for o in outcomes if o.truth != "violated"]
    tally = lambda group, cat: sum(o.category == cat for o in group)  # noqa: E731
    return {
        "instances": len(outcomes),
        "planted": {"total": len(planted), "unsound": tally(planted, "unsound"),
                    "falsified": tally(planted, "falsified"),
                    "invalid_counterexample": tally(planted, "invalid_counterexample"),
                    "unknown": tally(planted, "unknown"), "timeout": tally(planted, "timeout"),
                    "error": tally(planted, "error")},
        "clean": {"total": len(clean), "verified": tally(clean, "verified"),
                  "falsified": tally(clean, "falsified"), "wrongly_falsified": tally(clean, "wrongly_falsified"),
                  "key_contradicted": tally(clean, "key_contradicted"),
                  "unknown": tally(clean, "unknown"), "timeout": tally(clean, "timeout"),
                  "error": tally(clean, "error")},
        "invalid_counterexamples": sum(o.counterexample_valid is False for o in outcomes),
        "seconds_total": round(sum(o.seconds for o in outcomes), 3),
        "seconds_max": round(max((o.seconds for o in outcomes), default=0.0), 3),
    }


def format_table(report: HarnessReport) -> str:
    """A terminal summary: the counts, then every unsound claim with its evidence."""
    c = report.counts
    p, k = c["planted"], c["clean"]
    lines = [f"verifier: {report.verifier}", f"suite:    {report.suite}  ({c['instances']} instances)", "",
             f"{'':28s}{'count':>8s}",
             f"{'planted (violated)':28s}{p['total']:8d}",
             f"{'  UNSOUND (claimed unsat)':28s}{p['unsound']:8d}",
             f"{'  falsified':28s}{p['falsified']:8d}",
             f"{'  invalid counterexample':28s}{p['invalid_counterexample']:8d}",
             f"{'  unknown':28s}{p['unknown']:8d}",
             f"{'  timeout':28s}{p['timeout']:8d}",
             f"{'  error':28s}{p['error']:8d}",
             f"{'clean':28s}{k['total']:8d}",
             f"{'  verified':28s}{k['verified']:8d}",
             f"{'  falsified (valid cex)':28s}{k['falsified']:8d}",
             f"{'  wrongly falsified':28s}{k['wrongly_falsified']:8d}",
             f"{'  unknown / timeout / error':28s}{k['unknown'] + k['timeout'] + k['error']:8d}",
             f"{'invalid counterexamples':28s}{c['invalid_counterexamples']:8d}",
             f"{'time total / max (s)':28s}{c['seconds_total']:8.1f} / {c['seconds_max']:.1f}"]
    if report.tampered:
        lines += ["", f"WARNING: {len(report.tampered)} suite files differ from the key's sha256: "
                      + ", ".join(report.tampered[:5])]
    if report.unsound:
        lines += ["", f"UNSOUND: {len(report.unsound)} planted instance(s) claimed unsat:"]
        for item in report.unsound:
            lines.append(f"  {item['onnx']}  {item['vnnlib']}: key counterexample gives onnxruntime output "
                         f"{[round(v, 6) for v in item['output_ort32']]} (label {item['label']}, "
                         f"margin {item['margin_ort32']:+.4g}; violated on an L-inf ball of radius "
                         f"{item['certified_radius']:.3g})")
    else:
        lines += ["", "no unsound claims"]
    return "\n".join(lines)


def write_csv(report: HarnessReport, path: Union[str, Path]) -> None:
    """One row per instance."""
    columns = ["onnx", "vnnlib", "truth", "verdict", "category", "seconds", "timeout", "killed",
               "counterexample_valid", "counterexample_message"]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        for outcome in report.outcomes:
            data = asdict(outcome)
            writer.writerow([data[c] for c in columns])
