"""Pick the front end for a model file by its extension and its content."""
from __future__ import annotations

import zipfile
from pathlib import Path

from lipcheck.errors import ModelLoadError, UnsafeFileError
from lipcheck.graph import Graph

Shapes = list[tuple[int, ...]] | None
TORCH_EXTENSIONS = (".pt", ".pth", ".bin")
TORCHSCRIPT_EXTENSIONS = (".torchscript", ".ts")
SUPPORTED = (".onnx", ".pt2") + TORCHSCRIPT_EXTENSIONS + TORCH_EXTENSIONS + (".safetensors",)


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
    if suffix == ".pt2":
        return torch_loader.load_pt2(path, input_shapes, seed)
    if suffix in TORCHSCRIPT_EXTENSIONS:
        return torch_loader.load_torchscript(path, input_shapes, seed)
    kind = torch_kind(path)
    if kind in ("pt2", "torchscript"):
        raise UnsafeFileError(_code_format_message(path, kind))
    if unsafe_pickle and kind == "torch" and not _is_state_dict(path):
        return torch_loader.load_pickled_module(path, input_shapes, seed)
    return torch_loader.load_state_dict_file(path, input_shapes, arch, seed)


def _code_format_message(path: Path, kind: str) -> str:
    """.pt2 and TorchScript archives can run code: they load only when their own
    extension names them, never because of what a .pt/.pth/.bin file contains."""
    wanted = ".pt2" if kind == "pt2" else ".torchscript (or .ts)"
    return (f"{path.name} is a {'torch.export' if kind == 'pt2' else 'TorchScript'} archive, "
            f"a format that can run code when loaded; lipcheck loads it only when its name "
            f"says so: rename it to {path.stem}{wanted.split()[0]} if you trust the file")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path} is a directory, not a model file")
    if path.suffix.lower() not in SUPPORTED:
        raise ModelLoadError(f"{path.name}: unknown model file extension {path.suffix!r}; "
                             f"supported: {', '.join(SUPPORTED)}")
    from lipcheck.limits import check_file_size
    check_file_size(path)


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
