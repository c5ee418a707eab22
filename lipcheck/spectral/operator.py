"""A node's linear part as an operator, and generic ways to take its norm.

`node_operator` turns an affine node into x -> A x (the node's output minus its
output at zero, computed at the first application: a certifier that reads the weights never
runs the layer) on the exact input shape, so padding, stride, dilation and groups
are those the model applies. `dense_norm` builds the Jacobian and takes its largest
singular value in float64 (certified, with a rounding margin); `power_norm` runs
autograd power iteration (an estimate from below).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.linalg
import torch

from lipcheck.finite import count_nonfinite
from lipcheck.graph import Node, Shape
from lipcheck.spectral import layer_clock
from lipcheck.spectral.krylov import lanczos

if TYPE_CHECKING:
    from lipcheck.bounds import BoundContext

# Relative margin added to every float64 singular value reported as certified: the
# float64 SVD is backward stable, sigma has relative error far below 1e-12 for the
# sizes we run it on.
FLOAT64_MARGIN = 1e-9
# a dense float64 SVD takes about this * small^2 * large seconds (one thread)
DENSE_SECONDS_PER_FLOP = 3e-10


@dataclass
class LinearOperator:
    apply: Callable[[torch.Tensor], torch.Tensor]
    in_shape: Shape
    out_shape: Shape
    dtype: torch.dtype
    device: torch.device

    @property
    def n_in(self) -> int:
        return math.prod(self.in_shape)

    @property
    def n_out(self) -> int:
        return math.prod(self.out_shape)


@dataclass
class NormResult:
    value: float
    certified: bool
    method: str
    iterations: int | None = None
    converged: bool | None = None


def node_operator(node: Node, ctx: BoundContext, dtype: torch.dtype = torch.float64
                  ) -> LinearOperator:
    """The linear part of an affine node with one dynamic input."""
    from lipcheck.rules.registry import get_rule

    rule = get_rule(node.op)
    (position,) = ctx.dynamic(node)
    device = torch.device(ctx.settings.device)
    inputs = [_cast(ctx.graph.constants.get(v), dtype, device) if v else None for v in node.inputs]
    in_shape = tuple(node.input_shapes[position])

    def affine(x: torch.Tensor) -> torch.Tensor:
        args = list(inputs)
        args[position] = x
        # absent optional inputs stay None: RunFn's contract (rules.registry docstring)
        return rule.run(node, args)[0]  # type: ignore[arg-type]

    offset: list[torch.Tensor] = []   # the output at zero, computed at the first application

    def linear(x: torch.Tensor) -> torch.Tensor:
        if not offset:
            with torch.no_grad():
                offset.append(affine(torch.zeros(in_shape, dtype=dtype, device=device)))
        return affine(x) - offset[0]
    if not node.output_shapes:   # no recorded shape: apply it once now
        linear(torch.zeros(in_shape, dtype=dtype, device=device))
    out_shape = tuple(offset[0].shape) if offset else tuple(node.output_shapes[0])
    return LinearOperator(linear, in_shape, out_shape, dtype, device)


def _cast(t: torch.Tensor | None, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    if t is None:
        return None
    return t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)


def dense_jacobian(op: LinearOperator, chunk: int = 256) -> torch.Tensor:
    """The (n_out, n_in) matrix of the operator, built by applying it to basis vectors."""
    batched = torch.func.vmap(op.apply)
    columns = []
    with torch.no_grad():
        for start in range(0, op.n_in, chunk):
            layer_clock.check("dense Jacobian")
            stop = min(op.n_in, start + chunk)
            basis = torch.zeros(stop - start, op.n_in, dtype=op.dtype, device=op.device)
            basis[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
            columns.append(batched(basis.reshape(-1, *op.in_shape)).reshape(stop - start, -1))
    return torch.cat(columns).T


def matrix_norm(matrix: np.ndarray | torch.Tensor) -> float:
    """Largest singular value in float64, with the certification margin."""
    if isinstance(matrix, torch.Tensor) and matrix.dim() == 2 and min(matrix.shape) > GRAM_FROM:
        # no whole float64 copy (VGG's 25088 x 4096 layer: 0.8 GB): the Gram by column chunks
        if count_nonfinite(matrix.detach()):   # block by block: no whole-tensor mask
            return math.inf
        return _gram_certified_norm(matrix.detach().cpu())
    m = matrix.detach().cpu().double().numpy() if isinstance(matrix, torch.Tensor) else matrix
    m = np.asarray(m, dtype=np.float64)
    if m.size == 0:
        return 0.0
    if not np.isfinite(m).all():  # an entry overflowed: +inf is the only honest bound
        return math.inf
    if min(m.shape) <= GRAM_FROM:
        layer_clock.require(4 * max(m.shape) * min(m.shape) ** 2 + 8 * min(m.shape) ** 3, "SVD")
        return float(scipy.linalg.svdvals(m, check_finite=False)[0]) * (1 + FLOAT64_MARGIN)
    return _gram_certified_norm(m)


# Above this many rows and columns, ||M|| comes from the float64 Gram matrix with a
# Cholesky certificate (block_bounds), several times faster than an SVD (2048 x 512: 42 ms
# against 151 ms; a ResNet-50's 1x1 convs took 11 s of SVDs).
GRAM_FROM = 128


def _gram_certified_norm(m: np.ndarray | torch.Tensor) -> float:
    """sigma^2 <= tau + gamma_k ||M||_F^2, where tau I - fl(M M^T) is proven positive definite
    (Cholesky certificate) and gamma_k ||M||_F^2 bounds the Gram's rounding error. Above
    EIGH_MAX rows of the Gram, dense_gram.gram_norm: tau from Lanczos, one Cholesky in place
    (VGG's 4096-wide layers: no eigvalsh, no second copy)."""
    from lipcheck.spectral.block_bounds import cholesky_certify
    from lipcheck.spectral.dense_gram import float64_gram, gram_norm
    from lipcheck.spectral.freq_gram import gamma

    if min(m.shape) > EIGH_MAX:
        return gram_norm(m)
    gram, frobenius = float64_gram(m)
    error = gamma(max(m.shape)) * frobenius
    last = gram.shape[0] - 1
    # measured: 2.2 s at n = 2048 where a matmul runs 9.7 GFLOP/s: 2.5 n^3 matmul flops
    layer_clock.require(4 * gram.shape[0] ** 3, "eigvalsh of the Gram", efficiency=1.0)
    top = float(scipy.linalg.eigvalsh(gram, subset_by_index=[last, last], check_finite=False)[0])

    tau, blocks = max(top, 0.0) * (1 + 1e-9) + 1e-300, torch.from_numpy(gram)[None]
    for _ in range(20):
        if bool(cholesky_certify(blocks, tau)[0]):
            return math.sqrt(tau + error) * (1 + 1e-15)
        tau *= 1 + 1e-6
    return math.sqrt(float(np.linalg.norm(gram)) + error) * (1 + 1e-15)


EIGH_MAX = 2048       # larger Grams: Lanczos threshold + Cholesky certificate, no eigvalsh


def dense_norm(op: LinearOperator) -> NormResult:
    return NormResult(matrix_norm(dense_jacobian(op)), True, "exact-svd")


def bounded_matrix_norm(matrix: np.ndarray | torch.Tensor) -> NormResult:
    """matrix_norm; when the layer's --layer-budget runs out on the way, the one-pass bound
    min(Frobenius, sqrt(||M||_1 ||M||_inf)) instead (the cut is noted on the layer clock)."""
    from lipcheck.spectral.cheap_bounds import cheap_seconds, matrix_cheap_bound
    try:
        with layer_clock.reserving(cheap_seconds(matrix)):
            return NormResult(matrix_norm(matrix), True, "exact-svd")
    except layer_clock.LayerBudgetSpent as exc:
        layer_clock.note_cut(exc.what)
        return NormResult(matrix_cheap_bound(matrix), True, "frobenius-holder")


def apply_with_adjoint(op: LinearOperator, v: torch.Tensor
                       ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """A v, and w -> A^T w by reverse-mode autograd (torch.autograd, which unlike
    torch.func.vjp does not import torch._dynamo: 5 s saved on the first call)."""
    x = v.detach().requires_grad_(True)
    with torch.enable_grad():
        u = op.apply(x)

    def adjoint(w: torch.Tensor) -> torch.Tensor:
        return torch.autograd.grad(u, x, w, retain_graph=True)[0]
    return u.detach(), adjoint


def power_norm(op: LinearOperator, max_iter: int, tol: float, seed: int) -> NormResult:
    """Autograd power iteration on A^T A: a lower estimate of ||A||."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(op.in_shape, generator=gen, dtype=op.dtype).to(op.device)
    v /= v.norm()
    sigma, previous, converged, it = 0.0, 0.0, False, 0
    for it in range(1, max_iter + 1):
        if it > 1 and layer_clock.spent():  # an estimate either way: stop where the budget ends
            break
        u, vjp = apply_with_adjoint(op, v)
        sigma = float(u.norm())
        if sigma == 0.0:
            return NormResult(0.0, False, "power-iteration", it, True)
        w = vjp(u / sigma)
        v = w / w.norm()
        if it > 1 and abs(sigma - previous) <= tol * sigma:
            converged = True
            break
        previous = sigma
    return NormResult(sigma, False, "power-iteration", it, converged)


def lanczos_estimate(op: LinearOperator, start: torch.Tensor, steps: int) -> float:
    """A lower estimate of ||A||: `steps` Lanczos steps (krylov.lanczos) on A^T A from
    `start`, then ||A x|| / ||x|| for the top Ritz vector x, a difference quotient of the
    operator itself. Per product as good as several power iterations (on ResNet-shaped
    layers 4 steps beat 10 power iterations)."""
    def normal(v: np.ndarray) -> np.ndarray:
        u, adjoint = apply_with_adjoint(op, _on(op, v))
        return adjoint(u).cpu().numpy().reshape(-1)

    with torch.no_grad():
        run = lanczos(normal, start.detach().cpu().numpy(), steps, _StepsFit())
        if not run.alphas:
            return 0.0
        x = _on(op, run.top()[2])
        return float(op.apply(x).norm() / x.norm())


class _StepsFit:
    """Lanczos stopping rule: stop when another step (as long as the longest so far) and
    the final product would not fit the layer's --layer-budget."""

    def __init__(self) -> None:
        self.last, self.longest = time.perf_counter(), 0.0

    def __call__(self, run: object) -> bool:
        now = time.perf_counter()
        self.longest, self.last = max(self.longest, now - self.last), now
        return not layer_clock.has(1.5 * self.longest)


def _on(op: LinearOperator, v: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(v).reshape(op.in_shape).to(op.device)


def fits_dense(op: LinearOperator, ctx: BoundContext) -> bool:
    s = ctx.settings
    return min(op.n_in, op.n_out) <= s.exact_max_dim and op.n_in * op.n_out <= s.exact_max_entries
