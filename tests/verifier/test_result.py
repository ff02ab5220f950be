"""Verdicts, result files, and counterexample validation through onnxruntime."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from nlverify.verifier.result import (
    ResultFileError,
    Verdict,
    read_result_file,
    run_onnx,
    validate_counterexample,
    write_result_file,
)
from nlverify.verifier.spec import parse_vnnlib, parse_vnnlib_string

BENCHMARKS = Path(os.environ.get("NLVERIFY_BENCHMARKS",
                                 Path(__file__).resolve().parents[2].parent / "shared" / "benchmarks"))
TEST_SUITE = BENCHMARKS / "test"
needs_benchmarks = pytest.mark.skipif(not (TEST_SUITE / "test_sat.onnx").is_file(),
                                      reason=f"benchmarks not found at {BENCHMARKS}")

# y = W x + b on inputs of shape [batch, 2] (symbolic batch dim); W = [[1, 2], [3, -1]], b = [0.5, 0].
LINEAR_SPEC = """(declare-const X_0 Real)(declare-const X_1 Real)(declare-const Y_0 Real)(declare-const Y_1 Real)
(assert (>= X_0 0)) (assert (<= X_0 1)) (assert (>= X_1 0)) (assert (<= X_1 1))
(assert (or (and (>= Y_0 3)) (and (<= Y_1 -0.5))))"""


@pytest.fixture(scope="module")
def linear_model(tmp_path_factory) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.array([[1.0, 3.0], [2.0, -1.0]], dtype=np.float32), "W")  # x @ W
    bias = numpy_helper.from_array(np.array([0.5, 0.0], dtype=np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        initializer=[weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("models") / "linear.onnx"
    onnx.save(model, str(path))
    return path


# --------------------------------------------------------------------------- verdicts and files


def test_verdict_parsing() -> None:
    assert Verdict.parse("SAT") is Verdict.SAT
    assert Verdict.parse(" Unsat\n") is Verdict.UNSAT
    assert Verdict.parse("violated") is Verdict.SAT
    assert Verdict.parse("holds") is Verdict.UNSAT
    assert str(Verdict.TIMEOUT) == "timeout"
    with pytest.raises(ValueError):
        Verdict.parse("unsatisfiable")  # exact word, not a prefix match


def test_result_file_round_trip_keeps_full_precision(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    x = np.array([0.1, -1e-300, 1 / 3, 123456789.123456789])
    y = np.array([np.nextafter(1.0, 2.0), -0.0])
    write_result_file(path, Verdict.SAT, x, y)
    text = path.read_text()
    assert text.startswith("sat\n((X_0 0.1)\n (X_1 -1e-300)\n")
    assert text.rstrip().endswith("(Y_1 -0.0))")
    result = read_result_file(path)
    assert result.verdict is Verdict.SAT
    np.testing.assert_array_equal(result.x, x)
    np.testing.assert_array_equal(result.y, y)


@pytest.mark.parametrize("verdict", ["unsat", "unknown", "timeout", "error"])
def test_result_file_without_counterexample(tmp_path: Path, verdict: str) -> None:
    path = tmp_path / "out.txt"
    write_result_file(path, verdict)
    assert path.read_text() == f"{verdict}\n"
    result = read_result_file(path)
    assert result.verdict.value == verdict and result.x is None and result.y is None


def test_write_rejects_inconsistent_requests(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_result_file(tmp_path / "a", "sat")
    with pytest.raises(ValueError):
        write_result_file(tmp_path / "b", "unsat", x=np.zeros(2))
    with pytest.raises(ValueError):
        write_result_file(tmp_path / "c", "sat", np.array([np.nan]), np.zeros(1))


def test_read_other_tools_spellings(tmp_path: Path) -> None:
    path = tmp_path / "r.txt"
    path.write_text("VIOLATED\n( (X_1   2e-1)(X_0 -3)\n(Y_0 +5.))\n")
    result = read_result_file(path)
    assert result.verdict is Verdict.SAT
    np.testing.assert_array_equal(result.x, [-3.0, 0.2])
    np.testing.assert_array_equal(result.y, [5.0])
    path.write_text("holds")
    assert read_result_file(path).verdict is Verdict.UNSAT


@pytest.mark.parametrize("content, message", [
    ("", "empty"),
    ("satisfied\n", "unknown verdict"),
    ("sat\n((X_0 1)\n (X_2 1))", "no value for X_1"),
    ("sat\n((X_0 1)\n (X_0 2))", "assigned twice"),
    ("sat\n((X_0 one))", "non-numeric"),
])
def test_read_rejects_malformed_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "r.txt"
    path.write_text(content)
    with pytest.raises(ResultFileError, match=message):
        read_result_file(path)


# --------------------------------------------------------------------------- validation


def test_validate_on_a_tiny_model(linear_model: Path) -> None:
    spec = parse_vnnlib_string(LINEAR_SPEC)
    np.testing.assert_allclose(run_onnx(linear_model, [1.0, 1.0]), [3.5, 2.0])
    ok, y, message = validate_counterexample(linear_model, spec, np.array([1.0, 1.0]))  # Y_0 = 3.5 >= 3
    assert ok, message
    ok, _, message = validate_counterexample(linear_model, spec, np.array([0.0, 1.0]))  # Y_1 = -1 <= -0.5
    assert ok and "disjunct 1" in message
    ok, y, message = validate_counterexample(linear_model, spec, np.array([0.5, 0.5]))  # y = (2, 1): safe
    assert not ok and "satisfy no violation" in message
    np.testing.assert_allclose(y, [2.0, 1.0])
    ok, _, message = validate_counterexample(linear_model, spec, np.array([1.01, 1.0]))
    assert not ok and "outside every input box" in message


def test_validate_tolerances_are_explicit(linear_model: Path) -> None:
    spec = parse_vnnlib_string(LINEAR_SPEC)
    # x_0 = 1 + 5e-7 is outside [0, 1] by less than the default 1e-6 input tolerance.
    assert validate_counterexample(linear_model, spec, np.array([1.0 + 5e-7, 1.0]))[0]
    assert not validate_counterexample(linear_model, spec, np.array([1.0 + 5e-7, 1.0]), input_tol=0.0)[0]
    # y_0 = 0.5 + x_0 + 2 x_1 == 3 - 2^-22 (float32 exact): misses Y_0 >= 3 by 2.4e-7.
    x = np.array([0.5, 1.0 - 2.0 ** -23])
    assert validate_counterexample(linear_model, spec, x)[0]
    assert not validate_counterexample(linear_model, spec, x, tol=0.0)[0]


def test_validate_reports_shape_mismatch(linear_model: Path) -> None:
    spec = parse_vnnlib_string(LINEAR_SPEC)
    ok, y, message = validate_counterexample(linear_model, spec, np.zeros(3))
    assert not ok and y is None and "3 inputs" in message
    wider = parse_vnnlib_string(LINEAR_SPEC.replace("(declare-const Y_1 Real)", "(declare-const Y_1 Real)"
                                                    "(declare-const Y_2 Real)"))
    ok, _, message = validate_counterexample(linear_model, wider, np.ones(2))
    assert not ok and "2 outputs" in message


def test_gzipped_model(linear_model: Path, tmp_path: Path) -> None:
    packed = tmp_path / "linear.onnx.gz"
    packed.write_bytes(gzip.compress(linear_model.read_bytes()))
    np.testing.assert_allclose(run_onnx(packed, [1.0, 1.0]), [3.5, 2.0])


def _best_random_point(model: Path, spec, count: int = 200, seed: int = 0) -> np.ndarray:
    """The sampled box point whose outputs come closest to violating (margin <= 0 violates)."""
    region = spec.regions[0]
    rng = np.random.default_rng(seed)
    best, best_margin = None, np.inf
    for x in rng.uniform(region.lower, region.upper, size=(count, spec.num_inputs)):
        y = run_onnx(model, x)
        margin = min(np.max(c.C @ y - c.d) for c in region.disjuncts)
        if margin < best_margin:
            best, best_margin = x, margin
    return best


@needs_benchmarks
def test_validate_benchmark_counterexample_round_trip(tmp_path: Path) -> None:
    spec = parse_vnnlib(TEST_SUITE / "test_prop.vnnlib")
    model = TEST_SUITE / "test_sat.onnx"
    x = _best_random_point(model, spec)
    ok, y, message = validate_counterexample(model, spec, x)
    assert ok, message
    # Through a result file and back, as a verifier's output would travel.
    write_result_file(tmp_path / "result.txt", Verdict.SAT, x, y)
    result = read_result_file(tmp_path / "result.txt")
    assert validate_counterexample(model, spec, result.x)[0]
    # Just outside the box on X_3 (upper bound 0.5): rejected.
    outside = result.x.copy()
    outside[3] = spec.regions[0].upper[3] + 1e-3
    ok, _, message = validate_counterexample(model, spec, outside)
    assert not ok and "outside" in message


@needs_benchmarks
def test_validate_rejects_non_violating_points_of_unsat_instances() -> None:
    spec = parse_vnnlib(TEST_SUITE / "test_prop.vnnlib")
    model = TEST_SUITE / "test_unsat.onnx"
    ok, _, message = validate_counterexample(model, spec, _best_random_point(model, spec, count=50))
    assert not ok and "satisfy no violation" in message
    nano = parse_vnnlib(TEST_SUITE / "test_nano.vnnlib")  # Y_0 <= -1 on [-1, 1]: unsat
    assert not validate_counterexample(TEST_SUITE / "test_nano.onnx", nano, np.array([0.0]))[0]
