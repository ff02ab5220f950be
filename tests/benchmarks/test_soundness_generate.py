"""The generated suite: every planted counterexample re-verifies, and nothing leaks the answers."""

from __future__ import annotations

import csv
import hashlib
import json
import re

import numpy as np
import onnx
import pytest

from nlverify.benchmarks.soundness.check import MIN_MARGIN, ort_outputs, violation_margin
from nlverify.benchmarks.soundness.generate import generate_suite
from nlverify.benchmarks.soundness.models import ACTIVATIONS
from nlverify.benchmarks.soundness.vnnlib_io import read_property


def _key(key_dir):
    return [json.loads(line) for line in (key_dir / "key.jsonl").read_text().splitlines() if line.strip()]


def _rows(suite):
    with open(suite / "instances.csv", newline="") as handle:
        return [tuple(row) for row in csv.reader(handle)]


def test_every_activation_has_a_hidden_plant_and_a_decoy(tiny_suite):
    suite, key_dir, summary = tiny_suite
    entries = _key(key_dir)
    assert summary["planted"] == len(ACTIVATIONS)
    for act in ACTIVATIONS:
        truths = sorted(e["truth"] for e in entries if e["activation"] == act)
        assert truths == ["unknown", "violated"], (act, truths)
    for entry in entries:
        assert entry["attack"]["found"] is False
        assert entry["attack"]["budget"]["restarts"] == 64
        assert set(entry["versions"]) >= {"torch", "onnx", "onnxruntime", "numpy"}
        # the hiddenness flag and the layer widths are separate fields (the flag used to overwrite them)
        assert entry["hidden"] is (True if entry["truth"] == "violated" else None)
        assert entry["hidden_widths"] and all(isinstance(w, int) for w in entry["hidden_widths"])


def test_key_entries_reverify_in_onnxruntime(tiny_suite):
    suite, key_dir, _ = tiny_suite
    for entry in _key(key_dir):
        onnx_path, vnnlib_path = suite / entry["onnx"], suite / entry["vnnlib"]
        assert hashlib.sha256(onnx_path.read_bytes()).hexdigest() == entry["sha256"]["onnx"]
        assert hashlib.sha256(vnnlib_path.read_bytes()).hexdigest() == entry["sha256"]["vnnlib"]
        prop = read_property(vnnlib_path)
        assert prop.label == entry["label"]
        if entry["truth"] != "violated":
            assert entry["counterexample"] is None
            continue
        x = np.array(entry["counterexample"])
        assert prop.contains(x)
        # strictly interior, with the certified ball inside the box
        radius = entry["certified_radius"]
        assert radius > 0
        assert np.all(x - radius >= prop.lower) and np.all(x + radius <= prop.upper)
        y = ort_outputs(onnx_path, x)
        assert prop.violated_by(y)
        assert violation_margin(y, prop.label) >= MIN_MARGIN
        assert entry["margins"]["torch64"] >= MIN_MARGIN
        # the box centre is fine: the base network is robust there
        assert not prop.violated_by(ort_outputs(onnx_path, (prop.lower + prop.upper) / 2))


def test_names_and_order_reveal_nothing(tiny_suite):
    suite, key_dir, _ = tiny_suite
    rows = _rows(suite)
    entries = _key(key_dir)
    assert len(rows) == len(entries)
    words = list(ACTIVATIONS) + ["plant", "needle", "violat", "holds", "clean", "decoy", "mlp", "cnn", "relu"]
    for onnx_rel, vnnlib_rel, timeout in rows:
        stem = re.fullmatch(r"onnx/([0-9a-f]{12})\.onnx", onnx_rel).group(1)
        assert vnnlib_rel == f"vnnlib/{stem}.vnnlib"
        assert float(timeout) == 20
        text = (suite / vnnlib_rel).read_text().lower()
        assert not any(word in text for word in words)
        model = onnx.load(suite / onnx_rel)
        meta = " ".join([model.producer_name, model.graph.name, model.doc_string]).lower()
        assert not any(word in meta for word in ("plant", "needle", "violat", "decoy"))
    # the suite folder holds nothing but the instances
    assert sorted(p.name for p in suite.iterdir()) == ["instances.csv", "onnx", "vnnlib"]
    # planted and clean rows are interleaved, not grouped by truth or activation
    truth_by_row = [next(e["truth"] for e in entries if e["onnx"] == row[0]) for row in rows]
    assert truth_by_row != sorted(truth_by_row) and truth_by_row != sorted(truth_by_row, reverse=True)


def test_exported_ops(tiny_suite):
    suite, key_dir, _ = tiny_suite
    expected = {"relu": "Relu", "leaky_relu": "LeakyRelu", "sigmoid": "Sigmoid", "tanh": "Tanh", "gelu": "Erf",
                "sin": "Sin", "maxmin": "Max", "groupsort": "Min"}
    for entry in _key(key_dir):
        ops = {node.op_type for node in onnx.load(suite / entry["onnx"]).graph.node}
        assert expected[entry["activation"]] in ops
        assert not ops & {"Shape", "Gather", "TopK", "Gelu"}, ops
        assert {node.domain for node in onnx.load(suite / entry["onnx"]).graph.node} <= {""}


def test_project_parser_agrees_with_our_reader(tiny_suite):
    spec_module = pytest.importorskip("nlverify.verifier.spec")
    suite, key_dir, _ = tiny_suite
    for entry in _key(key_dir):
        ours = read_property(suite / entry["vnnlib"])
        spec = spec_module.parse_vnnlib(suite / entry["vnnlib"])
        assert len(spec.regions) == 1
        np.testing.assert_array_equal(spec.regions[0].lower, ours.lower)
        np.testing.assert_array_equal(spec.regions[0].upper, ours.upper)
        if entry["truth"] == "violated":
            x = np.array(entry["counterexample"])
            assert spec.is_violated_by(x, ort_outputs(suite / entry["onnx"], x))


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown planting"):
        generate_suite(tmp_path / "s", tmp_path / "k", planting="grown")
    with pytest.raises(ValueError, match="inside the suite"):
        generate_suite(tmp_path / "s", tmp_path / "s" / "key", activations=["relu"], size="tiny")
    with pytest.raises(ValueError, match="unknown activation"):
        generate_suite(tmp_path / "s", tmp_path / "k", activations=["swish"], size="tiny")
