"""The ATen converter registry: the table from an overload's name to its converter.

The op files (`aten_ops`, `aten_norm_ops`, `aten_pool_ops`, `aten_shape_ops`,
`aten_attention_ops`) register into `TABLE` with `@converts`; `aten_table` imports them all.
Dependencies go one way: torch_lowering <- aten_registry <- op files <- aten_table.
The table maps an overload's name (as `str(torch.ops.aten.x.y)` prints it, "aten.x.y").
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.fx as fx

from lipcheck.loaders.torch_lowering import Converter, Unsupported

TABLE: dict[str, Converter] = {}
C = TypeVar("C", bound=Converter)


def converts(*names: str) -> Callable[[C], C]:
    """Register the decorated converter under each name (the function keeps its type)."""
    def decorate(fn: C) -> C:
        for name in names:
            if name in TABLE:
                raise ValueError(f"a converter for {name} is already registered")
            TABLE[name] = fn
        return fn
    return decorate


def args(node: fx.Node) -> dict[str, Any]:
    """The node's arguments by schema name, defaults filled in."""
    target = node.target
    if not isinstance(target, torch._ops.OpOverload):
        raise Unsupported(f"{target!r} is not an ATen overload")
    schema = target._schema
    out: dict[str, Any] = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args) and not arg.kwarg_only:
            out[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            out[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            out[arg.name] = arg.default_value
    return out


def ints(value: Any, dims: int) -> list[int]:
    """An int or a list of ints (torch allows either) as a list of `dims` ints."""
    if isinstance(value, (list, tuple)):
        values = [int(v) for v in value]
        return values * dims if len(values) == 1 else values
    return [int(value)] * dims
