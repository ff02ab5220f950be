"""alpha-CROWN's loss: the box-width term steers the search and never costs soundness."""
from __future__ import annotations

import math

import torch

from netgen import export, make_net
from nlverify.bounds.alpha import AlphaOptions, _box_width_penalty, alpha_crown
from nlverify.bounds.crown import CrownOptions
from nlverify.model import load_onnx


def test_box_width_penalty_counts_finite_widths_of_grad_boxes_only():
    low = torch.tensor([[0.0, -1.0, -math.inf]], requires_grad=True)
    up = torch.tensor([[1.0, 2.0, 0.0]])
    fixed = (torch.zeros(1, 3), torch.full((1, 3), 5.0))  # no grad: not the alphas' doing
    penalty = _box_width_penalty({"a": (low, up), "fixed": fixed})
    assert abs(float(penalty) - 4 / 3) < 1e-6
    penalty.backward()
    torch.testing.assert_close(low.grad, torch.tensor([[-1 / 3, -1 / 3, 0.0]]))
    assert _box_width_penalty({"fixed": fixed}) == 0.0


def test_width_weight_changes_the_search_and_both_enclose_samples(tmp_path):
    net, shape = make_net("sigmoid", "mlp", seed=11, width=24)
    model = load_onnx(export(net, shape, tmp_path / "net.onnx"))
    centre = torch.randn(1, *shape, generator=torch.Generator().manual_seed(2))
    lower, upper = centre - 0.6, centre + 0.6
    samples = lower + (upper - lower) * torch.rand(4000, *shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        outputs = net(samples)
    results = []
    for weight in (0.0, 1.0):
        options = AlphaOptions(iterations=15, box_width_weight=weight)
        lb, ub, _, _ = alpha_crown(model.graph, lower, upper, options=options, propagator=model.propagator)
        assert (outputs >= lb - 1e-5).all() and (outputs <= ub + 1e-5).all()
        results.append(torch.cat([lb, ub], 1))
    assert not torch.equal(results[0], results[1])



def _sigmoid_model(tmp_path):
    net, shape = make_net("sigmoid", "mlp", seed=11, width=24)
    model = load_onnx(export(net, shape, tmp_path / "net.onnx"))
    centre = torch.randn(1, *shape, generator=torch.Generator().manual_seed(2))
    return net, model, centre - 0.6, centre + 0.6


def test_output_only_alphas_bound_the_node_boxes_once(tmp_path, monkeypatch):
    """Without intermediate alphas no parameter moves a node box: the boxes are computed once, not at every
    iteration, and the bound is the one the per-iteration passes gave (the cache changes no number)."""
    import nlverify.bounds.alpha as alpha_module

    _, model, lower, upper = _sigmoid_model(tmp_path)
    options = AlphaOptions(iterations=6, optimize_intermediate=False)
    passes = []
    original = alpha_module.propagate_bounds
    monkeypatch.setattr(alpha_module, "propagate_bounds", lambda *a, **k: passes.append(1) or original(*a, **k))
    cached, _, _, _ = alpha_crown(model.graph, lower, upper, options=options, propagator=model.propagator)
    assert len(passes) == 1
    monkeypatch.undo()
    with monkeypatch.context() as patch:  # every iteration recomputing the boxes: the old loop
        real_optimise = alpha_module._optimise

        def per_iteration(graph, lower, upper, coeffs, propagator, options, splits, parameters):
            parameters.optimise = parameters.optimise | {"__never_a_node__"}  # defeats the output-only test
            return real_optimise(graph, lower, upper, coeffs, propagator, options, splits, parameters)

        patch.setattr(alpha_module, "_optimise", per_iteration)
        recomputed, _, _, _ = alpha_crown(model.graph, lower, upper, options=options, propagator=model.propagator)
    torch.testing.assert_close(cached, recomputed, rtol=0, atol=0)


def test_intermediate_alphas_only_within_the_memory_budget(tmp_path):
    from nlverify.bounds.alpha import intermediate_alpha_bytes

    net, model, lower, upper = _sigmoid_model(tmp_path)
    needed = intermediate_alpha_bytes(model.graph, model.propagator, 1, AlphaOptions().crown)
    assert needed > 0
    for budget, intermediate in ((needed, True), (needed - 1, False)):
        options = AlphaOptions(iterations=3, max_intermediate_bytes=budget)
        lb, ub, _, alphas = alpha_crown(model.graph, lower, upper, options=options, propagator=model.propagator)
        starts = {start for start, _ in alphas}
        assert (starts != {model.graph.output_name}) == intermediate
        draws = torch.rand(2000, *lower.shape[1:], generator=torch.Generator().manual_seed(4))
        samples = lower + (upper - lower) * draws
        with torch.no_grad():
            outputs = net(samples)
        assert (outputs >= lb - 1e-5).all() and (outputs <= ub + 1e-5).all()


def _deep_mlp(tmp_path, activation: str):
    """A 4x64 MLP with 1/sqrt(fan_in) weights on 32 inputs, the regime of bounds_speed's generated nets."""
    torch.manual_seed(0)
    act = {"gelu": torch.nn.GELU, "sin": None}[activation]
    layers, fan_in = [], 32
    for _ in range(4):
        linear = torch.nn.Linear(fan_in, 64)
        torch.nn.init.normal_(linear.weight, std=fan_in ** -0.5)
        layers += [linear, act()]
        fan_in = 64
    layers.append(torch.nn.Linear(fan_in, 10))
    return load_onnx(export(torch.nn.Sequential(*layers).eval(), (32,), tmp_path / f"{activation}.onnx"))


def test_alpha_tightens_gelu_where_chords_are_locked(tmp_path):
    """On boxes whose pre-activations stay inside GELU's convex piece, the upper lines are chords (the
    best there whatever alpha says). Left free, those alphas sat at a kink and alpha-CROWN returned
    CROWN's bounds unchanged; locked, Adam tightens the lower tangents."""
    model = _deep_mlp(tmp_path, "gelu")
    centre = torch.rand(2, 32, generator=torch.Generator().manual_seed(1))
    lower, upper = centre - 0.05, centre + 0.05
    crown_low, crown_up = model.bounds(lower, upper, method="crown")
    alpha_low, alpha_up, _, _ = alpha_crown(model.graph, lower, upper, options=AlphaOptions(iterations=20),
                                            propagator=model.propagator)
    crown_width, alpha_width = float((crown_up - crown_low).mean()), float((alpha_up - alpha_low).mean())
    assert alpha_width < 0.95 * crown_width
    samples = lower + (upper - lower) * torch.rand(4000, 2, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        values = model.graph.forward(samples.reshape(-1, 32)).reshape(4000, 2, 10)
    assert (values >= alpha_low - 1e-5).all() and (values <= alpha_up + 1e-5).all()


def test_passes_behind_selections_get_optimised_alphas(tmp_path):
    """MaxMin as torch exports it (Reshape -> Max/Min): the affine node the Reshape reads from starts an
    intermediate pass of its own, and its alphas are among those alpha-CROWN optimises."""
    from nlverify.bounds.crown import has_own_pass, nodes_needing_bounds, refinement_candidates

    net, shape = make_net("maxmin", "mlp", seed=1, width=16, inputs=6)
    model = load_onnx(export(net, shape, tmp_path / "maxmin.onnx"))
    graph = model.graph
    behind = refinement_candidates(graph) - nodes_needing_bounds(graph)
    starts = {name for name in behind if has_own_pass(model.propagator, graph.nodes[name], CrownOptions())}
    assert starts, "the second affine layer feeds MaxMin through a selection"
    centre = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
    _, _, _, alphas = alpha_crown(graph, centre - 0.5, centre + 0.5, options=AlphaOptions(iterations=3),
                                  propagator=model.propagator)
    assert starts <= {start for start, _ in alphas}
