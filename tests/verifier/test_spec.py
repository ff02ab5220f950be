"""VNN-LIB parsing: the real VNN-COMP properties, the syntax corners, and errors."""

from __future__ import annotations

import csv
import gzip
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nlverify.verifier.spec import (
    Spec,
    SpecError,
    check_against_model,
    parse_vnnlib,
    parse_vnnlib_string,
)

DATA = Path(__file__).resolve().parent / "data"
BENCHMARKS = Path(os.environ.get("NLVERIFY_BENCHMARKS",
                                 Path(__file__).resolve().parents[2].parent / "shared" / "benchmarks"))
ALL_VNNLIB = sorted(BENCHMARKS.rglob("*.vnnlib")) if BENCHMARKS.is_dir() else []
needs_benchmarks = pytest.mark.skipif(not ALL_VNNLIB, reason=f"benchmarks not found at {BENCHMARKS}")

HEADER = "\n".join(f"(declare-const {v} Real)" for v in ("X_0", "X_1", "Y_0", "Y_1")) + "\n"  # 4 lines
BOX = "(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (>= X_1 -1))\n(assert (<= X_1 1))\n"  # lines 5-8


def shape_of(spec: Spec) -> tuple[int, list[int]]:
    return len(spec.regions), [len(region.disjuncts) for region in spec.regions]


# --------------------------------------------------------------------------- real properties


@needs_benchmarks
@pytest.mark.parametrize("path", ALL_VNNLIB, ids=lambda p: str(p.relative_to(BENCHMARKS)))
def test_every_benchmark_property_parses(path: Path) -> None:
    spec = parse_vnnlib(path)
    assert spec.num_inputs > 0 and spec.num_outputs > 0 and spec.regions
    for region in spec.regions:
        assert np.isfinite(region.lower).all() and np.isfinite(region.upper).all()
        assert (region.lower <= region.upper).all()
        for conjunction in region.disjuncts:
            assert conjunction.C.shape == (len(conjunction.d), spec.num_outputs)


@needs_benchmarks
@pytest.mark.parametrize("relative, inputs, outputs, regions, disjuncts, rows", [
    ("acasxu/vnnlib/prop_1.vnnlib", 5, 5, 1, [1], 1),
    ("acasxu/vnnlib/prop_2.vnnlib", 5, 5, 1, [1], 4),
    ("acasxu/vnnlib/prop_5.vnnlib", 5, 5, 1, [4], 1),
    ("acasxu/vnnlib/prop_7.vnnlib", 5, 5, 1, [2], 3),
    ("mnist_fc/vnnlib/prop_0_0.03.vnnlib", 784, 10, 1, [9], 1),
    ("eran_sigmoid/specs/mnist/mnist_spec_idx_56_eps_0.01200.vnnlib", 784, 10, 1, [9], 1),
    ("dist_shift/vnnlib/index776_delta0.13.vnnlib", 792, 10, 1, [1], 1),
    # 13-way `or` AND a separate top-level (<= Y_1 1.3392): distributed into every disjunct.
    ("lsnc/vnnlib/quadrotor2d_state_0.vnnlib", 6, 8, 1, [13], 2),
    ("cgan/vnnlib/cGAN_imgSz32_nCh_3_nonlinear_activations_prop_0_input_eps_0.010_output_eps_0.015.vnnlib",
     5, 1, 1, [2], 1),
    ("ml4acopf/vnnlib/14_ieee_prop2.vnnlib", 22, 186, 1, [1], 1),
    ("test/test_prop.vnnlib", 5, 5, 1, [1], 4),
])
def test_known_property_shapes(relative, inputs, outputs, regions, disjuncts, rows) -> None:
    spec = parse_vnnlib(BENCHMARKS / relative)
    assert (spec.num_inputs, spec.num_outputs) == (inputs, outputs)
    assert shape_of(spec) == (regions, disjuncts)
    assert all(c.C.shape[0] == rows for region in spec.regions for c in region.disjuncts)


@needs_benchmarks
def test_mnist_top_class_rows() -> None:
    spec = parse_vnnlib(BENCHMARKS / "mnist_fc/vnnlib/prop_0_0.03.vnnlib")  # label 4: Y_j >= Y_4
    others = [j for j in range(10) if j != 4]
    for j, conjunction in zip(others, spec.regions[0].disjuncts):
        expected = np.zeros(10)
        expected[j], expected[4] = -1.0, 1.0  # Y_4 - Y_j <= 0
        np.testing.assert_array_equal(conjunction.C[0], expected)
        assert conjunction.d[0] == 0.0
    assert spec.regions[0].upper[783] == pytest.approx(0.029999999329447746, abs=0)


@needs_benchmarks
def test_acasxu_prop_1_bound_values_are_exact() -> None:
    path = BENCHMARKS / "acasxu/vnnlib/prop_1.vnnlib"
    region = parse_vnnlib(path).regions[0]
    literals = re.findall(r"\(assert \((<=|>=) X_(\d) (\S+)\)\)", path.read_text())
    assert len(literals) == 10
    for op, index, literal in literals:  # bit-for-bit, no rounding on the way
        assert (region.upper if op == "<=" else region.lower)[int(index)] == float(literal)


@needs_benchmarks
def test_benchmark_properties_match_their_models() -> None:
    onnx = pytest.importorskip("onnx")
    checked = 0
    for instances in sorted(BENCHMARKS.glob("*/instances.csv")):
        folder = instances.parent
        sizes: dict[str, tuple[int, int]] = {}
        for row in csv.reader(instances.open()):
            if len(row) < 2:
                continue
            model_path, property_path = folder / row[0].strip(), folder / row[1].strip()
            if row[0] not in sizes:
                model = onnx.load(str(model_path), load_external_data=False)
                sizes[row[0]] = tuple(_flat_size(model, value) for value in (_graph_input(model), model.graph.output[0]))
            check_against_model(parse_vnnlib(property_path), *sizes[row[0]])
            checked += 1
    assert checked > 100


def _graph_input(model):
    initializers = {init.name for init in model.graph.initializer}
    return next(value for value in model.graph.input if value.name not in initializers)


def _flat_size(model, value) -> int:
    dims = value.type.tensor_type.shape.dim
    return math.prod(d.dim_value if d.HasField("dim_value") else 1 for d in dims)


@needs_benchmarks
def test_parse_time_of_largest_files() -> None:
    """Reports parse times; asserts only a generous bound (timing is not a test)."""
    largest = max(ALL_VNNLIB, key=lambda p: p.stat().st_size)
    started = time.perf_counter()
    for path in ALL_VNNLIB:
        parse_vnnlib(path)
    total = time.perf_counter() - started
    started = time.perf_counter()
    parse_vnnlib(largest)
    single = time.perf_counter() - started
    print(f"\nparsed {len(ALL_VNNLIB)} files in {total * 1e3:.0f} ms; "
          f"largest ({largest.name}, {largest.stat().st_size // 1024} KB) in {single * 1e3:.1f} ms", file=sys.stderr)
    assert single < 1.0


@needs_benchmarks
def test_gzipped_property(tmp_path: Path) -> None:
    source = BENCHMARKS / "acasxu/vnnlib/prop_2.vnnlib"
    packed = tmp_path / "prop_2.vnnlib.gz"
    packed.write_bytes(gzip.compress(source.read_bytes()))
    plain, unpacked = parse_vnnlib(source), parse_vnnlib(packed)
    np.testing.assert_array_equal(plain.regions[0].lower, unpacked.regions[0].lower)
    np.testing.assert_array_equal(plain.regions[0].disjuncts[0].C, unpacked.regions[0].disjuncts[0].C)


# --------------------------------------------------------------------------- structure


def test_acasxu_prop_6_has_two_boxes() -> None:
    spec = parse_vnnlib(DATA / "acasxu_prop_6.vnnlib")
    assert shape_of(spec) == (2, [4, 4])
    first, second = spec.input_boxes()
    assert first[0][1] > 0 > second[1][1]  # theta positive in one box, negative in the other
    y = np.array([1.0, 0.5, 2.0, 2.0, 2.0])  # Y_1 < Y_0: COC not minimal -> violation
    inside = (first[0] + first[1]) / 2
    assert spec.is_violated_by(inside, y)
    assert not spec.is_violated_by(inside, np.array([0.0, 1.0, 1.0, 1.0, 1.0]))
    assert not spec.is_violated_by(np.zeros(5), y)  # theta = 0 is in neither box


def test_multi_box_disjuncts_mixing_inputs_and_outputs() -> None:
    spec = parse_vnnlib_string(HEADER + """
(assert (or
    (and (>= X_0 -0.5) (<= X_0 +1e0) (>= X_1 0) (<= X_1 1) (<= Y_0 Y_1))
    (and (>= X_0 2) (<= X_0 3) (>= X_1 0) (<= X_1 1) (>= (+ Y_0 (* 2 Y_1)) (- 3)))
    (and (>= X_0 2) (<= X_0 3) (>= X_1 0) (<= X_1 1) (<= Y_0 .5))))""")
    assert shape_of(spec) == (2, [1, 2])  # identical boxes share a region
    np.testing.assert_array_equal(spec.regions[0].lower, [-0.5, 0.0])
    second = spec.regions[1].disjuncts
    np.testing.assert_array_equal(second[0].C, [[-1.0, -2.0]])  # -(y0 + 2 y1) <= 3
    np.testing.assert_array_equal(second[0].d, [3.0])
    assert spec.is_violated_by([0.0, 0.5], [0.0, 1.0])
    assert not spec.is_violated_by([0.0, 0.5], [2.0, 1.0])
    assert spec.is_violated_by([2.5, 0.5], [0.4, -5.0])


def test_top_level_asserts_are_conjoined_and_bounds_intersect() -> None:
    spec = parse_vnnlib_string(HEADER + BOX + "(assert (<= X_0 0.5))\n(assert (or (<= Y_0 1) (>= Y_1 2)))\n"
                               "(assert (<= Y_0 Y_1))")
    region = spec.regions[0]
    assert region.upper[0] == 0.5
    assert [c.C.shape[0] for c in region.disjuncts] == [2, 2]


def test_number_syntaxes_equalities_and_strict_comparisons() -> None:
    spec = parse_vnnlib_string(HEADER + """
(assert (and (>= X_0 -1.5E-3) (<= X_0 +2.)  (= X_1 7)))
(assert (or (< Y_0 -.25) (> Y_1 1e+2) (= Y_0 Y_1) (<= (- Y_0) (/ 3 2)) (<= 0 (- Y_0 Y_1 4))))""")
    region = spec.regions[0]
    np.testing.assert_array_equal(region.lower, [-1.5e-3, 7.0])
    np.testing.assert_array_equal(region.upper, [2.0, 7.0])
    rows = [(c.C.tolist(), c.d.tolist()) for c in region.disjuncts]
    assert rows == [
        ([[1.0, 0.0]], [-0.25]),
        ([[0.0, -1.0]], [-100.0]),
        ([[1.0, -1.0], [-1.0, 1.0]], [0.0, 0.0]),
        ([[-1.0, 0.0]], [1.5]),
        ([[-1.0, 1.0]], [-4.0]),
    ]


def test_constant_comparisons_prune_disjuncts() -> None:
    spec = parse_vnnlib_string(HEADER + BOX + "(assert (or (and (<= 1 0) (<= Y_0 0)) (and (<= 0 1) (<= Y_1 0))))")
    assert shape_of(spec) == (1, [1])
    np.testing.assert_array_equal(spec.regions[0].disjuncts[0].C, [[0.0, 1.0]])


def test_comments_and_odd_whitespace() -> None:
    text = ("; header comment ( with parens\n(declare-const\tX_0 Real) ; trailing\n(declare-const Y_0\n Real)\r\n"
            "(assert\n  (<=\n X_0\n\t1))(assert (>= X_0 0))  (assert (<= Y_0 ; inline\n 3))")
    spec = parse_vnnlib_string(text)
    assert (spec.regions[0].lower[0], spec.regions[0].upper[0]) == (0.0, 1.0)


def test_deep_nesting_does_not_recurse() -> None:
    depth = 5000  # far past Python's recursion limit
    formula = "(and " * depth + "(<= Y_0 1)" + ")" * depth
    spec = parse_vnnlib_string(HEADER + BOX + f"(assert {formula})")
    assert shape_of(spec) == (1, [1])


@settings(max_examples=60, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e30, max_value=1e30),
       st.sampled_from(["{!r}", "{:.17e}", "{:+.17g}", "{:.17E}"]))
def test_float_literals_round_trip(value: float, template: str) -> None:
    literal = template.format(value)
    spec = parse_vnnlib_string(f"(declare-const X_0 Real)(declare-const Y_0 Real)"
                               f"(assert (>= X_0 {literal}))(assert (<= X_0 1e31))")
    assert spec.regions[0].lower[0] == float(literal)


def test_vnnlib_2_tensor_syntax() -> None:
    spec = parse_vnnlib_string("""(vnnlib-version <2.0>)
(declare-network acc
    (declare-input X float32 [1, 2])
    (declare-output Y Real [1,2]))
(assert (and (>= X[0,0] 0) (<= X[0,0] 1) (>= X[0, 1] -1) (<= X[0,1] 1)))
(assert (or (< Y[0,0] Y[0,1]) (> Y[0,1] 3)))""")
    assert (spec.num_inputs, spec.num_outputs, spec.input_shape) == (2, 2, (1, 2))
    assert [(c.C.tolist(), c.d.tolist()) for c in spec.regions[0].disjuncts] == [
        ([[1.0, -1.0]], [0.0]), ([[0.0, -1.0]], [-3.0])]


def test_check_against_model() -> None:
    spec = parse_vnnlib_string(HEADER + BOX + "(assert (<= Y_0 0))")
    check_against_model(spec, 2, 2)
    with pytest.raises(SpecError, match="declares 2 inputs but the model takes 3"):
        check_against_model(spec, 3, 2)
    with pytest.raises(SpecError, match="declares 2 outputs"):
        check_against_model(spec, 2, 10)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("text, line, message", [
    (HEADER + BOX + "(assert (<= Y_0 1)\n", 9, "never closed"),
    (HEADER + BOX + "(assert (<= Y_0 1)))\n", 9, "')' without a matching '('"),
    (HEADER + BOX + "\n(assert (<= Z_0 1))\n", 10, "unknown symbol 'Z_0'"),
    (HEADER + BOX + "(assert (<= X_7 1))\n", 9, "undeclared variable X_7"),
    (HEADER + BOX + "(assert (<= Y_0 1.2.3))\n", 9, "non-numeric constant '1.2.3'"),
    (HEADER + BOX + "(assert (<= Y_0 nan))\n", 9, "unknown symbol 'nan'"),
    (HEADER + BOX[:-20], 2, "missing upper bound on X_1"),
    (HEADER + BOX + "(assert (<= X_0 Y_0))\n", 9, "mixes input (X) and output (Y)"),
    (HEADER + BOX + "(assert (<= (+ X_0 X_1) 1))\n", 9, "relates several inputs"),
    (HEADER + BOX + "(assert (not (<= Y_0 1)))\n", 9, "unsupported operator 'not'"),
    (HEADER + BOX + "(assert (<= (* Y_0 Y_1) 1))\n", 9, "non-linear product"),
    (HEADER + BOX + "(assert (<= (exp Y_0) 1))\n", 9, "unsupported operator 'exp'"),
    ("(declare-const Z Real)\n", 1, "unknown variable 'Z'"),
    ("(declare-const X_0 Int)\n", 1, "unsupported sort 'Int'"),
    ("(declare-const X_1 Real)\n(declare-const Y_0 Real)\n", 1, "X_0 is not declared"),
    (HEADER + "(declare-const X_0 Real)", 5, "declared twice"),
    ("\n(push 1)", 2, "unsupported command 'push'"),
    ("X_0", 1, "expected '(' at top level"),
    (HEADER + "(assert (or (<= Y_0 1) (and (<= X_0 1)\n (>= X_0 0) (>= X_1 0)\n (<= X_1 1))))", 1,
     "missing lower bound on X_0 in disjunct 1 of 2"),
    ("(declare-network n (declare-input X Real [2]) (declare-input Z Real [2]) (declare-output Y Real [1]))",
     1, "only one declare-input"),
    ("(declare-network n (declare-input X Real [2]) (declare-output Y Real []))\n(assert (<= X[2] 1))",
     2, "out of range"),
    ("(declare-network n (declare-input X Real [2]) (declare-output Y Real []) (declare-hidden H Real [3]))",
     1, "unsupported in declare-network"),
])
def test_errors_name_the_line(text: str, line: int, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_vnnlib_string(text, source="prop.vnnlib")
    text_of_error = str(caught.value)
    assert text_of_error.startswith(f"prop.vnnlib:{line}: "), text_of_error
    assert message in text_of_error
    assert "\n" not in text_of_error


def test_unreadable_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        parse_vnnlib(tmp_path / "absent.vnnlib")
    broken = tmp_path / "broken.vnnlib.gz"
    broken.write_bytes(b"not gzip")
    with pytest.raises(SpecError, match="cannot read"):
        parse_vnnlib(broken)
