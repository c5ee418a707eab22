"""The state of an ONNX -> IR translation: constants, sample values, emitted nodes.

Every value gets a concrete tensor while the graph is walked: constants their real
value, dynamic values the result of running the IR rules on a random sample of the
inputs. That gives every shape (for auto_pad, Reshape -1, Shape folding, ...) and
folds any node whose inputs are all constants.
"""
from __future__ import annotations

from typing import Any

import onnx
import torch

from lipcheck.errors import ShapeError, UnsupportedOpsError
from lipcheck.graph import Node, OpKind
from lipcheck.rules import get_rule


class Builder:
    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.values: dict[str, torch.Tensor] = {}
        self.constant_names: set[str] = set()
        self.nodes: list[Node] = []
        self.warnings: list[tuple[str, str]] = []
        self._names: set[str] = set()
        self.onnx_name = ""  # name of the ONNX node being converted

    # --- values -----------------------------------------------------------------
    def set_constant(self, name: str, value: torch.Tensor) -> None:
        if name:
            self.values[name] = value
            self.constant_names.add(name)

    def is_constant(self, name: str) -> bool:
        return not name or name in self.constant_names

    def const(self, node: onnx.NodeProto, position: int) -> torch.Tensor | None:
        """The constant at an input position (None when absent or empty)."""
        if position >= len(node.input) or not node.input[position]:
            return None
        name = node.input[position]
        if name not in self.constant_names:
            raise UnsupportedOpsError({node.op_type: [self.onnx_name]},
                                      f"input {position} ({name!r}) must be a constant, "
                                      "it depends on the model input")
        return self.values[name]

    def ints(self, node: onnx.NodeProto, position: int) -> list[int] | None:
        t = self.const(node, position)
        return None if t is None else [int(v) for v in t.reshape(-1).tolist()]

    def needed_const(self, node: onnx.NodeProto, position: int) -> torch.Tensor:
        """The constant at an input position the op requires (refused when absent)."""
        t = self.const(node, position)
        if t is None:
            raise UnsupportedOpsError({node.op_type: [self.onnx_name]},
                                      f"required input {position} is missing")
        return t

    def needed_ints(self, node: onnx.NodeProto, position: int) -> list[int]:
        return [int(v) for v in self.needed_const(node, position).reshape(-1).tolist()]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.values[name].shape)

    def all_constant(self, node: onnx.NodeProto) -> bool:
        return all(self.is_constant(v) for v in node.input)

    # --- nodes ------------------------------------------------------------------
    def unique_name(self, base: str) -> str:
        name, k = base, 1
        while name in self._names:
            name, k = f"{base}/{k}", k + 1
        self._names.add(name)
        return name

    def emit(self, op: OpKind, inputs: list[str], outputs: list[str],
             attrs: dict[str, Any] | None = None, source: str = "") -> None:
        """Add an IR node, or fold it into constants when every input is constant."""
        attrs = attrs or {}
        probe = Node(self.onnx_name, op, list(inputs), list(outputs), attrs, source)
        args = [self.values[v] if v else None for v in inputs]
        try:
            with torch.no_grad():
                # An absent optional input is None; only rules with optional inputs read it.
                results = get_rule(op).run(probe, args)  # type: ignore[arg-type]
        except (RuntimeError, ValueError, IndexError, TypeError, KeyError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ShapeError(f"node {self.onnx_name!r} ({source or op.value}) cannot run on "
                             f"shapes {[tuple(a.shape) for a in args if a is not None]}: "
                             f"{reason}") from exc
        if all(self.is_constant(v) for v in inputs):
            for name, value in zip(outputs, results, strict=False):
                self.set_constant(name, value)
            return
        probe.name = self.unique_name(self.onnx_name)
        probe.input_shapes = [tuple(a.shape) if a is not None else () for a in args]
        probe.output_shapes = [tuple(r.shape) for r in results[:len(outputs)]]
        self.values.update(zip(outputs, results, strict=False))
        self.nodes.append(probe)

    def temp(self, base: str) -> str:
        """A fresh value name for an intermediate of a multi-node lowering."""
        return self.unique_name(f"{base}__lipcheck")
