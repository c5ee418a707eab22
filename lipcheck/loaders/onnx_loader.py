"""Load an ONNX file into the graph IR (default domain, opsets 6 to 23)."""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import google.protobuf.message
import onnx
import onnx.external_data_helper
import onnx.numpy_helper
import torch

from lipcheck.errors import (
    BadWeightsError,
    ModelLoadError,
    ShapeError,
    UnsafeFileError,
    UnsupportedOpsError,
)
from lipcheck.finite import count_nan
from lipcheck.graph import Graph, ValueInfo
from lipcheck.limits import check_file_size, check_node_count
from lipcheck.loaders import onnx_attention, onnx_fold, onnx_resize  # noqa: F401  (converters)
from lipcheck.loaders.norm_fuse import fuse_normalisations
from lipcheck.loaders.onnx_build import Builder
from lipcheck.loaders.onnx_fuse import fuse_patterns
from lipcheck.loaders.onnx_ops import CONVERTERS
from lipcheck.numerics import check_finite_constants
from lipcheck.rules.structural import ONNX_DTYPES

MIN_OPSET, MAX_OPSET = 6, 23

DEFAULT_DOMAINS = ("", "ai.onnx")
InputShapes = Sequence[tuple[int, ...]] | dict[str, tuple[int, ...]] | None


def load_onnx(path: str | Path, input_shapes: InputShapes = None, seed: int = 0) -> Graph:
    path = Path(path)
    model = _read_model(path)
    opset = _default_opset(model)
    nodes = list(model.graph.node)
    check_node_count(len(nodes), str(path))
    _check_known_ops(nodes)
    builder = Builder(opset)
    _load_initializers(builder, model.graph)
    inputs = _graph_inputs(model.graph, builder, input_shapes)
    _feed_samples(builder, inputs, seed)
    for index, node in enumerate(nodes):
        _convert(builder, node, index)
    outputs = [o.name for o in model.graph.output]
    constants = {k: builder.values[k] for k in builder.constant_names}
    graph_nodes = fuse_patterns(builder.nodes, constants, outputs)
    graph_nodes = fuse_normalisations(graph_nodes, constants, outputs, _shapes(builder),
                                      _constant_adder(builder, constants))
    graph = Graph(inputs, outputs, graph_nodes, _used_constants(builder, graph_nodes, outputs))
    check_finite_constants(graph)   # +-inf only in added constants (attention masks)
    graph.metadata = {"format": "onnx", "path": str(path), "sha256": _sha256(path),
                      "opset": opset, "input_shape": [list(v.shape) for v in inputs],
                      "producer": model.producer_name, "warnings": builder.warnings}
    return graph


# --- reading the file ---------------------------------------------------------------

def _read_model(path: Path) -> onnx.ModelProto:
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory, not an ONNX file")
    check_file_size(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (google.protobuf.message.DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ModelLoadError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from exc
    if not model.graph.node and not model.graph.output:
        raise ModelLoadError(f"{path}: not an ONNX model (empty graph)")
    _check_text(model, path)
    _load_external_data(model, path.parent)
    return model


def _check_text(model: onnx.ModelProto, path: Path) -> None:
    """protobuf returns bytes for a string field that is not UTF-8 (a corrupt file)."""
    g = model.graph
    texts = [model.producer_name, *(o.domain for o in model.opset_import)]
    texts += [t for n in g.node for t in (n.name, n.op_type, n.domain, *n.input, *n.output,
                                          *(a.name for a in n.attribute))]
    texts += [v.name for v in (*g.input, *g.output, *g.initializer)]
    if any(not isinstance(t, str) for t in texts):
        raise ModelLoadError(f"{path}: not a readable ONNX model (a name is not valid UTF-8)")


def _load_external_data(model: onnx.ModelProto, folder: Path) -> None:
    tensors = [t for t in onnx.external_data_helper._get_all_tensors(model)
               if onnx.external_data_helper.uses_external_data(t)]
    root = folder.resolve()
    for tensor in tensors:
        location = {e.key: e.value for e in tensor.external_data}.get("location", "")
        _check_location(tensor.name, location, root)
    if tensors:
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(folder))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"external data of the model cannot be read: {exc}") from exc


def _check_location(tensor: str, location: str, root: Path) -> None:
    if not location or os.path.isabs(location) or ".." in Path(location).parts:
        raise UnsafeFileError(f"initializer {tensor!r}: external data location {location!r} "
                              "is not a relative path inside the model's folder")
    target = (root / location).resolve()
    if root not in target.parents:
        raise UnsafeFileError(f"initializer {tensor!r}: external data {location!r} resolves "
                              f"outside the model's folder ({target})")
    if not target.is_file():
        raise ModelLoadError(f"initializer {tensor!r}: external data file {target} is missing")


def _default_opset(model: onnx.ModelProto) -> int:
    versions = [o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS]
    opset = versions[0] if versions else 1
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ModelLoadError(f"ONNX opset {opset} is not supported "
                             f"(default domain, {MIN_OPSET} to {MAX_OPSET})")
    return opset


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- ops, constants, inputs -----------------------------------------------------------

def _node_name(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}_{index}"


def _check_known_ops(nodes: list[onnx.NodeProto]) -> None:
    unknown: dict[str, list[str]] = {}
    for index, node in enumerate(nodes):
        default = node.domain in DEFAULT_DOMAINS
        if not default or node.op_type not in CONVERTERS:
            key = node.op_type if default else f"{node.domain}.{node.op_type}"
            unknown.setdefault(key, []).append(_node_name(node, index))
    if unknown:
        raise UnsupportedOpsError(unknown)


def _tensor(proto: onnx.TensorProto, what: str) -> torch.Tensor:
    try:
        array = onnx.numpy_helper.to_array(proto)
    except (ValueError, TypeError) as exc:
        raise ModelLoadError(f"{what} {proto.name!r} cannot be read: {exc}") from exc
    t = torch.from_numpy(array.copy()) if array.dtype.kind != "U" else torch.zeros(0)
    if count_nan(t):
        raise BadWeightsError(f"{what} {proto.name!r} contains NaN values")
    return t


def _load_initializers(b: Builder, graph: onnx.GraphProto) -> None:
    for init in graph.initializer:
        b.set_constant(init.name, _tensor(init, "initializer"))


def _declared_shape(info: onnx.ValueInfoProto) -> list[int | None]:
    dims = info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]


def _graph_inputs(graph: onnx.GraphProto, b: Builder, given: InputShapes) -> list[ValueInfo]:
    infos = [i for i in graph.input if i.name not in b.constant_names]
    if isinstance(given, dict):
        unknown = set(given) - {i.name for i in infos}
        if unknown:
            raise ShapeError(f"--input-shape names unknown input(s) {sorted(unknown)}; "
                             f"the model's inputs are {[i.name for i in infos]}")
    elif given is not None and len(given) != len(infos):
        raise ShapeError(f"{len(given)} input shape(s) given, the model has {len(infos)} inputs")
    result = []
    for k, info in enumerate(infos):
        wanted = given.get(info.name) if isinstance(given, dict) else (given[k] if given else None)
        shape = _input_shape(info, wanted, b)
        dtype = ONNX_DTYPES.get(info.type.tensor_type.elem_type, torch.float32)
        result.append(ValueInfo(info.name, shape, dtype))
    return result


def _input_shape(info: onnx.ValueInfoProto, wanted: tuple[int, ...] | None,
                 b: Builder) -> tuple[int, ...]:
    declared = _declared_shape(info)
    if wanted is not None:
        wanted = tuple(int(s) for s in wanted)
        if len(wanted) != len(declared):
            raise ShapeError(f"input {info.name!r}: shape {list(wanted)} has rank {len(wanted)}, "
                             f"the model declares rank {len(declared)} ({_show(declared)})")
        for axis, (w, d) in enumerate(zip(wanted, declared, strict=True)):
            if d is not None and w != d:
                raise ShapeError(f"input {info.name!r}: dimension {axis} is fixed to {d} "
                                 f"by the model, got {w}")
        return wanted
    if declared and declared[0] is None:
        declared[0] = 1
        b.warnings.append(("dynamic_batch", f"input {info.name!r}: dynamic batch dimension "
                                            "set to 1"))
    fixed = [d for d in declared if d is not None]
    if len(fixed) != len(declared):
        raise ShapeError(f"input {info.name!r} has dynamic dimensions ({_show(declared)}); "
                         "pass --input-shape to fix them")
    return tuple(fixed)


def _show(dims: list[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _feed_samples(b: Builder, inputs: list[ValueInfo], seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for info in inputs:
        sample = torch.randn(info.shape, generator=gen)
        b.values[info.name] = sample.to(info.dtype) if info.dtype.is_floating_point \
            else torch.zeros(info.shape, dtype=info.dtype)


# --- the walk -------------------------------------------------------------------------

def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr in node.attribute:
        value = onnx.helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif isinstance(value, onnx.TensorProto):
            value = _tensor(value, f"attribute {attr.name} of node")
        elif isinstance(value, list):
            value = [v.decode() if isinstance(v, bytes) else v for v in value]
        out[attr.name] = value
    return out


def _convert(b: Builder, node: onnx.NodeProto, index: int) -> None:
    b.onnx_name = _node_name(node, index)
    missing = [v for v in node.input if v and v not in b.values]
    if missing:
        raise ModelLoadError(f"node {b.onnx_name!r} ({node.op_type}) reads undefined value(s) "
                             f"{missing}")
    CONVERTERS[node.op_type](b, node, _attributes(node))


def _shapes(b: Builder) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in b.values.items() if isinstance(v, torch.Tensor)}


def _constant_adder(b: Builder, constants: dict[str, torch.Tensor]):
    def add(hint: str, value: torch.Tensor) -> str:
        name = b.temp(hint)
        b.set_constant(name, value)
        constants[name] = value
        return name
    return add


def _used_constants(b: Builder, nodes: list, outputs: list[str]) -> dict[str, torch.Tensor]:
    used = {v for n in nodes for v in n.inputs if v} | set(outputs)
    return {k: b.values[k] for k in b.constant_names if k in used}


def op_histogram(graph: Graph) -> Counter:
    return Counter(n.op.value for n in graph.nodes)


__all__ = ["load_onnx", "op_histogram"]
