"""The harness: verdict reading, scoring against the key, counterexample validation, time limits."""

from __future__ import annotations

import argparse
import json
import sys
import time

import pytest

from nlverify.benchmarks.soundness import cli
from nlverify.benchmarks.soundness.harness import read_counterexample, read_verdict, run_harness


def _script(tmp_path, name: str, body: str) -> str:
    """A tiny verifier: ``python SCRIPT ONNX VNNLIB RESULT TIMEOUT``; returns its command template."""
    path = tmp_path / name
    path.write_text("import sys, os, time, json\nonnx, vnnlib, result, timeout = sys.argv[1:5]\n" + body)
    return f"{sys.executable} {path} {{onnx}} {{vnnlib}} {{result}} {{timeout}}"


def _key(key_dir):
    return [json.loads(line) for line in (key_dir / "key.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("text, verdict", [
    ("unsat\n", "unsat"), ("UNSAT", "unsat"), ("  Sat\n((X_0 1))", "sat"), ("holds", "unsat"),
    ("violated\n", "sat"), ("unknown", "unknown"), ("timeout", "timeout"), ("error: oops", "error"),
    ("not unsat", "error"), ("unsat-ish", "error"), ("result: unsat", "error"), ("", "error"),
])
def test_read_verdict_is_exact(text, verdict):
    assert read_verdict(text)[0] == verdict


def test_read_counterexample():
    assert list(read_counterexample("sat\n((X_0 0.5)\n (X_1 -1e-3)\n (Y_0 2.0))")) == [0.5, -1e-3]
    assert read_counterexample("sat\n((X_1 0.5))") is None  # X_0 missing
    assert read_counterexample("sat\n") is None


def test_always_unsat_is_unsound_on_every_plant(tiny_suite, tmp_path):
    suite, key_dir, summary = tiny_suite
    template = _script(tmp_path, "unsat.py", "open(result, 'w').write('unsat\\n')\n")
    report = run_harness(suite, key_dir, command_template=template, timeout_cap=10)
    planted = [e for e in _key(key_dir) if e["truth"] == "violated"]
    assert report.counts["planted"]["unsound"] == len(planted) == summary["planted"]
    assert sorted(u["onnx"] for u in report.unsound) == sorted(e["onnx"] for e in planted)
    for item in report.unsound:
        assert item["margin_ort32"] > 0 and len(item["counterexample"]) == 4
    assert report.counts["clean"]["verified"] == report.counts["clean"]["total"]
    assert report.tampered == []


def test_always_unknown_is_never_unsound(tiny_suite, tmp_path):
    suite, key_dir, _ = tiny_suite
    template = _script(tmp_path, "unknown.py", "open(result, 'w').write('unknown\\n')\n")
    report = run_harness(suite, key_dir, command_template=template, timeout_cap=10)
    assert report.unsound == [] and report.counts["planted"]["unsound"] == 0
    assert report.counts["planted"]["unknown"] == report.counts["planted"]["total"]


def test_substring_unsat_is_not_unsat(tiny_suite, tmp_path):
    suite, key_dir, _ = tiny_suite
    template = _script(tmp_path, "chatty.py", "open(result, 'w').write('not unsat (the property is unsat?)\\n')\n")
    report = run_harness(suite, key_dir, command_template=template, timeout_cap=10)
    assert report.unsound == []
    assert {o.verdict for o in report.outcomes} == {"error"}


def test_counterexamples_are_validated(tiny_suite, tmp_path):
    suite, key_dir, _ = tiny_suite
    answers = {str(suite / e["onnx"]): e["counterexample"] for e in _key(key_dir) if e["truth"] == "violated"}
    (tmp_path / "answers.json").write_text(json.dumps(answers))
    # an oracle: the key's counterexample where there is one, a bogus one (the box centre) elsewhere
    body = (f"answers = json.load(open({str(tmp_path / 'answers.json')!r}))\n"
            "x = answers.get(onnx)\n"
            "if x is None:\n"
            "    import re\n"
            "    lo = [float(v) for v in re.findall(r'>= X_\\d+ ([^\\s()]+)\\)', open(vnnlib).read())]\n"
            "    x = [v + 1e-3 for v in lo]\n"
            "pairs = '\\n'.join(f'(X_{i} {v!r})' for i, v in enumerate(x))\n"
            "open(result, 'w').write('sat\\n(' + pairs + ')\\n')\n")
    report = run_harness(suite, key_dir, command_template=_script(tmp_path, "oracle.py", body), timeout_cap=10)
    counts = report.counts
    assert counts["planted"]["falsified"] == counts["planted"]["total"]
    assert counts["clean"]["wrongly_falsified"] == counts["clean"]["total"]
    assert counts["invalid_counterexamples"] == counts["clean"]["total"]
    assert report.unsound == []


def test_timeout_kills_the_process_group(tiny_suite, tmp_path):
    suite, key_dir, _ = tiny_suite
    pids = tmp_path / "pids"
    pids.mkdir()
    body = ("import subprocess\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"open(os.path.join({str(pids)!r}, str(child.pid)), 'w').close()\n"
            "time.sleep(60)\n")
    import nlverify.benchmarks.soundness.harness as harness

    original = harness.GRACE_S
    harness.GRACE_S = 0.5
    try:
        rows = (suite / "instances.csv").read_text().splitlines()
        small = tmp_path / "suite"
        small.mkdir()
        (small / "onnx").symlink_to(suite / "onnx")
        (small / "vnnlib").symlink_to(suite / "vnnlib")
        (small / "instances.csv").write_text("\n".join(rows[:2]) + "\n")
        started = time.perf_counter()
        report = run_harness(small, key_dir, command_template=_script(tmp_path, "sleepy.py", body), timeout_cap=0.5)
        assert time.perf_counter() - started < 15
    finally:
        harness.GRACE_S = original
    assert [o.verdict for o in report.outcomes] == ["timeout", "timeout"]
    assert all(o.killed for o in report.outcomes)
    children = [int(p.name) for p in pids.iterdir()]
    assert len(children) == 2
    deadline = time.time() + 5
    while any(_alive(pid) for pid in children) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in children)


def _alive(pid: int) -> bool:
    """Running (a zombie awaiting its reaper counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_vnncomp_scripts(tiny_suite, tmp_path):
    suite, key_dir, _ = tiny_suite
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    log = tmp_path / "prepared.txt"
    (scripts / "prepare_instance.sh").write_text(f'#!/bin/bash\necho "$1 $2 $3 $4" >> {log}\nexit 0\n')
    (scripts / "run_instance.sh").write_text('#!/bin/bash\n[ "$1" = v1 ] || exit 3\necho holds > "$5"\n')
    report = run_harness(suite, key_dir, vnncomp_scripts=scripts, category="demo", timeout_cap=10)
    assert report.counts["planted"]["unsound"] == report.counts["planted"]["total"] > 0
    lines = log.read_text().splitlines()
    assert len(lines) == report.counts["instances"] and all(line.startswith("v1 demo ") for line in lines)


def test_cli(tiny_suite, tmp_path, capsys):
    suite, key_dir, _ = tiny_suite
    parser = argparse.ArgumentParser(prog="nlverify")
    cli.add_parser(parser.add_subparsers(dest="command"))
    unsat = _script(tmp_path, "unsat.py", "open(result, 'w').write('unsat')\n")
    args = parser.parse_args(["soundness", "run", str(suite), "--key", str(key_dir), "--command", unsat,
                              "--json", "--timeout-cap", "5", "--report-dir", str(tmp_path / "report")])
    assert cli.run(args) == cli.EXIT_UNSOUND == 3
    report = json.loads(capsys.readouterr().out)
    assert len(report["unsound"]) == report["counts"]["planted"]["total"]
    assert (tmp_path / "report" / "report.csv").read_text().count("\n") == report["counts"]["instances"] + 1
    unknown = _script(tmp_path, "unknown.py", "open(result, 'w').write('unknown')\n")
    args = parser.parse_args(["soundness", "run", str(suite), "--key", str(key_dir), "--command", unknown, "--quiet"])
    assert cli.run(args) == 0
    assert "no unsound claims" in capsys.readouterr().out
    args = parser.parse_args(["soundness", "run", str(tmp_path / "missing"), "--key", str(key_dir),
                              "--command", unknown])
    assert cli.run(args) == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["soundness", "run", str(suite), "--key", str(key_dir)])  # no verifier given
