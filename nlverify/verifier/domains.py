"""The open domains of branch-and-bound, kept as growable tensors (one row per domain).

A *domain* is a sub-problem of one BaB problem: an input box and, for activation splitting, a box for
every node that feeds a nonlinearity (the split decisions are exactly the places where those boxes are
narrower than at the root). Besides the boxes, a domain carries whatever its bounding produced that the
next round can reuse (warm-start alphas and betas, input coefficients). The store knows none of that
meaning: it holds named tensors ``fields[name]`` of shape ``(N, ...)`` plus, per domain,

* ``gap``   -- ``max_i (lower bound_i - d_i - margin_i)`` over the conjunction's rows: the domain is
  closed once ``gap > 0``, so the most negative gap is the worst (least proved) domain;
* ``depth`` -- the number of splits that led to it.

Selection (``pop``): the ``k`` domains with the lowest gap (beta-CROWN / GenBaB practice: working on the
worst domains raises the global lower bound ``min gap`` fastest, and a satisfiable domain tends to be
among them). Under memory pressure (the store more than ``depth_first_fraction`` full) it picks the
deepest domains instead, which are closest to being closed, so the store drains instead of growing.

Memory: rows are preallocated with doubling capacity up to ``max_bytes``; :meth:`room` tells the caller
how many more domains fit, and :meth:`push` past the cap raises :class:`DomainStoreFull` with a message
naming the cap (the BaB loop turns that into ``unknown``, never into a verdict).
Removal moves the last rows into the holes, so a ``pop`` costs ``O(k)``, not ``O(N)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nlverify.verifier.problem import proof_margin, rows_proved

__all__ = ["DomainStore", "DomainStoreFull", "Popped", "closed_domains", "domain_gap", "best_rows"]


def closed_domains(lower: Tensor, d: Tensor) -> Tensor:
    """``(B,)``: some row proved with the pipeline's margin, or the domain is empty (lower = +inf)."""
    empty = torch.isinf(lower) & (lower > 0)
    return (rows_proved(lower, d) | empty).any(1)


def domain_gap(lower: Tensor, d: Tensor) -> Tensor:
    """``max_i (lower_i - d_i - margin_i)``: > 0 on a closed domain; the priority of an open one (lowest
    first). NaN rows count as unproved (a very negative finite gap, so selection stays well defined)."""
    finite = torch.isfinite(lower)
    gap = torch.where(finite, lower - d - proof_margin(torch.where(finite, lower, d), d), lower)
    gap = torch.nan_to_num(gap, nan=-1e30, posinf=float("inf"), neginf=-1e30)
    return gap.max(1).values


def best_rows(lower: Tensor, d: Tensor) -> Tensor:
    """Per domain the row closest to being proved (largest ``lower - d``)."""
    return torch.nan_to_num(lower - d, nan=-float("inf")).argmax(1)


class DomainStoreFull(RuntimeError):
    """Raised when pushing more domains than the memory cap allows."""


@dataclass
class Popped:
    """A batch of domains taken out of the store."""

    fields: dict[str, Tensor]
    gap: Tensor  # (k,)
    depth: Tensor  # (k,) long

    def __len__(self) -> int:
        return self.gap.shape[0]


class DomainStore:
    """Growable tensor storage of open domains with lowest-gap-first (or deepest-first) selection."""

    def __init__(self, max_bytes: int = 2 << 30, depth_first_fraction: float = 0.8,
                 device: torch.device | str = "cpu") -> None:
        self.max_bytes = int(max_bytes)
        self.depth_first_fraction = depth_first_fraction
        self.device = torch.device(device)
        self._fields: dict[str, Tensor] = {}
        self._gap = torch.empty(0, device=self.device)
        self._depth = torch.empty(0, dtype=torch.long, device=self.device)
        self._size = 0
        self.bytes_per_domain = 0

    # ------------------------------------------------------------------ sizes
    def __len__(self) -> int:
        return self._size

    @property
    def capacity(self) -> int:
        """Most domains the memory cap allows (``inf``-like before the first push)."""
        if self.bytes_per_domain == 0:
            return 1 << 62
        return max(1, self.max_bytes // self.bytes_per_domain)

    def room(self) -> int:
        return self.capacity - self._size

    def min_gap(self) -> float:
        """The worst open domain's gap (``+inf`` when empty): a global lower bound of the problem."""
        return float(self._gap[:self._size].min()) if self._size else float("inf")

    def max_depth(self) -> int:
        return int(self._depth[:self._size].max()) if self._size else 0

    def values(self, name: str) -> Tensor:
        """The field ``name`` of every open domain (a view; empty before the first push)."""
        if name not in self._fields:
            return torch.empty(0, device=self.device)
        return self._fields[name][:self._size]

    # ------------------------------------------------------------------ push / pop
    def push(self, fields: dict[str, Tensor], gap: Tensor, depth: Tensor) -> None:
        """Append ``k`` domains; every field has leading dimension ``k`` (the same names every time)."""
        k = gap.shape[0]
        if k == 0:
            return
        if not self._fields:
            self._initialise(fields, gap)
        if set(fields) != set(self._fields):
            raise ValueError(f"domain fields changed: {sorted(fields)} vs {sorted(self._fields)}")
        if self._size + k > self.capacity:
            raise DomainStoreFull(
                f"branch-and-bound domain store full: {self._size} open domains + {k} new exceed the cap of "
                f"{self.capacity} domains ({self.max_bytes / 2**20:.0f} MiB at {self.bytes_per_domain} bytes "
                f"per domain)")
        self._reserve(self._size + k)
        end = self._size + k
        for name, value in fields.items():
            self._fields[name][self._size:end] = value.to(self.device)
        self._gap[self._size:end] = gap.to(self.device, self._gap.dtype)
        self._depth[self._size:end] = depth.to(self.device)
        self._size = end

    def select(self, k: int) -> Tensor:
        """Indices of the ``k`` domains to work on next (see the module docstring)."""
        k = min(k, self._size)
        gap = self._gap[:self._size]
        if self._size > self.depth_first_fraction * self.capacity:
            # deepest first; among equal depths, lowest gap first (gap is finite for open domains)
            key = self._depth[:self._size].to(gap.dtype) * (1.0 + gap.abs().max()) * 2.0 - gap
            return torch.topk(key, k).indices
        return torch.topk(-gap, k).indices

    def pop(self, k: int) -> Popped:
        """Remove and return ``k`` selected domains (fewer if the store holds fewer)."""
        index = self.select(k)
        k = index.shape[0]
        out = Popped({n: v[index].clone() for n, v in self._fields.items()}, self._gap[index].clone(),
                     self._depth[index].clone())
        self._remove(index)
        return out

    def drain(self) -> Popped:
        return self.pop(self._size)

    # ------------------------------------------------------------------ internals
    def _initialise(self, fields: dict[str, Tensor], gap: Tensor) -> None:
        self.bytes_per_domain = sum(v[0].numel() * v.element_size() for v in fields.values()) \
            + gap.element_size() + 8
        self._fields = {n: v.new_empty((0, *v.shape[1:]), device=self.device) for n, v in fields.items()}
        self._gap = torch.empty(0, dtype=gap.dtype, device=self.device)

    def _reserve(self, needed: int) -> None:
        current = self._gap.shape[0]
        if needed <= current:
            return
        new = min(max(needed, 2 * current, 64), max(needed, self.capacity))

        def grow(t: Tensor) -> Tensor:
            bigger = t.new_empty((new, *t.shape[1:]))
            bigger[:self._size] = t[:self._size]
            return bigger

        self._fields = {n: grow(v) for n, v in self._fields.items()}
        self._gap = grow(self._gap)
        self._depth = grow(self._depth)

    def _remove(self, index: Tensor) -> None:
        """Fill the holes at ``index`` with the surviving rows from the tail: ``O(k)`` copies."""
        k = index.shape[0]
        if k == 0:
            return
        new_size = self._size - k
        removed = torch.zeros(self._size, dtype=torch.bool, device=self.device)
        removed[index] = True
        holes = torch.nonzero(removed[:new_size]).flatten()  # removed rows that stay inside the array
        movers = torch.nonzero(~removed[new_size:self._size]).flatten() + new_size  # kept rows in the tail
        if holes.numel():
            for value in self._fields.values():
                value[holes] = value[movers]
            self._gap[holes] = self._gap[movers]
            self._depth[holes] = self._depth[movers]
        self._size = new_size
