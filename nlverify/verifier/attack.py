"""Falsification: search the input boxes for a point that violates the property.

The violation margin
--------------------
A VNN-LIB property states its violation as ``OR_r [x in box_r AND OR_k (C_rk y <= d_rk)]``. For a
conjunction ``C y <= d`` the *margin* is

    m_k(y) = max_i (C y - d)_i ,

which is ``<= 0`` exactly when every row holds. A point ``x`` of region ``r`` violates the property
when ``min_k m_rk(f(x)) <= 0``. The attack minimises that quantity, which is piecewise smooth in ``x``.

Search
------
* **Sampling** (cheap, low-dimensional inputs only): uniform random points of every box, as many again
  drawn near its faces (:func:`face_biased_uniform`: each coordinate at a bound with probability
  ``2 * face_prob``) and, for very few inputs, all its corners; one forward pass. The best samples seed
  the gradient search.
* **PGD**: many restarts in one batch (each restart belongs to one region and stays in its box), signed
  gradient steps ``x <- clip(x - s_b * eta(a_b) * (u - l) * sign(grad m(x)), l, u)`` with a cosine
  step-size schedule ``eta`` from :attr:`AttackOptions.start_step` down to :attr:`AttackOptions.end_step`
  over each restart's age ``a_b`` and a per-restart scale ``s_b`` (coarse and fine searches side by side:
  small violating regions are missed by large steps, far ones are not reached by small steps). Half of
  the restarts target one conjunction each. A restart on a plateau (objective gradient exactly zero) is
  re-drawn near the faces with a fresh schedule instead of standing still. The odd-numbered restarts
  start from output-diversified points (:func:`diversify`: two full-width signed steps up a random
  direction of the output), which escapes basins the margin's local gradient leads every start into.
* **Escalation**: :func:`attack` runs rounds ``i = round_offset, ...``; round ``i`` has ``growth^i``
  times the restarts and samples (:func:`round_options`), so the pipeline's first call (round 0) is
  cheap and the calls it makes once the bounds have failed search harder with fresh seeds.

Everything is seeded by :attr:`AttackOptions.seed` (a private ``torch.Generator``), so a run is
reproducible on a given device. The attack only *proposes* candidates; the pipeline confirms each one
with onnxruntime on the original ONNX file before it reports ``sat``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from nlverify.verifier.spec import Spec

__all__ = ["AttackOptions", "AttackRecord", "Candidate", "ViolationTensors", "violation_tensors", "violation_margin",
           "conjunction_margins", "attack", "sample_boxes", "pgd", "face_biased_uniform", "round_options",
           "diversify"]


@dataclass(frozen=True)
class AttackOptions:
    restarts: int = 64  # PGD restarts per round, spread evenly over the regions
    steps: int = 100  # PGD steps per round
    start_step: float = 0.1  # first step, as a fraction of each input's box width
    end_step: float = 1e-4  # last step (cosine schedule in between)
    step_scales: tuple[float, ...] = (1.0, 0.2, 0.04)  # restart b scales its steps by step_scales[b % len]
    samples_per_region: int = 2048  # random samples per box when sampling applies
    face_fraction: float = 0.5  # share of those samples drawn near the faces (see face_biased_uniform)
    face_prob: float = 0.3  # in such a sample, each coordinate sits at its lower (upper) bound w.p. face_prob
    sample_max_inputs: int = 16  # sample only boxes of at most this many inputs
    corner_max_inputs: int = 8  # also try all 2^n corners up to this many inputs
    max_candidates: int = 8  # most candidates returned (best margin first)
    diversify_steps: int = 2  # output-diversified start (diversify) for odd-numbered restarts; 0: none
    diversify_step: float = 1.0  # its step, as a fraction of each input's box width
    growth: float = 2.0  # round i of an escalating search has growth^i times the restarts and samples
    max_growth: float = 16.0  # ... at most this factor (memory guard)
    seed: int = 0


@dataclass(frozen=True)
class Candidate:
    """A proposed counterexample: the flat input ``x`` (float64, inside the box of ``region``) and the
    margin the torch model gave it (``<= 0`` means violating)."""

    x: np.ndarray
    region: int
    margin: float


@dataclass(frozen=True)
class ViolationTensors:
    """All conjunctions of all regions, padded to a common row count.

    ``C``: ``(K, R, m)``, ``d``: ``(K, R)``; padding rows have ``C = 0`` and ``d = +inf`` so their
    ``(C y - d)`` is ``-inf`` and never wins the max. ``owner[k]`` is the region of conjunction ``k``.
    ``lower``/``upper``: ``(num_regions, n)`` input boxes.
    """

    C: Tensor
    d: Tensor
    owner: Tensor
    lower: Tensor
    upper: Tensor

    @property
    def num_regions(self) -> int:
        return self.lower.shape[0]


def violation_tensors(spec: Spec, dtype: torch.dtype = torch.float32,
                      device: str | torch.device = "cpu") -> ViolationTensors:
    """Stack a :class:`Spec` into :class:`ViolationTensors`."""
    conjunctions = [(index, conj) for index, region in enumerate(spec.regions) for conj in region.disjuncts]
    rows = max((conj.C.shape[0] for _, conj in conjunctions), default=1) or 1
    C = np.zeros((len(conjunctions), rows, spec.num_outputs))
    d = np.full((len(conjunctions), rows), np.inf)
    for k, (_, conj) in enumerate(conjunctions):
        C[k, :conj.C.shape[0]] = conj.C
        d[k, :conj.C.shape[0]] = conj.d
    lower = np.stack([region.lower for region in spec.regions])
    upper = np.stack([region.upper for region in spec.regions])
    as_tensor = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
    owner = torch.as_tensor([index for index, _ in conjunctions], dtype=torch.long, device=device)
    return ViolationTensors(as_tensor(C), as_tensor(d), owner, as_tensor(lower), as_tensor(upper))


def conjunction_margins(y: Tensor, spec: ViolationTensors) -> Tensor:
    """``max_i (C_k y - d_k)_i`` for every point and conjunction: ``(B, K)``."""
    rows = torch.einsum("krm,bm->bkr", spec.C, y) - spec.d  # (B, K, R)
    return rows.max(dim=-1).values


def violation_margin(y: Tensor, region: Tensor, spec: ViolationTensors) -> Tensor:
    """``min_{k in region} max_i (C_k y - d_k)_i`` per point: ``y`` is ``(B, m)``, ``region`` ``(B,)``.

    A region without conjunctions (a property that is trivially true there) gets ``+inf``.
    """
    if spec.C.shape[0] == 0:
        return torch.full((y.shape[0],), math.inf, dtype=y.dtype, device=y.device)
    per_conjunction = conjunction_margins(y, spec)
    foreign = spec.owner.unsqueeze(0) != region.unsqueeze(1)
    per_conjunction = per_conjunction.masked_fill(foreign, math.inf)
    return per_conjunction.min(dim=-1).values


def _uniform(lower: Tensor, upper: Tensor, generator: torch.Generator) -> Tensor:
    noise = torch.rand(lower.shape, generator=generator, device=lower.device, dtype=lower.dtype)
    return lower + noise * (upper - lower)


def face_biased_uniform(lower: Tensor, upper: Tensor, prob: float, generator: torch.Generator) -> Tensor:
    """Points of the box whose coordinates are, independently, ``l_i`` with probability ``prob``, ``u_i``
    with probability ``prob`` and uniform on ``[l_i, u_i]`` otherwise.

    Why: violations of a ReLU net over a large box often sit on a face of the box (where a clipped
    input drives units to the edge of their range), in a sliver that uniform sampling hits with a
    vanishing probability (ACAS Xu 1_9 property 7: about 1 uniform point in 10^6, but 1 in 500 of
    these), and PGD cannot reach it from the plateaus of constant output that cover most of such
    boxes (zero gradient). Every face of every dimension gets positive probability, the box interior
    included (``(1 - 2 prob)^n``).
    """
    x = _uniform(lower, upper, generator)
    pick = torch.rand(lower.shape, generator=generator, device=lower.device, dtype=lower.dtype)
    x = torch.where(pick < prob, lower, x)
    return torch.where((pick >= prob) & (pick < 2 * prob), upper, x)


def _corners(n: int, like: Tensor) -> Tensor:
    """All ``2^n`` vertices of the unit cube, ``(2^n, n)`` in {0, 1}."""
    codes = torch.arange(2 ** n, device=like.device).unsqueeze(1)
    bits = 2 ** torch.arange(n, device=like.device)
    return ((codes & bits) > 0).to(like.dtype)


def _evaluate(model, x: Tensor, region: Tensor, spec: ViolationTensors, chunk: int = 8192) -> Tensor:
    with torch.no_grad():
        return torch.cat([violation_margin(model.forward(x[i:i + chunk]), region[i:i + chunk], spec)
                          for i in range(0, x.shape[0], chunk)])


def sample_boxes(model, spec: ViolationTensors, options: AttackOptions,
                 generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Random points (and corners, for few inputs) of every box: ``(x, region, margin)``."""
    n = spec.lower.shape[1]
    points, owners = [], []
    for r in range(spec.num_regions):
        low, up = spec.lower[r], spec.upper[r]
        near_faces = int(round(options.samples_per_region * options.face_fraction))
        inside = options.samples_per_region - near_faces
        cloud = torch.cat([_uniform(low.expand(inside, n), up.expand(inside, n), generator),
                           face_biased_uniform(low.expand(near_faces, n), up.expand(near_faces, n),
                                               options.face_prob, generator)])
        if n <= options.corner_max_inputs:
            cloud = torch.cat([cloud, low + _corners(n, low) * (up - low), ((low + up) / 2).unsqueeze(0)])
        points.append(cloud)
        owners.append(torch.full((cloud.shape[0],), r, dtype=torch.long, device=low.device))
    x, region = torch.cat(points), torch.cat(owners)
    return x, region, _evaluate(model, x, region, spec)


def step_size(step, steps: int, start: float, end: float):
    """Cosine schedule: ``end + (start - end) * (1 + cos(pi * step / steps)) / 2`` (``step`` a number or a
    tensor of per-restart step counts)."""
    phase = step / max(steps, 1)
    cosine = torch.cos(math.pi * phase) if isinstance(step, Tensor) else math.cos(math.pi * phase)
    return end + (start - end) * (1.0 + cosine) / 2.0


def pgd(model, spec: ViolationTensors, x0: Tensor, region: Tensor, options: AttackOptions,
        deadline: float = math.inf, target: Tensor | None = None,
        generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Signed-gradient descent from ``x0`` (``(B, n)``, each row in the box of ``region``).

    A restart with ``target[b] = k >= 0`` descends on the margin of conjunction ``k`` alone (a targeted
    attack: with many disjuncts, the min over them keeps switching and stalls); ``-1`` descends on the
    full violation margin. Returns the best point and its full violation margin per restart; stops
    early once some restart violates (margin < 0) or at ``deadline`` (``time.monotonic()``).

    Plateaus: a restart whose objective has an exactly zero gradient (every unit feeding it is
    constant there, common for ReLU nets over large boxes) cannot move; it is re-drawn uniformly in
    its box (``generator``, default: seeded by ``options.seed``) and its step schedule starts over, so
    the restarts keep exploring instead of sitting still. Each restart follows the cosine schedule of
    its own age ``a_b``: ``eta_b = step_size(a_b, steps, start_step, end_step)``."""
    lower, upper = spec.lower[region], spec.upper[region]
    width = upper - lower
    if generator is None:
        generator = torch.Generator(device=x0.device)
        generator.manual_seed(options.seed)
    target = torch.full_like(region, -1) if target is None else target
    targeted = target >= 0
    scale = torch.as_tensor(options.step_scales, dtype=x0.dtype, device=x0.device)
    step_width = width * scale[torch.arange(x0.shape[0], device=x0.device) % scale.numel()].unsqueeze(1)
    x = x0.clone()
    age = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    best_x, best_margin = x.clone(), torch.full((x.shape[0],), math.inf, dtype=x.dtype, device=x.device)
    for step in range(options.steps + 1):
        with torch.enable_grad():
            x.requires_grad_(True)
            y = model.forward(x)
            margin = violation_margin(y, region, spec)
            focus = conjunction_margins(y, spec).gather(1, target.clamp(min=0).unsqueeze(1)).squeeze(1)
            objective = torch.where(targeted, focus, margin)
            grad, = torch.autograd.grad(objective.sum(), x) if step < options.steps else (None,)
        with torch.no_grad():
            x = x.detach()
            improved = margin.detach() < best_margin
            best_margin = torch.where(improved, margin.detach(), best_margin)
            best_x = torch.where(improved.unsqueeze(1), x, best_x)
            if step == options.steps or bool((best_margin < 0).any()) or time.monotonic() > deadline:
                break
            eta = step_size(age, options.steps, options.start_step, options.end_step).unsqueeze(1)
            x = torch.minimum(torch.maximum(x - eta * step_width * grad.sign(), lower), upper)
            age = age + 1
            flat = torch.nonzero((grad == 0).all(dim=1) & torch.isfinite(objective.detach())).flatten()
            if flat.numel():  # draw only for the stuck restarts: no cost on nets without plateaus
                x[flat] = face_biased_uniform(lower[flat], upper[flat], options.face_prob, generator)
                age[flat] = 0
    return best_x, best_margin


def diversify(model, x: Tensor, lower: Tensor, upper: Tensor, options: AttackOptions,
              generator: torch.Generator) -> Tensor:
    """Output-diversified starting points: ``options.diversify_steps`` signed steps *up* a random linear
    function of the output, ``x <- clip(x + diversify_step * (u - l) * sign(grad w_b . f(x)), l, u)``
    with ``w_b`` uniform in ``[-1, 1]^m`` per restart.

    Why: on some nets the gradient of the margin at a random point leads every restart into the same
    local minimum, while the violations lie in a far corner the local gradient points away from
    (mnist_fc prop_2: from every uniform start PGD stalls at margin 0.94; after two random-direction
    steps, a sixth of the starts already violate). Random output directions spread the starts over the
    output space rather than the input space (the idea of output-diversified initialisation, Tashiro
    et al., NeurIPS 2020)."""
    if options.diversify_steps <= 0 or x.shape[0] == 0:
        return x
    with torch.no_grad():
        outputs = model.forward(x[:1]).shape[1]
    w = torch.rand((x.shape[0], outputs), generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
    step = options.diversify_step * (upper - lower)
    for _ in range(options.diversify_steps):
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            grad, = torch.autograd.grad((model.forward(x) * w).sum(), x)
        x = torch.minimum(torch.maximum(x.detach() + step * grad.sign(), lower), upper)
    return x.detach()


def _restart_points(spec: ViolationTensors, options: AttackOptions, generator: torch.Generator,
                    seeds: tuple[Tensor, Tensor] | None, first_round: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Starting points ``(x, region, target)``: the box centres (first round), the best samples, the
    rest uniform random. Half of the restarts are untargeted, the other half cycle through the
    conjunctions of their region."""
    per_region = max(1, math.ceil(options.restarts / spec.num_regions))
    region = torch.arange(spec.num_regions, device=spec.lower.device).repeat_interleave(per_region)
    x = _uniform(spec.lower[region], spec.upper[region], generator)
    if first_round:
        x[::per_region] = (spec.lower + spec.upper) / 2
    if seeds is not None and seeds[0].shape[0]:
        count = min(seeds[0].shape[0], x.shape[0] // 2)
        x = torch.cat([seeds[0][:count], x[count:]])
        region = torch.cat([seeds[1][:count], region[count:]])
    return x, region, _targets(spec, region)


def _targets(spec: ViolationTensors, region: Tensor) -> Tensor:
    """Odd-numbered restarts target the ``j``-th conjunction of their region (``j`` counting such
    restarts per region), even-numbered ones are untargeted (``-1``)."""
    counts = torch.bincount(spec.owner, minlength=spec.num_regions)  # conjunctions per region
    firsts = torch.cumsum(counts, 0) - counts  # index of each region's first conjunction
    index = torch.arange(region.shape[0], device=region.device)
    ordinal = index // 2
    safe = counts[region].clamp(min=1)
    target = firsts[region] + ordinal % safe
    untargeted = (index % 2 == 0) | (counts[region] <= 1)
    return torch.where(untargeted, torch.full_like(target, -1), target)


def _to_candidates(x: Tensor, region: Tensor, margin: Tensor, spec: ViolationTensors,
                   limit: int) -> list[Candidate]:
    """Violating points (margin <= 0), best first, clipped to their box in float64."""
    order = torch.argsort(margin)
    chosen = [int(i) for i in order[:limit] if float(margin[i]) <= 0]
    lower, upper = spec.lower.double().cpu().numpy(), spec.upper.double().cpu().numpy()
    result = []
    for i in chosen:
        r = int(region[i])
        point = np.clip(x[i].double().cpu().numpy(), lower[r], upper[r])
        result.append(Candidate(point, r, float(margin[i])))
    return result


def round_options(options: AttackOptions, index: int) -> AttackOptions:
    """The options of round ``index`` of an escalating search: restarts and samples grow by
    ``growth^index`` (at most ``max_growth``), so the first call stays cheap and later calls, made when
    the bounds left the property open and time remains, search harder."""
    factor = min(options.growth ** index, options.max_growth)
    return replace(options, restarts=max(1, round(options.restarts * factor)),
                   samples_per_region=round(options.samples_per_region * factor))


@dataclass
class AttackRecord:
    """How close the attack came, over every call that shares this record: the smallest violation margin
    of any point it evaluated (``> 0``: nothing violated; a small value says the property is nearly
    violated, a large one that tight enough bounds should prove it; ``inf`` until a finite margin)."""

    best_margin: float = math.inf

    def note(self, margins: Tensor) -> None:
        finite = margins[torch.isfinite(margins)]
        if finite.numel():
            self.best_margin = min(self.best_margin, float(finite.min()))


def attack(model, spec: Spec | ViolationTensors, options: AttackOptions | None = None,
           deadline: float = math.inf, rounds: int = 1, round_offset: int = 0,
           record: AttackRecord | None = None) -> list[Candidate]:
    """``rounds`` rounds of sampling (low-dimensional boxes) then batched PGD; returns violating
    candidates, best margin first (empty when none was found before ``deadline``). ``record``, when
    given, is lowered to the smallest violation margin any evaluated point reached (see
    :class:`AttackRecord`).

    Round ``i = round_offset + j`` uses seed ``options.seed + i`` and :func:`round_options` ``(options, i)``,
    so a caller can continue an earlier search with fresh and larger rounds by passing ``round_offset``.
    """
    options = options or AttackOptions()
    parameter = next(iter(model_parameters(model)), None)
    dtype = parameter.dtype if parameter is not None else torch.float32
    device = parameter.device if parameter is not None else torch.device("cpu")
    tensors = spec if isinstance(spec, ViolationTensors) else violation_tensors(spec, dtype, device)
    if tensors.C.shape[0] == 0:
        return []
    for index in range(round_offset, round_offset + rounds):
        current = round_options(options, index)
        generator = torch.Generator(device=device)
        generator.manual_seed(options.seed + index)
        seeds = None
        if tensors.lower.shape[1] <= current.sample_max_inputs and current.samples_per_region > 0:
            xs, rs, ms = sample_boxes(model, tensors, current, generator)
            if record is not None:
                record.note(ms)
            found = _to_candidates(xs, rs, ms, tensors, current.max_candidates)
            if found or time.monotonic() > deadline:
                return found
            keep = torch.argsort(ms)[: current.restarts // 2]
            seeds = (xs[keep], rs[keep])
        x0, region, target = _restart_points(tensors, current, generator, seeds, first_round=index == 0)
        odd = torch.arange(x0.shape[0], device=x0.device) % 2 == 1
        x0[odd] = diversify(model, x0[odd], tensors.lower[region[odd]], tensors.upper[region[odd]], current,
                            generator)
        best_x, best_margin = pgd(model, tensors, x0, region, current, deadline, target, generator)
        if record is not None:
            record.note(best_margin)
        found = _to_candidates(best_x, region, best_margin, tensors, current.max_candidates)
        if found or time.monotonic() > deadline:
            return found
    return []


def model_parameters(model):
    """Tensors the model computes with (to pick the attack's dtype and device)."""
    for node in model.graph:
        for value in vars(node.op).values():
            if isinstance(value, Tensor) and value.is_floating_point():
                yield value
