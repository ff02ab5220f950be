"""Householder activations (Singla et al., ICLR 2022) and their quadratic constraints.

Per group G of ``g`` entries (``spec.grouping``) with a nonzero reflection vector r (stored as
given; the function uses ``r / |r|``, so no normalisation error enters):

    sigma(v) = v                       if r^T v > 0,
             = (I - 2 r r^T / |r|^2) v  otherwise,
             = v + 2 r relu(-r^T v) / |r|^2.                                            (*)

Facts used (for two inputs, differences D; all exact for the stored r):

1. *1-Lipschitz per group*: on the segment between two inputs sigma is piecewise linear with at
   most two pieces (the segment crosses the hyperplane ``r^T v = 0`` at most once, and sigma is
   continuous there), each an isometry (I or the reflection), so ``|Dz_G| <= |Dv_G|``.
2. *Projection preservation* (an equality): by (*) ``Dz_G - Dv_G`` is a multiple of r, so
   ``E_G (Dz_G - Dv_G) = 0`` for any E_G with ``E_G r = 0``. We use the g-1 rows
   ``r_k e_i - r_i e_k`` (i != k, k the index of the largest |r_k|): ``E_G r = 0`` holds exactly in
   real arithmetic for the stored floats, and the rows span ``r^perp`` since ``r_k != 0``.

The function is also norm preserving (``|sigma(v)| = |v|``, orthogonal Jacobians), but that is
not an incremental property (``v = r, v' = -r`` give ``Dz = 0``), so it adds nothing to LipSDP.

QC (:class:`HouseholderQC`): ``sum_G mu_G (|Dv_G|^2 - |Dz_G|^2) + 2 e^T H x`` with ``mu >= 0``
and layer-wide free H (:class:`nlverify.sdp.maxmin.FreeEqualityQC`), like maxmin-qc.

*The elimination gives nothing more here.* By (*), ``q := r^T (Dz - Dv) / 2`` is a ReLU increment
at ``-r^T v`` (per unit |r|), and its sector QC ``q (-r^T Dv - q) >= 0`` equals
``((r^T Dv)^2 - (r^T Dz)^2) / 4``. Splitting ``|Dv|^2 - |Dz|^2`` along r and ``r^perp``:
``|P Dv|^2 - |P Dz|^2 = (P(Dv - Dz))^T P (Dv + Dz)``, P the projector on ``r^perp``, and
``P(Dv - Dz)`` is a linear function of ``e = E (Dz - Dv)``: that part lies in the free-multiplier space.
So the 1-Lipschitz QC and the ReLU sector QC differ only by an element of the free space, and the
two LMIs have the same optimum: one family covers both.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from .activations import ActivationSpec, group_indices
from .maxmin import SortQC


def householder(reflection: np.ndarray | Sequence, grouping: str = "consecutive") -> ActivationSpec:
    """The descriptor for reflection vectors of shape ``(groups, g)`` or ``(g,)`` (shared by all
    groups). Vectors need not be unit; a zero vector is rejected."""
    r = np.atleast_2d(np.asarray(reflection, dtype=np.float64))
    if r.ndim != 2 or r.shape[1] < 2:
        raise ValueError("reflection vectors must have shape (groups, g) or (g,), g >= 2")
    if np.any(np.all(r == 0, axis=1)) or not np.all(np.isfinite(r)):
        raise ValueError("reflection vectors must be finite and nonzero")
    return ActivationSpec("householder", "householder", group_size=r.shape[1], grouping=grouping,
                          reflection=tuple(tuple(float(x) for x in row) for row in r))


def reflections_per_group(spec: ActivationSpec, size: int) -> np.ndarray:
    """``(groups, g)`` reflection vectors for a layer of ``size`` neurons (a shared one repeated)."""
    r = np.asarray(spec.reflection, dtype=np.float64)
    groups = size // spec.group_size
    if r.shape[0] == 1:
        return np.repeat(r, groups, axis=0)
    if r.shape[0] != groups:
        raise ValueError(f"householder: {r.shape[0]} reflection vectors for {groups} groups")
    return r


def complement_rows(r: np.ndarray) -> np.ndarray:
    """``(groups, g-1, g)``: rows ``r_k e_i - r_i e_k`` (i != k = argmax |r|), exactly ``E r = 0``."""
    groups, g = r.shape
    k = np.argmax(np.abs(r), axis=1)
    others = np.array([[i for i in range(g) if i != kk] for kk in k]).reshape(groups, g - 1)
    rows = np.zeros((groups, g - 1, g))
    gi, ri = np.arange(groups)[:, None], np.arange(g - 1)[None, :]
    rows[gi, ri, others] = r[np.arange(groups), k][:, None]
    rows[gi, ri, k[:, None]] = -np.take_along_axis(r, others, axis=1)
    return rows


class HouseholderQC(SortQC):
    """1-Lipschitz per group (``mu >= 0``) + projection preservation (free H): **householder**. The LMI
    blocks are MaxMin's (:class:`SortQC`); only the equality matrix differs."""

    name = "householder"
    kinds = ("householder",)

    def equality_matrix(self) -> np.ndarray:
        r = reflections_per_group(self.spec, self.size)
        idx = group_indices(self.size, self.spec.group_size, self.spec.grouping)
        rows = complement_rows(r)  # (groups, g-1, g)
        groups, gm1, g = rows.shape
        e = np.zeros((groups * gm1, self.size))
        row_ids = np.arange(groups * gm1).reshape(groups, gm1, 1)
        e[row_ids, idx[:, None, :]] = rows
        return e


class Householder(nn.Module):
    """``sigma(x) = x + 2 r relu(-r^T x) / |r|^2`` per group of the last axis (see the module
    docstring); ``reflection`` of shape ``(groups, g)`` or ``(g,)``, a learnable parameter."""

    def __init__(self, reflection: torch.Tensor | np.ndarray | Sequence, grouping: str = "consecutive") -> None:
        super().__init__()
        r = torch.as_tensor(np.asarray(reflection, dtype=np.float64) if not torch.is_tensor(reflection)
                            else reflection.detach().clone())
        self.reflection = nn.Parameter(r.reshape(-1, r.shape[-1]))
        self.grouping = grouping

    @property
    def group_size(self) -> int:
        return int(self.reflection.shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, n = self.group_size, x.shape[-1]
        idx = torch.as_tensor(group_indices(n, g, self.grouping).reshape(-1), device=x.device)
        groups = x[..., idx].reshape(*x.shape[:-1], n // g, g)
        r = self.reflection.to(x.dtype).expand(n // g, g)
        s = (groups * r).sum(-1, keepdim=True)
        out = groups + 2 * r * torch.relu(-s) / (r * r).sum(-1, keepdim=True)
        return out.reshape(*x.shape[:-1], n)[..., torch.argsort(idx)]  # back to neuron order

    def activation_spec(self) -> ActivationSpec:
        return householder(self.reflection.detach().cpu().double().numpy(), self.grouping)

    @staticmethod
    def from_spec(spec: ActivationSpec) -> "Householder":
        return Householder(np.asarray(spec.reflection, dtype=np.float64), spec.grouping)
