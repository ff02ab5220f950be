"""The BaB ablation: the hidden ``nlverify verify --bab-*`` flags reach :class:`BabOptions`, and the
ablation script's table arithmetic (fast; a 2-input ReLU net whose property only BaB can prove)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from nlverify.cli import main
from nlverify.verifier import bab as bab_module

pytest.importorskip("onnx")

REPO = Path(__file__).resolve().parents[2]

# y = relu(x0 + x1) + relu(x0 - x1) <= 2 on [-1, 1]^2, but (alpha-)CROWN only gives y <= x0 + 2 <= 3:
# "y >= 2.5" is unsat, the attack cannot falsify it and the incomplete bounds cannot prove it -> BaB.
SPEC = ("(declare-const X_0 Real)(declare-const X_1 Real)(declare-const Y_0 Real)\n"
        "(assert (>= X_0 -1)) (assert (<= X_0 1)) (assert (>= X_1 -1)) (assert (<= X_1 1))\n"
        "(assert (>= Y_0 2.5))\n")


def _relu_net(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w1 = numpy_helper.from_array(np.array([[1.0, 1.0], [1.0, -1.0]], dtype=np.float32), "W1")
    w2 = numpy_helper.from_array(np.array([[1.0], [1.0]], dtype=np.float32), "W2")
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "W2"], ["y"])]
    graph = helper.make_graph(nodes, "relu2", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def instance(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ablation")
    (folder / "prop.vnnlib").write_text(SPEC)
    return _relu_net(folder / "net.onnx"), folder / "prop.vnnlib"


@pytest.fixture
def seen_options(monkeypatch):
    """Replace the per-problem search by a stub that records the options it was given."""
    seen = []

    def stub(model, problems, deadline, options=None):
        seen.append(options)
        return bab_module.BabReport(status="timeout"), [False] * len(problems)

    monkeypatch.setattr(bab_module, "bab_search", stub)
    return seen


@pytest.mark.parametrize("flags, branching, split_points", [
    ([], "bbps", "table"),
    (["--bab-branching", "width"], "width", "table"),
    (["--bab-split-points", "midpoint"], "bbps", "midpoint"),
    (["--bab-branching", "width", "--bab-split-points", "midpoint"], "width", "midpoint"),
])
def test_flags_reach_bab_options(instance, seen_options, capsys, flags, branching, split_points):
    net, spec = instance
    code = main(["verify", str(net), str(spec), "--timeout", "20", "--seed", "7", *flags])
    assert code == 0 and capsys.readouterr().out.splitlines()[0] in ("unknown", "timeout")
    assert len(seen_options) == 1, "the property must reach BaB exactly once"
    options = seen_options[0] or bab_module.BabOptions()
    assert (options.branching, options.split_points) == (branching, split_points)
    if flags:
        assert options.seed == 7


def test_bad_flag_value_is_rejected(instance, capsys):
    net, spec = instance
    with pytest.raises(SystemExit) as exit_info:
        main(["verify", str(net), str(spec), "--bab-branching", "random"])
    assert exit_info.value.code == 2
    assert "--bab-branching" in capsys.readouterr().err


def _ablation_module():
    """``benchmarks/ablation.py`` (not a package module), loaded once."""
    if "ablation" not in sys.modules:
        spec = importlib.util.spec_from_file_location("ablation", REPO / "benchmarks" / "ablation.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["ablation"] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return sys.modules["ablation"]


def test_stage_timings_parses_the_verify_time_line():
    ablation = _ablation_module()
    out = "unsat\ntime: 19.76s  (load 0.06s  attack 1.59s  crown 2.43s  alpha-crown 9.44s  bab 6.24s  finish 0.00s)\n"
    timings = ablation.stage_timings(out)
    assert timings["bab"] == 6.24 and timings["alpha-crown"] == 9.44 and len(timings) == 6
    assert ablation.stage_timings("timeout\n") is None
    assert "bab" not in ablation.stage_timings("unsat\ntime: 3.00s  (load 1.00s  crown 2.00s)")


def _run(ablation, spec, config, result, time_s, bab_s=1.0):
    status = {"unsat": "verified", "sat": "falsified"}.get(result, result)
    return ablation.Run("b", "net.onnx", spec, config, result, status, time_s, time_s / 2, time_s - 1, bab_s)


def test_summary_counts_and_the_fair_median_over_instances_every_config_verified():
    ablation = _ablation_module()
    runs = [_run(ablation, "a", "bbps+table", "unsat", 2.0), _run(ablation, "a", "width+table", "unsat", 10.0),
            _run(ablation, "b", "bbps+table", "unsat", 4.0), _run(ablation, "b", "width+table", "timeout", 30.0),
            _run(ablation, "c", "bbps+table", "unsat", 8.0), _run(ablation, "c", "width+table", "unsat", 20.0)]
    rows = {r["config"]: r for r in ablation.summary_rows(runs, ["bbps+table", "width+table"])}
    assert rows["bbps+table"]["verified"] == 3 and rows["width+table"]["verified"] == 2
    assert rows["width+table"]["timeout"] == 1 and rows["bbps+table"]["common"] == 2
    assert rows["bbps+table"]["median_verified_s"] == 4.0 and rows["bbps+table"]["median_common_s"] == 5.0
    assert rows["width+table"]["median_common_s"] == 15.0 and rows["width+table"]["median_common_cpu_s"] == 7.5
    table = ablation.markdown(list(rows.values()))
    assert table.startswith("### b") and table.count("\n| bbps+table | 3 | 3 |") == 1


def test_sat_against_unsat_across_configs_is_wrong():
    ablation = _ablation_module()
    runs = [_run(ablation, "a", "bbps+table", "unsat", 2.0), _run(ablation, "a", "width+table", "sat", 3.0),
            _run(ablation, "b", "bbps+table", "unsat", 2.0), _run(ablation, "b", "width+table", "timeout", 3.0)]
    ablation.flag_disagreements(runs)
    assert [r.status for r in runs] == ["WRONG", "WRONG", "verified", "timeout"]


def test_prefilter_stage_only_bab_when_the_bab_stage_ran():
    ablation = _ablation_module()
    stage = lambda result, bab_s: _run(ablation, "a", "bbps+table", result, 5.0, bab_s).stage  # noqa: E731
    assert stage("unsat", 0.0) == "bounds" and stage("sat", 0.0) == "attack"
    assert stage("timeout", 2.0) == "bab" and stage("unsat", 0.001) == "bab"
    assert stage("timeout", 0.0) == "inconclusive" and stage("timeout", -1.0) == "inconclusive"
    assert ablation._bab_seconds({"crown": 1.0, "bab": 0.0}) > 0 and ablation._bab_seconds({"crown": 1.0}) == 0
