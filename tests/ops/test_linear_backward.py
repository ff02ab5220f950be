"""Each linear op's hand-written transpose (``backward``) equals the generic vector-Jacobian product,
and ``forward_abs`` equals the op with absolute coefficients (checked against the dense Jacobian)."""
from __future__ import annotations

import pytest
import torch

from nlverify.ops import (
    ConcatOp, ConvOp, ConvTransposeOp, ElementwiseAffine, ExpandOp, GatherOp, LinearCombination, LinearOp,
    MatMulConst, ReduceSumOp, ReshapeOp, SelectOp, SliceOp, TransposeOp,
)

torch.manual_seed(0)
D = torch.float64


def _cases():
    r = lambda *s: torch.randn(*s, dtype=D)
    yield "matmul", MatMulConst(r(5, 3), r(3)), [(2, 5)]
    yield "conv", ConvOp(r(4, 2, 3, 3), r(4), (2, 1), (1, 0), (1, 1), 1), [(1, 2, 6, 5)]
    yield "conv_transpose", ConvTransposeOp(r(2, 3, 3, 3), r(3), (2, 2), (1, 1), (1, 0), (1, 1), 1), [(1, 2, 4, 3)]
    yield "affine_broadcast", ElementwiseAffine(r(3, 1), r(4)), [(2, 3, 4)]
    yield "affine_grow", ElementwiseAffine(r(3, 4), None), [(1, 4)]
    # a broadcasting constant shift alone widens the output (lsnc quadrotor2d_output: Sub of a (1, 4) constant)
    yield "affine_shift_grows", ElementwiseAffine(None, r(4)), [(3, 1)]
    yield "affine_scale_and_shift_grow", ElementwiseAffine(r(3, 1), r(1, 4)), [(1, 1)]
    yield "combination", LinearCombination([2.0, -0.5]), [(3, 4), (1, 4)]
    yield "reduce", ReduceSumOp([2], keepdims=False), [(2, 5, 3)]
    yield "reshape", ReshapeOp((6, 2)), [(3, 4)]
    yield "transpose", TransposeOp((2, 0, 1)), [(2, 3, 4)]
    yield "slice", SliceOp([slice(None), slice(1, 6, 2)]), [(2, 7)]
    yield "slice_negative", SliceOp([slice(None, None, -1)]), [(5,)]
    yield "gather", GatherOp(torch.tensor([[0, 2], [-1, 1]]), 1), [(2, 3)]
    yield "expand", ExpandOp((3, 4)), [(1, 4)]
    yield "concat", ConcatOp([None, r(2, 1), None], 1), [(2, 3), (2, 2)]
    yield "select", SelectOp(torch.tensor([True, False, True]), [None, r(3)]), [(3,)]


CASES = list(_cases())


@pytest.mark.parametrize("name,op,shapes", CASES, ids=[c[0] for c in CASES])
def test_backward_matches_vjp(name, op, shapes):
    out_shape = op.forward(*(torch.zeros(1, *s, dtype=D) for s in shapes)).shape[1:]
    coeffs = torch.randn(2, 3, *out_shape, dtype=D)
    explicit = op.backward(coeffs, shapes)
    generic = LinearOp.backward(op, coeffs, shapes)
    assert len(explicit) == len(generic)
    for e, g in zip(explicit, generic):
        assert e.shape == g.shape
        torch.testing.assert_close(e, g)


@pytest.mark.parametrize("name,op,shapes", CASES, ids=[c[0] for c in CASES])
def test_forward_abs_is_absolute_jacobian(name, op, shapes):
    inputs = [torch.randn(1, *s, dtype=D) for s in shapes]
    radii = [torch.rand(1, *s, dtype=D) for s in shapes]
    jacobians = torch.autograd.functional.jacobian(lambda *xs: op.forward(*xs), tuple(inputs))
    expected = sum((j.abs().reshape(j.shape[: j.dim() - r.dim()].numel(), -1) @ r.reshape(-1)) for j, r in zip(jacobians, radii))
    got = op.forward_abs(*radii)
    assert got.shape == op.forward(*inputs).shape
    got = got.reshape(-1)
    torch.testing.assert_close(got, expected)
