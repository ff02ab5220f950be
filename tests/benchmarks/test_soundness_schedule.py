"""The attempt order and the wall-clock budget of the suite writer."""

from __future__ import annotations

import json

from nlverify.benchmarks.soundness.generate import SIZES, InstanceConfig, generate_suite
from nlverify.benchmarks.soundness.schedule import RunBudget, attempt_plan, slot_delay

MLP = InstanceConfig("mlp", (4,), (8, 8), 0.05)
CNN = InstanceConfig("cnn", (1, 4, 4), (8, 8), 0.05)
DECOY = InstanceConfig("mlp", (4,), (8, 8), 0.05, planted=False)


def test_plan_runs_every_attempt_once_and_each_slot_in_attempt_order():
    configs = SIZES["small"]
    plan = attempt_plan(3, configs, 4)
    assert sorted(plan) == sorted((a, c, k) for a in range(3) for c in range(len(configs)) for k in range(4))
    for a in range(3):
        for c in range(len(configs)):
            assert [k for a2, c2, k in plan if (a2, c2) == (a, c)] == [0, 1, 2, 3]


def test_plan_puts_fast_filling_attempts_first_and_lets_activations_take_turns():
    plan = attempt_plan(2, [CNN, DECOY, MLP], 3)
    position = {entry: index for index, entry in enumerate(plan)}
    # tier 0: decoys and planted MLPs' first attempts, config by config, activations taking turns
    assert plan[:4] == [(0, 1, 0), (1, 1, 0), (0, 2, 0), (1, 2, 0)]
    # tier 1: second attempts (run only for slots still empty); tier 2: third ones with the CNNs' first
    assert plan[4:8] == [(0, 1, 1), (1, 1, 1), (0, 2, 1), (1, 2, 1)]
    assert plan[8:14] == [(0, 0, 0), (1, 0, 0), (0, 1, 2), (1, 1, 2), (0, 2, 2), (1, 2, 2)]
    assert position[1, 0, 2] == len(plan) - 1
    assert [slot_delay(c.kind, c.planted) for c in (MLP, DECOY, CNN)] == [0, 0, 2]


def test_run_budget():
    assert RunBudget(None).allows_another()
    assert RunBudget(60.0).allows_another()
    assert not RunBudget(0.0).allows_another()


def test_spent_budget_writes_nothing_and_says_which_slots_are_empty(tmp_path, capsys):
    from nlverify.benchmarks.soundness.cli import _unfilled_message

    summary = generate_suite(tmp_path / "s", tmp_path / "k", activations=["relu", "tanh"], size="tiny",
                             time_budget=1e-9)
    assert summary["instances"] == 0 and summary["budget_exhausted"]
    assert len(summary["unfilled"]) == 4 and {s["why"] for s in summary["unfilled"]} == {"budget"}
    assert (tmp_path / "s" / "instances.csv").read_text() == ""
    written = json.loads((tmp_path / "k" / "summary.json").read_text())["unfilled"]
    assert [(s["activation"], s["config"]["kind"], s["why"]) for s in written] == [
        ("relu", "mlp", "budget"), ("relu", "mlp", "budget"), ("tanh", "mlp", "budget"), ("tanh", "mlp", "budget")]
    message = _unfilled_message(summary)
    assert "filled 0 of 4 slots" in message and "exhausted" in message
    assert message.count("time budget spent") == 4


def test_unlimited_budget_fills_every_slot(tmp_path):
    from nlverify.benchmarks.soundness.cli import _unfilled_message

    summary = generate_suite(tmp_path / "s", tmp_path / "k", activations=["relu"], size="tiny")
    assert summary["unfilled"] == [] and not summary["budget_exhausted"]
    assert summary["per_activation"]["relu"]["hidden"] == {"mlp": 1, "cnn": 0}
    assert _unfilled_message(summary) == "  filled 2 of 2 slots"


def test_cli_refuses_a_non_positive_time_budget(tmp_path, capsys):
    from nlverify.cli import main

    code = main(["soundness", "generate", str(tmp_path / "s"), "--key", str(tmp_path / "k"), "--activations",
                 "relu", "--planting", "trained", "--time-budget", "0"])
    assert code == 2 and "--time-budget must be positive" in capsys.readouterr().err
