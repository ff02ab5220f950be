"""The verification pipeline: verdicts on tiny models with known answers and on the `test` benchmark."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nlverify.verifier.bound_stages import alpha_plan, alpha_stalled
from nlverify.verifier.pipeline import PipelineOptions, verify
from nlverify.verifier.problem import PROOF_ABS_TOL, Problem, ProblemOutcome, rows_proved
from nlverify.verifier.result import Verdict, validate_counterexample
from nlverify.verifier.spec import parse_vnnlib
from verifier_models import (
    HEADER, SAT_DISJUNCTION_SPEC, SAT_SPEC, TEST_SUITE, UNSAT_SPEC, constant_net, relu_net, write,
)

pytest.importorskip("onnx")
needs_benchmarks = pytest.mark.skipif(not (TEST_SUITE / "instances.csv").is_file(),
                                      reason=f"benchmarks not found at {TEST_SUITE}")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipeline")
    relu_net(path / "relu.onnx")
    return path


def test_proof_margin_is_strict_and_named():
    d = torch.tensor([0.0, 0.0, 0.0, 1000.0])
    lower = torch.tensor([PROOF_ABS_TOL / 2, 1e-3, float("nan"), 1000.001])
    assert rows_proved(lower, d).tolist() == [False, True, False, False]


def test_alpha_stall_rule():
    rising = [-100.0, -50.0, -30.0, -20.0]
    assert not alpha_stalled(rising, 3, 0.02)
    flat = rising + [-19.9, -19.8, -19.75]  # +0.25 over 3 iterations, less than 2 % of 19.75
    assert alpha_stalled(flat, 3, 0.02)
    assert not alpha_stalled(flat, 3, 0.0)  # tolerance 0 disables the rule
    assert not alpha_stalled(flat[:3], 3, 0.02)  # too short a history
    assert not alpha_stalled([-float("inf")] * 5, 3, 0.02)  # no finite bound yet: never stalled
    creeping = [-1000.0, -10.0, -0.09, -0.08, -0.07, -0.06]  # tiny but steady: stalled against the start
    assert alpha_stalled(creeping, 3, 0.02)
    assert not alpha_stalled([-1000.0, -10.0, -0.09, -0.08, -0.07, -0.06, 5.0], 3, 0.02)


def _region_problem(free: int, fixed: int) -> Problem:
    lower = torch.zeros(free + fixed)
    upper = torch.cat([torch.ones(free), torch.zeros(fixed)])
    return Problem(0, 0, lower, upper, torch.ones(1, 3), torch.zeros(1), torch.full((1,), -float("inf")))


def test_alpha_plan_runs_long_only_on_high_dimensional_regions():
    options = PipelineOptions()
    # few free inputs (input-split BaB follows): the short rule, up to the stage deadline
    short = alpha_plan([[_region_problem(8, 776)]], options, 50.0, 1)
    assert (short.iterations, short.stall_window, short.stall_tolerance, short.seconds) == (
        options.alpha_iterations, options.alpha_stall_window, options.alpha_stall_tolerance, None)
    # many free inputs (activation-split BaB keeps the root's boxes): longer, capped by a time share
    deep = alpha_plan([[_region_problem(784, 0)]], options, 50.0, 1)
    assert deep.iterations == options.deep_alpha_iterations > options.alpha_iterations
    assert deep.stall_window == options.deep_alpha_stall_window > options.alpha_stall_window
    assert deep.seconds == pytest.approx(options.deep_alpha_time_fraction * 50.0)
    # the share is split among the calls still to run, so many calls cannot eat the whole budget
    assert alpha_plan([[_region_problem(784, 0)]], options, 50.0, 4).seconds == pytest.approx(deep.seconds / 4)
    # a call mixing both kinds of region keeps the short rule (the low-dimensional ones are input-split)
    mixed = alpha_plan([[_region_problem(784, 0)], [_region_problem(8, 776)]], options, 50.0, 1)
    assert mixed.iterations == options.alpha_iterations
    assert alpha_plan([[_region_problem(784, 0)]], options, None, 1).seconds is None


def test_float64_margin_is_tighter_only_for_float64():
    bound, d = torch.tensor([-0.3]), torch.tensor([-0.300001])
    assert not rows_proved(bound, d)  # 1e-6 of slack is inside the float32 margin
    assert rows_proved(bound.double(), d.double())
    assert not rows_proved(bound.double(), d)  # mixed precision keeps the float32 margin


def test_near_miss_rows_are_reverified_in_float64(folder):
    """``y`` is exactly 0.3; ``y >= 0.300001`` leaves 1e-6 of slack: float32 bounds cannot accept it, the
    float64 re-verification proves it (and only it runs in float64)."""
    model = constant_net(folder / "constant.onnx")
    spec = write(folder / "tight.vnnlib", HEADER + "(assert (>= Y_0 0.300001))\n")
    plain = PipelineOptions(float64_near_misses=False, extra_attack_rounds=0, alpha_iterations=5)
    result = verify(model, spec, timeout=30, options=plain)
    assert result.verdict is not Verdict.UNSAT and result.stats["near_miss_rows"] == 1
    result = verify(model, spec, timeout=30, options=PipelineOptions(extra_attack_rounds=0, alpha_iterations=5))
    assert result.verdict is Verdict.UNSAT and result.stats["float64_problems"] == 1
    violated = write(folder / "violated.vnnlib", HEADER + "(assert (>= Y_0 0.299999))\n")
    assert verify(model, violated, timeout=30).verdict is Verdict.SAT


def test_float64_reverification_that_fails_leaves_the_float32_attack_working(folder, monkeypatch):
    """When the float64 re-verification does not prove everything, BaB gets the float64 model and the
    extra attack still runs on the float32 one (no dtype clash, an honest unknown)."""
    import nlverify.verifier.pipeline as pipeline

    monkeypatch.setattr(pipeline, "near_miss_rows", lambda problems: 1)  # force the escalation
    spec_path = write(folder / "hard64.vnnlib", UNSAT_SPEC.replace("3.5", "2.5"))  # needs BaB
    seen = []

    def hook(bab_model, problems, time_left, device="cpu", seed=0):
        seen.append([p.C.dtype for p in problems])
        return [ProblemOutcome() for _ in problems]

    options = PipelineOptions(bab=hook, extra_attack_rounds=1, alpha_iterations=5)
    result = verify(folder / "relu.onnx", spec_path, timeout=30, options=options)
    assert result.verdict is Verdict.UNKNOWN and result.stats["float64_problems"] == 1
    assert seen == [[torch.float64]]


def test_unsat_is_proved(folder):
    result = verify(folder / "relu.onnx", write(folder / "unsat.vnnlib", UNSAT_SPEC), timeout=30)
    assert result.verdict is Verdict.UNSAT and result.x is None
    assert {"load", "attack", "crown"} <= set(result.timings)


@pytest.mark.parametrize("name,text", [("sat", SAT_SPEC), ("disjunction", SAT_DISJUNCTION_SPEC)])
def test_sat_has_a_confirmed_counterexample(folder, name, text):
    spec_path = write(folder / f"{name}.vnnlib", text)
    result = verify(folder / "relu.onnx", spec_path, timeout=30)
    assert result.verdict is Verdict.SAT
    assert validate_counterexample(folder / "relu.onnx", parse_vnnlib(spec_path), result.x)[0]
    assert result.y[0] >= 1.9 - 1e-6


def test_bab_hook_receives_open_problems_and_unknown_without_proof(folder):
    """A property CROWN cannot prove (y >= 2.5 needs branching) reaches the hook; a hook that proves
    nothing leaves the verdict unknown, one that proves everything gives unsat."""
    spec_path = write(folder / "hard.vnnlib", UNSAT_SPEC.replace("3.5", "2.5"))
    seen = []

    def hook(model, problems, time_left, device="cpu", seed=0):
        seen.append((len(problems), time_left))
        return [ProblemOutcome() for _ in problems]

    fast = PipelineOptions(bab=hook, extra_attack_rounds=0, alpha_iterations=5)
    result = verify(folder / "relu.onnx", spec_path, timeout=30, options=fast)
    assert result.verdict is Verdict.UNKNOWN and seen and seen[0][0] == 1 and seen[0][1] > 0
    proving = PipelineOptions(bab=lambda m, p, t, **k: [ProblemOutcome(proved=True) for _ in p],
                              extra_attack_rounds=0, alpha_iterations=5)
    assert verify(folder / "relu.onnx", spec_path, timeout=30, options=proving).verdict is Verdict.UNSAT


def test_stats_report_how_close_the_attack_came(folder):
    """``attack_margin``: the smallest violation margin the attack reached. ``y >= 2.5`` against
    ``max y = 2`` (at ``x0 = 1``) has true minimum margin 0.5, which no point can beat and the attack
    finds; a violated property reports a margin <= 0."""
    spec_path = write(folder / "close.vnnlib", UNSAT_SPEC.replace("3.5", "2.5"))
    options = PipelineOptions(bab=lambda m, p, t, **k: [ProblemOutcome() for _ in p], alpha_iterations=5)
    result = verify(folder / "relu.onnx", spec_path, timeout=30, options=options)
    assert result.verdict is Verdict.UNKNOWN
    assert 0.5 - 1e-6 <= result.stats["attack_margin"] <= 0.5 + 1e-3
    sat = verify(folder / "relu.onnx", write(folder / "far.vnnlib", SAT_SPEC), timeout=30)
    assert sat.verdict is Verdict.SAT and sat.stats["attack_margin"] <= 0


def test_a_wrong_counterexample_from_bab_is_not_reported(folder):
    spec_path = write(folder / "hard2.vnnlib", UNSAT_SPEC.replace("3.5", "2.5"))
    lying = PipelineOptions(bab=lambda m, p, t, **k: [ProblemOutcome(counterexample=np.zeros(2)) for _ in p],
                            extra_attack_rounds=0, alpha_iterations=5)
    result = verify(folder / "relu.onnx", spec_path, timeout=30, options=lying)
    assert result.verdict is Verdict.UNKNOWN and result.stats["rejected_candidates"] == 1


def test_tiny_timeout_gives_timeout_not_a_wrong_verdict(folder):
    result = verify(folder / "relu.onnx", write(folder / "t.vnnlib", SAT_SPEC), timeout=1e-9)
    assert result.verdict in (Verdict.TIMEOUT, Verdict.SAT)


@needs_benchmarks
@pytest.mark.parametrize("onnx_name,vnnlib_name,expected", [
    ("test_nano.onnx", "test_nano.vnnlib", Verdict.UNSAT),
    ("test_tiny.onnx", "test_tiny.vnnlib", Verdict.UNSAT),
    ("test_small.onnx", "test_small.vnnlib", Verdict.UNSAT),
    ("test_sat.onnx", "test_prop.vnnlib", Verdict.SAT),
    ("test_unsat.onnx", "test_prop.vnnlib", Verdict.UNSAT),
])
def test_benchmark_test_suite(onnx_name, vnnlib_name, expected):
    result = verify(TEST_SUITE / onnx_name, TEST_SUITE / vnnlib_name, timeout=60)
    assert result.verdict is expected
    if expected is Verdict.SAT:
        spec = parse_vnnlib(TEST_SUITE / vnnlib_name)
        assert validate_counterexample(TEST_SUITE / onnx_name, spec, result.x)[0]
