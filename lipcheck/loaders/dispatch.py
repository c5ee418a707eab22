"""Pick the front end for a model file by its extension and its content."""
from __future__ import annotations

import zipfile
from pathlib import Path

from lipcheck.errors import ModelLoadError
from lipcheck.graph import Graph

Shapes = list[tuple[int, ...]] | None
TORCH_EXTENSIONS = (".pt", ".pth", ".bin")
SUPPORTED = (".onnx", ".pt2") + TORCH_EXTENSIONS + (".safetensors",)


def load_model(path: str | Path, input_shapes: Shapes = None, arch: str | None = None,
               unsafe_pickle: bool = False, seed: int = 0) -> Graph:
    """Load an ONNX, .pt2, TorchScript, state_dict or (opt-in) pickled model file."""
    path = Path(path)
    _check_file(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from lipcheck.loaders.onnx_loader import load_onnx
        return load_onnx(path, input_shapes=input_shapes, seed=seed)
    from lipcheck.loaders import torch_loader
    kind = "pt2" if suffix == ".pt2" else torch_kind(path)
    if kind == "pt2":
        return torch_loader.load_pt2(path, input_shapes, seed)
    if kind == "torchscript":
        return torch_loader.load_torchscript(path, input_shapes, seed)
    if unsafe_pickle and kind == "torch" and not _is_state_dict(path):
        return torch_loader.load_pickled_module(path, input_shapes, seed)
    return torch_loader.load_state_dict_file(path, input_shapes, arch, seed)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path} is a directory, not a model file")
    if path.suffix.lower() not in SUPPORTED:
        raise ModelLoadError(f"{path.name}: unknown model file extension {path.suffix!r}; "
                             f"supported: {', '.join(SUPPORTED)}")
    from lipcheck import limits
    limits.check_file_size(path, limits.MAX_MODEL_BYTES)


def torch_kind(path: Path) -> str:
    """'pt2', 'torchscript', 'safetensors' or 'torch' (a torch.save file), by content."""
    if path.suffix.lower() == ".safetensors":
        return "safetensors"
    if not zipfile.is_zipfile(path):
        return "torch"  # the legacy (non-zip) torch.save format
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile as exc:
        raise ModelLoadError(f"{path}: corrupt archive: {exc}") from exc
    if any(n.endswith("/archive_format") or n == "archive_format" for n in names):
        return "pt2"
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return "torchscript"
    return "torch"


def _is_state_dict(path: Path) -> bool:
    """Whether a weights-only load succeeds (no code runs either way)."""
    from lipcheck.errors import UnsafeFileError
    from lipcheck.loaders.torch_loader import read_state_dict
    try:
        read_state_dict(path)
    except UnsafeFileError:
        return False
    return True
