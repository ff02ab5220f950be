"""Translate ONNX nodes into graph nodes, folding constants and normalising as it goes.

Tensors are either *constants* (numpy arrays: initializers, Constant nodes, and everything computed only
from them, which the ONNX reference evaluator folds) or *variables* (graph nodes, which depend on the
input). Shape inference is by execution: every new node runs once on a probe value (a random input,
float64, batch 1), which gives exact output shapes for every op without a separate shape calculus.
"""
from __future__ import annotations

from math import prod
from typing import Callable, Sequence

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from nlverify.frontend import lowering
from nlverify.frontend.errors import ModelError, UnsupportedOpError
from nlverify.frontend.patterns import find_gelu_patterns, id_of
from nlverify.frontend.quadratic import rewrite_quadratic_forms
from nlverify.graph import Graph, Node, live_nodes
from nlverify.ops import (
    ConcatOp, ElementwiseAffine, ExpandOp, GatherOp, InputOp, LinearCombination, MatMulConst, Op,
    ReshapeOp, SelectOp, TransposeOp, UnaryOp, BinaryOp,
)

DTYPE = torch.float32  # graphs are built in float32 (the dtype of every benchmark); `.to()` changes it

ELEMENTWISE_ACTIVATIONS = {
    "Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Sin": "sin", "Cos": "cos", "Exp": "exp",
    "Reciprocal": "reciprocal", "Floor": "floor",
}
PASS_THROUGH = {"Identity", "Dropout"}


class GraphBuilder:
    def __init__(self, model: onnx.ModelProto, source: str = "", quadratic_forms: bool = True) -> None:
        self.model = model
        self.source = source
        self.quadratic_forms = quadratic_forms  # rewrite z^T P z patterns as sums of squares (quadratic.py)
        self.constants: dict[str, np.ndarray] = {}
        self.variables: dict[str, str] = {}   # ONNX tensor -> graph node name
        self.nodes: dict[str, Node] = {}
        self.probes: dict[str, torch.Tensor] = {}
        self.onnx_users: dict[str, int] = {}
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self._counter = 0

    # ------------------------------------------------------------------ graph assembly
    def build(self) -> Graph:
        graph = self.model.graph
        for init in graph.initializer:
            self.constants[init.name] = numpy_helper.to_array(init)
        for node in graph.node:
            for name in node.input:
                self.onnx_users[name] = self.onnx_users.get(name, 0) + 1
        for out in graph.output:
            self.onnx_users[out.name] = self.onnx_users.get(out.name, 0) + 1

        inputs = [i for i in graph.input if i.name not in self.constants]
        if len(inputs) != 1:
            raise ModelError(f"expected exactly one model input, found {len(inputs)}: {[i.name for i in inputs]}")
        self._add_input(inputs[0])
        if len(graph.output) != 1:
            raise ModelError(f"expected exactly one model output, found {len(graph.output)}")

        for node in graph.node:  # Constant nodes first, so that pattern matching can read them
            if node.op_type == "Constant":
                self.constants[node.output[0]] = _constant_value(node)
        gelus = find_gelu_patterns(graph, self.constants.get)
        skipped = {n for m in gelus for n in m.nodes}
        gelu_at = {m.output: m for m in gelus}
        for node in graph.node:
            if node.op_type == "Constant":
                continue
            if id_of(node) in skipped:
                for out in node.output:
                    if out in gelu_at:
                        self._bind(out, self._unary(gelu_at[out].x, "gelu", node))
                continue
            self._convert(node)

        output = graph.output[0].name
        if output not in self.variables:
            raise ModelError(f"model output '{output}' does not depend on the input")
        return self._finish(self.variables[output])

    def _finish(self, output_node: str) -> Graph:
        input_name = next(n.name for n in self.nodes.values() if n.kind == "input")
        nodes = live_nodes(self.nodes, input_name, output_node)
        graph = Graph(nodes=nodes, input_name=input_name, output_name=output_node)
        if self.quadratic_forms:
            graph = rewrite_quadratic_forms(graph)
        return graph.to(dtype=DTYPE)

    def _add_input(self, value_info: onnx.ValueInfoProto) -> None:
        tensor_type = value_info.type.tensor_type
        if tensor_type.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
            raise ModelError(f"model input '{value_info.name}' is not a floating-point tensor")
        shape = tuple(d.dim_value if d.dim_value > 0 else 1 for d in tensor_type.shape.dim)
        name = self._fresh(value_info.name)
        generator = torch.Generator().manual_seed(0)
        self.nodes[name] = Node(name, InputOp(), [], shape, source=value_info.name)
        self.probes[name] = torch.rand((1, *shape), generator=generator, dtype=torch.float64)
        self.variables[value_info.name] = name

    def _fresh(self, hint: str) -> str:
        name = hint or f"node{self._counter}"
        while name in self.nodes:
            self._counter += 1
            name = f"{hint}_{self._counter}"
        return name

    def add(self, op: Op, inputs: Sequence[str], onnx_node: onnx.NodeProto | None, hint: str = "") -> str:
        """Add a graph node computing ``op`` on variable nodes ``inputs``; returns its name."""
        source = f"{onnx_node.op_type} '{onnx_node.name or id_of(onnx_node)}'" if onnx_node is not None else ""
        name = self._fresh(hint or (id_of(onnx_node) if onnx_node is not None else ""))
        op.to(dtype=torch.float64)
        try:
            probe = op.forward(*(self.probes[i] for i in inputs))
        except Exception as exc:
            op_type = onnx_node.op_type if onnx_node is not None else type(op).__name__
            raise ModelError(f"shape mismatch at {source or op_type}: {str(exc).splitlines()[0]}") from None
        self.nodes[name] = Node(name, op, list(inputs), tuple(probe.shape[1:]), source=source)
        self.probes[name] = probe
        return name

    def shape_of(self, variable: str) -> tuple[int, ...]:
        return self.nodes[variable].shape

    def _bind(self, tensor: str, node_name: str) -> None:
        self.variables[tensor] = node_name

    # ------------------------------------------------------------------ per-node conversion
    def _convert(self, node: onnx.NodeProto) -> None:
        names = list(node.input)
        if all((not n) or n in self.constants for n in names) and node.op_type not in ("Shape", "Size"):
            self._fold(node)
            return
        for n in names:
            if n and n not in self.constants and n not in self.variables:
                raise ModelError(f"node '{node.name}' ({node.op_type}) reads undefined tensor '{n}'")
        handler: Callable[[onnx.NodeProto], str | list[str] | None] | None = getattr(self, f"_op_{node.op_type}", None)
        if node.op_type in ELEMENTWISE_ACTIVATIONS:
            result: str | list[str] | None = self._unary(node.input[0], ELEMENTWISE_ACTIVATIONS[node.op_type], node)
        elif node.op_type in PASS_THROUGH:
            result = self.variables[node.input[0]]
        elif handler is None:
            raise UnsupportedOpError(node.op_type, node.name or id_of(node))
        else:
            result = handler(node)
        if result is None:
            return
        outputs = result if isinstance(result, list) else [result]
        for tensor, value in zip(node.output, outputs):
            self._bind(tensor, value)

    def _fold(self, node: onnx.NodeProto) -> None:
        feeds = {n: self.constants[n] for n in node.input if n}
        try:
            results = ReferenceEvaluator(node).run(None, feeds)
        except Exception as exc:
            raise ModelError(f"cannot fold constant node '{node.name}' ({node.op_type}): {str(exc).splitlines()[0]}") from None
        for tensor, value in zip(node.output, results):
            if tensor:
                self.constants[tensor] = np.asarray(value)

    # helpers ---------------------------------------------------------------
    def const(self, name: str) -> np.ndarray | None:
        return self.constants.get(name) if name else None

    def is_var(self, name: str) -> bool:
        return bool(name) and name in self.variables

    def attr(self, node: onnx.NodeProto, key: str, default=None):
        for a in node.attribute:
            if a.name == key:
                return onnx.helper.get_attribute_value(a)
        return default

    def _unary(self, tensor: str, activation: str, node: onnx.NodeProto, **params: float) -> str:
        return self.add(UnaryOp(activation, **params), [self.variables[tensor]], node)

    def _with_rank(self, variable: str, rank: int, node: onnx.NodeProto) -> str:
        """Prepend unit axes so a variable has at least ``rank`` axes (ONNX broadcasting, made explicit so
        the engine's leading batch axis never aligns with a constant's axis)."""
        shape = self.shape_of(variable)
        if len(shape) >= rank:
            return variable
        return self.add(ReshapeOp((1,) * (rank - len(shape)) + shape), [variable], node, hint=f"{variable}_unsqueezed")

    def affine(self, variable: str, scale: np.ndarray | None, shift: np.ndarray | None,
               node: onnx.NodeProto) -> str:
        """``variable * scale + shift`` with constant operands, folded into the producer when exact."""
        rank = max([0] + [c.ndim for c in (scale, shift) if c is not None])
        variable = self._with_rank(variable, rank, node)
        folded = lowering.fold_affine(self, variable, scale, shift)
        if folded is not None:
            return folded
        as_tensor = lambda c: None if c is None else torch.as_tensor(np.asarray(c, dtype=np.float64))
        return self.add(ElementwiseAffine(as_tensor(scale), as_tensor(shift)), [variable], node)

    # arithmetic --------------------------------------------------------------
    def _op_Add(self, node):
        a, b = node.input
        if self.is_var(a) and self.is_var(b):
            return self._combination(node, [a, b], [1.0, 1.0])
        var, c = (a, b) if self.is_var(a) else (b, a)
        return self.affine(self.variables[var], None, self.constants[c], node)

    def _op_Sub(self, node):
        a, b = node.input
        if self.is_var(a) and self.is_var(b):
            return self._combination(node, [a, b], [1.0, -1.0])
        if self.is_var(a):
            return self.affine(self.variables[a], None, -self.constants[b], node)
        return self.affine(self.variables[b], np.array(-1.0), self.constants[a], node)

    def _combination(self, node, tensors: list[str], coefficients: list[float]) -> str:
        rank = max(len(self.shape_of(self.variables[t])) for t in tensors)
        inputs = [self._with_rank(self.variables[t], rank, node) for t in tensors]
        return self.add(LinearCombination(coefficients), inputs, node)

    def _op_Neg(self, node):
        return self.affine(self.variables[node.input[0]], np.array(-1.0), None, node)

    def _op_Mul(self, node):
        a, b = node.input
        if self.is_var(a) and self.is_var(b):
            return self._binary(node, "mul", a, b)
        var, c = (a, b) if self.is_var(a) else (b, a)
        return self.affine(self.variables[var], self.constants[c], None, node)

    def _op_Div(self, node):
        a, b = node.input
        if self.is_var(a) and self.is_var(b):
            reciprocal = self._unary(b, "reciprocal", node)
            self._bind(f"{b}__reciprocal", reciprocal)
            return self._binary(node, "mul", a, f"{b}__reciprocal")
        if self.is_var(a):
            divisor = self.constants[b].astype(np.float64)
            if np.any(divisor == 0):
                raise UnsupportedOpError("Div", node.name, "division by a constant that contains 0")
            return self.affine(self.variables[a], 1.0 / divisor, None, node)
        reciprocal = self._unary(b, "reciprocal", node)
        return self.affine(reciprocal, self.constants[a], None, node)

    def _binary(self, node, activation: str, a: str, b: str) -> str:
        va, vb = self.variables[a], self.variables[b]
        sa, sb = self.shape_of(va), self.shape_of(vb)
        if sa != sb:
            target = tuple(np.broadcast_shapes(sa, sb))
            va = va if sa == target else self.add(ExpandOp(target), [self._with_rank(va, len(target), node)], node)
            vb = vb if sb == target else self.add(ExpandOp(target), [self._with_rank(vb, len(target), node)], node)
        return self.add(BinaryOp(activation), [va, vb], node)

    def _op_Pow(self, node):
        exponent = self.const(node.input[1])
        if exponent is None or exponent.size != 1:
            raise UnsupportedOpError("Pow", node.name, "the exponent must be a scalar constant")
        e = float(exponent.reshape(-1)[0])
        if e == 1.0:
            return self.variables[node.input[0]]
        return self._unary(node.input[0], "pow", node, exponent=e)

    def _op_Sqrt(self, node):
        return self._unary(node.input[0], "pow", node, exponent=0.5)

    def _op_LeakyRelu(self, node):
        return self._unary(node.input[0], "leaky_relu", node, negative_slope=float(self.attr(node, "alpha", 0.01)))

    def _op_Gelu(self, node):
        approximate = self.attr(node, "approximate", b"none")
        if (approximate.decode() if isinstance(approximate, bytes) else approximate) != "none":
            raise UnsupportedOpError("Gelu", node.name, "only approximate='none' (the erf form) is supported")
        return self._unary(node.input[0], "gelu", node)

    def _op_Max(self, node):
        return self._extremum(node, "max")

    def _op_Min(self, node):
        return self._extremum(node, "min")

    def _extremum(self, node, activation: str) -> str:
        variables = [n for n in node.input if self.is_var(n)]
        constants = [self.constants[n] for n in node.input if n and not self.is_var(n)]
        current = variables[0]
        for other in variables[1:]:
            self._bind(f"{id_of(node)}__{other}", self._binary(node, activation, current, other))
            current = f"{id_of(node)}__{other}"
        result = self.variables[current]
        if constants:
            bound = constants[0]
            for c in constants[1:]:
                bound = np.maximum(bound, c) if activation == "max" else np.minimum(bound, c)
            result = lowering.extremum_with_constant(self, result, bound, activation, node)
        return result

    def _op_MatMul(self, node):
        a, b = node.input
        if self.is_var(a) and not self.is_var(b):
            return lowering.matmul_right(self, self.variables[a], self.constants[b], node)
        if self.is_var(b) and not self.is_var(a):
            return lowering.matmul_left(self, self.constants[a], self.variables[b], node)
        raise UnsupportedOpError("MatMul", node.name, "a product of two input-dependent tensors")

    def _op_Gemm(self, node):
        a, b = node.input[0], node.input[1]
        c = node.input[2] if len(node.input) > 2 else ""
        if not self.is_var(a) or self.is_var(b) or self.is_var(c):
            raise UnsupportedOpError("Gemm", node.name, "only Gemm(input, constant, constant) is supported")
        if self.attr(node, "transA", 0):
            raise UnsupportedOpError("Gemm", node.name, "transA=1 is not supported")
        weight = self.constants[b].astype(np.float64) * float(self.attr(node, "alpha", 1.0))
        if self.attr(node, "transB", 0):
            weight = weight.T
        bias = None if not c else self.constants[c].astype(np.float64) * float(self.attr(node, "beta", 1.0))
        out = self.add(MatMulConst(torch.as_tensor(weight), None), [self.variables[a]], node)
        return out if bias is None else lowering.fold_affine(self, out, None, bias) or \
            self.add(ElementwiseAffine(None, torch.as_tensor(bias)), [out], node)

    def _op_ReduceSum(self, node):
        return lowering.reduce_sum(self, node, scale=None)

    def _op_ReduceMean(self, node):
        return lowering.reduce_sum(self, node, scale="mean")

    def _op_ReduceMax(self, node):
        return lowering.reduce_extremum(self, node, "max")

    def _op_ReduceMin(self, node):
        return lowering.reduce_extremum(self, node, "min")

    def _op_TopK(self, node):
        return lowering.topk(self, node)

    # convolution and normalisation -------------------------------------------
    def _op_Conv(self, node):
        return lowering.conv(self, node)

    def _op_ConvTranspose(self, node):
        return lowering.conv_transpose(self, node)

    def _op_BatchNormalization(self, node):
        return lowering.batch_norm(self, node)

    # shapes ------------------------------------------------------------------
    def _op_Shape(self, node):
        shape = np.array(self.shape_of(self.variables[node.input[0]]), dtype=np.int64)
        start, end = self.attr(node, "start", 0), self.attr(node, "end", None)
        self.constants[node.output[0]] = shape[start:end]
        return None

    def _op_Size(self, node):
        self.constants[node.output[0]] = np.array(prod(self.shape_of(self.variables[node.input[0]])), dtype=np.int64)
        return None

    def _op_Cast(self, node):
        to = self.attr(node, "to")
        if to not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
            raise UnsupportedOpError("Cast", node.name, "cast of an input-dependent tensor to a non-float type")
        return self.variables[node.input[0]]

    def _op_Reshape(self, node):
        return lowering.reshape(self, node)

    def _op_Flatten(self, node):
        variable = self.variables[node.input[0]]
        shape = self.shape_of(variable)
        axis = self.attr(node, "axis", 1)
        axis = axis + len(shape) if axis < 0 else axis
        return self.add(ReshapeOp((prod(shape[:axis]), prod(shape[axis:]))), [variable], node)

    def _op_Squeeze(self, node):
        return lowering.squeeze_unsqueeze(self, node, squeeze=True)

    def _op_Unsqueeze(self, node):
        return lowering.squeeze_unsqueeze(self, node, squeeze=False)

    def _op_Transpose(self, node):
        variable = self.variables[node.input[0]]
        perm = self.attr(node, "perm", None) or list(reversed(range(len(self.shape_of(variable)))))
        return self.add(TransposeOp(perm), [variable], node)

    def _op_Concat(self, node):
        axis = self.attr(node, "axis")
        parts, variables = [], []
        rank = max(len(self.shape_of(self.variables[n])) for n in node.input if self.is_var(n))
        for n in node.input:
            if self.is_var(n):
                parts.append(None)
                variables.append(self.variables[n])
            else:
                parts.append(torch.as_tensor(self.constants[n].astype(np.float64)))
        return self.add(ConcatOp(parts, axis if axis >= 0 else axis + rank), variables, node)

    def _op_Slice(self, node):
        return lowering.slice_(self, node)

    def _op_Split(self, node):
        return lowering.split(self, node)

    def _op_Gather(self, node):
        data, indices = node.input
        if not self.is_var(data) or self.is_var(indices):
            raise UnsupportedOpError("Gather", node.name, "only constant indices into an input-dependent tensor")
        variable = self.variables[data]
        axis = self.attr(node, "axis", 0)
        axis = axis + len(self.shape_of(variable)) if axis < 0 else axis
        return self.add(GatherOp(torch.as_tensor(self.constants[indices].astype(np.int64)), axis), [variable], node)

    def _op_Expand(self, node):
        variable = self.variables[node.input[0]]
        target = tuple(np.broadcast_shapes(self.shape_of(variable), tuple(int(s) for s in self.constants[node.input[1]])))
        return self.add(ExpandOp(target), [self._with_rank(variable, len(target), node)], node)

    def _op_Where(self, node):
        condition, a, b = node.input
        if self.is_var(condition):
            raise UnsupportedOpError("Where", node.name, "the condition depends on the input")
        variables = [self.variables[n] for n in (a, b) if self.is_var(n)]
        constants = [None if self.is_var(n) else torch.as_tensor(self.constants[n].astype(np.float64)) for n in (a, b)]
        mask = torch.as_tensor(self.constants[condition].astype(bool))
        rank = max([mask.dim()] + [len(self.shape_of(v)) for v in variables] + [c.dim() for c in constants if c is not None])
        variables = [self._with_rank(v, rank, node) for v in variables]
        return self.add(SelectOp(mask, constants), variables, node)


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name in ("value_float", "value_int"):
            return np.array(onnx.helper.get_attribute_value(a))
        if a.name in ("value_floats", "value_ints"):
            return np.array(list(onnx.helper.get_attribute_value(a)))
    raise UnsupportedOpError("Constant", node.name, "only tensor/float/int values are supported")
