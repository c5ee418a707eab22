"""PyTorch front end: nn.Module, .pt2, TorchScript, state_dict (+ --arch) -> Graph.

Everything goes through torch.export: the module (or a wrapper that calls a
TorchScript module) is exported at fixed input shapes and its FX graph is lowered by
`torch_lowering` with the converter table of `aten_table`. When the exported graph has
an op the table lacks, the loader retries on the core-ATen decomposition
(`run_decompositions()`), which breaks composite ops into simpler ones.

Trust: `.pt2` files (torch.export.load) and TorchScript archives (torch.jit.load)
are loaded by torch's own deserialisers; pickled full modules are refused unless the
caller passes unsafe_pickle=True, since unpickling runs arbitrary code.

Memory: the graph's constants copy the weights of a caller's module (a snapshot) unless
share_weights=True; programs and modules the loader itself made from a file are shared,
never copied (torch_lowering's docstring).
"""
from __future__ import annotations

import hashlib
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from lipcheck.errors import (
    GraphError,
    LipcheckError,
    ModelLoadError,
    ShapeError,
    UnsafeFileError,
    UnsupportedOpsError,
    UserError,
)
from lipcheck.graph import Graph
from lipcheck.interpreter import infer_shapes, run_graph
from lipcheck.loaders.arch import build_arch
from lipcheck.loaders.aten_fusions import find_fusions
from lipcheck.loaders.aten_table import TABLE
from lipcheck.loaders.norm_fuse import fuse_normalisations
from lipcheck.loaders.torch_lowering import lower_program

Shapes = list[tuple[int, ...]]
CHECK_RTOL, CHECK_ATOL = 1e-4, 1e-5  # lowered graph vs torch, relative to the output scale


# ----- exported programs ------------------------------------------------------------------
def lower_exported(ep: torch.export.ExportedProgram, metadata: dict[str, Any],
                   seed: int = 0, constant_names: dict[str, str] | None = None,
                   share_weights: bool = False) -> Graph:
    """Lower an ExportedProgram, retrying on its core-ATen form for unknown ops."""
    metadata = {"opset": None, "warnings": [], **metadata}
    try:
        graph = lower_program(ep, TABLE, metadata, constant_names, find_fusions(ep.graph),
                              share_weights)
    except UnsupportedOpsError as first:
        graph = _lower_decomposed(ep, metadata, first, constant_names, share_weights)
    infer_shapes(graph, seed)
    graph = _fuse_normalisations(graph, seed)
    _check_outputs(graph, ep, seed)
    return graph


def _fuse_normalisations(graph: Graph, seed: int) -> Graph:
    """Written-out Layer/RMS norms (user code, core-ATen rms_norm) as one node each."""
    shapes = {v.name: tuple(v.shape) for v in graph.inputs}
    shapes.update({o: tuple(s) for n in graph.nodes
                   for o, s in zip(n.outputs, n.output_shapes, strict=False)})
    constants = dict(graph.constants)

    def add(hint: str, value: torch.Tensor) -> str:
        name, k = hint, 1
        while name in constants or name in shapes:
            name, k = f"{hint}#{k}", k + 1
        constants[name] = value
        return name

    nodes = fuse_normalisations(graph.nodes, constants, graph.outputs, shapes, add)
    if len(nodes) == len(graph.nodes):
        return graph
    read = {v for n in nodes for v in n.inputs}
    fused = Graph(graph.inputs, graph.outputs, nodes,
                  {k: v for k, v in constants.items() if k in read}, graph.metadata)
    infer_shapes(fused, seed)
    return fused


def _lower_decomposed(ep: torch.export.ExportedProgram, metadata: dict[str, Any],
                      first: UnsupportedOpsError, constant_names: dict[str, str] | None,
                      share_weights: bool) -> Graph:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            decomposed = ep.run_decompositions()
    except Exception:  # noqa: BLE001 - the decomposition is only a second chance
        raise first from None
    try:
        return lower_program(decomposed, TABLE, metadata, constant_names,
                             find_fusions(decomposed.graph), share_weights)
    except UnsupportedOpsError:
        raise first from None


def _example_inputs(shapes: Shapes, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(tuple(s), generator=gen).to(dtype) for s in shapes)


def _check_outputs(graph: Graph, ep: torch.export.ExportedProgram, seed: int) -> None:
    """The lowered graph must reproduce the exported program on a random input."""
    feeds, graph_feeds = _check_feeds(graph, ep, seed + 1)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = ep.module()(*feeds)
        got = run_graph(graph, graph_feeds)
    expected = list(expected) if isinstance(expected, (tuple, list)) else [expected]
    if len(expected) != len(graph.outputs):
        raise GraphError(f"the lowered graph has {len(graph.outputs)} output(s), the model "
                         f"returns {len(expected)}: a converter bug, please report it")
    for name, want in zip(graph.outputs, expected, strict=True):
        have = got[name]
        scale = float(want.abs().max()) if want.numel() else 0.0
        if have.shape != want.shape or not torch.allclose(
                have, want, rtol=CHECK_RTOL, atol=CHECK_ATOL * max(scale, 1.0)):
            diff = float((have - want).abs().max()) if have.shape == want.shape else float("nan")
            raise GraphError(f"the lowered graph does not reproduce output {name!r} of the model "
                             f"(max difference {diff:.3g}): a converter bug, please report it")


def _check_feeds(graph: Graph, ep: torch.export.ExportedProgram,
                 seed: int) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """Random inputs for the program and the same ones for the graph; token ids (inputs
    of an embedding lookup) are drawn from the table and the graph gets the looked-up rows."""
    lookups = graph.metadata.get("lookups", {})
    tables = {ids: table for ids, table in lookups.values()}
    gen = torch.Generator().manual_seed(seed)
    user = set(ep.graph_signature.user_inputs)
    feeds: dict[str, torch.Tensor] = {}
    for node in ep.graph.nodes:
        if node.op == "placeholder" and node.name in user:
            val = node.meta["val"]
            if node.name in tables:
                feeds[node.name] = torch.randint(0, tables[node.name].shape[0], tuple(val.shape),
                                                 generator=gen, dtype=val.dtype)
            else:
                feeds[node.name] = torch.randn(tuple(val.shape), generator=gen).to(val.dtype)
    graph_feeds = {v.name: feeds[v.name] if v.name not in lookups
                   else lookups[v.name][1][feeds[lookups[v.name][0]]] for v in graph.inputs}
    return list(feeds.values()), graph_feeds


# ----- in-memory modules ----------------------------------------------------------------
def load_module(model: torch.nn.Module, input_shapes: Shapes, seed: int = 0,
                metadata: dict[str, Any] | None = None, share_weights: bool = False) -> Graph:
    """Export an nn.Module in eval mode at the given input shapes and lower it.

    The module's train/eval flags are restored afterwards; nothing else is touched.
    share_weights=True: the graph's constants are the module's own tensors (no copy),
    for a graph used while the module stays as it is."""
    if not input_shapes:
        raise ShapeError("an nn.Module needs input shapes, e.g. [(1, 3, 32, 32)]")
    _check_shapes(input_shapes)
    inputs = _example_inputs(input_shapes, _float_dtype(model), seed)
    with _eval_mode(model):
        ep = _export(model, inputs)
    base = {"format": "module", "path": None, "sha256": None}
    return lower_exported(ep, {**base, **(metadata or {})}, seed, share_weights=share_weights)


def _check_shapes(shapes: Shapes) -> None:
    for shape in shapes:
        if not shape or any(not isinstance(d, int) or d < 1 for d in shape):
            raise ShapeError(f"input shape {tuple(shape)} must be a list of positive integers")


def _float_dtype(model: torch.nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


class _eval_mode:
    """Puts every submodule in eval mode and restores each one's flag on exit."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.flags = [(m, m.training) for m in model.modules()]

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        for module, flag in self.flags:
            module.training = flag


def _export(model: torch.nn.Module,
            inputs: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(model, inputs)
    except LipcheckError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds here
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"torch.export could not trace the model: {first}") from exc


# ----- files ----------------------------------------------------------------------------
def file_metadata(path: Path, fmt: str) -> dict[str, Any]:
    return {"format": fmt, "path": str(path), "sha256": sha256(path)}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_pt2(path: str | Path, input_shapes: Shapes | None = None, seed: int = 0) -> Graph:
    """A torch.export archive (.pt2).

    Trusted input: torch.export.load deserialises the program with torch's own format,
    but an archive can name custom ops and reference code; load only files you trust."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ep = torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{path}: not a readable torch.export archive: "
                             f"{_first_line(exc)}") from exc
    ep = _fix_shapes(ep, path, input_shapes)
    return lower_exported(ep, file_metadata(path, "pt2"), seed, share_weights=True)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _placeholder_shapes(ep: torch.export.ExportedProgram) -> list[tuple[Any, ...]]:
    user = set(ep.graph_signature.user_inputs)
    return [tuple(n.meta["val"].shape) for n in ep.graph.nodes
            if n.op == "placeholder" and n.name in user]


def _fix_shapes(ep: torch.export.ExportedProgram, path: Path,
                input_shapes: Shapes | None) -> torch.export.ExportedProgram:
    """Static archives keep their shapes; dynamic ones are re-exported at input_shapes."""
    shapes = _placeholder_shapes(ep)
    static = all(isinstance(d, int) for s in shapes for d in s)
    if static:
        if input_shapes and [tuple(s) for s in input_shapes] != shapes:
            raise ShapeError(f"{path.name} was exported for input shape(s) {shapes}; "
                             f"got {[tuple(s) for s in input_shapes]}")
        return ep
    if not input_shapes:
        raise ShapeError(f"{path.name} has dynamic input dimensions {[str(s) for s in shapes]}: "
                         "give concrete ones with --input-shape")
    _check_shapes(input_shapes)
    dtype = next(n.meta["val"].dtype for n in ep.graph.nodes if n.op == "placeholder"
                 and n.name in set(ep.graph_signature.user_inputs))
    return _export(ep.module(), _example_inputs(input_shapes, dtype, 0))


class _CallScript(torch.nn.Module):
    """Calls a TorchScript module without registering it, so torch.export lifts its
    weights as constants instead of refusing its non-Parameter state."""

    def __init__(self, script: torch.nn.Module) -> None:
        super().__init__()
        self._script = [script]

    def forward(self, *inputs: torch.Tensor) -> Any:
        return self._script[0](*inputs)


def load_torchscript(path: str | Path, input_shapes: Shapes | None, seed: int = 0) -> Graph:
    """A TorchScript archive (torch.jit.save), exported through a calling wrapper."""
    path = Path(path)
    if not input_shapes:
        raise ShapeError(f"{path.name} is a TorchScript archive: give its input shape "
                         "with --input-shape")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit is deprecated in recent torch
            script = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{path}: not a readable TorchScript archive: "
                             f"{_first_line(exc)}") from exc
    script.eval()
    for param in script.parameters():
        param.requires_grad_(False)
    _check_shapes(input_shapes)
    dtype = _float_dtype(script)
    ep = _export(_CallScript(script), _example_inputs(input_shapes, dtype, seed))
    return lower_exported(ep, file_metadata(path, "torchscript"), seed, _script_names(script, ep),
                          share_weights=True)


def _script_names(script: torch.nn.Module, ep: torch.export.ExportedProgram) -> dict[str, str]:
    """The TorchScript module's own names for the constants export lifted from it."""
    by_storage = {t.data_ptr(): name for name, t in
                  [*script.named_parameters(), *script.named_buffers()]}
    return {target: by_storage[t.data_ptr()] for target, t in ep.constants.items()
            if isinstance(t, torch.Tensor) and t.data_ptr() in by_storage}


# ----- state dicts and pickles ------------------------------------------------------------
def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict from .safetensors or a weights-only torch.load; refuses pickled code."""
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeFileError(
            f"{path.name} is a pickled module; loading it runs code. Re-run with "
            "--unsafe-pickle if you trust the file, or save a state_dict / .pt2") from exc
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{path}: not a readable torch file: {_first_line(exc)}") from exc
    return _as_state_dict(obj, path)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise UserError("reading .safetensors needs the safetensors package: "
                        "pip install safetensors") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{path}: not a readable safetensors file: "
                             f"{_first_line(exc)}") from exc


def _as_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"{path.name} holds a {type(obj).__name__}, not a state_dict "
                             "of tensors")
    return obj


def load_state_dict_file(path: str | Path, input_shapes: Shapes | None, arch: str | None,
                         seed: int = 0) -> Graph:
    """Weights from a state_dict file, architecture from an `arch` factory."""
    path = Path(path)
    state = read_state_dict(path)
    if arch is None:
        raise UserError(f"{path.name} is a state_dict (weights only): name the architecture "
                        "with --arch package.module:factory or --arch path/to/file.py:factory")
    model = build_arch(arch, beside=path.parent)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"{path.name} does not fit --arch {arch}: "
                             f"{' '.join(str(exc).split())[:300]}") from exc
    del state  # load_state_dict copied it into the model: one copy of the weights, not two
    return _load_with_shapes(model, input_shapes, path, "state_dict", seed)


def load_pickled_module(path: str | Path, input_shapes: Shapes | None, seed: int = 0) -> Graph:
    """A torch.save'd full module. Unpickling runs code: only with unsafe_pickle=True."""
    path = Path(path)
    message = f"{path.name} was unpickled with --unsafe-pickle: it could have run code"
    warnings.warn(message, stacklevel=2)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{path}: could not unpickle: {_first_line(exc)}") from exc
    if not isinstance(obj, torch.nn.Module):
        raise ModelLoadError(f"{path.name} holds a {type(obj).__name__}, not an nn.Module")
    graph = _load_with_shapes(obj, input_shapes, path, "module", seed)
    graph.metadata["warnings"].append(("unsafe_pickle", message))
    return graph


def _load_with_shapes(model: torch.nn.Module, input_shapes: Shapes | None, path: Path,
                      fmt: str, seed: int) -> Graph:
    if not input_shapes:
        raise ShapeError(f"{path.name} does not record input shapes: give them with "
                         "--input-shape")
    return load_module(model, input_shapes, seed, file_metadata(path, fmt), share_weights=True)

