"""Runs a Graph with the rules' torch implementations."""
from __future__ import annotations

from collections.abc import Mapping

import torch

from lipcheck.errors import ShapeError
from lipcheck.graph import Graph, Node
from lipcheck.rules import get_rule


def run_node(node: Node, inputs: list[torch.Tensor | None]) -> list[torch.Tensor]:
    try:
        # absent optional inputs are None: RunFn's contract (rules.registry docstring)
        return get_rule(node.op).run(node, inputs)  # type: ignore[arg-type]
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        raise ShapeError(f"node {node.name!r} ({node.op.value}) failed to run: "
                         f"{str(exc).splitlines()[0]}") from exc


def run_graph(graph: Graph, feeds: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None,
              keep: bool = False, grad: bool = False) -> dict[str, torch.Tensor]:
    """Evaluate the graph; returns the graph outputs (or every value when keep=True).
    With grad=True autograd records the computation (for Jacobians and lower bounds)."""
    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    env: dict[str, torch.Tensor] = {k: cast(v) for k, v in graph.constants.items()}
    for info in graph.inputs:
        if info.name not in feeds:
            raise ShapeError(f"no value given for graph input {info.name!r}")
        env[info.name] = cast(feeds[info.name])
    with torch.set_grad_enabled(grad):
        for node in graph.nodes:
            outputs = run_node(node, [env[v] if v else None for v in node.inputs])
            env.update(zip(node.outputs, outputs, strict=False))
    if keep:
        return env
    return {name: env[name] for name in graph.outputs}


def infer_shapes(graph: Graph, seed: int = 0) -> None:
    """Fill every node's input and output shapes by running the graph on random inputs."""
    gen = torch.Generator().manual_seed(seed)
    feeds = {v.name: torch.randn(v.shape, generator=gen).to(v.dtype) for v in graph.inputs}
    env = run_graph(graph, feeds, keep=True)
    for node in graph.nodes:
        node.input_shapes = [tuple(env[v].shape) if v else () for v in node.inputs]
        node.output_shapes = [tuple(env[v].shape) for v in node.outputs]
