"""PGD falsification: margins, reproducibility, and finding known counterexamples."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from nlverify.model import load_onnx
from nlverify.verifier.attack import (
    AttackOptions, attack, diversify, face_biased_uniform, pgd, round_options, sample_boxes, step_size, violation_margin,
    violation_tensors,
)
from nlverify.verifier.result import validate_counterexample
from nlverify.verifier.spec import parse_vnnlib, parse_vnnlib_string
from verifier_models import SAT_DISJUNCTION_SPEC, SAT_SPEC, UNSAT_SPEC, relu_net

pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    path = relu_net(tmp_path_factory.mktemp("attack") / "relu.onnx")
    return path, load_onnx(path)


def test_violation_margin_is_min_over_conjunctions_of_max_over_rows():
    text = ("(declare-const X_0 Real)(declare-const Y_0 Real)(declare-const Y_1 Real)"
            "(assert (>= X_0 0)) (assert (<= X_0 1))"
            "(assert (or (and (<= Y_0 1) (<= Y_1 2)) (and (>= Y_0 5))))")
    tensors = violation_tensors(parse_vnnlib_string(text))
    y = torch.tensor([[0.0, 0.0], [3.0, 0.0], [6.0, 9.0]])
    margin = violation_margin(y, torch.zeros(3, dtype=torch.long), tensors)
    # rows: max(y0 - 1, y1 - 2) and 5 - y0
    expected = [min(max(a - 1, b - 2), 5 - a) for a, b in y.tolist()]
    assert margin.tolist() == pytest.approx(expected)


def test_step_schedule_goes_from_start_to_end():
    assert step_size(0, 10, 0.1, 0.001) == pytest.approx(0.1)
    assert step_size(10, 10, 0.1, 0.001) == pytest.approx(0.001)


@pytest.mark.parametrize("text", [SAT_SPEC, SAT_DISJUNCTION_SPEC])
def test_attack_finds_a_valid_counterexample(net, text):
    path, model = net
    spec = parse_vnnlib_string(text)
    candidates = attack(model, spec, AttackOptions(samples_per_region=0, restarts=8, steps=50))
    assert candidates and candidates[0].margin <= 0
    region = spec.regions[candidates[0].region]
    assert np.all(candidates[0].x >= region.lower) and np.all(candidates[0].x <= region.upper)
    assert validate_counterexample(path, spec, candidates[0].x)[0]


def test_attack_is_reproducible_and_finds_nothing_when_safe(net):
    _, model = net
    spec = parse_vnnlib_string(SAT_SPEC)
    options = AttackOptions(samples_per_region=0, restarts=8, steps=30, seed=3)
    first, second = attack(model, spec, options), attack(model, spec, options)
    assert [c.x.tolist() for c in first] == [c.x.tolist() for c in second]
    assert attack(model, parse_vnnlib_string(UNSAT_SPEC), AttackOptions(restarts=8, steps=30)) == []


# ---------------------------------------------------------------- nets built for one search difficulty each
def _mlp(path, weights: list[np.ndarray], biases: list[np.ndarray]):
    """``x -> W1 x + b1 -> relu -> ... -> Wk x + bk`` (ReLU between layers, none after the last)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, current = [], [], "x"
    for i, (w, b) in enumerate(zip(weights, biases)):
        inits += [numpy_helper.from_array(w.T.astype(np.float32), f"W{i}"),
                  numpy_helper.from_array(b.astype(np.float32), f"B{i}")]
        nodes += [helper.make_node("MatMul", [current, f"W{i}"], [f"m{i}"], name=f"fc{i}"),
                  helper.make_node("Add", [f"m{i}", f"B{i}"], [f"a{i}"], name=f"add{i}")]
        current = f"a{i}"
        if i < len(weights) - 1:
            nodes.append(helper.make_node("Relu", [current], [f"r{i}"], name=f"relu{i}"))
            current = f"r{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                           [1, weights[0].shape[1]])],
                              [helper.make_tensor_value_info(current, TensorProto.FLOAT, [1, weights[-1].shape[0]])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path, load_onnx(path)


def _box(n: int, low: float = 0.0, high: float = 1.0) -> str:
    return "".join(f"(declare-const X_{i} Real)(assert (>= X_{i} {low}))(assert (<= X_{i} {high}))"
                   for i in range(n))


@pytest.fixture(scope="module")
def decoy_net(tmp_path_factory):
    """``y = (0.01 x0, x1)`` on ``[0, 1]^2`` with the property ``y0 <= -0.001  OR  y1 >= 0.995``.

    The first disjunct is infeasible but its margin ``0.01 x0 + 0.001 <= 0.011`` is the smaller one almost
    everywhere, so the untargeted margin ``min(.)`` only ever descends in ``x0``; the violation
    (``x1 >= 0.995``) is found by restarts that target the second disjunct."""
    path = tmp_path_factory.mktemp("attack") / "decoy.onnx"
    return _mlp(path, [np.diag([0.01, 1.0])], [np.zeros(2)])


DECOY_SPEC = (_box(2) + "(declare-const Y_0 Real)(declare-const Y_1 Real)"
              "(assert (or (and (<= Y_0 -0.001)) (and (>= Y_1 0.995))))")


def test_only_the_disjunct_targeted_restarts_find_the_violation(decoy_net):
    path, model = decoy_net
    spec = parse_vnnlib_string(DECOY_SPEC)
    tensors = violation_tensors(spec)
    options = AttackOptions(restarts=8, steps=60, samples_per_region=0, seed=1)
    generator = torch.Generator().manual_seed(1)
    region = torch.zeros(8, dtype=torch.long)
    x0 = torch.rand(8, 2, generator=generator) * 0.9  # every start far from x1 >= 0.995
    _, untargeted = pgd(model, tensors, x0, region, options)
    assert float(untargeted.min()) > 0  # the decoy disjunct captures every untargeted restart
    targets = torch.tensor([-1, 1] * 4)
    best_x, targeted = pgd(model, tensors, x0, region, options, target=targets)
    assert float(targeted.min()) <= 0 and bool((targeted[targets == 1] <= 0).any())
    found = attack(model, spec, options)
    assert found and validate_counterexample(path, spec, found[0].x)[0]


@pytest.fixture(scope="module")
def plateau_net(tmp_path_factory):
    """``y = relu(20 (x0 - 0.9))`` on ``[0, 1]^4``: constant (zero gradient) on 90% of the box."""
    path = tmp_path_factory.mktemp("attack") / "plateau.onnx"
    return _mlp(path, [np.array([[20.0, 0, 0, 0]]), np.array([[1.0]])], [np.array([-18.0]), np.zeros(1)])


PLATEAU_SPEC = _box(4) + "(declare-const Y_0 Real)(assert (>= Y_0 1.5))"  # x0 >= 0.975


def test_restarts_on_a_plateau_are_redrawn_instead_of_standing_still(plateau_net):
    path, model = plateau_net
    spec = parse_vnnlib_string(PLATEAU_SPEC)
    tensors = violation_tensors(spec)
    x0 = torch.full((4, 4), 0.5)  # all on the plateau: gradient exactly zero
    best_x, margin = pgd(model, tensors, x0, torch.zeros(4, dtype=torch.long),
                         AttackOptions(steps=40, seed=0))
    assert float(margin.min()) <= 0
    winner = int(torch.argmin(margin))
    assert validate_counterexample(path, spec, best_x[winner].double().numpy())[0]


def test_face_biased_samples_stay_in_the_box_and_hit_faces_at_the_given_rate():
    lower, upper = torch.tensor([-1.0, 0.0, 2.0]), torch.tensor([1.0, 0.5, 2.0001])
    x = face_biased_uniform(lower.expand(20000, 3), upper.expand(20000, 3), 0.3, torch.Generator().manual_seed(0))
    assert bool(((x >= lower) & (x <= upper)).all())
    at_lower, at_upper = (x == lower).double().mean(0), (x == upper).double().mean(0)
    assert at_lower.tolist() == pytest.approx([0.3] * 3, abs=0.02)
    assert at_upper.tolist() == pytest.approx([0.3] * 3, abs=0.02)


@pytest.fixture(scope="module")
def sliver_net(tmp_path_factory):
    """``y = relu(1 - 2000 x0)`` on ``[0, 1]^5``: positive only in the sliver ``x0 < 5e-4`` at one face, zero
    (and flat) elsewhere."""
    path = tmp_path_factory.mktemp("attack") / "sliver.onnx"
    return _mlp(path, [np.array([[-2000.0, 0, 0, 0, 0]]), np.array([[1.0]])], [np.array([1.0]), np.zeros(1)])


SLIVER_SPEC = _box(5) + "(declare-const Y_0 Real)(assert (>= Y_0 0.5))"  # x0 <= 2.5e-4


def test_sampling_near_faces_finds_a_violation_in_a_sliver_at_a_face(sliver_net):
    path, model = sliver_net
    spec = parse_vnnlib_string(SLIVER_SPEC)
    tensors = violation_tensors(spec)
    options = AttackOptions(samples_per_region=1024, corner_max_inputs=0)
    generator = torch.Generator().manual_seed(0)
    _, _, uniform_only = sample_boxes(model, tensors, replace(options, face_fraction=0.0), generator)
    assert float(uniform_only.min()) > 0  # 1024 uniform points miss a 2.5e-4 sliver
    _, _, near_faces = sample_boxes(model, tensors, options, torch.Generator().manual_seed(0))
    assert float(near_faces.min()) <= 0
    found = attack(model, spec, AttackOptions(restarts=8, steps=10, corner_max_inputs=0))
    assert found and validate_counterexample(path, spec, found[0].x)[0]


def test_attack_is_deterministic_under_a_seed_with_redraws(plateau_net):
    _, model = plateau_net
    spec = parse_vnnlib_string(PLATEAU_SPEC.replace("1.5", "1.99"))  # x0 >= 0.9995: needs re-draws
    options = AttackOptions(restarts=6, steps=40, samples_per_region=0, seed=5)
    runs = [attack(model, spec, options, rounds=2) for _ in range(2)]
    assert runs[0] and [c.x.tolist() for c in runs[0]] == [c.x.tolist() for c in runs[1]]
    other = attack(model, spec, replace(options, seed=6), rounds=2)
    assert [c.x.tolist() for c in other] != [c.x.tolist() for c in runs[0]]


def test_rounds_escalate_restarts_and_samples_up_to_the_cap():
    options = AttackOptions(restarts=10, samples_per_region=100, growth=2.0, max_growth=8.0)
    assert round_options(options, 0) == options
    assert (round_options(options, 2).restarts, round_options(options, 2).samples_per_region) == (40, 400)
    assert round_options(options, 9).restarts == 80


def test_acas_property_7_counterexample_is_found_by_the_first_attack(benchmarks):
    """ACAS Xu 1_9 property 7 (VNN-COMP: sat): its violations sit in a thin sliver at the face
    ``X_0 = lower`` (about 1 uniform point in 10^6); the pipeline's first attack must find one."""
    from nlverify.verifier.pipeline import PipelineOptions

    onnx_path = benchmarks / "acasxu" / "onnx" / "ACASXU_run2a_1_9_batch_2000.onnx"
    spec = parse_vnnlib(benchmarks / "acasxu" / "vnnlib" / "prop_7.vnnlib")
    found = attack(load_onnx(onnx_path), spec, PipelineOptions().attack)
    assert found and validate_counterexample(onnx_path, spec, found[0].x)[0]


@pytest.fixture(scope="module")
def basin_net(tmp_path_factory):
    """``y = |x0 - 0.3| - 20 relu(x0 - 0.95)`` on ``[0, 1]^2``: from any ``x0 < 0.95`` the gradient leads into
    the basin at 0.3 (``y = 0``); the violation ``y <= -0.1`` lies at the far end (``x0 > 0.97``)."""
    path = tmp_path_factory.mktemp("attack") / "basin.onnx"
    return _mlp(path, [np.array([[1.0, 0], [-1.0, 0], [1.0, 0]]), np.array([[1.0, 1.0, -20.0]])],
                [np.array([-0.3, 0.3, -0.95]), np.zeros(1)])


BASIN_SPEC = _box(2) + "(declare-const Y_0 Real)(assert (<= Y_0 -0.1))"


def test_output_diversified_starts_escape_the_basin_the_margin_gradient_leads_into(basin_net):
    path, model = basin_net
    spec = parse_vnnlib_string(BASIN_SPEC)
    tensors = violation_tensors(spec)
    options = AttackOptions(steps=40, samples_per_region=0)
    starts = torch.stack([torch.linspace(0.35, 0.9, 8), torch.full((8,), 0.5)], dim=1)
    region = torch.zeros(8, dtype=torch.long)
    _, plain = pgd(model, tensors, starts, region, options)
    assert float(plain.min()) > 0  # every restart ends in the basin
    lower, upper = tensors.lower[region], tensors.upper[region]
    spread = diversify(model, starts, lower, upper, options, torch.Generator().manual_seed(0))
    assert bool(((spread >= lower) & (spread <= upper)).all())
    again = diversify(model, starts, lower, upper, options, torch.Generator().manual_seed(0))
    assert torch.equal(spread, again)  # seeded
    best_x, diverse = pgd(model, tensors, spread, region, options)
    assert float(diverse.min()) <= 0
    assert validate_counterexample(path, spec, best_x[int(torch.argmin(diverse))].double().numpy())[0]
    found = attack(model, spec, AttackOptions(restarts=8, steps=40, samples_per_region=0))
    assert found and validate_counterexample(path, spec, found[0].x)[0]


def test_mnist_fc_prop_2_counterexample_is_found_by_the_first_attack(benchmarks):
    """mnist_fc prop_2 (VNN-COMP: sat): plain PGD stalls at margin 0.94 from every start; the
    output-diversified starts of the pipeline's first attack reach a violation."""
    from nlverify.verifier.pipeline import PipelineOptions

    onnx_path = benchmarks / "mnist_fc" / "onnx" / "mnist-net_256x2.onnx"
    spec = parse_vnnlib(benchmarks / "mnist_fc" / "vnnlib" / "prop_2_0.03.vnnlib")
    found = attack(load_onnx(onnx_path), spec, PipelineOptions().attack)
    assert found and validate_counterexample(onnx_path, spec, found[0].x)[0]
