"""Quadratic and bilinear forms become weighted sums of squares, so their bounds keep the correlation.

The pattern
    ``ReduceSum over the last axis of  a * (c @ W + beta)``, where ``a`` and ``c`` are input-dependent
    tensors and ``W`` a constant matrix. A quadratic Lyapunov function ``V(x) = z^T P z`` exports this way
    (``z * (z @ P)``), as does a decrease condition ``(u - v)^T P (u + v)``.

Why
    Relaxing the elementwise products one by one (McCormick) sees each factor's interval and forgets
    that both factors are functions of the same variables: the lower bound of ``z^T P z`` over a small box
    around a point where ``V`` is large can fall far below zero. A sum of squares of linear functions of
    ``z`` keeps that correlation: CROWN bounds every linear function with all of ``z``'s dependence, and
    each square gets the convex relaxation of ``t**2`` (a tangent below, the chord above).

The identity
    ``sum_i a_i (c W)_i = c^T W a = s^T M s`` with ``s = (a, c)`` (concatenated on the last axis) and the
    symmetric ``M = 1/2 [[0, W^T], [W, 0]]``; when ``a`` and ``c`` are the same tensor, ``s = a`` and
    ``M = (W + W^T) / 2``. With the eigendecomposition ``M = E diag(lambda) E^T``,

        s^T M s = sum_k lambda_k t_k^2,     t = s @ E,

    plus ``a . beta`` for a bias. Positive ``lambda_k`` take the tangent for a lower bound and the chord
    for an upper bound, negative ones the other way round. In the bilinear case the directions pair
    ``a`` with ``c``; a direction along which ``s`` is constant (e.g. ``a = x - x0``, ``c = x``) has an
    interval of width 0 and its square is exact.

What is rewritten by default
    Only forms of one tensor (``a`` is ``c``). Measured on lsnc (CROWN, median slack against 2,000
    samples per box, 64 boxes): the Lyapunov function's lower bound improves (51.6 -> 12.3 on the
    whole box, 4.48 -> 2.02 at a quarter width, 0.277 -> 0.179 at 5 %), its upper bound loosens a
    little (18.0 -> 26.0, 1.68 -> 2.18, 0.191 -> 0.211). The bilinear decrease term
    ``(u - v)^T P (u + v)`` got 2-3x looser as squares (its factor ``u - v`` is narrow, which McCormick
    exploits and the polarised squares lose: on state_0's hardest domains the row's median gap went
    from -0.154 to -0.597), so bilinear forms are rewritten only on request (``bilinear=True``).

Exactness
    ``E`` and ``lambda`` are rounded to float32 (the graph's dtype) first, and the residual
    ``R = M - E diag(lambda) E^T`` (computed in float64, then rounded; ``|R| ~ 1e-7 |M|``) stays in the
    graph as ``s^T R s`` with McCormick products, whose looseness is scaled by ``|R|``. The rewritten graph
    thus computes the same real function as the original to ~1e-14 relative, in float32 and in the
    float64 copy the verifier makes for near misses, so proofs on it are proofs on the model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nlverify.graph import Graph, Node, live_nodes
from nlverify.ops import BinaryOp, ConcatOp, LinearCombination, MatMulConst, ReduceSumOp, ReshapeOp, UnaryOp

__all__ = ["QuadraticForm", "find_quadratic_forms", "rewrite_quadratic_forms", "sum_of_squares"]


@dataclass
class QuadraticForm:
    """``reduce``'s value is ``sum_i a_i (c @ weight + bias)_i`` (``bias`` None or a vector)."""

    reduce: str          # the ReduceSum node that the rewrite replaces (its name is kept)
    a: str
    c: str
    weight: np.ndarray   # (len c, len a)
    bias: np.ndarray | None


@dataclass
class SumOfSquares:
    """``s^T M s = sum_k values[k] * (s @ vectors)[:, k]**2 + s^T residual s`` exactly (real arithmetic),
    with every array exactly representable in float32."""

    vectors: np.ndarray     # (n, K)
    values: np.ndarray      # (K,)
    residual: np.ndarray    # (n, n)


def _float32_exact(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32).astype(np.float64)


def sum_of_squares(matrix: np.ndarray) -> SumOfSquares:
    """Eigen-decompose the symmetric ``matrix``; directions with a zero (float32) eigenvalue are dropped,
    which changes nothing since their weight is 0; the residual absorbs every rounding."""
    matrix = np.asarray(matrix, dtype=np.float64)
    values, vectors = np.linalg.eigh(matrix)
    values, vectors = _float32_exact(values), _float32_exact(vectors)
    keep = values != 0.0
    values, vectors = values[keep], vectors[:, keep]
    residual = _float32_exact(matrix - (vectors * values) @ vectors.T)
    return SumOfSquares(vectors, values, residual)


def find_quadratic_forms(graph: Graph, bilinear: bool = False) -> list[QuadraticForm]:
    """Every ReduceSum-over-the-last-axis of a product whose only use is that sum, where one factor is
    a constant MatMul of an input-dependent tensor of the same leading shape."""
    found = []
    for node in graph:
        if not isinstance(node.op, ReduceSumOp):
            continue
        product = graph.nodes[node.inputs[0]]
        if not (isinstance(product.op, BinaryOp) and product.op.activation == "mul"):
            continue
        if graph.consumers[product.name] != [node.name] or node.op.axes != (len(product.shape),):
            continue
        for a, b in (product.inputs, product.inputs[::-1]):
            form = _as_form(graph, node.name, a, graph.nodes[b])
            if form is not None and (bilinear or form.a == form.c):
                found.append(form)
                break
    return found


def _as_form(graph: Graph, reduce: str, a: str, factor: Node) -> QuadraticForm | None:
    if not isinstance(factor.op, MatMulConst):
        return None
    c = graph.nodes[factor.inputs[0]]
    if c.shape[:-1] != graph.nodes[a].shape[:-1]:
        return None
    weight = factor.op.weight.detach().cpu().double().numpy()
    bias = factor.op.bias
    if bias is not None:
        if bias.dim() != 1:
            return None
        bias = bias.detach().cpu().double().numpy()
    return QuadraticForm(reduce, a, c.name, weight, bias)


def _symmetric_matrix(form: QuadraticForm) -> np.ndarray:
    """``M`` with ``s^T M s = c^T W a`` for ``s = a`` (same tensor) or ``s = (a, c)``."""
    weight = form.weight
    if form.a == form.c:
        return (weight + weight.T) / 2.0
    n_a, n_c = weight.shape[1], weight.shape[0]
    matrix = np.zeros((n_a + n_c, n_a + n_c))
    matrix[:n_a, n_a:] = weight.T / 2.0
    matrix[n_a:, :n_a] = weight / 2.0
    return matrix


class _Emitter:
    """Appends nodes with fresh names and computes their shapes by running them on a probe."""

    def __init__(self, graph: Graph, nodes: dict[str, Node]) -> None:
        self.graph = graph
        self.nodes = nodes

    def add(self, op, inputs: list[str], hint: str, source: str, name: str | None = None) -> str:
        if name is None:
            name, counter = hint, 0
            while name in self.graph.nodes or name in self.nodes:
                counter += 1
                name = f"{hint}_{counter}"
        op.to(dtype=torch.float64)
        probes = [torch.zeros((1, *self.nodes[i].shape), dtype=torch.float64) for i in inputs]
        shape = tuple(op.forward(*probes).shape[1:])
        self.nodes[name] = Node(name, op, list(inputs), shape, source=source)
        return name


def _column(vector: np.ndarray) -> MatMulConst:
    return MatMulConst(torch.as_tensor(np.asarray(vector, dtype=np.float64)[:, None]))


def _emit(form: QuadraticForm, reduce: Node, emit: _Emitter) -> None:
    source = f"{reduce.source} (quadratic form as a sum of squares)"
    stem = reduce.name
    last_axis = len(emit.nodes[form.a].shape) - 1
    if form.a == form.c:
        s = form.a
    else:
        s = emit.add(ConcatOp([None, None], last_axis), [form.a, form.c], f"{stem}/qf_stack", source)
    squares = sum_of_squares(_symmetric_matrix(form))
    terms = []
    if squares.values.size:
        directions = emit.add(MatMulConst(torch.as_tensor(squares.vectors)), [s], f"{stem}/qf_directions", source)
        squared = emit.add(UnaryOp("pow", exponent=2.0), [directions], f"{stem}/qf_squares", source)
        terms.append(emit.add(_column(squares.values), [squared], f"{stem}/qf_weighted", source))
    if np.any(squares.residual != 0.0):
        image = emit.add(MatMulConst(torch.as_tensor(squares.residual)), [s], f"{stem}/qf_residual_image", source)
        product = emit.add(BinaryOp("mul"), [s, image], f"{stem}/qf_residual_product", source)
        terms.append(emit.add(ReduceSumOp([last_axis + 1], True), [product], f"{stem}/qf_residual", source))
    if form.bias is not None and np.any(form.bias != 0.0):
        terms.append(emit.add(_column(form.bias), [form.a], f"{stem}/qf_bias", source))
    if not terms:  # W == 0: the form is identically 0
        zero = emit.add(_column(np.zeros(emit.nodes[form.a].shape[-1])), [form.a], f"{stem}/qf_zero", source)
        terms.append(zero)
    total_shape = emit.nodes[terms[0]].shape
    if total_shape == reduce.shape:
        emit.add(LinearCombination([1.0] * len(terms)), terms, stem, source, name=stem)
    else:  # keepdims=0: drop the summed axis
        total = emit.add(LinearCombination([1.0] * len(terms)), terms, f"{stem}/qf_total", source)
        emit.add(ReshapeOp(reduce.shape), [total], stem, source, name=stem)


def rewrite_quadratic_forms(graph: Graph, bilinear: bool = False) -> Graph:
    """A graph computing the same function, with every :func:`find_quadratic_forms` match replaced by
    its sum of squares (see the module docstring); nodes left without a use are dropped."""
    forms = {f.reduce: f for f in find_quadratic_forms(graph, bilinear)}
    if not forms:
        return graph
    nodes: dict[str, Node] = {}
    emit = _Emitter(graph, nodes)
    for node in graph:
        if node.name in forms:
            _emit(forms[node.name], node, emit)
        else:
            nodes[node.name] = node
    return Graph(live_nodes(nodes, graph.input_name, graph.output_name), graph.input_name, graph.output_name)
