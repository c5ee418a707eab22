"""The network as a float64 function of one flat input vector, for the lower-bound search.

`NetFunction(graph)(x)` runs the graph on the concatenation of all graph inputs
(flattened, in order) and returns the concatenation of all outputs, in float64.
With `smoothing` set, kinked activations (Relu, LeakyRelu, PRelu, Abs, Clip) run as
softplus-smoothed versions, so that the Jacobian norm has a useful gradient in x
(it is piecewise constant for the exact network). Smoothed values are only ever
used to steer the search; every reported number comes from the exact network.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from lipcheck.errors import UserError
from lipcheck.graph import Graph, Node, OpKind
from lipcheck.interpreter import run_node

Smooth = Callable[[Node, list[torch.Tensor], float], torch.Tensor]


def _width(z: torch.Tensor, sharpness: float) -> torch.Tensor:
    """Softening width: the node's mean |pre-activation| divided by the sharpness."""
    return (z.detach().abs().mean() / sharpness).clamp_min(1e-12)


def soft_relu(z: torch.Tensor, sharpness: float) -> torch.Tensor:
    w = _width(z, sharpness)
    return F.softplus(z / w) * w


def _leaky(node: Node, args: list[torch.Tensor], k: float) -> torch.Tensor:
    alpha = float(node.attrs.get("alpha", 0.01))
    return alpha * args[0] + (1 - alpha) * soft_relu(args[0], k)


def _prelu(node: Node, args: list[torch.Tensor], k: float) -> torch.Tensor:
    z, slope = args
    return slope * z + (1 - slope) * soft_relu(z, k)


def _clip(node: Node, args: list[torch.Tensor], k: float) -> torch.Tensor:
    z, lo, hi = args[0], node.attrs.get("min"), node.attrs.get("max")
    out = z if lo is None else lo + soft_relu(z - lo, k)
    return out if hi is None else out - soft_relu(out - hi, k)


SMOOTH: dict[OpKind, Smooth] = {
    OpKind.RELU: lambda node, args, k: soft_relu(args[0], k),
    OpKind.LEAKY_RELU: _leaky,
    OpKind.PRELU: _prelu,
    OpKind.ABS: lambda node, args, k: soft_relu(args[0], k) + soft_relu(-args[0], k),
    OpKind.CLIP: _clip,
}


class NetFunction:
    """x (flat, float64) -> concatenated outputs (flat, float64)."""

    def __init__(self, graph: Graph) -> None:
        for info in graph.inputs:
            if not info.dtype.is_floating_point:
                raise UserError(f"lower bound: graph input {info.name!r} has dtype {info.dtype}, "
                                "the search needs floating-point inputs")
        self.graph = graph
        self.shapes = [tuple(info.shape) for info in graph.inputs]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.n_in = sum(self.sizes)
        self.constants = {k: v.double() if v.is_floating_point() else v
                          for k, v in graph.constants.items()}
        self.smoothing: float | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        env = dict(self.constants)
        for info, part in zip(self.graph.inputs, torch.split(x, self.sizes)):
            env[info.name] = part.reshape(info.shape)
        for node in self.graph.nodes:
            args = [env[v] if v else None for v in node.inputs]
            env.update(zip(node.outputs, self._run(node, args)))
        return torch.cat([env[name].reshape(-1) for name in self.graph.outputs])

    def _run(self, node: Node, args: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.smoothing is None:
            return run_node(node, args)
        smooth = SMOOTH.get(node.op)
        return [smooth(node, args, self.smoothing)] if smooth else run_node(node, args)

    def exact(self, x: torch.Tensor) -> torch.Tensor:
        """The exact network, without gradients."""
        previous, self.smoothing = self.smoothing, None
        try:
            with torch.no_grad():
                return self(x)
        finally:
            self.smoothing = previous
