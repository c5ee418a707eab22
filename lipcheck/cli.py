"""The command line: argument parsing, output and exit codes only, no mathematics.

`lipcheck estimate` lives here; the gate's commands in `cli_gate`, what both share in
`cli_base` (imported by both, importing neither).
"""
from __future__ import annotations

import math
import sys
import time
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console

from lipcheck.cli_base import (  # noqa: F401 (re-exported: tests and users import them from cli)
    EXIT_INTERNAL,
    app,
    check_arch,
    check_model_file,
    check_output_path,
    err,
    guarded,
    parse_shapes,
    run_config,
    write_text,
)
from lipcheck.errors import EXIT_NO_FINITE_BOUND, EXIT_OK, EXIT_USER_ERROR
from lipcheck.limits import check_timeout
from lipcheck.worker import forking_available


class Format(str, Enum):
    table = "table"
    json = "json"
    markdown = "markdown"


@app.command()
def estimate(
    model: Path = typer.Argument(..., help="ONNX, .pt2, TorchScript, or a state_dict with --arch"),
    input_shape: str | None = typer.Option(None, help="e.g. 1,3,224,224 (';' between inputs)"),
    json_path: Path | None = typer.Option(None, "--json", help="write the JSON report here"),
    format: Format = typer.Option(Format.table, "--format", help="what to print on stdout"),
    method: str = typer.Option("auto", help="global methods: auto, autolip, seqlip-exact, "
                               "seqlip-greedy, seqlip-lowrank, sdp, eclipse, eclipse-fast, "
                               "sdp-conv, sdp-net, all"),
    layer_method: str = typer.Option("auto", help="per-layer norm: auto|exact|fft|gram|power"),
    time_budget: float = typer.Option(60.0, help="seconds for the global methods (--method "
                                      "sdp-net sets its evaluation count from it)"),
    layer_budget: float = typer.Option(
        30.0, help="cap, in seconds, on each layer's certified norm: auto picks the tightest "
        "method predicted to fit, and a method that runs past it stops and the layer keeps a "
        "cheaper certified bound (marked cut_by_budget); the per-layer phase takes at most "
        "about layers x this"),
    lower_budget: float = typer.Option(
        10.0, help="seconds: cap on the lower-bound search (0: off)"),
    lower_rounds: int | None = typer.Option(
        None, help="lower-bound ascent rounds (default: reproducible count; 0: fill the budget)"),
    input_range: str | None = typer.Option(None, help="a box LO,HI: restricts the lower-bound "
                                              "search and adds the local constant on it"),
    around: Path | None = typer.Option(None, help=".npz of points (array x): adds the local "
                                          "constant on the ball of radius --eps around each"),
    eps: float | None = typer.Option(None, help="radius of the --around balls"),
    norm: str = typer.Option("2", help="norm of the --around balls: 2 or inf"),
    save_witness: Path | None = typer.Option(None, help="store the lower bound's input (npz)"),
    seed: int = typer.Option(0, help="random seed"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    max_iter: int = typer.Option(500, help="power-iteration cap"),
    tol: float = typer.Option(1e-6, help="power-iteration relative tolerance"),
    dtype: str = typer.Option("float32", help="precision of estimates: float32|float64 "
                              "(certified bounds always use float64)"),
    timeout: float | None = typer.Option(None, help="stop the whole run after this many "
                                            "seconds, even inside a long computation "
                                            "(exit code 2, no report)"),
    arch: str | None = typer.Option(None, help="package.module:factory or "
                                       "path/to/file.py:factory for a state_dict"),
    unsafe_pickle: bool = typer.Option(False, help="allow loading a pickled module (runs code)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar, no table"),
    debug: bool = typer.Option(False, help="show tracebacks"),
) -> None:
    """Bound the Lipschitz constant of every layer and of the whole network."""
    def body() -> int:
        started = time.monotonic()  # --timeout counts from here (torch's import included)
        check_model_file(model)
        check_arch(arch, model)
        for path, option in ((json_path, "--json"), (save_witness, "--save-witness")):
            check_output_path(path, option)
        shapes = parse_shapes(input_shape)

        def configure():
            from lipcheck.local_set import LocalSet
            settings, options = run_config(
                seed=seed, device=device, layer_method=layer_method, time_budget=time_budget,
                method=method, lower_budget=lower_budget, lower_rounds=lower_rounds,
                input_range=input_range, arch=arch, unsafe_pickle=unsafe_pickle,
                max_iter=max_iter, tol=tol, dtype=dtype, timeout=timeout,
                layer_budget=layer_budget)
            options.witness_path = str(save_witness) if save_witness else None
            options.local = LocalSet(options.input_range, around, eps, norm).validated()
            if unsafe_pickle:
                err.print("[yellow]warning[/yellow]: --unsafe-pickle: loading a pickled module "
                          "runs code from the file; use it only on files you trust")
            return settings, options
        show = not quiet and format != Format.json
        if timeout is not None and forking_available():
            check_timeout(timeout)  # a bad value is a user error here, before the fork
            return _in_worker(configure, model, shapes, format, json_path, quiet,
                              timeout, show, started,
                              {"global methods": time_budget, "lower-bound search": lower_budget})
        settings, options = configure()
        report = run_estimate(model, shapes, settings, options, show_progress=show)
        emit(report, format, json_path, quiet)
        return exit_code(report)
    guarded(debug, body)


def exit_code(report) -> int:
    return EXIT_OK if report.finite or _has_finite_estimate(report) else EXIT_NO_FINITE_BOUND


def _has_finite_estimate(report) -> bool:
    autolip = [b for b in report.bounds if b.method == "autolip"]
    return bool(autolip) and math.isfinite(autolip[0].value)


def _in_worker(configure, model, shapes, format: Format, json_path: Path | None, quiet: bool,
               timeout: float, show: bool, started: float, caps: dict[str, float]) -> int:
    """--timeout: the estimate and its rendering in a worker ended at the deadline
    (lipcheck.cli_worker); this process writes what it rendered."""
    from lipcheck.cli_worker import run_in_worker

    def render(report) -> dict:
        return {"stdout": rendered(report, format, quiet), "code": exit_code(report),
                "json": report.to_json() + "\n" if json_path is not None else None}
    out = run_in_worker(configure, model, shapes, render, timeout, caps if show else None,
                        started)
    if json_path is not None:
        write_text(json_path, out["json"])
    sys.stdout.write(out["stdout"])
    return out["code"]


def rendered(report, format: Format, quiet: bool) -> str:
    """What `emit` prints on stdout, as text (the table as rich would print it here)."""
    from lipcheck import render
    if format == Format.json:
        return report.to_json() + "\n"
    if format == Format.markdown:
        return render.markdown(report) + "\n"
    if quiet:
        return ""
    from lipcheck.cli_worker import stdout_console
    console, buffer = stdout_console()
    render.print_table(report, console)
    return buffer.getvalue()


def run_estimate(model, shapes, settings, options, show_progress: bool):
    from lipcheck.api import estimate as api_estimate
    if not show_progress:
        return api_estimate(str(model), shapes, settings, options)
    from lipcheck.cli_progress import PhaseClock, phase_progress
    caps = {"global methods": settings.time_budget, "lower-bound search": options.lower_budget}
    with phase_progress(err, PhaseClock(caps, settings.timeout)) as clock:
        return api_estimate(str(model), shapes, settings, options,
                            progress=lambda node: clock.node_done(node.name),
                            on_phase=clock.enter)


def emit(report, format: Format, json_path: Path | None, quiet: bool) -> None:
    from lipcheck import render
    if json_path is not None:
        write_text(json_path, report.to_json() + "\n")
    if format == Format.json:
        sys.stdout.write(report.to_json() + "\n")
    elif format == Format.markdown:
        sys.stdout.write(render.markdown(report) + "\n")
    elif not quiet:
        render.print_table(report, Console(highlight=False))


@app.command()
def version() -> None:
    """Print the version (also: lipcheck --version)."""
    from lipcheck import __version__
    typer.echo(__version__)


# after estimate and version, so that --help lists the commands in this order
from lipcheck import cli_gate  # noqa: E402,F401  (registers check, compare, plot on the app)


def main() -> None:
    try:
        app()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else EXIT_USER_ERROR
        sys.exit(code)


if __name__ == "__main__":
    main()
