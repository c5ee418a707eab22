"""Dense affine ops: Gemm, MatMul with a constant operand, BatchNormalization."""
from __future__ import annotations

import torch

from lipcheck.graph import Node, OpKind
from lipcheck.rules.registry import (
    BoundContext,
    NodeBound,
    Rule,
    analytic,
    constant_input,
    register,
    unbounded,
)
from lipcheck.spectral.affine import affine_bound
from lipcheck.spectral.operator import GRAM_FROM, NormResult, bounded_matrix_norm

FAMILY = "linear"
NEAR_ZERO_VARIANCE = 1e-6


def _gemm_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    a, b = inputs[0], inputs[1]
    c = inputs[2] if len(inputs) > 2 else None
    if node.attrs.get("transA", 0):
        a = a.transpose(-1, -2)
    if node.attrs.get("transB", 0):
        b = b.transpose(-1, -2)
    y = float(node.attrs.get("alpha", 1.0)) * (a @ b)
    if c is not None:
        y = y + float(node.attrs.get("beta", 1.0)) * c
    return [y]


def _gemm_bound(node: Node, ctx: BoundContext) -> NodeBound:
    dynamic = ctx.dynamic(node)
    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    if dynamic == [2]:
        return analytic(abs(beta), detail="|beta| (only C depends on the input)")
    if len(dynamic) != 1 or 2 in dynamic:
        return unbounded("Gemm of two input-dependent operands is bilinear")
    other = constant_input(node, ctx, 1 - dynamic[0])
    return _exact(_dense_norm(other, ctx), abs(alpha))


def _dense_norm(matrix: torch.Tensor, ctx: BoundContext) -> NormResult:
    """bounded_matrix_norm; before a float64 Gram of its own (VGG's 4096 x 4096: 128 MB and a
    copy) the convolutions' work buffers are released (ctx.scratch: ~350 MB on VGG-11)."""
    if min(matrix.shape[-2:], default=0) > GRAM_FROM:
        ctx.scratch.clear()
    return bounded_matrix_norm(matrix)


def _exact(norm: NormResult, scale: float = 1.0) -> NodeBound:
    """exact-svd, or a one-pass bound where --layer-budget ran out (bounded_matrix_norm)."""
    return NodeBound(value=scale * norm.value, method=norm.method, certified=True)


register(Rule(OpKind.GEMM, FAMILY, _gemm_run, _gemm_bound,
              "|alpha| * ||B||_2 (exact SVD of the constant operand, float64)", affine=True))


def _matmul_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.matmul(inputs[0], inputs[1])]


def _matmul_bound(node: Node, ctx: BoundContext) -> NodeBound:
    dynamic = ctx.dynamic(node)
    if len(dynamic) != 1:
        return unbounded("MatMul of two input-dependent operands is bilinear (as in attention)")
    other = constant_input(node, ctx, 1 - dynamic[0])
    if other.dim() == 2:
        return _exact(_dense_norm(other, ctx))
    return affine_bound(node, ctx)


register(Rule(OpKind.MATMUL, FAMILY, _matmul_run, _matmul_bound,
              "||W||_2 for a 2-d constant operand; operator norm of the real map otherwise",
              affine=True))


def _bn_scale(node: Node, scale: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    return scale / torch.sqrt(var + float(node.attrs.get("epsilon", 1e-5)))


def _bn_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    x, _, bias, mean, _ = inputs[:5]
    shape = (1, -1) + (1,) * (x.dim() - 2)
    a = _bn_scale(node, inputs[1], inputs[4])
    return [(x - mean.reshape(shape)) * a.reshape(shape) + bias.reshape(shape)]


def _bn_bound(node: Node, ctx: BoundContext) -> NodeBound:
    if ctx.dynamic(node) != [0]:
        return unbounded("BatchNormalization with input-dependent statistics")
    params = [constant_input(node, ctx, i).double() for i in range(1, 5)]
    var = params[3]
    eps = float(node.attrs.get("epsilon", 1e-5))
    scale = _bn_scale(node, params[0], var)
    result = analytic(float(scale.abs().max()) * (1 + 1e-12) if scale.numel() else 0.0)
    if var.numel() and float((var + eps).min()) < NEAR_ZERO_VARIANCE:
        result.warnings.append(("batchnorm_near_zero_variance",
                                f"running variance + eps is {float((var + eps).min()):.2e}: "
                                "the layer amplifies that channel strongly"))
    return result


register(Rule(OpKind.BATCH_NORM, FAMILY, _bn_run, _bn_bound,
              "max_c |scale_c| / sqrt(var_c + eps) (inference mode)", affine=True))
