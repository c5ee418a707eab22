"""A program written as a plain layered ReLU network, max pools and residual sums included.

`relu_form(program)` returns `ReluNet`: f(x) = W_L s(... s(W_1 x + b_1) ...) + b_L, the
same function as the program (float64), for programs of affine steps, sums of two values
(residual connections), ReLUs and max pools; each hidden unit s is a ReLU or, where
`linear` says so, the identity. A value read again after a new hidden layer (the input of
a residual block) is carried through that layer by identity units. A max pool becomes
hidden layers by

    max(a, b) = relu(a - b) + b,

pairwise, ceil(log2 k) layers for a window of k entries (units relu(a - b) and the
identity b; an unused slot of a padded window repeats the window's first entry). So
branch and bound on ReLU units covers both the activations and the pools' choices
(`bab.py`); identity units are never relaxed or split. (The program moves a ReLU before
a pool after it, so the differences are of pre-activations: exact affine maps of the
input after a first convolution.)
LeakyReLU and the smooth steps raise `UnsupportedLocal`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lipcheck.propagation.program import (
    Act,
    Add,
    Affine,
    MaxPool,
    Program,
    UnsupportedLocal,
    sources,
)


@dataclass
class ReluNet:
    weights: list[torch.Tensor]   # W_1 .. W_L, float64
    biases: list[torch.Tensor]
    linear: list[torch.Tensor]    # per hidden layer (n_k,) bool: the unit is the identity
    origin: list[int | None] = field(default_factory=list)  # Act step of a layer's first units

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


Map = tuple[torch.Tensor, torch.Tensor]   # (W, b): a value as W h + b, h the last layer's outputs


class _Builder:
    """Walks the program keeping every value still to be read as an affine map of the
    last hidden layer's outputs (or of the input). A new hidden layer carries the values
    read later (residual connections) as identity units."""

    def __init__(self, program: Program) -> None:
        self.steps = program.steps
        self.weights: list[torch.Tensor] = []
        self.biases: list[torch.Tensor] = []
        self.linear: list[torch.Tensor] = []
        self.origin: list[int | None] = []
        eye = torch.eye(program.n_in, dtype=torch.float64)
        self.maps: dict[int, Map] = {0: (eye, torch.zeros(program.n_in, dtype=torch.float64))}
        self.nonneg: set[int] = set()
        self.last = {0: 0}
        for i in range(len(self.steps)):
            for v in sources(self.steps, i):
                self.last[v] = i
        self.at = 0

    def carried(self) -> list[int]:
        """The values read after the current step."""
        return [v for v in self.maps if self.last.get(v, -1) > self.at]

    def layer(self, rows: Map, linear: torch.Tensor, origin: int | None = None) -> torch.Tensor:
        """A hidden layer of `rows` (ReLU, or identity where `linear`) plus the carried
        values; every map is re-expressed over its outputs. Returns the rows' selector."""
        keep = self.carried()
        parts = [rows] + [self.maps[v] for v in keep]
        w, b = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        kinds = [linear] + [torch.ones(len(self.maps[v][1]), dtype=torch.bool) for v in keep]
        self.weights.append(w)
        self.biases.append(b)
        self.linear.append(torch.cat(kinds))
        self.origin.append(origin)
        eye = torch.eye(len(b), dtype=torch.float64)
        start = len(rows[1])
        for v in keep:
            n = len(self.maps[v][1])
            self.maps[v] = (eye[start:start + n], torch.zeros(n, dtype=torch.float64))
            start += n
        return eye[:len(rows[1])]

    def step(self, i: int) -> None:
        self.at = i
        step, src = self.steps[i], sources(self.steps, i)
        w, b = self.maps[src[0]]
        if isinstance(step, Affine):
            out = (step.weight @ w, step.weight @ b + step.bias)
        elif isinstance(step, Add):
            w2, b2 = self.maps[src[1]]
            out = (w + w2, b + b2)
        elif isinstance(step, Act):
            out = self._relu(i, src[0])
        else:
            assert isinstance(step, MaxPool), "relu_form_refusal lets no other step through"
            out = self._pool(step, src[0])
        self.maps[i + 1] = out
        for v in [v for v in self.maps if self.last.get(v, -1) <= i and v != i + 1]:
            del self.maps[v]

    def _relu(self, i: int, v: int) -> Map:
        self.nonneg.add(i + 1)
        if v in self.nonneg:   # relu of a ReLU's output is itself
            return self.maps[v]
        rows = self.maps[v]
        select = self.layer(rows, torch.zeros(len(rows[1]), dtype=torch.bool), origin=i)
        return select, torch.zeros(len(rows[1]), dtype=torch.float64)

    def _pool(self, step: MaxPool, v: int) -> Map:
        """max over each window by levels of max(a, b) = relu(a - b) + b."""
        if v in self.nonneg:
            self.nonneg.add(self.at + 1)
        windows = step.windows.clone()
        unused = windows >= step.n_in          # a padded window's empty slot: repeat the first
        windows = torch.where(unused, windows[:, :1].expand_as(windows), windows)
        w, b = self.maps[v]
        w, b = w[windows], b[windows]                           # (n_out, k, n_prev), (n_out, k)
        while w.shape[1] > 1:
            w, b = self._pairs(w, b)
        return w[:, 0], b[:, 0]

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
        select = self.layer((layer_w.reshape(n_out * per, -1), layer_b.reshape(-1)),
                            torch.cat(kinds).repeat(n_out))
        new = pairs + k % 2
        combine = torch.zeros(n_out, new, select.shape[1], dtype=torch.float64)
        for j in range(new):
            for c in ([2 * j, 2 * j + 1] if j < pairs else [per - 1]):
                combine[:, j] += select[torch.arange(n_out) * per + c]
        return combine, torch.zeros(n_out, new, dtype=torch.float64)


def relu_form_refusal(program: Program) -> str | None:
    """Why relu_form does not take the program (its first step that is not an affine map,
    a sum, a ReLU or a max pool), or None: from the steps alone, nothing is built."""
    if program.smooth:
        return "branch and bound handles affine steps, sums, ReLUs and max pools only"
    for step in program.steps:
        if isinstance(step, Act) and step.alpha != 0:
            return (f"activation {step.nodes} with slope {step.alpha} left of 0: branch and "
                    "bound handles ReLU only")
        if not isinstance(step, (Affine, Add, Act, MaxPool)):
            return f"step {type(step).__name__} is not a ReLU network step"
    return None


def relu_form(program: Program) -> ReluNet:
    """The program as a ReLU network (same function); `UnsupportedLocal` where a step
    is not an affine map, a sum, a ReLU or a max pool (relu_form_refusal)."""
    why = relu_form_refusal(program)
    if why is not None:
        raise UnsupportedLocal(why)
    build = _Builder(program)
    for i in range(len(program.steps)):
        build.step(i)
    w, b = build.maps[len(program.steps)]
    return ReluNet(build.weights + [w], build.biases + [b], build.linear, build.origin)
