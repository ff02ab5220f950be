"""Activation-space branch and bound (GenBaB-style), for high-dimensional inputs.

A domain is the region box plus a box per node that feeds a nonlinearity. One neuron per domain is
chosen by BBPS (:mod:`nlverify.verifier.branching`) and split at its branching point ``p``
(:func:`~nlverify.verifier.branching.split_points`), giving ``x_j <= p`` and ``x_j >= p``. Children are
bounded by alpha-CROWN with *fixed intermediate boxes* (the parent's, narrowed by the split; IBP can
only tighten them further, and when the graph is small enough one CROWN pass re-bounds them first):
every stored box enters as a :class:`SplitConstraints` entry, so the relaxations are rebuilt on the child
intervals and each constraint gets a beta multiplier (beta-CROWN generalised to ``p != 0``; a multiplier
on a constraint that already holds is still a valid Lagrangian term). Alphas and betas are warm-started
from the parent.

All problems of a region run in one search: the roots are bounded together and every round pops the
lowest-gap domains of any problem. A lone problem's early rounds carry 1, 2, 4, ... domains at almost
the cost of a full batch; together they fill the batch from the first round. Falsification tries the
minimiser of each domain's linear bound, refined by PGD every ``attack_every`` rounds.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from nlverify.bounds.alpha import AlphaOptions, alpha_crown
from nlverify.bounds.crown import CrownOptions, SplitConstraints, crown, spec_coefficients
from nlverify.graph import Graph
from nlverify.verifier.branching import anchor_values, choose_splits, coefficients_at, refinement_cost, split_targets
from nlverify.verifier.domains import DomainStoreFull, best_rows
from nlverify.verifier.input_split import linear_minimiser
from nlverify.verifier.search import BabReport, Search

if TYPE_CHECKING:
    from nlverify.verifier.bab import BabOptions

__all__ = ["ActivationSplitSearch", "bound_activation_domains"]


def bound_activation_domains(graph: Graph, propagator, boxes: dict[str, tuple[Tensor, Tensor]], C: Tensor,
                             iterations: int,
                             learning_rate: float, alphas: dict | None = None, betas: dict | None = None,
                             refine: bool = False, deadline: float | None = None, refine_after: Tensor | None = None,
                             ) -> tuple[Tensor, dict[str, tuple[Tensor, Tensor]], dict]:
    """alpha/beta-CROWN with the stored node boxes fixed (IBP inside them, no CROWN re-run).

    ``boxes`` holds the input box (under the input node's name) and a box per split target. With
    ``refine``, one CROWN pass first re-bounds every intermediate node inside the stored boxes (so a split
    in an early layer tightens the later layers' boxes; with ``refine_after``, box ``b`` only re-bounds
    the nodes after position ``refine_after[b]`` of the graph, see
    :func:`~nlverify.bounds.crown.propagate_bounds`; one backward pass per node, done once, not per
    iteration). Returns row lower bounds ``(B, m)``, the (possibly tightened) boxes, and the parameters
    (alphas keyed ``(output, node)``, betas ``("beta", node)``)."""
    name = graph.input_name
    input_box = boxes[name]
    inner = {t: lu for t, lu in boxes.items() if t != name}
    splits = SplitConstraints({t: lu[0] for t, lu in inner.items()}, {t: lu[1] for t, lu in inner.items()})
    crown_lb = None
    if refine:
        crown_lb, _, refined = crown(graph, input_box[0], input_box[1], C, CrownOptions(), propagator,
                                     need_upper=False, splits=splits, refine_after=refine_after)
        inner = {t: (torch.maximum(refined[t][0], l), torch.minimum(refined[t][1], u)) for t, (l, u) in inner.items()}
        splits = SplitConstraints({t: lu[0] for t, lu in inner.items()}, {t: lu[1] for t, lu in inner.items()})
    options = AlphaOptions(iterations=iterations, learning_rate=learning_rate, optimize_intermediate=False,
                           crown=CrownOptions(intermediate="ibp"), deadline=deadline)
    lb, _, node_boxes, params = alpha_crown(graph, input_box[0], input_box[1], C, options, alphas=alphas,
                                            propagator=propagator, need_upper=False, splits=splits, betas=betas)
    new_boxes = {t: (torch.maximum(node_boxes[t][0], l), torch.minimum(node_boxes[t][1], u))
                 for t, (l, u) in inner.items()}
    new_boxes[name] = input_box
    lb = lb.detach() if crown_lb is None else torch.maximum(lb.detach(), crown_lb)
    return lb, new_boxes, params


def _refine_intermediate(graph: Graph, options: BabOptions, problems) -> bool:
    """``"auto"``: refine on graphs cheap enough (``refine_max_cost``) unless every problem's root boxes
    were optimised node by node (the pipeline's layer-wise stage). A plain CROWN pass rarely beats such
    boxes, so refining only costs throughput: eran_sigmoid, whole pipeline, 60 s: 9044 proved in 49.4 s
    with refinement and 40.8 s without; 1655 (2 of 4 problems proved either way) 7,160 -> 45,560
    domains; 5922 (0 of 3) 12,289 -> 40,963."""
    if options.refine_intermediate == "auto":
        optimised = all(getattr(p, "boxes_stage", None) == "layerwise" for p in problems)
        return refinement_cost(graph) <= options.refine_max_cost and not optimised
    return options.refine_intermediate == "on"


class ActivationSplitSearch(Search):
    """Activation-split branch and bound over one region's problems."""

    def root_boxes(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Node boxes at the root, one row per problem: CROWN's on the shared region box, intersected with
        any boxes the pipeline's bound stages left for that problem."""
        count = len(self.problems)
        low, up = self.problem.lower.unsqueeze(0), self.problem.upper.unsqueeze(0)
        _, _, bounds = crown(self.graph, low, up, self.Cs[:1], CrownOptions(), self.propagator,
                             need_upper=False)
        shape = self.graph.input_shape
        boxes = {self.graph.input_name: (low.reshape(1, *shape).expand(count, *shape),
                                         up.reshape(1, *shape).expand(count, *shape))}
        for t in self.targets:
            if t == self.graph.input_name:
                continue
            l, u = (b.expand(count, *b.shape[1:]) for b in bounds[t])
            known = [(p.boxes or {}).get(t) for p in self.problems]
            if all(k is not None for k in known):
                kl = torch.cat([k[0].reshape(1, *l.shape[1:]) for k in known])
                ku = torch.cat([k[1].reshape(1, *u.shape[1:]) for k in known])
                l, u = torch.maximum(l, kl), torch.minimum(u, ku)
            boxes[t] = (l.contiguous(), torch.maximum(u, l).contiguous())
        return boxes

    def run(self) -> BabReport:
        self.report.mode = "activation"
        o = self.options
        g = self.graph
        self.targets = split_targets(g)
        self.refine = _refine_intermediate(g, o, self.problems)
        order = {node.name: i for i, node in enumerate(g)}
        self.positions = torch.tensor([order[t] for t in self.targets], device=self.Cs.device)
        names = [n.name for n in g.nonlinear_nodes()] + [g.input_name]
        boxes = self.root_boxes()
        problem = torch.arange(len(self.problems), device=self.Cs.device)
        lb, boxes, params = bound_activation_domains(g, self.propagator, boxes, self.Cs,
                                                     o.root_iterations, o.learning_rate, deadline=self.deadline)
        lb = torch.maximum(lb, torch.stack([p.best_lower for p in self.problems]))
        self.push_open(self._activation_fields(boxes, lb, params, problem), lb, torch.zeros_like(problem))
        while len(self.store):
            if self.expired():
                return self.finish("timeout")
            self.report.rounds += 1
            batch = self.pop(o.batch_domains)
            f, k = batch.fields, len(batch)
            problem = f["problem"]
            boxes = {n[len("low:"):]: (v, f["up:" + n[len("low:"):]]) for n, v in f.items() if n.startswith("low:")}
            input_low, input_up = (b.reshape(k, -1) for b in boxes[g.input_name])
            rows = best_rows(f["lb"], self.ds[problem])
            coeffs = spec_coefficients(self.Cs[problem, rows].unsqueeze(1), g, k, input_low)
            _, coefficients = coefficients_at(g, self.propagator, boxes, coeffs, names)
            coefficients = {n: a[:, 0] for n, a in coefficients.items()}
            # falsification: the minimiser of the linear bound, sometimes refined by PGD
            x_star = linear_minimiser(coefficients[g.input_name].reshape(k, -1), input_low, input_up)
            anchors = anchor_values(g, x_star, boxes)
            found = self.check_points(x_star, problem)
            if found is None and o.attack_every and self.report.rounds % o.attack_every == 0:
                w = slice(0, min(o.attack_domains, k))
                found = self.pgd_attack(x_star[w], input_low[w], input_up[w], problem[w])
            if found is not None:
                return self.finish("counterexample", found)
            decision = choose_splits(g, boxes, coefficients, o.branching, anchors, o.split_points)
            if (torch.isinf(decision.score) & (decision.score < 0)).any():
                return self.finish("stuck", message="an open domain has no neuron left to split")
            child_boxes = self._split_boxes(boxes, decision)
            parent = torch.arange(2 * k, device=input_low.device) % k
            alphas, betas = self._warm_start(f, parent) if o.warm_start else (None, None)
            # a child's boxes are its parent's refined ones plus one split: only nodes after the split
            # node can tighten
            split_position = self.positions[decision.target.clamp(min=0)]
            lb, child_boxes, params = bound_activation_domains(
                g, self.propagator, child_boxes, self.Cs[problem[parent]], o.iterations, o.child_learning_rate, alphas,
                betas, refine=self.refine, deadline=self.deadline, refine_after=split_position[parent])
            lb = torch.maximum(lb, f["lb"][parent])
            depth = batch.depth[parent] + 1
            self.report.max_depth = max(self.report.max_depth, int(depth.max()))
            try:
                self.push_open(self._activation_fields(child_boxes, lb, params, problem[parent]), lb, depth)
            except DomainStoreFull as error:
                return self.finish("memory", message=str(error))
        return self.finish("proved")

    def _split_boxes(self, boxes: dict[str, tuple[Tensor, Tensor]], decision) -> dict[str, tuple[Tensor, Tensor]]:
        """Children boxes ``(2k, ...)``: the first ``k`` take ``x_j <= p``, the last ``k`` take ``x_j >= p``."""
        out = {}
        targets = split_targets(self.graph)
        for name, (low, up) in boxes.items():
            k = low.shape[0]
            t = targets.index(name) if name in targets else -1
            rows = torch.nonzero(decision.target == t).flatten() if t >= 0 else decision.target[:0]
            left_up, right_low = up.clone().reshape(k, -1), low.clone().reshape(k, -1)
            if rows.numel():
                left_up[rows, decision.neuron[rows]] = decision.point[rows]
                right_low[rows, decision.neuron[rows]] = decision.point[rows]
            out[name] = (torch.cat([low, right_low.reshape(low.shape)]), torch.cat([left_up.reshape(up.shape), up]))
        return out

    def _activation_fields(self, boxes: dict, lb: Tensor, params: dict, problem: Tensor) -> dict[str, Tensor]:
        fields = {"lb": lb, "problem": problem}
        for t, (l, u) in boxes.items():
            fields["low:" + t], fields["up:" + t] = l, u
        if self.options.warm_start:
            for key, value in params.items():
                if key[0] == "beta":
                    fields["beta_low:" + key[1]], fields["beta_up:" + key[1]] = value
                elif key[0] == self.graph.output_name:
                    fields["alpha:" + key[1]] = value.movedim(1, 0)  # domain axis first
        return fields

    def _warm_start(self, f: dict[str, Tensor], parent: Tensor) -> tuple[dict, dict]:
        out = self.graph.output_name
        alphas = {(out, n[len("alpha:"):]): v[parent].movedim(0, 1) for n, v in f.items() if n.startswith("alpha:")}
        betas = {n[len("beta_low:"):]: (v[parent], f["beta_up:" + n[len("beta_low:"):]][parent])
                 for n, v in f.items() if n.startswith("beta_low:")}
        return alphas, betas
