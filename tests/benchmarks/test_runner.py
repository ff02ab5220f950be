"""``nlverify bench``: scoring, CSV output, and the `test` benchmark folder end to end."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from nlverify.benchmarks.runner import find_benchmarks, read_ground_truth, score, summary_table
from nlverify.cli import main

BENCHMARKS = Path(os.environ.get("NLVERIFY_BENCHMARKS",
                                 Path(__file__).resolve().parents[2].parent / "shared" / "benchmarks"))
needs_benchmarks = pytest.mark.skipif(not (BENCHMARKS / "test" / "instances.csv").is_file(),
                                      reason=f"benchmarks not found at {BENCHMARKS}")


@pytest.mark.parametrize("result,expected,status", [
    ("unsat", "unsat", "verified"), ("sat", "sat", "falsified"), ("unsat", "sat", "WRONG"),
    ("sat", "unsat", "WRONG"), ("sat", "DISPUTED", "falsified"), ("unsat", "unknown", "verified"),
    ("timeout", "sat", "timeout"), ("unknown", "unsat", "unknown"), ("garbage", "", "error"),
])
def test_score(result, expected, status):
    assert score(result, expected) == status


@needs_benchmarks
def test_finds_single_folder_and_parent_ground_truth():
    assert find_benchmarks(BENCHMARKS / "test") == [BENCHMARKS / "test"]
    assert BENCHMARKS / "test" in find_benchmarks(BENCHMARKS)
    assert read_ground_truth(BENCHMARKS / "test")[("test", "test_sat.onnx", "test_prop.vnnlib")] == "sat"


@needs_benchmarks
def test_bench_on_test_folder(tmp_path, capsys):
    out = tmp_path / "results.csv"
    code = main(["bench", str(BENCHMARKS / "test"), "--timeout-cap", "60", "--jobs", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 5 and all(r["status"] in ("verified", "falsified") for r in rows), rows
    table = [line for line in printed.splitlines() if line.startswith("test ")]
    assert table and table[-1].split()[1:8] == ["5", "4", "1", "0", "0", "0", "0"]
    assert "WRONG ANSWER" not in printed
    assert all(float(r["verifier_s"]) >= 0 for r in rows)


def test_summary_flags_wrong_answers_loudly():
    from nlverify.benchmarks.runner import InstanceResult

    wrong = InstanceResult("b", "m.onnx", "p.vnnlib", 10, "unsat", 1.0, 0.5, 0, 0.0, "sat", "WRONG")
    assert "1 WRONG ANSWER" in summary_table([wrong])


@pytest.mark.parametrize("flag", ["--jobs", "--threads"])
def test_bench_rejects_nonpositive_counts(tmp_path, capsys, flag):
    (tmp_path / "instances.csv").write_text("")
    code = main(["bench", str(tmp_path), flag, "0", "--out", str(tmp_path / "r.csv")])
    err = capsys.readouterr().err
    assert code == 2 and f"{flag} must be at least 1" in err and "Traceback" not in err


@needs_benchmarks
def test_bench_passes_threads_to_each_instance(tmp_path, monkeypatch):
    from nlverify.benchmarks import runner

    seen = []
    original = runner.launch

    def spy(instance, budget, extra_args=(), *args, **kwargs):
        seen.append(list(extra_args))
        return original(instance, budget, extra_args, *args, **kwargs)

    monkeypatch.setattr(runner, "launch", spy)
    out = tmp_path / "results.csv"
    assert main(["bench", str(BENCHMARKS / "test"), "--timeout-cap", "60", "--threads", "2", "--out", str(out)]) == 0
    assert len(seen) == 5 and all(args[args.index("--threads") + 1] == "2" for args in seen)
    assert all(r["status"] in ("verified", "falsified") for r in csv.DictReader(open(out)))
