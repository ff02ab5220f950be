"""Self-test of the soundness suite: it must catch bugs in a real verifier, namely ours.

Our verifier (``python -m nlverify verify``) runs through the harness on instances of the session's tiny
suite: unmodified it makes no unsound claim; with each TEST-ONLY fault of
:mod:`nlverify.faults` switched on (through the environment the harness passes to the verifier
process) the harness flags at least one unsound claim.

Which instances, and why (the faults are not equally visible everywhere):

* the planted instances of the S-shaped activations (sigmoid, tanh). Their relaxations have large
  intercepts (sigmoid(0) = 0.5), so ``skip_intercept`` moves the bound a lot and the wrong bound proves
  the property. On ReLU-like nets the dropped intercept (the upper line's, the lower one is 0) only
  tightens the bound a little, and the verifier times out in branch and bound instead of lying.
* ``shrink_box`` is only caught when the needle (the planted counterexample, an L-inf bump of relative
  width ~1e-2) lies outside the shrunk box; the generator places it anywhere within 70% of the box
  half-width from the centre, so a fixed factor misses the central ones. The factor used here is
  computed from the key: the shrunk box reaches only half as far as the needle does.
* ``tighten_intermediate`` (default factor 0.5) and ``drop_domains`` (default 0.5) are caught on every
  planted instance of the tiny suite: the violated disjunct of a planted property always reaches branch
  and bound (no sound bound proves it), and the domain that holds the needle, deep in the tree, is
  dropped long before it is split finely enough to expose the needle.

A verifier that always answers ``unsat`` is covered by ``test_soundness_harness.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nlverify.benchmarks.soundness.harness import run_harness
from nlverify.benchmarks.soundness.vnnlib_io import read_property
from nlverify import faults

TEMPLATE = f"{sys.executable} -m nlverify verify {{onnx}} {{vnnlib}} --timeout {{timeout}} " \
           "--result-file {result} --threads 1"
TIMEOUT_S = 10.0  # per instance: enough for the faulty verifier to claim unsat (a few seconds)
SELFTEST_ACTIVATIONS = ("sigmoid", "tanh")


def _key(key_dir) -> list[dict]:
    return [json.loads(line) for line in (key_dir / "key.jsonl").read_text().splitlines() if line.strip()]


def _needle_offset(suite, entry: dict) -> float:
    """``max_i |x*_i - c_i| / r_i``: how far the planted counterexample is from the box centre (0..1)."""
    prop = read_property(suite / entry["vnnlib"])
    centre, radius = (prop.lower + prop.upper) / 2, (prop.upper - prop.lower) / 2
    return float(np.max(np.abs(np.asarray(entry["counterexample"]) - centre) / radius))


def _sub_suite(suite, tmp_path, entries: list[dict], timeout: float):
    """A suite folder with only ``entries`` (the files are linked, the key is the full one)."""
    sub = tmp_path / "suite"
    sub.mkdir()
    (sub / "onnx").symlink_to(suite / "onnx")
    (sub / "vnnlib").symlink_to(suite / "vnnlib")
    (sub / "instances.csv").write_text("".join(f"{e['onnx']},{e['vnnlib']},{timeout:g}\n" for e in entries))
    return sub


@pytest.fixture(scope="module")
def selftest_instances(tiny_suite):
    suite, key_dir, _ = tiny_suite
    entries = _key(key_dir)
    planted = [e for e in entries if e["truth"] == "violated" and e["activation"] in SELFTEST_ACTIVATIONS]
    decoys = [e for e in entries if e["truth"] != "violated" and e["activation"] in SELFTEST_ACTIVATIONS]
    assert len(planted) == len(SELFTEST_ACTIVATIONS) and decoys
    offsets = [_needle_offset(suite, e) for e in planted]
    assert min(offsets) > 0.1, "a needle at the box centre: no shrunk box excludes it"
    shrink = round(1.0 - min(offsets) / 2, 3)  # shrunk half-width = half the nearest needle's offset
    return planted, decoys[:1], shrink


def _run(tiny_suite, tmp_path, monkeypatch, entries, fault: str | None):
    suite, key_dir, _ = tiny_suite
    if fault is None:
        monkeypatch.delenv(faults.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(faults.ENV_VAR, fault)  # inherited by the verifier process only
    return run_harness(_sub_suite(suite, tmp_path, entries, TIMEOUT_S), key_dir, command_template=TEMPLATE)


def test_our_verifier_is_sound_on_the_selftest_instances(tiny_suite, selftest_instances, tmp_path, monkeypatch):
    planted, decoys, _ = selftest_instances
    report = _run(tiny_suite, tmp_path, monkeypatch, planted + decoys, None)
    assert report.unsound == [] and report.counts["planted"]["unsound"] == 0
    assert report.counts["invalid_counterexamples"] == 0
    assert report.counts["planted"]["error"] == report.counts["clean"]["error"] == 0
    assert report.counts["clean"]["verified"] == len(decoys)  # the bugs below do not just break everything


@pytest.mark.parametrize("fault", ["shrink_box", "tighten_intermediate", "skip_intercept", "drop_domains"])
def test_each_injected_bug_is_caught(tiny_suite, selftest_instances, tmp_path, monkeypatch, fault):
    planted, _, shrink = selftest_instances
    setting = f"shrink_box:{shrink}" if fault == "shrink_box" else fault
    report = _run(tiny_suite, tmp_path, monkeypatch, planted, setting)
    verdicts = {o.onnx: o.verdict for o in report.outcomes}
    assert report.counts["planted"]["unsound"] >= 1, f"{setting} not caught: {verdicts}"
    for item in report.unsound:  # the evidence: the key's counterexample, re-run now in onnxruntime
        assert item["margin_ort32"] > 0


def test_the_warning_is_loud_and_the_variable_is_parsed(tiny_suite):
    suite, key_dir, _ = tiny_suite
    entry = next(e for e in _key(key_dir) if e["activation"] == "relu" and e["truth"] != "violated")
    env = {**os.environ, faults.ENV_VAR: "drop_domains:0.25,nonsense"}
    proc = subprocess.run([sys.executable, "-m", "nlverify", "verify", str(suite / entry["onnx"]),
                           str(suite / entry["vnnlib"]), "--timeout", "20"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert "TEST-ONLY bug injection active" in proc.stderr and "drop_domains:0.25" in proc.stderr
    assert "unknown fault 'nonsense'" in proc.stderr


def test_parse():
    assert faults.parse("") == ({}, [])
    parsed, problems = faults.parse("shrink_box, tighten_intermediate:0.9,skip_intercept")
    assert problems == [] and parsed["shrink_box"] == 0.5 and parsed["tighten_intermediate"] == 0.9
    assert np.isnan(parsed["skip_intercept"])
    parsed, problems = faults.parse("drop_domains:2,skip_intercept:0.5,shrink_box:x,bogus")
    assert parsed == {} and len(problems) == 4


def test_inert_when_unset():
    """This test process runs without the variable: no fault is active and every hook is a no-op."""
    if os.environ.get(faults.ENV_VAR):
        pytest.skip(f"{faults.ENV_VAR} is set in this environment")
    assert faults.ACTIVE == {} and not faults.ACTIVE
    assert all(faults.active(name) is None for name in faults.FAULTS)
    low, up = object(), object()
    assert faults.shrink_box(low, up) == (low, up) and faults.tighten_intermediate(low, up) == (low, up)
    callback = object()
    assert faults.skip_intercept(None, callback) is callback
    keep = object()
    assert faults.drop_domains(keep) is keep


def test_fault_helpers(monkeypatch):
    import torch

    monkeypatch.setattr(faults, "ACTIVE", {"shrink_box": 0.5, "drop_domains": 0.5})
    low, up = faults.shrink_box(torch.tensor([0.0, -2.0]), torch.tensor([4.0, 2.0]))
    assert low.tolist() == [1.0, -1.0] and up.tolist() == [3.0, 1.0]
    keep = torch.arange(1000) % 2 == 0
    kept = faults.drop_domains(keep)
    assert not (kept & ~keep).any() and 150 < int(kept.sum()) < 350  # about half of the 500 open ones


def test_clean_prover_labels_a_decoy_holds(tmp_path):
    from nlverify.benchmarks.soundness.attack import AttackBudget
    from nlverify.benchmarks.soundness.generate import generate_suite, nlverify_clean_prover

    budget = AttackBudget(restarts=64, steps=60, random_samples=2000, corner_samples=256)  # as conftest's
    summary = generate_suite(tmp_path / "suite", tmp_path / "key", activations=["relu"], size="tiny", seed=3,
                             budget=budget, timeout=20, clean_prover=nlverify_clean_prover(20.0))
    decoy = next(e for e in _key(tmp_path / "key") if e["truth"] != "violated")
    assert decoy["truth"] == "holds" and decoy["prover_seconds"] > 0
    assert summary["per_activation"]["relu"]["clean_holds"] == 1
    assert summary["clean_prover"].startswith("nlverify verify")


def test_clean_prover_refuses_a_faulty_verifier(monkeypatch):
    from nlverify.benchmarks.soundness.generate import nlverify_clean_prover

    monkeypatch.setattr(faults, "ACTIVE", {"drop_domains": 0.5})
    with pytest.raises(ValueError, match=faults.ENV_VAR):
        nlverify_clean_prover()


def test_soundness_is_reachable_from_the_top_level_cli(tiny_suite, tmp_path, capsys):
    """``nlverify soundness ...`` through :func:`nlverify.cli.main` (it once lacked its ``run`` default)."""
    from nlverify.cli import main

    suite, key_dir, _ = tiny_suite
    entry = _key(key_dir)[0]
    script = tmp_path / "unknown.py"
    script.write_text("import sys\nopen(sys.argv[1], 'w').write('unknown')\n")
    code = main(["soundness", "run", str(_sub_suite(suite, tmp_path, [entry], 5.0)), "--key", str(key_dir),
                 "--command", f"{sys.executable} {script} {{result}}", "--quiet"])
    assert code == 0 and "no unsound claims" in capsys.readouterr().out
