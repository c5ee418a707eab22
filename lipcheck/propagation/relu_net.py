"""A chain program written as a plain ReLU network, max pools included.

`relu_form(program)` returns `ReluNet`: f(x) = W_L relu(... relu(W_1 x + b_1) ...) + b_L,
the same function as the program (float64), for chains of affine steps, ReLUs and max
pools; a hidden unit is a ReLU or, where `linear` says so, the identity. A max pool
becomes hidden layers by

    max(a, b) = relu(a - b) + b,

pairwise, ceil(log2 k) layers for a window of k entries (units relu(a - b) and the
identity b; an unused slot of a padded window repeats the window's first entry). So
branch and bound on ReLU units covers both the activations and the pools' choices
(`bab.py`); identity units are never relaxed or split. (The program moves a ReLU before
a pool after it, so the differences are of pre-activations: exact affine maps of the
input after a first convolution.)
LeakyReLU, residual graphs and the smooth steps raise `UnsupportedLocal`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lipcheck.propagation.program import Act, Affine, MaxPool, Program, UnsupportedLocal


@dataclass
class ReluNet:
    weights: list[torch.Tensor]   # W_1 .. W_L, float64
    biases: list[torch.Tensor]
    linear: list[torch.Tensor]    # per hidden layer (n_k,) bool: the unit is the identity
    origin: list[int | None] = field(default_factory=list)  # the program's Act step, if one

    @property
    def widths(self) -> list[int]:
        """Units of each hidden layer (all but the last affine map)."""
        return [w.shape[0] for w in self.weights[:-1]]

    def pre_activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """z_1 .. z_L on flat inputs (B, n): each hidden layer's input, then the output."""
        out, a = [], x
        for k, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            z = a @ w.T + b
            out.append(z)
            if k < len(self.linear):
                a = torch.where(self.linear[k], z, z.clamp(min=0))
        return out

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self.pre_activations(x)[-1]


class _Builder:
    """Walks the chain keeping the current value as an affine map (W, b) of the last
    hidden layer's outputs (or of the input)."""

    def __init__(self, n_in: int) -> None:
        self.weights: list[torch.Tensor] = []
        self.biases: list[torch.Tensor] = []
        self.linear: list[torch.Tensor] = []
        self.origin: list[int | None] = []
        self.w = torch.eye(n_in, dtype=torch.float64)
        self.b = torch.zeros(n_in, dtype=torch.float64)
        self.nonneg = False

    def affine(self, step: Affine) -> None:
        self.w, self.b = step.weight @ self.w, step.weight @ self.b + step.bias
        self.nonneg = False

    def layer(self, linear: torch.Tensor | None = None, origin: int | None = None) -> None:
        """The current value becomes a hidden layer (ReLU, or identity where `linear`)."""
        n = self.w.shape[0]
        self.origin.append(origin)
        self.weights.append(self.w)
        self.biases.append(self.b)
        self.linear.append(torch.zeros(n, dtype=torch.bool) if linear is None else linear)
        self.w, self.b = torch.eye(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
        self.nonneg = linear is None

    def pool(self, step: MaxPool) -> None:
        windows = step.windows.clone()
        unused = windows >= step.n_in          # a padded window's empty slot: repeat the first
        windows = torch.where(unused, windows[:, :1].expand_as(windows), windows)
        w, b = self.w[windows], self.b[windows]                 # (n_out, k, n_prev), (n_out, k)
        nonneg = self.nonneg
        while w.shape[1] > 1:
            w, b = self._pairs(w, b)
        self.w, self.b = w[:, 0], b[:, 0]
        self.nonneg = nonneg

    def _pairs(self, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One level of the tree: entries (n_out, k) -> (n_out, ceil(k/2)); per pair the
        units [relu(a - b), b (identity)], max(a, b) = their sum; an odd last entry passes."""
        n_out, k = b.shape
        pairs = k // 2
        wa, wb = w[:, 0:2 * pairs:2], w[:, 1:2 * pairs:2]
        ba, bb = b[:, 0:2 * pairs:2], b[:, 1:2 * pairs:2]
        rows_w = [torch.stack([wa - wb, wb], dim=2).reshape(n_out, 2 * pairs, -1)]
        rows_b = [torch.stack([ba - bb, bb], dim=2).reshape(n_out, 2 * pairs)]
        kinds = [torch.tensor([False, True]).repeat(pairs)]
        if k % 2:
            rows_w.append(w[:, -1:])
            rows_b.append(b[:, -1:])
            kinds.append(torch.tensor([True]))
        layer_w, layer_b = torch.cat(rows_w, dim=1), torch.cat(rows_b, dim=1)
        per = layer_b.shape[1]
        self.w, self.b = layer_w.reshape(n_out * per, -1), layer_b.reshape(-1)
        self.layer(torch.cat(kinds).repeat(n_out))
        new = pairs + k % 2
        combine = torch.zeros(n_out, new, n_out * per, dtype=torch.float64)
        for j in range(new):
            for c in ([2 * j, 2 * j + 1] if j < pairs else [per - 1]):
                combine[torch.arange(n_out), j, torch.arange(n_out) * per + c] = 1.0
        return combine, torch.zeros(n_out, new, dtype=torch.float64)


def relu_form(program: Program) -> ReluNet:
    """The chain as a ReLU network (same function); `UnsupportedLocal` where it is not
    one of affine steps, ReLUs and max pools over values >= 0."""
    if not program.is_chain or program.smooth:
        raise UnsupportedLocal("branch and bound handles chains of affine steps, ReLUs "
                               "and max pools only")
    build = _Builder(program.n_in)
    for index, step in enumerate(program.steps):
        if isinstance(step, Affine):
            build.affine(step)
        elif isinstance(step, Act):
            _relu(build, step, index)
        elif isinstance(step, MaxPool):
            build.pool(step)
        else:
            raise UnsupportedLocal(f"step {type(step).__name__} is not a ReLU network step")
    return ReluNet(build.weights + [build.w], build.biases + [build.b], build.linear,
                   build.origin)


def _relu(build: _Builder, step: Act, index: int) -> None:
    if step.alpha != 0:
        raise UnsupportedLocal(f"activation {step.nodes} with slope {step.alpha} left of 0: "
                               "branch and bound handles ReLU only")
    if not build.nonneg:   # relu of a ReLU's output is itself
        build.layer(origin=index)
