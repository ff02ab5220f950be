"""Operations of the graph IR.

Every tensor flowing through a :class:`~nlverify.graph.Graph` carries a leading *batch* axis that the
engine adds (boxes of a spec, BaB domains) in front of the tensor's full ONNX shape, so an ONNX tensor of
shape ``[1, 784]`` is a torch tensor of shape ``(B, 1, 784)``. ONNX axes therefore shift by one, and a
model's own batch dimension (usually 1) is just another axis.

Ops come in three kinds:

* ``linear`` -- affine in their variable inputs (matmul, conv, reshape, add, ...). Bound propagation needs
  only :meth:`LinearOp.forward`, :meth:`LinearOp.forward_abs` and :meth:`LinearOp.backward`.
* ``unary`` -- an elementwise nonlinearity named by ``activation`` (relu, sigmoid, ...).
* ``binary`` -- an elementwise nonlinearity of two tensors (max, min, mul).
"""
from nlverify.ops.base import Op, InputOp, LinearOp, UnaryOp, BinaryOp
from nlverify.ops.linear import (
    MatMulConst, ConvOp, ConvTransposeOp, ElementwiseAffine, LinearCombination, ReduceSumOp,
)
from nlverify.ops.shape import ReshapeOp, TransposeOp, SliceOp, ConcatOp, GatherOp, ExpandOp, SelectOp

__all__ = [
    "Op", "InputOp", "LinearOp", "UnaryOp", "BinaryOp", "MatMulConst", "ConvOp", "ConvTransposeOp",
    "ElementwiseAffine", "LinearCombination", "ReduceSumOp", "ReshapeOp", "TransposeOp", "SliceOp",
    "ConcatOp", "GatherOp", "ExpandOp", "SelectOp",
]
