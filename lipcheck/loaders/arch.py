"""`--arch`: the factory that builds the architecture a state_dict's weights fit.

Two spellings: `package.module:factory` (imported from the Python path) and
`path/to/file.py:factory` (the file is loaded with importlib, its own folder first on the
path while it runs). A relative file is looked for in the working directory, then beside
the weights. Either way the module's code runs: name only code you trust. Parsing and the
file search import nothing heavy, so the CLI can refuse a bad `--arch` before loading torch.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from lipcheck.errors import UserError

FORM = "'package.module:factory' or 'path/to/file.py:factory'"


@dataclass(frozen=True)
class ArchSpec:
    text: str            # what the user wrote
    source: str          # module path, or file path as written
    factory: str
    file: Path | None    # the resolved file (file form only)


def is_file_form(source: str) -> bool:
    return source.endswith(".py") or "/" in source or "\\" in source


def parse_arch(text: str, beside: Path | None = None) -> ArchSpec:
    """Split and check an --arch value; a file form must name an existing file."""
    source, sep, factory = text.rpartition(":")
    if not sep or not source or not factory.isidentifier():
        raise UserError(f"--arch {text!r} must look like {FORM}")
    if not is_file_form(source):
        return ArchSpec(text, source, factory, None)
    return ArchSpec(text, source, factory, find_file(text, source, beside))


def find_file(text: str, source: str, beside: Path | None) -> Path:
    """The file `source` names: as given (relative to the working directory), then in the
    folder `beside` (the weights' folder) when it is relative."""
    path = Path(source).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path]
    if beside is not None and not path.is_absolute():
        candidates.append(beside.absolute() / path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    searched = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise UserError(f"--arch {text!r}: no file {source} (searched {searched})")


def load_factory(spec: ArchSpec) -> Any:
    module = _import_file(spec) if spec.file is not None else _import_module(spec)
    try:
        return getattr(module, spec.factory)
    except AttributeError:
        where = spec.file or spec.source
        raise UserError(f"--arch {spec.text!r}: {where} has no attribute "
                        f"{spec.factory!r}") from None


def _import_module(spec: ArchSpec) -> ModuleType:
    try:
        return importlib.import_module(spec.source)
    except ImportError as exc:
        path = ", ".join(p or "." for p in sys.path[:4])
        more = ", ..." if len(sys.path) > 4 else ""
        raise UserError(f"--arch {spec.text!r}: {_first_line(exc)} (searched the Python path: "
                        f"{path}{more}; for a file give path/to/file.py:{spec.factory})") from exc


def _import_file(spec: ArchSpec) -> ModuleType:
    assert spec.file is not None
    name = f"lipcheck_arch_{spec.file.stem}"
    loader_spec = importlib.util.spec_from_file_location(name, spec.file)
    if loader_spec is None or loader_spec.loader is None:
        raise UserError(f"--arch {spec.text!r}: {spec.file} cannot be imported as Python")
    module = importlib.util.module_from_spec(loader_spec)
    folder = str(spec.file.parent)
    sys.path.insert(0, folder)   # the file may import its neighbours
    sys.modules[name] = module   # dataclasses and pickling look the module up by name
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001  the user's code: its error is a user error
        del sys.modules[name]
        raise UserError(f"--arch {spec.text!r}: importing {spec.file} raised "
                        f"{type(exc).__name__}: {_first_line(exc)}") from exc
    finally:
        sys.path.remove(folder)
    return module


def build_arch(arch: str, beside: Path | None = None) -> Any:
    """Call the factory with no arguments; it must return an nn.Module."""
    import torch
    model = load_factory(parse_arch(arch, beside))()
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"--arch {arch!r} returned a {type(model).__name__}, not an nn.Module")
    return model


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]
