"""A small value-keyed memo for pure functions of a box ``(lower, upper)``.

alpha-CROWN inside branch and bound keeps every node box fixed while it optimises the alphas, so each
iteration rebuilds the same relaxations on the same boxes. The parts of a relaxation that do not
depend on alpha (for S-shaped functions, the range of admissible tangent points, found by a
bisection) can be computed once and reused.

Entries are keyed by the tensors' shape, dtype, device and sums, and a hit is confirmed by exact
equality of both tensors (``torch.equal``), so a reused result is exactly the one the function would
return: the memo changes time, never values. NaN never compares equal, so boxes with NaN always
recompute. Only the most recent entries are kept, within ``max_bytes`` (boxes plus results); a box
too large for an eighth of that is not memoised at all.

Boxes that require grad (intermediate bounds being optimised by alpha-CROWN) change every iteration,
but within one iteration the same box tensor is relaxed once per start node bounded through it (six
times for the first hidden layer of a 6-layer net). Those are memoised by *identity*: the same view of
the same tensor objects, at the same in-place version, give the same result (and share its autograd
history, which is what a recomputation would build). Only the last ``LIVE_ENTRIES`` are kept, and
:func:`release_live` drops them all: alpha-CROWN calls it when its loop ends, because the last
iteration is never back-propagated and its entries would otherwise keep that iteration's whole autograd
graph (with its saved tensors) alive after the call returns.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import fields, is_dataclass
from typing import Callable, Generic, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")


def _nbytes(value) -> int:
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if is_dataclass(value):
        return sum(_nbytes(getattr(value, f.name)) for f in fields(value))
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


LIVE_ENTRIES = 64
_MEMOS: "weakref.WeakSet[BoxMemo]" = weakref.WeakSet()


def release_live() -> None:
    """Forget every identity-keyed (grad-carrying) entry of every memo; value-keyed entries stay."""
    for memo in list(_MEMOS):
        memo.live.clear()


def _identity(tensor: Tensor) -> tuple[Tensor, tuple]:
    """The tensor a view was taken from, and a key naming the view: relaxations receive fresh views
    (``unsqueeze``, ``broadcast_tensors``) of the same stored box on every call."""
    base = tensor._base if tensor._base is not None else tensor
    return base, (id(base), base._version, tuple(tensor.shape), tensor.stride(), tensor.storage_offset())


class BoxMemo(Generic[T]):
    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = max_bytes
        self.entries: OrderedDict[tuple, tuple[Tensor, Tensor, T, int]] = OrderedDict()
        self.live: OrderedDict[tuple, tuple[weakref.ref, weakref.ref, T]] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        _MEMOS.add(self)

    def get(self, tag: str, lower: Tensor, upper: Tensor, compute: Callable[[], T]) -> T:
        if lower.requires_grad or upper.requires_grad:
            # A result may hold the box itself (a range end) and so this iteration's autograd history:
            # it is only reused for these very tensor objects, never for an equal box of another graph.
            (lower_base, lower_view), (upper_base, upper_view) = _identity(lower), _identity(upper)
            key = (tag, lower_view, upper_view)
            live = self.live.get(key)
            if live is not None and live[0]() is lower_base and live[1]() is upper_base:
                self.hits += 1
                return live[2]
            self.misses += 1
            value = compute()
            self.live[key] = (weakref.ref(lower_base), weakref.ref(upper_base), value)
            while len(self.live) > LIVE_ENTRIES:
                self.live.popitem(last=False)
            return value
        key = (tag, tuple(lower.shape), lower.dtype, str(lower.device), float(lower.sum()), float(upper.sum()))
        entry = self.entries.get(key)
        if entry is not None and torch.equal(entry[0], lower) and torch.equal(entry[1], upper):
            self.entries.move_to_end(key)
            self.hits += 1
            return entry[2]
        self.misses += 1
        value = compute()
        size = 2 * _nbytes(lower) + _nbytes(value)
        if size <= self.max_bytes // 8:
            if key in self.entries:
                self.bytes -= self.entries.pop(key)[3]
            self.entries[key] = (lower.clone(), upper.clone(), value, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                self.bytes -= self.entries.popitem(last=False)[1][3]
        return value
