"""The command line: argument parsing, output and exit codes only, no mathematics."""
from __future__ import annotations

import os

# BLAS thread pools oversubscribe small machines badly (a 512x512 SVD: 2.7 s with the
# default pool on 2 shared cores, 0.15 s with one thread). Set before numpy is imported;
# a user's own setting wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import math  # noqa: E402
import sys  # noqa: E402
from enum import Enum
from pathlib import Path
from typing import Callable, Optional

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape

from lipcheck.errors import (EXIT_NO_FINITE_BOUND, EXIT_OK, EXIT_USER_ERROR, LipcheckError,
                             UserError)
from lipcheck.limits import check_timeout
from lipcheck.settings import LAYER_METHODS, Settings

EXIT_INTERNAL = 4

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Certified Lipschitz bounds for ONNX and PyTorch models.")
err = Console(stderr=True)


class Format(str, Enum):
    table = "table"
    json = "json"
    markdown = "markdown"


def parse_shapes(text: Optional[str]) -> Optional[list[tuple[int, ...]]]:
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


def parse_range(text: Optional[str]) -> Optional[tuple[float, float]]:
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
    known = ("auto", "autolip", "seqlip-exact", "seqlip-greedy", "seqlip-lowrank", "sdp",
             "eclipse", "eclipse-fast", "all")
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in methods if m not in known]
    if bad or not methods:
        raise UserError(f"--method {text!r}: choose from {', '.join(known)}")
    return methods


def guarded(debug: bool, body: Callable[[], int]) -> None:
    """Run a command body; user errors become one line and an exit code."""
    try:
        code = body()
    except LipcheckError as exc:
        if debug:
            raise
        err.print(f"[red]error[/red] ({exc.code}): {escape(str(exc))}", highlight=False,
                  soft_wrap=True)
        code = exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        code = 130
    except Exception as exc:  # a bug in lipcheck: one line unless --debug
        if debug:
            raise
        first = (str(exc).splitlines() or [""])[0]
        err.print(f"[red]internal error[/red]: {type(exc).__name__}: {first} "
                  "(re-run with --debug for the traceback, and please report it)",
                  highlight=False, soft_wrap=True)
        code = EXIT_INTERNAL
    raise typer.Exit(code)


def check_choice(value: str, choices: tuple[str, ...], option: str) -> str:
    if value not in choices:
        raise UserError(f"{option} {value!r}: choose from {', '.join(choices)}")
    return value


def run_config(*, seed: int, device: str, layer_method: str, time_budget: float, method: str,
               lower_budget: float, lower_rounds: Optional[int], input_range: Optional[str],
               arch: Optional[str], unsafe_pickle: bool, max_iter: int = 500, tol: float = 1e-6,
               dtype: str = "float32", timeout: Optional[float] = None,
               layer_budget: float = 5.0):
    """Validated Settings and EstimateOptions from the options estimate and check share."""
    from lipcheck.api import EstimateOptions
    check_choice(layer_method, LAYER_METHODS, "--layer-method")
    settings = Settings(seed=seed, device=check_device(device), max_iter=max_iter, tol=tol,
                        layer_method=layer_method, time_budget=time_budget,
                        layer_budget=layer_budget,
                        dtype=check_choice(dtype, ("float32", "float64"), "--dtype"),
                        timeout=check_timeout(timeout))
    options = EstimateOptions(methods=parse_methods(method), lower_budget=lower_budget,
                              lower_rounds=lower_rounds, input_range=parse_range(input_range),
                              arch=arch, unsafe_pickle=unsafe_pickle)
    return settings, options


@app.command()
def estimate(
    model: Path = typer.Argument(..., help="ONNX, .pt2, TorchScript, or a state_dict with --arch"),
    input_shape: Optional[str] = typer.Option(None, help="e.g. 1,3,224,224 (';' between inputs)"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write the JSON report here"),
    format: Format = typer.Option(Format.table, "--format", help="what to print on stdout"),
    method: str = typer.Option("auto", help="global methods: auto, autolip, seqlip-exact, "
                               "seqlip-greedy, seqlip-lowrank, sdp, eclipse, eclipse-fast, all"),
    layer_method: str = typer.Option("auto", help="per-layer norm: auto|exact|fft|gram|power"),
    time_budget: float = typer.Option(60.0, help="seconds for the global methods"),
    layer_budget: float = typer.Option(5.0, help="seconds a layer's certified norm may take "
                                       "before auto picks a cheaper, looser certificate"),
    lower_budget: float = typer.Option(10.0, help="seconds: cap on the lower-bound search (0: off)"),
    lower_rounds: Optional[int] = typer.Option(
        None, help="lower-bound ascent rounds (default: reproducible count; 0: fill the budget)"),
    input_range: Optional[str] = typer.Option(None, help="a box LO,HI: restricts the lower-bound "
                                              "search and adds the local constant on it"),
    around: Optional[Path] = typer.Option(None, help=".npz of points (array x): adds the local "
                                          "constant on the ball of radius --eps around each"),
    eps: Optional[float] = typer.Option(None, help="radius of the --around balls"),
    norm: str = typer.Option("2", help="norm of the --around balls: 2 or inf"),
    save_witness: Optional[Path] = typer.Option(None, help="store the lower bound's input (npz)"),
    seed: int = typer.Option(0, help="random seed"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    max_iter: int = typer.Option(500, help="power-iteration cap"),
    tol: float = typer.Option(1e-6, help="power-iteration relative tolerance"),
    dtype: str = typer.Option("float32", help="precision of estimates: float32|float64 "
                              "(certified bounds always use float64)"),
    timeout: Optional[float] = typer.Option(None, help="stop the run after this many seconds "
                                            "(exit code 2)"),
    arch: Optional[str] = typer.Option(None, help="package.module:factory for a state_dict"),
    unsafe_pickle: bool = typer.Option(False, help="allow loading a pickled module (runs code)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar, no table"),
    debug: bool = typer.Option(False, help="show tracebacks"),
) -> None:
    """Bound the Lipschitz constant of every layer and of the whole network."""
    def body() -> int:
        settings, options = run_config(
            seed=seed, device=device, layer_method=layer_method, time_budget=time_budget,
            method=method, lower_budget=lower_budget, lower_rounds=lower_rounds,
            input_range=input_range, arch=arch, unsafe_pickle=unsafe_pickle, max_iter=max_iter,
            tol=tol, dtype=dtype, timeout=timeout, layer_budget=layer_budget)
        options.witness_path = str(save_witness) if save_witness else None
        from lipcheck.local_estimate import LocalSet
        options.local = LocalSet(options.input_range, around, eps, norm).validated()
        if unsafe_pickle:
            err.print("[yellow]warning[/yellow]: --unsafe-pickle: loading a pickled module runs "
                      "code from the file; use it only on files you trust")
        report = run_estimate(model, parse_shapes(input_shape), settings, options,
                              show_progress=not quiet and format != Format.json)
        emit(report, format, json_path, quiet)
        return EXIT_OK if report.finite or _has_finite_estimate(report) else EXIT_NO_FINITE_BOUND
    guarded(debug, body)


def _has_finite_estimate(report) -> bool:
    autolip = [b for b in report.bounds if b.method == "autolip"]
    return bool(autolip) and math.isfinite(autolip[0].value)


def check_device(device: str) -> str:
    import torch
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine")
    if not (device == "cpu" or device.startswith("cuda")):
        raise UserError(f"--device {device!r}: use cpu or cuda")
    return device


def run_estimate(model, shapes, settings, options, show_progress: bool):
    from lipcheck.api import estimate as api_estimate
    if not show_progress:
        return api_estimate(str(model), shapes, settings, options)
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=err, transient=True) as progress:
        task = progress.add_task("loading", total=None)

        def tick(node) -> None:
            progress.update(task, description=f"bounding {node.name} ({node.op.value})",
                            advance=1)
        return api_estimate(str(model), shapes, settings, options, progress=tick)


def emit(report, format: Format, json_path: Optional[Path], quiet: bool) -> None:
    from lipcheck import render
    if json_path is not None:
        write_text(json_path, report.to_json() + "\n")
    if format == Format.json:
        sys.stdout.write(report.to_json() + "\n")
    elif format == Format.markdown:
        sys.stdout.write(render.markdown(report) + "\n")
    elif not quiet:
        render.print_table(report, Console())


def write_text(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None


@app.command()
def version() -> None:
    """Print the version."""
    from lipcheck import __version__
    typer.echo(__version__)


from lipcheck import cli_gate  # noqa: E402,F401  (registers check, compare, plot)


def main() -> None:
    try:
        app()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else EXIT_USER_ERROR
        sys.exit(code)


if __name__ == "__main__":
    main()
