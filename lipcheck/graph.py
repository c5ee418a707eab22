"""The graph IR that every loader lowers to and every estimator reads.

A `Graph` is a topologically ordered list of `Node`s over named values. A value is
either *dynamic* (depends on a graph input) or a *constant* (a weight, a folded
shape, ...). Constants live in `Graph.constants`; a node refers to both kinds by
name, positionally, in the order of the ONNX operator it mirrors (op kinds and
their attributes follow ONNX semantics, opset 13+ conventions, with settings that
moved between attributes and inputs normalised to attributes by the loaders).

Attribute conventions (the contract between loaders and rules):
- Attribute names are ONNX's. Settings that some opset passes as *constant inputs*
  are moved into attributes of the same name as the ONNX input: Squeeze/Unsqueeze
  and Reduce* `axes`; Slice `starts`, `ends`, `axes`, `steps`; Pad `pads`, `mode`,
  `value` (the constant); Clip `min`, `max` (absent = unbounded); Split `axis`,
  `split` (sizes); Reshape `shape` (the concrete output shape, no 0 or -1);
  Expand `shape`; Tile `repeats`; Resize `mode`, `sizes` (concrete output sizes),
  `scales` (optional: ONNX uses the scale, not out/in, in its coordinate formula),
  `coordinate_transformation_mode`, `nearest_mode`. Weights (Conv W/B, Gemm B/C,
  BatchNormalization's four tensors, PRelu slope, Gather indices, constant operands
  of Add/Mul/...) stay inputs that name constants.
- Conv/ConvTranspose/pooling: auto_pad resolved to explicit `pads`
  [begin_1..begin_d, end_1..end_d]; `strides`, `dilations`, `kernel_shape`,
  `group`, `output_padding` as in ONNX.
- Normalisations: LayerNormalization and RMSNormalization take `axis` (first normalised
  dim) and `epsilon`, and always a Scale input (constant ones when the source has none);
  GroupNormalization takes `num_groups`, `epsilon` and per-channel scale and bias (opset 21
  semantics: the loader repeats opset 18's per-group values over each group's channels).
- Attention has no op of its own: loaders lower it to MatMul / Mul / Add (mask) / Softmax.
- Every node's `source_op` records what the loader saw (e.g. "Gemm", "aten.linear").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from lipcheck.errors import GraphError

Shape = tuple[int, ...]


class OpKind(str, Enum):
    """The closed set of operators the IR knows. Values are ONNX op type names."""

    # affine
    GEMM = "Gemm"
    MATMUL = "MatMul"
    CONV = "Conv"
    CONV_TRANSPOSE = "ConvTranspose"
    BATCH_NORM = "BatchNormalization"
    # activations (elementwise)
    RELU = "Relu"
    LEAKY_RELU = "LeakyRelu"
    PRELU = "PRelu"
    ELU = "Elu"
    SELU = "Selu"
    CELU = "Celu"
    SIGMOID = "Sigmoid"
    HARD_SIGMOID = "HardSigmoid"
    TANH = "Tanh"
    SOFTPLUS = "Softplus"
    SOFTSIGN = "Softsign"
    GELU = "Gelu"
    ERF = "Erf"
    SILU = "Silu"
    HARD_SWISH = "HardSwish"
    MISH = "Mish"
    CLIP = "Clip"
    ABS = "Abs"
    NEG = "Neg"
    # pooling
    MAX_POOL = "MaxPool"
    AVERAGE_POOL = "AveragePool"
    GLOBAL_AVERAGE_POOL = "GlobalAveragePool"
    GLOBAL_MAX_POOL = "GlobalMaxPool"
    LP_POOL = "LpPool"
    # structural
    FLATTEN = "Flatten"
    RESHAPE = "Reshape"
    TRANSPOSE = "Transpose"
    SQUEEZE = "Squeeze"
    UNSQUEEZE = "Unsqueeze"
    IDENTITY = "Identity"
    DROPOUT = "Dropout"
    PAD = "Pad"
    RESIZE = "Resize"
    CONCAT = "Concat"
    SPLIT = "Split"
    SLICE = "Slice"
    GATHER = "Gather"
    EXPAND = "Expand"
    TILE = "Tile"
    DEPTH_TO_SPACE = "DepthToSpace"
    SPACE_TO_DEPTH = "SpaceToDepth"
    CAST = "Cast"
    # arithmetic and reductions
    ADD = "Add"
    SUB = "Sub"
    MUL = "Mul"
    DIV = "Div"
    SUM = "Sum"
    MEAN = "Mean"
    MAX = "Max"
    MIN = "Min"
    SOFTMAX = "Softmax"
    LOG_SOFTMAX = "LogSoftmax"
    REDUCE_MEAN = "ReduceMean"
    REDUCE_SUM = "ReduceSum"
    REDUCE_MAX = "ReduceMax"
    REDUCE_MIN = "ReduceMin"
    # not globally Lipschitz: run, but bound is infinite
    EXP = "Exp"
    LOG = "Log"
    POW = "Pow"
    SQRT = "Sqrt"
    RECIPROCAL = "Reciprocal"
    REDUCE_L2 = "ReduceL2"
    # normalisation by statistics of the input (Lipschitz when epsilon / bias > 0)
    LAYER_NORM = "LayerNormalization"
    INSTANCE_NORM = "InstanceNormalization"
    GROUP_NORM = "GroupNormalization"
    RMS_NORM = "RMSNormalization"
    LRN = "LRN"


@dataclass
class ValueInfo:
    name: str
    shape: Shape
    dtype: torch.dtype = torch.float32


@dataclass
class Node:
    """One operator application. `inputs` may name dynamic values or constants."""

    name: str
    op: OpKind
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    source_op: str = ""
    input_shapes: list[Shape] = field(default_factory=list)
    output_shapes: list[Shape] = field(default_factory=list)


@dataclass
class Graph:
    inputs: list[ValueInfo]
    outputs: list[str]
    nodes: list[Node]
    constants: dict[str, torch.Tensor] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def is_constant(self, value: str) -> bool:
        return value in self.constants

    def dynamic_inputs(self, node: Node) -> list[int]:
        """Positions of the node's inputs that depend on a graph input."""
        return [i for i, v in enumerate(node.inputs) if v and v not in self.constants]

    def constant(self, node: Node, position: int) -> torch.Tensor | None:
        if position >= len(node.inputs) or not node.inputs[position]:
            return None
        return self.constants.get(node.inputs[position])

    def producers(self) -> dict[str, Node]:
        return {out: n for n in self.nodes for out in n.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        result: dict[str, list[Node]] = {}
        for n in self.nodes:
            for v in n.inputs:
                result.setdefault(v, []).append(n)
        return result

    def validate(self) -> None:
        """Topological order, unique names, every input defined before use."""
        defined = {v.name for v in self.inputs} | set(self.constants)
        seen_nodes: set[str] = set()
        for node in self.nodes:
            if not isinstance(node.op, OpKind):
                raise GraphError(f"node {node.name!r} has op {node.op!r}, not an OpKind")
            if node.name in seen_nodes:
                raise GraphError(f"duplicate node name {node.name!r}")
            seen_nodes.add(node.name)
            for v in node.inputs:
                if v and v not in defined:
                    raise GraphError(f"node {node.name!r} reads {v!r} before it is defined")
            for v in node.outputs:
                if v in defined:
                    raise GraphError(f"value {v!r} is defined twice (node {node.name!r})")
                defined.add(v)
        for v in self.outputs:
            if v not in defined:
                raise GraphError(f"graph output {v!r} is never defined")

    def metadata_for_report(self) -> dict[str, Any]:
        keys = ("path", "sha256", "format", "opset", "producer")
        out: dict[str, Any] = {k: self.metadata.get(k) for k in keys}
        out["input_shape"] = [list(v.shape) for v in self.inputs]
        out["inputs"] = [v.name for v in self.inputs]
        out["outputs"] = list(self.outputs)
        out["nodes"] = len(self.nodes)
        out["parameters"] = self.parameter_count()
        return out

    def parameter_count(self) -> int:
        return sum(int(t.numel()) for t in self.constants.values() if t.is_floating_point())
