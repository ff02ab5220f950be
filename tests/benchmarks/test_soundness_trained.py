"""Trained planting: the exported network is the trained one, x* passes the plant checks, the key
records the training, and the same seed gives the same network."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nlverify.benchmarks.soundness.attack import AttackBudget
from nlverify.benchmarks.soundness.check import (CERT_TOL, MIN_MARGIN, interval_bounds, ort_outputs,
                                                 violation_margin)
from nlverify.benchmarks.soundness.generate import CLASSES, InstanceConfig, generate_suite, random_base
from nlverify.benchmarks.soundness.models import ACTIVATIONS, CNNWeights, build_model
from nlverify.benchmarks.soundness.trained import (CentredNet, TrainingConfig, build_trained_instance, push_out,
                                                   rim_points, train_network)
from nlverify.benchmarks.soundness.vnnlib_io import read_property

# A token attack: 60 training steps do not hide x* from a real one; hiding is measured by the suite runs.
TOKEN_BUDGET = AttackBudget(restarts=4, steps=2, random_samples=16, corner_samples=16, max_all_corners=0)
# short training, no early stop: the tests check the mechanics, not the hiding rate; the wide, soft pit
# of the first version (r = 0.1 half-widths, anchor sharpness 1) survives the token attack after 60 steps
FAST = TrainingConfig(max_steps=60, min_steps=10_000, exclusion=0.1, pit_volume=1.0, anchor_sharpness=1.0,
                      require_check=False)
MLP = InstanceConfig("mlp", (4,), (8, 8), 0.05)
CNN = InstanceConfig("cnn", (1, 4, 4), (8, 8), 0.05)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("config", [MLP, CNN], ids=["mlp", "cnn"])
def test_folding_the_centring_keeps_the_function(activation, config):
    rng = np.random.default_rng(0)
    n = int(np.prod(config.input_shape))
    x0 = rng.uniform(0.2, 0.8, n)
    net = CentredNet(random_base(config, activation, rng), x0, config.eps).double()
    exported = build_model(net.to_weights(), torch.float64)
    xs = torch.as_tensor(x0 + config.eps * rng.uniform(-1, 1, (64, n))).reshape(-1, *config.input_shape)
    with torch.no_grad():
        np.testing.assert_allclose(exported(xs).numpy(), net(xs).numpy(), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("activation", ["tanh", "groupsort"])
def test_cnn_trains_and_exports(activation):
    rng = np.random.default_rng(1)
    x0 = rng.uniform(0.2, 0.8, 16)
    x_star = x0 + 0.01 * rng.uniform(-1, 1, 16)
    weights, report = train_network(random_base(CNN, activation, rng), x0, CNN.eps, x0 - CNN.eps, x0 + CNN.eps,
                                    0, 1, x_star, True, 3, TrainingConfig(max_steps=5, min_steps=10_000))
    assert isinstance(weights, CNNWeights) and report["steps"] == 5
    assert all(np.isfinite(w).all() and np.isfinite(b).all() for w, b in [weights.conv, *weights.hidden, weights.out])


def test_push_out_moves_only_points_inside_the_ball():
    gen = torch.Generator().manual_seed(0)
    star, radius = torch.zeros(1, 3), torch.full((1, 3), 0.1)
    rim = rim_points(star, radius, 200, gen)
    distance = (rim.abs() / radius).amax(dim=1)
    assert bool((distance >= 1 - 1e-6).all() and (distance <= 3 + 1e-6).all())
    x = torch.tensor([[0.05, 0.0, -0.02], [0.0, 0.0, 0.0], [0.3, 0.0, 0.0]])
    moved = push_out(x, star, radius)
    assert torch.allclose((moved[:2].abs() / radius).amax(dim=1), torch.ones(2))
    assert torch.allclose(moved[0] / moved[0].abs().max(), x[0] / x[0].abs().max())  # radially
    assert torch.equal(moved[2], x[2])


def test_trained_plant_passes_the_checks_and_is_reproducible():
    first = build_trained_instance(MLP, "relu", 11, FAST)
    again = build_trained_instance(MLP, "relu", 11, FAST)
    for (w1, b1), (w2, b2) in zip(first.weights.hidden + [first.weights.out], again.weights.hidden + [again.weights.out]):
        np.testing.assert_array_equal(w1, w2)
        np.testing.assert_array_equal(b1, b2)
    prop, x = first.prop, first.x_star
    assert prop.contains(x) and np.all(x - first.certified_radius >= prop.lower)
    assert np.all(x + first.certified_radius <= prop.upper)
    assert first.margin_torch64 >= MIN_MARGIN and first.certified_radius > 0
    # the interval proof, redone: y_target - y_label > 0 on the whole certified ball
    rows = np.zeros((1, CLASSES))
    rows[0, first.target], rows[0, prop.label] = 1.0, -1.0
    model64 = build_model(first.weights, torch.float64)
    lo, _ = interval_bounds(model64, MLP.input_shape, x - first.certified_radius, x + first.certified_radius, rows)
    assert lo[0] >= CERT_TOL
    assert first.info["training"]["hyperparameters"] == FAST.to_dict()
    assert first.info["training"]["steps"] == FAST.max_steps


def test_trained_suite_key_records_the_training(tmp_path):
    suite, key = tmp_path / "suite", tmp_path / "key"
    summary = generate_suite(suite, key, activations=["relu"], size="tiny", seed=5, budget=TOKEN_BUDGET,
                             timeout=20, planting="trained", training=FAST)
    assert summary["planting"] == "trained" and summary["training"] == FAST.to_dict()
    entries = [json.loads(line) for line in (key / "key.jsonl").read_text().splitlines()]
    planted = [e for e in entries if e["hidden"]]
    assert len(planted) == summary["planted"] == 1, summary["discarded"]
    for entry in entries:
        assert entry["planting"] == "trained"
        assert entry["training"]["hyperparameters"] == FAST.to_dict()
        assert isinstance(entry["training"]["seed"], int) and "needle_height" not in entry
    (entry,) = planted
    assert entry["truth"] == "violated" and entry["attack"]["found"] is False
    assert entry["certified_radius"] > 0 and entry["margins"]["torch64"] >= MIN_MARGIN
    x = np.array(entry["counterexample"])
    prop = read_property(suite / entry["vnnlib"])
    assert prop.contains(x)
    y = ort_outputs(suite / entry["onnx"], x)
    assert violation_margin(y, prop.label) >= MIN_MARGIN and entry["margins"]["ort32"] >= MIN_MARGIN


def test_unknown_planting_is_refused(tmp_path):
    with pytest.raises(ValueError, match="planting"):
        generate_suite(tmp_path / "s", tmp_path / "k", activations=["relu"], size="tiny", planting="grown")


def _constant_net(gap: float) -> CentredNet:
    """A 4-input MLP whose output is constant: ``y_0 - y_k = gap`` for k = 1, 2 (label 0)."""
    from nlverify.benchmarks.soundness.models import MLPWeights

    out_bias = np.array([gap, 0.0, 0.0])
    weights = MLPWeights("relu", [(np.zeros((4, 4)), np.zeros(4))], (np.zeros((CLASSES, 4)), out_bias))
    return CentredNet(weights, np.full(4, 0.5), 0.05)


def test_pit_radius_shrinks_with_the_input_dimension():
    config = TrainingConfig()
    assert config.exclusion_for(4) ** 4 <= config.pit_volume * (1 + 1e-9)
    assert config.exclusion_for(16) == config.exclusion
    assert config.exclusion_for(4) < config.exclusion_for(8) <= config.exclusion


@pytest.mark.parametrize("gap, found, mined", [(-0.01, True, True), (0.02, True, True), (0.2, False, True),
                                                (1.0, False, False)])
def test_probe_reports_near_misses_and_mines_weak_points(gap, found, mined):
    from nlverify.benchmarks.soundness.trained import probe

    config = TrainingConfig(probe_restarts=8, probe_steps=2, probe_samples=32)
    lo, hi = torch.full((1, 4), 0.45), torch.full((1, 4), 0.55)
    hit, hard = probe(_constant_net(gap), lo, hi, 0, config, torch.Generator().manual_seed(0))
    assert hit is found  # a violation above -hidden_margin counts as found
    assert (len(hard) > 0) is mined and len(hard) <= config.pool_size // 2
    assert bool(((hard >= lo) & (hard <= hi)).all())


@pytest.mark.parametrize("gap, stops", [(0.02, False), (0.2, True)])
def test_stopping_rule_wants_a_safety_margin(gap, stops):
    from nlverify.benchmarks.soundness.trained import _stopping_rule

    # a decoy (x* must not violate): no violation anywhere, but a margin of 0.02 is within hidden_margin
    lo, hi = torch.full((1, 4), 0.45), torch.full((1, 4), 0.55)
    stop, _ = _stopping_rule(_constant_net(gap), lo, hi, 0, torch.full((1, 4), 0.5), False, TrainingConfig(), 1)
    assert stop is stops


def test_planted_training_that_never_passes_its_check_is_discarded_before_the_attack():
    # 5 steps, no check ever runs: the planted network is not known to hide x*, so it is not certified,
    # attacked or written; a decoy is kept either way (its truth is settled by the suite's attack)
    short = TrainingConfig(max_steps=5, min_steps=10_000)
    with pytest.raises(RuntimeError, match="did not pass its hiding check in 5 steps"):
        build_trained_instance(MLP, "relu", 11, short)
    decoy = build_trained_instance(InstanceConfig("mlp", (4,), (8, 8), 0.05, planted=False), "relu", 11, short)
    assert decoy.info["training"]["check_passed"] is False and decoy.info["training"]["steps"] == 5


@pytest.mark.parametrize("activation", ["groupsort"])
def test_training_groupsort_is_the_exported_sorting_network(activation):
    from nlverify.benchmarks.soundness.models import GroupSort
    from nlverify.benchmarks.soundness.trained import SortedGroups

    x = torch.randn(32, 8, 4, 4, dtype=torch.float64)
    assert torch.equal(SortedGroups(4)(x), GroupSort((8, 4, 4))(x))
    x = torch.randn(32, 16, dtype=torch.float64)
    assert torch.equal(SortedGroups(4)(x), GroupSort((16,))(x))


def test_default_training_hides_a_small_mlp_plant_from_the_full_attack():
    """End to end with the default configuration and the full default attack budget (a few seconds):
    the stopping rule fires early, and the suite's own attack (another seed) then misses x* too.
    (A measured case, not a guarantee for every seed: about half of the small MLP attempts hide.)"""
    from nlverify.benchmarks.soundness.attack import hiddenness_attack

    config = InstanceConfig("mlp", (4,), (16, 16), 0.05)
    inst = build_trained_instance(config, "tanh", 17)
    report = inst.info["training"]
    assert report["check_passed"] and report["stopped_early"] and report["steps"] < TrainingConfig().max_steps
    attack = hiddenness_attack(build_model(inst.weights, torch.float32), inst.prop.lower, inst.prop.upper,
                               inst.prop.label, config.input_shape, AttackBudget(), seed=17)
    assert not attack.found and attack.margin < 0
    assert inst.margin_torch64 >= MIN_MARGIN and inst.certified_radius > 0
