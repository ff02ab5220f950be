"""PGD falsification: margins, reproducibility, and finding known counterexamples."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nlverify.model import load_onnx
from nlverify.verifier.attack import (
    AttackOptions, attack, step_size, violation_margin, violation_tensors,
)
from nlverify.verifier.result import validate_counterexample
from nlverify.verifier.spec import parse_vnnlib_string
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
