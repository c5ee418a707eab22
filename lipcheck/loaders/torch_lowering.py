"""Lower a torch.export ExportedProgram to the graph IR.

The walker visits the FX graph in order. Placeholders become graph inputs or
constants (parameters, buffers, lifted tensors). A call whose inputs are all constants
is folded: torch runs it and the result becomes a constant (e.g. the `permute` of a
weight in core ATen). Every other call goes through the converter table (`aten_table`);
the ops it lacks are collected and reported at once.

Constants are detached copies of the model's parameters and buffers (a snapshot: later
changes to the model do not reach the graph), or with share_weights=True views of the
same storage, so a large model is held once, not twice (VGG-11: 0.53 GB). Sharing is
for a graph that does not outlive the model's owner (`api.estimate`), or whose program
nobody else holds (files). Nothing in lipcheck writes to a graph constant in place.
"""
from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx

from lipcheck.errors import BadWeightsError, UnsupportedOpsError
from lipcheck.finite import count_nan, count_nonfinite
from lipcheck.graph import Graph, Node, OpKind, Shape, ValueInfo

# One output, or several (None where an output has no IR form, e.g. a dropout mask).
Value = str | list[str] | list[str | None]

# Ops with no effect on values (runtime assertions and the like).
NO_OPS = {"aten._assert_tensor_metadata.default", "aten._assert_async.msg",
          "aten._assert_scalar.default", "aten.sym_constrain_range_for_size.default"}


class Unsupported(Exception):
    """Raised by a converter: the op (or this use of it) has no IR form."""


class Lowering:
    """The state of one lowering: values, constants, emitted nodes."""

    def __init__(self, ep: torch.export.ExportedProgram,
                 constant_names: dict[str, str] | None = None,
                 share_weights: bool = False) -> None:
        self.ep = ep
        self.share_weights = share_weights  # constants view the program's tensors, no copy
        self.constant_names = constant_names or {}  # lifted constant target -> nicer name
        self.env: dict[str, Value] = {}
        self.constants: dict[str, torch.Tensor] = {}
        self.nodes: list[Node] = []
        self.inputs: list[ValueInfo] = []
        self.dynamic: set[str] = set()
        self.current: fx.Node | None = None
        self._names = _node_names(ep.graph, self._dynamic_calls(ep.graph))
        self._node_names: set[str] = set()
        self._values: set[str] = {n.name for n in ep.graph.nodes}  # FX names are reserved
        self.failed: set[str] = set()
        self.warnings: list[tuple[str, str]] = []  # (code, message) for the report
        self.lookups: dict[str, tuple[str, torch.Tensor]] = {}  # input -> (ids input, table)

    # ----- values ---------------------------------------------------------------
    def value(self, arg: Any) -> str:
        """The IR value an FX argument names (a Python number becomes a constant)."""
        if isinstance(arg, fx.Node):
            bound = self.env[arg.name]
            if not isinstance(bound, str):
                raise Unsupported(f"{arg.name!r} is a tuple, not a tensor")
            return bound
        if isinstance(arg, (int, float, bool)):
            return self.add_const(torch.tensor(float(arg)), "scalar")
        if isinstance(arg, torch.Tensor):
            return self.add_const(arg.detach().clone(), "tensor")
        raise Unsupported(f"argument {arg!r} is not a tensor")

    def is_const(self, name: str) -> bool:
        return name in self.constants

    def tensor(self, arg: Any) -> torch.Tensor | None:
        """The constant an argument names, or None when it depends on the input."""
        name = self.value(arg)
        return self.constants.get(name)

    def add_const(self, tensor: torch.Tensor, hint: str) -> str:
        name = self._fresh_value(hint)
        self.constants[name] = tensor
        return name

    # ----- nodes ----------------------------------------------------------------
    def emit(self, op: OpKind, inputs: list[str], attrs: dict[str, Any] | None = None,
             suffix: str = "") -> str:
        """Append a one-output IR node for the current FX node; returns its output value."""
        return self._append(op, inputs, attrs, None, suffix)[0]

    def emit_many(self, op: OpKind, inputs: list[str], attrs: dict[str, Any] | None,
                  outputs: int, suffix: str = "") -> list[str]:
        """Append an IR node with `outputs` outputs (a list even when there is one)."""
        return self._append(op, inputs, attrs, outputs, suffix)

    def _append(self, op: OpKind, inputs: list[str], attrs: dict[str, Any] | None,
                outputs: int | None, suffix: str) -> list[str]:
        fx_node = self.current
        if fx_node is None:
            raise RuntimeError("emit() outside a converter: no current FX node")
        base = self._names.get(fx_node.name, fx_node.name) + suffix
        name = self._unique_node(base)
        stem = fx_node.name + suffix
        if outputs is None and not suffix:
            outs = [fx_node.name]  # reserved for this node
        elif outputs is None:
            outs = [self._fresh_value(stem)]
        else:
            outs = [self._fresh_value(f"{stem}:{i}") for i in range(outputs)]
        self.nodes.append(Node(name, op, list(inputs), outs, dict(attrs or {}),
                               source_op=_op_name(fx_node.target)))
        return outs

    def _unique_node(self, base: str) -> str:
        name = _fresh(base, self._node_names)
        self._node_names.add(name)
        return name

    def _fresh_value(self, base: str) -> str:
        name = _fresh(base, self._values)
        self._values.add(name)
        return name

    # ----- shapes -----------------------------------------------------------------
    @staticmethod
    def shape(arg: Any, index: int | None = None) -> Shape:
        """The shape torch recorded for an FX node's value (output `index` of a tuple)."""
        val = as_node(arg).meta.get("val")
        if index is not None and val is not None:
            val = val[index]
        if not isinstance(val, torch.Tensor):
            raise Unsupported(f"{arg.name!r} has no recorded tensor shape")
        return tuple(int(d) for d in val.shape)

    def _dynamic_calls(self, graph: fx.Graph) -> set[str]:
        user_inputs = set(self.ep.graph_signature.user_inputs)
        dynamic: set[str] = set()
        for node in graph.nodes:
            if node.op == "placeholder" and node.name in user_inputs:
                dynamic.add(node.name)
            elif node.op == "call_function" and any(
                    n.name in dynamic for n in node.all_input_nodes):
                dynamic.add(node.name)
        return dynamic


def as_node(arg: Any) -> fx.Node:
    """An FX argument that must be a node (a tensor value), else Unsupported."""
    if not isinstance(arg, fx.Node):
        raise Unsupported(f"argument {arg!r} is not a tensor")
    return arg


def as_int(arg: Any) -> int:
    """An FX argument that must be an integer (an int or a SymInt), else Unsupported."""
    if not isinstance(arg, (int, torch.SymInt)):
        raise Unsupported(f"argument {arg!r} is not an integer")
    return int(arg)


def as_ints(arg: Any) -> list[int]:
    """An FX argument that must be a list or tuple of integers, else Unsupported."""
    if not isinstance(arg, (list, tuple)):
        raise Unsupported(f"argument {arg!r} is not a list of integers")
    return [as_int(a) for a in arg]


def _fresh(base: str, taken: set[str]) -> str:
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}#{k}"
    return name


def _op_name(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    return getattr(target, "__name__", str(target))


def _module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    return str(list(stack.values())[-1][0])


def _node_names(graph: fx.Graph, dynamic: set[str]) -> dict[str, str]:
    """IR node names: the module path when one op runs in that module, else path/op."""
    calls = [n for n in graph.nodes if n.op == "call_function" and n.name in dynamic
             and n.target is not operator.getitem]
    counts: dict[str, int] = {}
    for n in calls:
        path = _module_path(n)
        counts[path] = counts.get(path, 0) + 1
    names = {}
    for n in calls:
        path = _module_path(n)
        names[n.name] = n.name if not path else (path if counts[path] == 1 else f"{path}/{n.name}")
    return names


# ----- placeholders and folding ---------------------------------------------------
def _placeholder_tensor(ep: torch.export.ExportedProgram, node: fx.Node) -> tuple[str, Any]:
    sig = ep.graph_signature
    for table, store in ((sig.inputs_to_parameters, ep.state_dict),
                         (sig.inputs_to_buffers, None),
                         (sig.inputs_to_lifted_tensor_constants, ep.constants)):
        if node.name in table:
            target = table[node.name]
            source = store if store is not None else (
                ep.state_dict if target in ep.state_dict else ep.constants)
            return target, source[target]
    raise Unsupported(f"placeholder {node.name!r} is neither an input nor a weight")


def _check_finite(name: str, tensor: torch.Tensor, allow_inf: bool = False) -> None:
    """NaN is refused everywhere, +-inf in parameters (buffers such as additive attention
    masks hold -inf on purpose)."""
    bad = count_nan(tensor) if allow_inf else count_nonfinite(tensor)
    if bad:
        raise BadWeightsError(f"weight {name!r} has {bad} NaN/Inf value(s)")


def _lower_placeholder(low: Lowering, node: fx.Node) -> None:
    if node.name in set(low.ep.graph_signature.user_inputs):
        val = node.meta["val"]
        low.inputs.append(ValueInfo(node.name, Lowering.shape(node), val.dtype))
        low.env[node.name] = node.name
        return
    target, tensor = _placeholder_tensor(low.ep, node)
    if not isinstance(tensor, torch.Tensor):
        raise Unsupported(f"{target!r} is a {type(tensor).__name__}, not a tensor")
    tensor = tensor.detach() if low.share_weights else tensor.detach().clone()
    _check_finite(target, tensor, node.name not in low.ep.graph_signature.inputs_to_parameters)
    low.env[node.name] = low.add_const(tensor, low.constant_names.get(target, target))


def _materialise(low: Lowering, arg: Any) -> Any:
    if isinstance(arg, fx.Node):
        bound = low.env[arg.name]
        if isinstance(bound, list):
            return [low.constants.get(b) if b else None for b in bound]
        return low.constants[bound]
    if isinstance(arg, (list, tuple)):
        return type(arg)(_materialise(low, a) for a in arg)
    return arg


def _fold(low: Lowering, node: fx.Node) -> None:
    """Evaluate a call whose inputs are all constants; its outputs become constants."""
    args = _materialise(low, node.args)
    kwargs = {k: _materialise(low, v) for k, v in node.kwargs.items()}
    if not callable(node.target):
        raise Unsupported(f"call target {node.target!r} is not callable")
    with torch.no_grad():
        result = node.target(*args, **kwargs)
    if isinstance(result, torch.Tensor):
        low.constants[node.name] = result.detach()  # the FX name is reserved for it
        low.env[node.name] = node.name
    elif isinstance(result, (list, tuple)):
        low.env[node.name] = [low.add_const(r.detach(), f"{node.name}:{i}")
                              if isinstance(r, torch.Tensor) else None
                              for i, r in enumerate(result)]
    else:
        raise Unsupported(f"folding gave a {type(result).__name__}")


def _lower_getitem(low: Lowering, node: fx.Node) -> None:
    parent, index = as_node(node.args[0]), as_int(node.args[1])
    if parent.name in low.failed:
        low.env[node.name] = node.name
        low.failed.add(node.name)
        return
    bound = low.env[parent.name]
    item = bound[index] if isinstance(bound, list) else None
    if item is None:
        raise Unsupported(f"output {index} of {parent.name!r} has no IR form")
    low.env[node.name] = item


# ----- the walk -------------------------------------------------------------------
Converter = Callable[[Lowering, fx.Node], Value]


def lower_program(ep: torch.export.ExportedProgram, table: dict[str, Converter],
                  metadata: dict[str, Any], constant_names: dict[str, str] | None = None,
                  fusions: dict[str, Any] | None = None, share_weights: bool = False) -> Graph:
    """`fusions` (from aten_fusions.find_fusions) maps an FX node to the one IR op that
    replaces it and the nodes it covers; `share_weights`: see the module docstring."""
    low = Lowering(ep, constant_names, share_weights)
    unsupported: dict[str, list[str]] = {}
    fusions = fusions or {}
    covered = {name for f in fusions.values() for name in f.covered}
    for node in ep.graph.nodes:
        try:
            if node.name in fusions:
                low.current = node
                fusion = fusions[node.name]
                low.env[node.name] = low.emit(fusion.op, [low.value(fusion.input)], fusion.attrs)
            elif node.name not in covered:
                _lower_node(low, node, table)
        except Unsupported as exc:
            low.env[node.name] = node.name  # stands for the missing value: keep walking
            low.failed.add(node.name)
            key = _op_name(node.target) if node.op == "call_function" else node.op
            detail = f"{node.name}: {exc}" if str(exc) else node.name
            unsupported.setdefault(key, []).append(detail)
    if unsupported:
        raise UnsupportedOpsError(unsupported)
    outputs = [_output_value(low, name) for name in ep.graph_signature.user_outputs]
    used = _used_constants(low, outputs)
    graph = Graph(low.inputs, outputs, low.nodes, used, dict(metadata))
    if low.warnings:
        graph.metadata["warnings"] = list(graph.metadata.get("warnings", [])) + low.warnings
    if low.lookups:
        graph.metadata["lookups"] = dict(low.lookups)
    graph.metadata.setdefault("input_shape", [list(v.shape) for v in low.inputs])
    return graph


def _lower_node(low: Lowering, node: fx.Node, table: dict[str, Converter]) -> None:
    if node.op == "placeholder":
        _lower_placeholder(low, node)
    elif node.op == "output":
        return
    elif node.op != "call_function":
        raise Unsupported(f"FX node kind {node.op!r}")
    elif node.target is operator.getitem:
        _lower_getitem(low, node)
    elif _op_name(node.target) in NO_OPS:
        return
    elif not any(n.name in low.env and _is_dynamic(low, n) for n in node.all_input_nodes):
        _fold(low, node)
    else:
        converter = table.get(_op_name(node.target))
        if converter is None:
            raise Unsupported("")
        low.current = node
        low.env[node.name] = converter(low, node)


def _is_dynamic(low: Lowering, node: fx.Node) -> bool:
    bound = low.env[node.name]
    names = bound if isinstance(bound, list) else [bound]
    return any(b is not None and b not in low.constants for b in names)


def _output_value(low: Lowering, name: str) -> str:
    bound = low.env.get(name)
    if not isinstance(bound, str):
        raise Unsupported(f"graph output {name!r} is not a tensor")
    return bound


def _used_constants(low: Lowering, outputs: list[str]) -> dict[str, torch.Tensor]:
    """Only the constants some node (or output) reads: folded intermediates are dropped."""
    read = {v for n in low.nodes for v in n.inputs} | set(outputs)
    return {k: v for k, v in low.constants.items() if k in read}

