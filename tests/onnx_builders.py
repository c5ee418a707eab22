"""Small ONNX models built with onnx.helper, for the loader tests."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Dims = Sequence[int | str | None]


def const(name: str, value: Any, dtype: Any = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def ints(name: str, value: Sequence[int]) -> onnx.TensorProto:
    return const(name, value, np.int64)


def model(nodes: list[onnx.NodeProto], inputs: dict[str, Dims], outputs: Sequence[str],
          initializers: Sequence[onnx.TensorProto] = (), opset: int = 17,
          elem: int = TensorProto.FLOAT, outputs_double: Sequence[str] = ()) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(n, elem, list(s)) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, elem, None) for n in outputs]
        + [helper.make_tensor_value_info(n, TensorProto.DOUBLE, None) for n in outputs_double],
        list(initializers))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                          producer_name="lipcheck-tests")
    m.ir_version = min(m.ir_version, 8)
    return m


def one_node(op: str, shape: Dims, inits: Sequence[onnx.TensorProto] = (), opset: int = 17,
             extra_inputs: Sequence[str] = (), outputs: int = 1, **attrs: Any) -> onnx.ModelProto:
    """`op` applied to a graph input x (plus named constant inputs)."""
    names = [f"y{i}" for i in range(outputs)]
    node = helper.make_node(op, ["x", *extra_inputs], names, **attrs)
    return model([node], {"x": shape}, names, inits, opset)


def save(m: onnx.ModelProto, folder: Path, name: str = "model.onnx") -> Path:
    path = folder / name
    onnx.save(m, str(path))
    return path
