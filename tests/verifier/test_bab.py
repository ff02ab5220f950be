"""Branch and bound on tiny networks with answers known from an exhaustive grid: it proves the true
``unsat`` thresholds, falsifies the ``sat`` ones (with a point that really violates), never the reverse;
split points p != 0 close proofs; the pipeline hook reaches it."""
from __future__ import annotations

import math
import time

import pytest
import torch

from netgen import export, make_net
from nlverify.model import load_onnx
from nlverify.verifier.bab import (
    BabOptions, bab_problem, bab_search, branch_and_bound, closed_domains, domain_gap, search_groups,
)
from nlverify.verifier.problem import Problem

GRID = 601


def _model(tmp_path, activation: str, seed: int = 1):
    net, shape = make_net(activation, "mlp", seed=seed, width=16, inputs=2, outputs=1)
    return load_onnx(export(net, shape, tmp_path / f"{activation}.onnx"))


def _grid_max(model) -> float:
    g = torch.linspace(-1, 1, GRID)
    with torch.no_grad():
        return float(model.forward(torch.cartesian_prod(g, g))[:, 0].max())


def _problem(threshold: float) -> Problem:
    """Violation ``y >= threshold`` on ``[-1, 1]^2`` written as ``-y <= -threshold``."""
    return Problem(0, 0, -torch.ones(2), torch.ones(2), torch.tensor([[-1.0]]), torch.tensor([-threshold]),
                   torch.tensor([-math.inf]))


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "sin", "gelu"])
def test_input_split_proves_true_bound_and_falsifies_below_it(tmp_path, activation):
    model = _model(tmp_path, activation)
    top = _grid_max(model)
    margin = 0.02 * max(1.0, abs(top))
    proved = bab_problem(model, _problem(top + margin), time.monotonic() + 20, BabOptions(mode="input"))
    assert proved.status == "proved", proved
    found = bab_problem(model, _problem(top - margin), time.monotonic() + 20, BabOptions(mode="input"))
    assert found.status == "counterexample"
    with torch.no_grad():
        y = float(model.forward(torch.as_tensor(found.counterexample, dtype=torch.float32).unsqueeze(0))[0, 0])
    assert y >= top - margin and (abs(found.counterexample) <= 1).all()


@pytest.mark.parametrize("activation,margin", [("relu", 0.02), ("sigmoid", 0.02), ("sin", 0.05)])
def test_activation_split_proves_and_falsifies(tmp_path, activation, margin):
    model = _model(tmp_path, activation)
    top = _grid_max(model)
    options = BabOptions(mode="activation")
    proved = bab_problem(model, _problem(top + margin), time.monotonic() + 25, options)
    assert proved.status == "proved", proved
    found = bab_problem(model, _problem(top - margin), time.monotonic() + 20, options)
    assert found.status == "counterexample"


def test_never_proves_a_satisfiable_problem(tmp_path):
    """Thresholds just below the true maximum: BaB may time out, but must never say proved."""
    model = _model(tmp_path, "tanh")
    top = _grid_max(model)
    for mode in ("input", "activation"):
        report = bab_problem(model, _problem(top - 1e-3), time.monotonic() + 4, BabOptions(mode=mode))
        assert report.status != "proved"


def test_split_point_inside_interval_closes_proof(tmp_path):
    """``y = sigmoid(x) - 0.2 x`` on ``[1, 5]``: sigmoid is concave there, so its upper line is a tangent
    and CROWN's upper bound is loose; 0 is outside the interval, so every split is at some p != 0, and
    those splits must close ``y <= max y + 1e-3``."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = [numpy_helper.from_array(np.array([[w]], dtype=np.float32), n)
               for n, w in (("W1", 1.0), ("W2", 1.0), ("W3", -0.2))]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Sigmoid", ["h"], ["s"]),
             helper.make_node("MatMul", ["s", "W2"], ["a"]), helper.make_node("MatMul", ["x", "W3"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["y"])]
    graph = helper.make_graph(nodes, "bump", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])], weights)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    onnx.save(proto, tmp_path / "bump.onnx")
    model = load_onnx(tmp_path / "bump.onnx")
    x = torch.linspace(1, 5, 100_001)
    top = float((torch.sigmoid(x) - 0.2 * x).max())
    problem = Problem(0, 0, torch.ones(1), 5 * torch.ones(1), torch.tensor([[-1.0]]), torch.tensor([-(top + 1e-3)]),
                      torch.tensor([-math.inf]))
    from nlverify.bounds.crown import crown
    root, _, _ = crown(model.graph, problem.lower.unsqueeze(0), problem.upper.unsqueeze(0), -torch.ones(1, 1, 1))
    assert float(root) < -(top + 1e-3)  # CROWN alone cannot prove it
    # without multipliers the split h <= p never reaches the -0.2 x term (x is bounded on the whole box):
    # the beta terms are what carry the split to the output
    report = bab_problem(model, problem, time.monotonic() + 20, BabOptions(mode="activation", root_iterations=0))
    assert report.status == "proved" and report.rounds > 0
    cold = bab_problem(model, problem, time.monotonic() + 3, BabOptions(mode="activation", root_iterations=0,
                                                                        iterations=0))
    assert cold.status != "proved"


def test_gap_and_closing_rules():
    d = torch.tensor([0.0, 1.0])
    lower = torch.tensor([[0.5, -1.0], [-0.1, 0.9], [float("inf"), float("inf")], [float("nan"), 0.0]])
    assert closed_domains(lower, d).tolist() == [True, False, True, False]
    gap = domain_gap(lower, d)
    assert gap[0] > 0 and gap[1] < 0 and gap[2] == float("inf") and torch.isfinite(gap[3])
    # the store keeps a domain exactly when its gap is not positive: the same rule as closed_domains,
    # margins, infinities and NaN included
    g = torch.Generator().manual_seed(0)
    d = torch.randn(2000, 3, generator=g) * 10 ** torch.randint(-3, 4, (2000, 1), generator=g)
    lower = d + torch.randn(2000, 3, generator=g) * 10.0 ** torch.randint(-9, 1, (2000, 3), generator=g)
    special = torch.tensor([float("inf"), -float("inf"), float("nan")])
    pick = torch.rand(2000, 3, generator=g) < 0.05
    lower[pick] = special[torch.randint(0, 3, (int(pick.sum()),), generator=g)]
    assert ((domain_gap(lower, d) > 0) == closed_domains(lower, d)).all()


def test_pipeline_hook_returns_one_outcome_per_problem(tmp_path):
    model = _model(tmp_path, "relu")
    top = _grid_max(model)
    problems = [_problem(top + 0.05), _problem(top + 0.1)]
    outcomes = branch_and_bound(model, problems, time_left=20)
    assert len(outcomes) == 2 and all(o.proved for o in outcomes)
    outcomes = branch_and_bound(model, [_problem(top + 0.05), _problem(top - 0.05)], time_left=20)
    assert any(o.counterexample is not None for o in outcomes) and not all(o.proved for o in outcomes)


@pytest.mark.parametrize("bounds,branching", [("crown", "smear"), ("forward", "strong"), ("hybrid", "strong"),
                                              ("hybrid", "smear"), ("crown", "alternate")])
@pytest.mark.parametrize("activation", ["relu", "sin"])
def test_input_split_configurations_agree(tmp_path, activation, bounds, branching):
    """Every input-split configuration proves just above the true maximum and falsifies just below."""
    model = _model(tmp_path, activation, seed=2)
    top = _grid_max(model)
    margin = 0.02 * max(1.0, abs(top))
    options = BabOptions(mode="input", input_bounds=bounds, input_branching=branching)
    proved = bab_problem(model, _problem(top + margin), time.monotonic() + 20, options)
    assert proved.status == "proved", proved
    found = bab_problem(model, _problem(top - margin), time.monotonic() + 20, options)
    assert found.status == "counterexample"


def test_inherited_linear_bound_holds_on_sub_boxes_and_rounds_down():
    from nlverify.verifier.bab import box_minimum, inherited_lower_bound

    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, 1, 3, generator=g)
    low = -torch.rand(50, 3, generator=g)
    up = torch.rand(50, 3, generator=g)
    constant = torch.randn(50, 1, generator=g, dtype=torch.float64)
    bound = inherited_lower_bound(a, constant, low, up)
    assert bound.dtype == torch.float32
    exact = constant + box_minimum(a.double(), low.double(), up.double())
    assert (bound.double() <= exact).all()
    t = torch.rand(400, 50, 3, generator=g)
    x = (low + t * (up - low)).double()
    values = (a.double()[:, 0] * x).sum(-1) + constant[:, 0]
    assert (values >= bound[:, 0].double()).all()
    with pytest.raises(ValueError, match="input-split bound method"):
        from nlverify.verifier.bab import bound_input_boxes
        bound_input_boxes(None, None, low, up, a, intermediate="magic")


def test_activation_split_searches_a_regions_problems_together(tmp_path):
    """Problems of one region share one activation-split search; each gets its own verdict, and a
    counterexample is attached to the problem it falsifies."""
    model = _model(tmp_path, "tanh")
    top = _grid_max(model)
    options = BabOptions(mode="activation", root_iterations=5)
    problems = [_problem(top + 0.05), _problem(top - 0.05), _problem(top + 0.1)]
    assert [sorted(g) for g in search_groups(model, problems, options)] == [[0, 1, 2]]
    assert sorted(search_groups(model, problems, BabOptions(mode="input"))) == [[0], [1], [2]]
    report, proved = bab_search(model, [problems[0], problems[2]], time.monotonic() + 20, options)
    assert report.status == "proved" and proved == [True, True]
    report, proved = bab_search(model, problems, time.monotonic() + 20, options)
    assert report.status == "counterexample" and report.problem == 1 and not proved[1]
    x = torch.as_tensor(report.counterexample, dtype=torch.float32).reshape(1, -1)
    assert float(model.forward(x)[0, 0]) >= top - 0.05
    outcomes = branch_and_bound(model, problems, time_left=20, options=options)
    assert outcomes[1].counterexample is not None and not outcomes[1].proved
    assert outcomes[0].counterexample is None and outcomes[2].counterexample is None


def test_a_region_that_fixes_most_inputs_is_searched_by_input_split(tmp_path):
    """``auto`` counts the inputs the region leaves free, not the model's inputs (dist_shift fixes 784 of
    792); strong branching scores only the free dimensions, and the search still proves / falsifies."""
    net, shape = make_net("tanh", "mlp", seed=4, width=16, inputs=40, outputs=1)
    model = load_onnx(export(net, shape, tmp_path / "wide.onnx"))
    fixed = torch.linspace(-0.5, 0.5, 40)
    low, up = fixed.clone(), fixed.clone()
    low[[3, 17]], up[[3, 17]] = -1.0, 1.0
    g = torch.linspace(-1, 1, GRID)
    points = fixed.repeat(GRID * GRID, 1)
    points[:, [3, 17]] = torch.cartesian_prod(g, g)
    with torch.no_grad():
        top = float(model.forward(points)[:, 0].max())

    def problem(threshold):
        return Problem(0, 0, low, up, torch.tensor([[-1.0]]), torch.tensor([-threshold]), torch.tensor([-math.inf]))

    options = BabOptions(input_split_max_inputs=8)
    assert search_groups(model, [problem(top), problem(top + 1)], options) == [[0], [1]]  # one search each
    wide = Problem(0, 0, -torch.ones(40), torch.ones(40), torch.tensor([[-1.0]]), torch.tensor([0.0]),
                   torch.tensor([-math.inf]))
    assert search_groups(model, [wide, wide], options) == [[0, 1]]  # 40 free inputs: activation split
    for branching in ("auto", "strong"):
        opts = BabOptions(input_split_max_inputs=8, input_branching=branching)
        proved = bab_search(model, [problem(top + 0.02)], time.monotonic() + 20, opts)[0]
        assert proved.status == "proved" and proved.mode == "input", proved
        found = bab_search(model, [problem(top - 0.02)], time.monotonic() + 20, opts)[0]
        assert found.status == "counterexample"


def test_input_batch_auto_follows_the_per_domain_cost(tmp_path, monkeypatch):
    """``auto`` pops large batches on cheap networks (per-round overhead dominates there) and the usual
    batch elsewhere; an explicit size always wins, and the search pops what the rule says."""
    from nlverify.verifier.input_rules import INPUT_BATCH, LARGE_INPUT_BATCH, input_batch_domains
    from nlverify.verifier.input_split import InputSplitSearch
    model = _model(tmp_path, "tanh")
    assert input_batch_domains(model.graph, BabOptions()) == LARGE_INPUT_BATCH  # a 2-16-16-1 net is cheap
    assert input_batch_domains(model.graph, BabOptions(input_large_batch_max_cost=0.0)) == INPUT_BATCH
    assert input_batch_domains(model.graph, BabOptions(input_batch_domains=7)) == 7
    popped = []
    original = InputSplitSearch.pop
    monkeypatch.setattr(InputSplitSearch, "pop", lambda self, k: popped.append(k) or original(self, k))
    report = bab_problem(model, _problem(_grid_max(model) + 0.005), time.monotonic() + 20,
                         BabOptions(mode="input", input_batch_domains=7))
    assert report.status == "proved" and popped and set(popped) == {7}


def test_input_alpha_iterations_auto_follows_the_per_domain_cost(tmp_path):
    """``auto`` spends alpha iterations on input-split children only on networks whose CROWN pass per
    domain is expensive (few domains are affordable there); an explicit count always wins."""
    from nlverify.verifier.input_rules import AUTO_INPUT_ALPHA_ITERATIONS, input_alpha_iterations
    model = _model(tmp_path, "tanh")
    assert input_alpha_iterations(model.graph, BabOptions()) == 0  # a 2-16-16-1 net is cheap
    expensive = BabOptions(input_alpha_min_cost=0.0)
    assert input_alpha_iterations(model.graph, expensive) == AUTO_INPUT_ALPHA_ITERATIONS
    assert input_alpha_iterations(model.graph, BabOptions(input_alpha_iterations=3)) == 3
    top = _grid_max(model)
    assert bab_problem(model, _problem(top + 0.02), time.monotonic() + 20, expensive).status == "proved"
    assert bab_problem(model, _problem(top - 0.02), time.monotonic() + 20, expensive).status == "counterexample"


def test_children_step_with_their_own_learning_rate(tmp_path, monkeypatch):
    """The cold root optimises with ``learning_rate``; children, warm-started from their parent's
    parameters, with the smaller ``child_learning_rate`` (a root-sized first step undid the parent's
    optimum every generation)."""
    from nlverify.verifier import activation_split

    model = _model(tmp_path, "tanh", seed=3)
    top = _grid_max(model)
    seen = []
    original = activation_split.bound_activation_domains

    def recording(graph, propagator, boxes, C, iterations, learning_rate, *args, **kwargs):
        seen.append((args[0] is not None if args else kwargs.get("alphas") is not None, learning_rate))
        return original(graph, propagator, boxes, C, iterations, learning_rate, *args, **kwargs)

    monkeypatch.setattr(activation_split, "bound_activation_domains", recording)
    options = BabOptions(mode="activation", learning_rate=0.3, child_learning_rate=0.007)
    bab_problem(model, _problem(top + 0.05), time.monotonic() + 20, options)
    assert seen[0] == (False, 0.3)  # the root: cold
    assert len(seen) > 1 and all(entry == (True, 0.007) for entry in seen[1:])  # children: warm


def test_input_bounds_auto_goes_forward_on_costly_networks(tmp_path, monkeypatch):
    """``auto`` bounds input-split boxes by CROWN unless a CROWN pass per domain costs at least
    ``input_forward_min_cost``; then by forward bounds, without alpha-CROWN (which would bring CROWN's
    passes back). The search uses the rule's method, and still proves and falsifies correctly."""
    import nlverify.verifier.input_rules as input_rules
    import nlverify.verifier.input_split as input_split

    model = _model(tmp_path, "tanh")
    costly = BabOptions(mode="input", input_forward_min_cost=0.0, input_alpha_min_cost=0.0)
    assert input_rules.input_bound_method(model.graph, BabOptions()) == "crown"  # a 2-16-16-1 net is cheap
    assert input_rules.input_bound_method(model.graph, costly) == "forward"
    assert input_rules.input_alpha_iterations(model.graph, costly) == 0
    assert input_rules.input_bound_method(model.graph, BabOptions(input_bounds="hybrid")) == "hybrid"
    with pytest.raises(ValueError, match="unknown input-split bound method"):
        input_rules.input_bound_method(model.graph, BabOptions(input_bounds="exact"))
    methods = []
    original = input_split.bound_input_boxes
    monkeypatch.setattr(input_split, "bound_input_boxes",
                        lambda *a, **k: methods.append(a[-1]) or original(*a, **k))
    top = _grid_max(model)
    proved = bab_problem(model, _problem(top + 0.005), time.monotonic() + 20, costly)
    assert proved.status == "proved" and methods and set(methods) == {"forward"}
    assert bab_problem(model, _problem(top - 0.02), time.monotonic() + 20, costly).status == "counterexample"


def test_input_batch_auto_stays_within_the_round_memory(tmp_path, monkeypatch):
    """``auto`` never pops more domains than INPUT_ROUND_BYTES allow at ROUND_BYTES_PER_NEURON per neuron
    and domain (cgan's rounds of 2,048 domains held 11.3 GB); an explicit size is not capped."""
    import nlverify.verifier.input_rules as input_rules

    model = _model(tmp_path, "tanh")
    monkeypatch.setattr(input_rules, "INPUT_ROUND_BYTES",
                        5 * model.graph.num_neurons * input_rules.ROUND_BYTES_PER_NEURON)
    assert input_rules.input_batch_domains(model.graph, BabOptions()) == 5
    assert input_rules.input_batch_domains(model.graph, BabOptions(input_batch_domains=7)) == 7
    monkeypatch.setattr(input_rules, "INPUT_ROUND_BYTES", 1)
    assert input_rules.input_batch_domains(model.graph, BabOptions()) == 1


@pytest.mark.parametrize("stages,expected", [(("alpha-crown", "alpha-crown"), True), (("layerwise", "alpha-crown"), True),
                                             (("layerwise", "layerwise"), False)])
def test_auto_refinement_is_off_only_when_every_root_box_was_optimised_node_by_node(tmp_path, stages, expected):
    from nlverify.verifier.activation_split import _refine_intermediate

    model = _model(tmp_path, "sigmoid")
    problems = [_problem(0.0) for _ in stages]
    for problem, stage in zip(problems, stages):
        problem.boxes_stage = stage
    assert _refine_intermediate(model.graph, BabOptions(), problems) is expected
    assert _refine_intermediate(model.graph, BabOptions(refine_intermediate="on"), problems) is True
    assert _refine_intermediate(model.graph, BabOptions(refine_intermediate="off"), problems[:1]) is False
