"""What every lipcheck command shares: the Typer app, the error console, option parsing and
the exit-code wrapper. `cli` (estimate) and `cli_gate` (check, compare, plot) both import
from here; nothing here imports them, so dependencies run one way.

Nothing here imports torch: options and paths are checked first, so a mistake a user can
make is reported before the heavy imports (and `--help`, `--version` stay fast).
"""
from __future__ import annotations

import os

# BLAS thread pools oversubscribe small machines badly (a 512x512 SVD: 2.7 s with the
# default pool on 2 shared cores, 0.15 s with one thread). Set before numpy is imported;
# a user's own setting wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402

from lipcheck.errors import LipcheckError, ModelLoadError, UserError  # noqa: E402
from lipcheck.limits import check_timeout  # noqa: E402
from lipcheck.settings import LAYER_METHODS, Settings  # noqa: E402

EXIT_INTERNAL = 4
METHODS = ("auto", "autolip", "seqlip-exact", "seqlip-greedy", "seqlip-lowrank", "sdp",
           "eclipse", "eclipse-fast", "sdp-conv", "sdp-net", "all")

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Certified Lipschitz bounds for ONNX and PyTorch models.")
# highlight=False: rich's automatic highlighting colours `16.9x` as `16.` and `9x`
err = Console(stderr=True, highlight=False)


def _print_version(value: bool) -> None:
    if value:
        from lipcheck import __version__
        typer.echo(f"lipcheck {__version__}")
        raise typer.Exit(0)


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="print the version and exit"),
) -> None:
    """Certified Lipschitz bounds for ONNX and PyTorch models."""


def parse_shapes(text: str | None) -> list[tuple[int, ...]] | None:
    """'1,3,32,32' or several inputs separated by ';' ('1,3,32,32;1,10')."""
    if not text:
        return None
    shapes = []
    for part in text.split(";"):
        try:
            dims = tuple(int(d) for d in part.replace("x", ",").split(","))
        except ValueError:
            raise UserError(f"--input-shape {text!r}: expected integers like 1,3,32,32") from None
        if not dims or any(d <= 0 for d in dims):
            raise UserError(f"--input-shape {text!r}: every dimension must be a positive integer")
        shapes.append(dims)
    return shapes


def parse_range(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise UserError(f"--input-range {text!r}: expected LO,HI like 0,1") from None
    if not lo < hi:
        raise UserError(f"--input-range {text!r}: LO must be below HI")
    return lo, hi


def parse_methods(text: str) -> tuple[str, ...]:
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise UserError(f"--method {text!r}: choose from {', '.join(METHODS)}")
    return methods


def guarded(debug: bool, body: Callable[[], int]) -> None:
    """Run a command body; user errors become one line and an exit code."""
    try:
        code = body()
    except LipcheckError as exc:
        if debug:
            raise
        err.print(f"[red]error[/red] ({exc.code}): {escape(str(exc))}", soft_wrap=True)
        code = exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        code = 130
    except Exception as exc:  # a bug in lipcheck: one line unless --debug
        if debug:
            raise
        first = (str(exc).splitlines() or [""])[0]
        err.print(f"[red]internal error[/red]: {type(exc).__name__}: {escape(first)} "
                  "(re-run with --debug for the traceback, and please report it)",
                  soft_wrap=True)
        code = EXIT_INTERNAL
    raise typer.Exit(code)


def check_choice(value: str, choices: tuple[str, ...], option: str) -> str:
    if value not in choices:
        raise UserError(f"{option} {value!r}: choose from {', '.join(choices)}")
    return value


def check_device(device: str) -> str:
    if not (device == "cpu" or device.startswith("cuda")):
        raise UserError(f"--device {device!r}: use cpu or cuda")
    if device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine")
    return device


def check_model_file(path: Path) -> None:
    """The cheap checks of a model path (the loader repeats them with the format's own)."""
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path} is a directory, not a model file")


def check_input_file(path: Path | None, option: str) -> None:
    if path is not None and not path.is_file():
        what = "is a directory" if path.is_dir() else "no such file"
        raise UserError(f"{option} {path}: {what}")


def check_output_path(path: Path | None, option: str) -> None:
    """Refuse an output whose folder does not exist before the run, not after it."""
    if path is None:
        return
    folder = path.parent
    if not folder.is_dir():
        raise UserError(f"{option} {path}: folder {folder} does not exist")
    if path.is_dir():
        raise UserError(f"{option} {path} is a directory")


def check_arch(arch: str | None, model: Path) -> None:
    if arch is not None:
        from lipcheck.loaders.arch import parse_arch
        parse_arch(arch, model.parent)


def run_config(*, seed: int, device: str, layer_method: str, time_budget: float, method: str,
               lower_budget: float, lower_rounds: int | None, input_range: str | None,
               arch: str | None, unsafe_pickle: bool, max_iter: int = 500, tol: float = 1e-6,
               dtype: str = "float32", timeout: float | None = None,
               layer_budget: float = 30.0):
    """Validated Settings and EstimateOptions from the options estimate and check share
    (every check runs before torch is imported)."""
    check_choice(layer_method, LAYER_METHODS, "--layer-method")
    methods, box = parse_methods(method), parse_range(input_range)
    settings = Settings(seed=seed, device=check_device(device), max_iter=max_iter, tol=tol,
                        layer_method=layer_method, time_budget=time_budget,
                        layer_budget=layer_budget,
                        dtype=check_choice(dtype, ("float32", "float64"), "--dtype"),
                        timeout=check_timeout(timeout))
    from lipcheck.api import EstimateOptions
    options = EstimateOptions(methods=methods, lower_budget=lower_budget,
                              lower_rounds=lower_rounds, input_range=box,
                              arch=arch, unsafe_pickle=unsafe_pickle)
    return settings, options


def write_text(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None
