"""The hiddenness attack: a strong, batched falsifier that a planted needle must defeat.

A planted instance counts as *hidden* only when this attack, at the recorded
:class:`AttackBudget`, finds no input in the box whose class-``c`` margin is
violated (``max_{j != c} y_j >= y_c``). It runs, in float32 on the torch model:

* **PGD**: ``restarts`` starting points (the box centre, then uniform random
  points) advanced together as one batch for up to ``steps`` signed-gradient
  steps, projected onto the box. The batch is split evenly over every
  (step size, loss) pair: step sizes are fractions of the box half-width,
  losses are the margin ``max_{j != c} y_j - y_c`` and the cross-entropy of
  class ``c`` (both ascended).
* **random sampling**: ``random_samples`` uniform points in the box;
* **corners**: every corner when there are at most ``2**max_all_corners``,
  else ``corner_samples`` random corners.

It stops at the first violation found.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

__all__ = ["AttackBudget", "AttackResult", "hiddenness_attack", "dense_equivalent"]


@dataclass(frozen=True)
class AttackBudget:
    restarts: int = 1024
    steps: int = 1000
    step_sizes: tuple[float, ...] = (0.2, 0.05, 0.01, 0.002)  # fractions of the box half-width
    losses: tuple[str, ...] = ("margin", "ce")
    random_samples: int = 100_000
    corner_samples: int = 16_384
    max_all_corners: int = 14

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AttackResult:
    found: bool
    method: str = ""  # which part of the attack found it
    x: list[float] | None = None
    margin: float = -np.inf  # best (largest) violation margin seen
    seconds: float = 0.0
    steps_run: int = 0
    budget: dict = field(default_factory=dict)


def _margin(y: torch.Tensor, label: int) -> torch.Tensor:
    others = torch.cat([y[:, :label], y[:, label + 1:]], dim=1)
    return others.max(dim=1).values - y[:, label]


def _check(model: nn.Module, points: torch.Tensor, label: int, input_shape, batch: int = 8192):
    best, best_x = -np.inf, None
    with torch.no_grad():
        for start in range(0, points.shape[0], batch):
            chunk = points[start:start + batch]
            margins = _margin(model(chunk.reshape(-1, *input_shape)), label)
            index = int(margins.argmax())
            if float(margins[index]) > best:
                best, best_x = float(margins[index]), chunk[index]
    return best, best_x


def dense_equivalent(model: nn.Sequential, input_shape: tuple[int, ...]) -> nn.Sequential:
    """An MLP computing the same function as a ``Conv2d, act, Flatten, Linear, ...`` model
    (up to float rounding), for fast batched attacks; other models are returned as they are.

    The conv becomes a dense layer whose units are ordered pixel-major
    (``p * C + c``), so that grouped activations (MaxMin, GroupSort), which act
    on consecutive channels at each pixel, act on consecutive units; the next
    layer's columns are permuted back to the channel-major flattening."""
    layers = list(model)
    if not isinstance(layers[0], nn.Conv2d):
        return model
    conv, act, flatten, nxt = layers[0], layers[1], layers[2], layers[3]
    n = int(np.prod(input_shape))
    with torch.no_grad():
        basis = torch.eye(n, dtype=conv.weight.dtype).reshape(n, *input_shape)
        columns = torch.nn.functional.conv2d(basis, conv.weight, None, conv.stride, conv.padding).reshape(n, -1)
        channels = conv.out_channels
        pixels = columns.shape[1] // channels
        perm = (torch.arange(channels)[None, :] * pixels + torch.arange(pixels)[:, None]).reshape(-1)
        first = nn.Linear(n, columns.shape[1]).to(conv.weight.dtype)
        first.weight.copy_(columns.T[perm])
        first.bias.copy_(conv.bias.repeat_interleave(pixels)[perm])
        second = nn.Linear(nxt.in_features, nxt.out_features).to(nxt.weight.dtype)
        second.weight.copy_(nxt.weight[:, perm])
        second.bias.copy_(nxt.bias)
    from .models import GroupSort, MaxMin

    if isinstance(act, MaxMin):
        act = MaxMin((columns.shape[1],))
    elif isinstance(act, GroupSort):
        act = GroupSort((columns.shape[1],), act.group)
    del flatten
    return nn.Sequential(first, act, second, *layers[4:]).eval()


class _SortedGroups(nn.Module):
    """GroupSort by ``torch.sort`` (the same values as the exported sorting network;
    about 3x faster forward + backward in a large batch)."""

    def __init__(self, group: int):
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1, self.group).sort(dim=2).values.reshape(x.shape)


def _for_attack(model: nn.Sequential, input_shape: tuple[int, ...]) -> nn.Sequential:
    from .models import GroupSort

    dense = dense_equivalent(model, input_shape)
    return nn.Sequential(*[_SortedGroups(m.group) if isinstance(m, GroupSort) else m for m in dense]).eval()


def hiddenness_attack(model: nn.Module, lower: np.ndarray, upper: np.ndarray, label: int,
                      input_shape: tuple[int, ...], budget: AttackBudget = AttackBudget(),
                      seed: int = 0) -> AttackResult:
    """Run the attack on a float32 ``model`` over the flat box ``[lower, upper]``
    (a CNN is attacked through its :func:`dense_equivalent`)."""
    started = time.perf_counter()
    model = _for_attack(model, input_shape)
    input_shape = (int(np.prod(input_shape)),)
    gen = torch.Generator().manual_seed(seed)
    lo = torch.as_tensor(np.asarray(lower, dtype=np.float32))
    hi = torch.as_tensor(np.asarray(upper, dtype=np.float32))
    span = hi - lo
    result = AttackResult(False, budget=budget.to_dict())

    def done(method: str, margin: float, x: torch.Tensor | None) -> AttackResult:
        result.margin = max(result.margin, margin)
        if margin >= 0 and x is not None:
            result.found, result.method = True, method
            result.x = [float(v) for v in x.reshape(-1)]
        result.seconds = time.perf_counter() - started
        return result

    # random points and corners first: cheap
    samples = lo + span * torch.rand((budget.random_samples, lo.numel()), generator=gen)
    margin, x = _check(model, samples, label, input_shape)
    if done("random", margin, x).found:
        return result
    n = lo.numel()
    if n <= budget.max_all_corners:
        bits = ((torch.arange(2 ** n)[:, None] >> torch.arange(n)[None, :]) & 1).float()
    else:
        bits = (torch.rand((budget.corner_samples, n), generator=gen) < 0.5).float()
    margin, x = _check(model, lo + span * bits, label, input_shape)
    if done("corner", margin, x).found:
        return result

    # PGD: one batch, every (step size, loss) pair gets an equal share of the restarts
    configs = [(s, loss) for s in budget.step_sizes for loss in budget.losses]
    share = np.arange(budget.restarts) % len(configs)
    step = torch.as_tensor([configs[i][0] for i in share], dtype=torch.float32)[:, None] * span / 2
    use_ce = torch.as_tensor([configs[i][1] == "ce" for i in share])
    xs = lo + span * torch.rand((budget.restarts, n), generator=gen)
    xs[0] = (lo + hi) / 2
    target = torch.full((budget.restarts,), label, dtype=torch.long)
    for it in range(budget.steps):
        xs.requires_grad_(True)
        y = model(xs.reshape(-1, *input_shape))
        margins = _margin(y, label)
        best = int(margins.detach().argmax())
        if float(margins[best].detach()) >= 0:
            result.steps_run = it
            return done("pgd", float(margins[best].detach()), xs[best].detach())
        result.margin = max(result.margin, float(margins[best].detach()))
        ce = torch.nn.functional.cross_entropy(y, target, reduction="none")
        objective = torch.where(use_ce, ce, margins).sum()
        (grad,) = torch.autograd.grad(objective, xs)
        with torch.no_grad():
            xs = torch.minimum(torch.maximum(xs + step * grad.sign(), lo), hi)
    result.steps_run = budget.steps
    with torch.no_grad():
        margin, x = _check(model, xs, label, input_shape)
    return done("pgd", margin, x)
