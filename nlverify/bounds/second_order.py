"""Second-order bounds of products whose factors are affine functions of a small input, up to a remainder.

Why. A linear relaxation of a product ``s = x * y`` on a box is loose by O(w_x w_y) (McCormick), and
relaxing each element of a sum ``sum_i A_i x_i y_i`` alone loses what the sum knows: that its terms
cancel. Control benchmarks compute a Lyapunov decrease ``V(x) - V(f(x)) = -(f - x)^T P (f + x)`` this
way. Near its minimiser that sum is a *convex* quadratic of the input (its Hessian ``2 (P - J^T P J)``
is positive definite when V decreases), and a tangent plane of a convex function at its minimiser is
exact, while the per-element McCormick planes leave a gap that shrinks only as w^2: lsnc state_0 needed
8.5M boxes because of it (its worst boxes close only below 0.01 wide; with this rule a 0.1-wide box
around the tightest point is proved).

The rule (for one backward-pass row with coefficients ``A`` on the product's elements; ``n`` inputs,
box centre ``c``, radius ``r``, ``d = x - c``). Each factor is bounded on the box by affine functions
of the input from a backward pass of its own, ``L_i(x) <= x_i <= U_i(x)``. With the midpoints
``xbar_i = (L_i + U_i)/2 = alpha_i . x + a_i`` (and ``ybar_i = beta_i . x + b_i``) and half-gaps
``e_i = max over the box of (U_i - L_i)/2`` (>= 0), every factor is ``xbar_i + t_i`` with
``|t_i| <= ex_i`` (``ybar_i + t'_i``, ``|t'_i| <= ey_i``), so

    sum_i A_i x_i y_i >= q(x) - sum_i |A_i| (ex_i max|ybar_i| + max|xbar_i| ey_i + ex_i ey_i)

with the quadratic ``q(x) = sum_i A_i xbar_i(x) ybar_i(x) = q(c) + g . d + d^T M d``,
``M = sym(sum_i A_i alpha_i beta_i^T)``. Take an eigendecomposition ``M = V diag(mu) V^T + R`` (``R`` is
whatever the computed factors miss; every inequality below holds for *any* ``V``, so only ``R`` carries
the eigensolver's error) and ``t = V^T d``:

* convex part, ``mu_k > 0``: ``mu_k t_k^2 >= mu_k (2 t0_k t_k - t0_k^2)`` for any ``t0`` (tangent);
* concave part, ``mu_k < 0``: ``|t_k| <= rho_k = sum_j |V_jk| r_j``, so ``mu_k t_k^2 >= mu_k rho_k^2``;
* residual: ``d^T R d >= -||R||_F |r|^2``.

Summing gives a linear lower bound of ``q``; it is exact at ``t0`` up to the concave part. The tangent
point ``d0`` (``t0 = V^T d0``) minimises the convex part plus ``g . d`` over the box (projected gradient,
:data:`TANGENT_STEPS` steps): there the plane touches the quadratic's minimum over the box, and any
``d0`` is sound. Everything is computed in float64; the result is rounded outward to the pass's dtype.

When it is better. Only the rows' own sum is seen: the rule pays where the factors' affine bounds are
tight (small boxes, i.e. input-split branch and bound), and a caller keeps the better of this bound
and the McCormick one per row (:func:`nlverify.verifier.input_split.bound_input_boxes`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nlverify.bounds.backward_steps import box_minimum
from nlverify.graph import Graph, Node

__all__ = ["AffineFactor", "InputQuadraticRelaxation", "SecondOrderRelaxations", "SECOND_ORDER_MAX_INPUTS",
           "factor_affine_bounds", "product_lower_terms", "second_order_products"]

#: Inputs up to which products get the rule: ``M`` is ``n x n`` per box and row.
SECOND_ORDER_MAX_INPUTS = 16
#: Projected-gradient steps for the tangent point (any point is sound; these only place it well).
TANGENT_STEPS = 16
#: Outward rounding of the result, in units of eps(dtype) times the magnitudes involved.
ROUNDING_ULPS = 8.0


@dataclass
class AffineFactor:
    """``lower_coeffs . x + lower_const <= z <= upper_coeffs . x + upper_const`` on each input box;
    coefficients ``(B, k, n)``, constants ``(B, k)`` (float64) for the node's ``k`` flattened elements."""

    lower_coeffs: Tensor
    lower_const: Tensor
    upper_coeffs: Tensor
    upper_const: Tensor


@dataclass
class InputQuadraticRelaxation:
    """A product ``x * y`` bounded through its factors' affine bounds on the input boxes ``[low, up]``
    (``(B, n)``); the backward pass applies it with :func:`product_lower_terms`. Every field has the
    boxes as its leading axis, so the pass may slice it by boxes."""

    x_lower_coeffs: Tensor
    x_lower_const: Tensor
    x_upper_coeffs: Tensor
    x_upper_const: Tensor
    y_lower_coeffs: Tensor
    y_lower_const: Tensor
    y_upper_coeffs: Tensor
    y_upper_const: Tensor
    input_lower: Tensor
    input_upper: Tensor

    @classmethod
    def of(cls, x: AffineFactor, y: AffineFactor, lower: Tensor, upper: Tensor) -> "InputQuadraticRelaxation":
        return cls(x.lower_coeffs, x.lower_const, x.upper_coeffs, x.upper_const,
                   y.lower_coeffs, y.lower_const, y.upper_coeffs, y.upper_const,
                   lower.reshape(lower.shape[0], -1), upper.reshape(upper.shape[0], -1))


class SecondOrderRelaxations:
    """A relaxation callback that answers :class:`InputQuadraticRelaxation` for the product nodes named in
    ``products`` and defers to ``base`` for every other node. A product's factors get their affine bounds
    (two backward passes) when a pass first reaches it, on ``bounds`` and the input boxes ``[lower, upper]``."""

    def __init__(self, base, propagator, bounds: dict, lower: Tensor, upper: Tensor, products) -> None:
        self.base = base
        self.propagator = propagator
        self.bounds = bounds
        self.lower, self.upper = lower, upper
        self.products = set(products)
        self._built: dict[str, InputQuadraticRelaxation] = {}

    def __call__(self, node: Node, start: str):
        if node.name not in self.products:
            return self.base(node, start)
        if node.name not in self._built:
            x, y = (factor_affine_bounds(self.propagator, name, self.bounds, self.base, self.lower, self.upper)
                    for name in node.inputs)
            self._built[node.name] = InputQuadraticRelaxation.of(x, y, self.lower, self.upper)
        return self._built[node.name]


def second_order_products(graph: Graph) -> list[str]:
    """The elementwise products that take the rule: both factors of the product's own shape (no
    broadcasting), a graph input of at most :data:`SECOND_ORDER_MAX_INPUTS` values, and no other such
    product downstream. A row that reaches an outer product jumps from it straight to the input, so a
    rule on the products feeding it would serve only rows that bypass it, at the price of their
    factors' passes (lsnc output_6's hardest problem, BaB alone: 5.1 s with all six products, 4.7 s
    with the two outermost, 3.3 s without the rule; state_0 unchanged at 53,595 domains)."""
    if graph.num_inputs > SECOND_ORDER_MAX_INPUTS:
        return []
    products = [node.name for node in graph.nonlinear_nodes()
                if node.kind == "binary" and node.op.activation == "mul"
                and all(graph.nodes[i].shape == node.shape for i in node.inputs)]
    feeding = set()
    for name in products:
        stack = list(graph.nodes[name].inputs)
        while stack:
            n = stack.pop()
            if n not in feeding:
                feeding.add(n)
                stack.extend(graph.nodes[n].inputs)
    return [name for name in products if name not in feeding]


def factor_affine_bounds(propagator, name: str, bounds: dict, relaxation_for, lower: Tensor,
                         upper: Tensor) -> AffineFactor:
    """Affine bounds in the input of node ``name`` on the boxes ``[lower, upper]`` (``(B, n)``), from one
    backward pass with the rows ``[I; -I]`` that records the coefficients reaching the input."""
    graph = propagator.graph
    batch, n = lower.shape[0], lower[0].numel()
    node = graph.nodes[name]
    k = node.size
    low64, up64 = lower.reshape(batch, n).double(), upper.reshape(batch, n).double()
    if name == graph.input_name:
        eye = torch.eye(n, dtype=torch.float64, device=lower.device).expand(batch, n, n)
        zeros = low64.new_zeros(batch, n)
        return AffineFactor(eye, zeros, eye, zeros)
    eye = torch.eye(k, dtype=lower.dtype, device=lower.device).reshape(k, *node.shape)
    coeffs = torch.cat([eye, -eye]).unsqueeze(0).expand(batch, 2 * k, *node.shape)
    record = {graph.input_name: None}
    bound = propagator.lower_bound(name, coeffs, bounds, relaxation_for, record=record)
    reached = record[graph.input_name]
    a = (low64.new_zeros(batch, 2 * k, n) if reached is None
         else reached.reshape(reached.shape[0], 2 * k, n).double().expand(batch, 2 * k, n))
    constant = bound.double() - box_minimum(a, low64, up64)
    return AffineFactor(a[:, :k], constant[:, :k], -a[:, k:], -constant[:, k:])


def _midpoint(lower_coeffs: Tensor, lower_const: Tensor, upper_coeffs: Tensor, upper_const: Tensor,
              centre: Tensor, radius: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(slope (B,k,n), value at the centre (B,k), max |midpoint| (B,k), half-gap e (B,k))``."""
    slope = (lower_coeffs + upper_coeffs) / 2
    value = torch.einsum("bkn,bn->bk", slope, centre) + (lower_const + upper_const) / 2
    largest = value.abs() + torch.einsum("bkn,bn->bk", slope.abs(), radius)
    half_slope = (upper_coeffs - lower_coeffs) / 2
    half_gap = (torch.einsum("bkn,bn->bk", half_slope, centre) + (upper_const - lower_const) / 2
                + torch.einsum("bkn,bn->bk", half_slope.abs(), radius))
    return slope, value, largest, half_gap.clamp(min=0)


def product_lower_terms(coeffs: Tensor, r: InputQuadraticRelaxation) -> tuple[Tensor, Tensor]:
    """``(coefficients on the input (B, S, n), constant (B, S))`` of a linear lower bound of
    ``coeffs . (x * y)`` on each box (``coeffs`` ``(B or 1, S, *shape)``); see the module docstring.
    Rows whose factors have no finite affine bound get ``-inf`` (no bound)."""
    dtype = coeffs.dtype
    low, up = r.input_lower.double(), r.input_upper.double()
    batch, n = low.shape
    A = coeffs.double().flatten(2)
    A = A.expand(batch, *A.shape[1:])
    centre, radius = (low + up) / 2, (up - low) / 2
    alpha, x_centre, x_largest, x_gap = _midpoint(r.x_lower_coeffs.double(), r.x_lower_const, r.x_upper_coeffs.double(),
                                                  r.x_upper_const, centre, radius)
    beta, y_centre, y_largest, y_gap = _midpoint(r.y_lower_coeffs.double(), r.y_lower_const, r.y_upper_coeffs.double(),
                                                 r.y_upper_const, centre, radius)
    remainder = torch.einsum("bsk,bk->bs", A.abs(), x_gap * y_largest + x_largest * y_gap + x_gap * y_gap)
    value = torch.einsum("bsk,bk->bs", A, x_centre * y_centre)
    gradient = (torch.einsum("bsk,bkn->bsn", A * y_centre.unsqueeze(1), alpha)
                + torch.einsum("bsk,bkn->bsn", A * x_centre.unsqueeze(1), beta))
    M = torch.einsum("bsk,bkn,bkm->bsnm", A, alpha, beta)
    M = (M + M.transpose(-1, -2)) / 2
    finite = torch.isfinite(M).flatten(2).all(-1) & torch.isfinite(gradient).all(-1) & torch.isfinite(value) \
        & torch.isfinite(remainder)
    M = torch.where(finite[..., None, None], M, torch.zeros_like(M))
    mu, V = torch.linalg.eigh(M)
    residual = M - (V * mu.unsqueeze(-2)) @ V.transpose(-1, -2)
    eps64 = torch.finfo(torch.float64).eps
    residual_norm = (torch.linalg.matrix_norm(residual)
                     + 4 * n * eps64 * (torch.linalg.matrix_norm(M) + mu.abs().sum(-1)))
    radius_sq = (radius ** 2).sum(-1, keepdim=True)  # (B, 1) >= |d|^2
    convex, concave = mu.clamp(min=0), mu.clamp(max=0)
    rho = torch.einsum("bsnk,bn->bsk", V.abs(), radius)
    # the tangent point: projected gradient on d^T M+ d + g . d over the box
    convex_matrix = (V * convex.unsqueeze(-2)) @ V.transpose(-1, -2)
    step = 1.0 / (2 * convex.amax(-1, keepdim=True) + 1e-300)
    box = radius.unsqueeze(1)
    d0 = torch.zeros_like(gradient)
    for _ in range(TANGENT_STEPS):
        descent = 2 * (convex_matrix @ d0.unsqueeze(-1)).squeeze(-1) + gradient
        d0 = torch.minimum(torch.maximum(d0 - step * descent, -box), box)
    t0 = (V.transpose(-1, -2) @ d0.unsqueeze(-1)).squeeze(-1)
    slope = gradient + 2 * (V @ (convex * t0).unsqueeze(-1)).squeeze(-1)  # in d = x - centre
    constant = (value - (convex * t0 ** 2).sum(-1) + (concave * rho ** 2).sum(-1)
                - residual_norm * radius_sq - remainder - (slope * centre.unsqueeze(1)).sum(-1))
    # outward rounding: of the float64 terms above and of the cast to the pass's dtype
    scale = (value.abs() + (convex * t0 ** 2).sum(-1) + (concave.abs() * rho ** 2).sum(-1) + remainder
             + (slope.abs() * torch.maximum(low.abs(), up.abs()).unsqueeze(1)).sum(-1))
    ulp = max(torch.finfo(dtype).eps, eps64 * n * n)
    constant = constant - ROUNDING_ULPS * ulp * scale
    ok = finite & torch.isfinite(constant)
    constant = torch.where(ok, constant, torch.full_like(constant, float("-inf")))
    slope = torch.where(ok.unsqueeze(-1), slope, torch.zeros_like(slope))
    return slope.to(dtype), constant.to(dtype)
