"""CLI commands of the robustness gate (check, compare, plot): registered on the app of
lipcheck.cli_base (this module imports cli_base, never lipcheck.cli).

Argument parsing, output files and exit codes only; the gate itself is lipcheck.api.check.
"""
from __future__ import annotations

import sys
from pathlib import Path

import typer

from lipcheck.cli_base import (
    app,
    check_arch,
    check_input_file,
    check_model_file,
    check_output_path,
    err,
    guarded,
    parse_shapes,
    run_config,
    write_text,
)
from lipcheck.errors import EXIT_OK, EXIT_THRESHOLD


@app.command()
def check(
    model: Path = typer.Argument(..., help="ONNX, .pt2, TorchScript, or a state_dict with --arch"),
    max_lipschitz: float | None = typer.Option(None, help="limit on the global bound"),
    max_layer: float | None = typer.Option(None, help="limit on every node's bound"),
    baseline: Path | None = typer.Option(None, help="JSON report of an earlier model"),
    max_increase: str | None = typer.Option(None, help="allowed growth over the baseline: "
                                               "10% or 0.1 (global and per layer)"),
    require_certified: bool | None = typer.Option(
        None, "--require-certified/--no-require-certified",
        help="fail when no finite certified upper bound could be computed"),
    data: Path | None = typer.Option(None, help=".npz with arrays x (samples) and y (labels)"),
    eps: float | None = typer.Option(None, help="L2 radius for the certified accuracy"),
    min_certified_accuracy: str | None = typer.Option(
        None, help="fraction or percentage of samples certified at --eps"),
    bab_domains: int | None = typer.Option(
        None, help="branch and bound on the margins the local bounds leave at --eps: "
                   "domains per margin (a count; default 0: off)"),
    sdp_margins: int | None = typer.Option(
        None, help="then LipSDP-Neuron (sdp-net) of each margin still open, on its ball "
                   "and the nested balls: evaluations per search (a count, e.g. 120; "
                   "default 0: off; ~3 s a sample on models/digits_cnn)"),
    config: Path | None = typer.Option(None, help="TOML file with the thresholds (default: "
                                          "./lipcheck.toml, else [tool.lipcheck] in "
                                          "./pyproject.toml)"),
    no_config: bool = typer.Option(False, "--no-config", help="read no config file"),
    junit: Path | None = typer.Option(None, help="write JUnit XML here (one case per check)"),
    markdown: Path | None = typer.Option(None, help="write a pull-request summary here"),
    json_path: Path | None = typer.Option(None, "--json", help="write the JSON report here"),
    input_shape: str | None = typer.Option(None, help="e.g. 1,3,224,224 (';' between inputs)"),
    method: str = typer.Option("auto", help="global methods, as in estimate"),
    layer_method: str = typer.Option("auto", help="per-layer norm: auto|exact|fft|gram|power"),
    time_budget: float = typer.Option(60.0, help="seconds for the global methods (--method "
                                      "sdp-net sets its evaluation count from it)"),
    lower_budget: float = typer.Option(
        10.0, help="seconds: cap on the lower-bound search (0: off)"),
    lower_rounds: int | None = typer.Option(
        None, help="lower-bound ascent rounds (default: reproducible count; 0: fill the budget)"),
    input_range: str | None = typer.Option(None, help="a box LO,HI: restricts the lower-bound "
                                              "search and adds the local constant on it to "
                                              "the report (the checks use the global one)"),
    seed: int = typer.Option(0, help="random seed"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    arch: str | None = typer.Option(None, help="package.module:factory or "
                                       "path/to/file.py:factory for a state_dict"),
    unsafe_pickle: bool = typer.Option(False, help="allow loading a pickled module (runs code)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="print only failed checks"),
    debug: bool = typer.Option(False, help="show tracebacks"),
) -> None:
    """Pass or fail a model against thresholds (exit 0 pass, 1 failed, 2 error, 3 no bound)."""
    def body() -> int:
        check_paths(model, arch, inputs=((config, "--config"), (baseline, "--baseline"),
                                         (data, "--data")),
                    outputs=((junit, "--junit"), (markdown, "--markdown"), (json_path, "--json")))
        shapes = parse_shapes(input_shape)
        settings, options = run_config(
            seed=seed, device=device, layer_method=layer_method, time_budget=time_budget,
            method=method, lower_budget=lower_budget, lower_rounds=lower_rounds,
            input_range=input_range, arch=arch, unsafe_pickle=unsafe_pickle)
        from lipcheck.api import check as api_check
        verdict = api_check(
            str(model), config=config, discover_config=not no_config,
            input_shapes=shapes, settings=settings, options=options,
            max_lipschitz=max_lipschitz, max_layer=max_layer, baseline=baseline,
            max_increase=max_increase, require_certified=require_certified, data=data, eps=eps,
            min_certified_accuracy=min_certified_accuracy, bab_domains=bab_domains,
            sdp_margins=sdp_margins)
        write_outputs(verdict, junit, markdown, json_path)
        print_verdict(verdict, quiet)
        return verdict.exit_code
    guarded(debug, body)


def check_paths(model: Path, arch: str | None, inputs, outputs) -> None:
    """Every path option, before the heavy imports: a typo costs no waiting."""
    check_model_file(model)
    check_arch(arch, model)
    for path, option in inputs:
        check_input_file(path, option)
    for path, option in outputs:
        check_output_path(path, option)


def write_outputs(verdict, junit: Path | None, markdown: Path | None,
                  json_path: Path | None) -> None:
    import json

    from lipcheck.gate.outputs import junit_xml, markdown_summary
    if junit is not None:
        write_text(junit, junit_xml(verdict))
    if markdown is not None:
        write_text(markdown, markdown_summary(verdict))
    if json_path is not None:
        write_text(json_path, json.dumps(verdict.report_dict(), indent=2, allow_nan=False) + "\n")


def print_verdict(verdict, quiet: bool) -> None:
    from lipcheck.gate.outputs import terminal_summary
    text = terminal_summary(verdict)
    if quiet:
        lines = text.splitlines()
        text = "\n".join(lines[:1] + [line for line in lines if line.startswith("  FAIL")])
    sys.stdout.write(text + "\n")


@app.command()
def compare(
    old: Path = typer.Argument(..., help="JSON report of the earlier model"),
    new: Path = typer.Argument(..., help="JSON report of the new model"),
    max_increase: str | None = typer.Option(None, help="exit 1 when the global bound or a "
                                               "layer grew by more (10% or 0.1)"),
    debug: bool = typer.Option(False, help="show tracebacks"),
) -> None:
    """Print the global and per-layer differences between two reports."""
    def body() -> int:
        from lipcheck.gate.comparison import compare as compare_reports
        from lipcheck.gate.comparison import comparison_text, load_report
        from lipcheck.gate.thresholds import parse_fraction
        limit = parse_fraction(max_increase, "--max-increase")
        comparison = compare_reports(load_report(old), load_report(new), str(old))
        sys.stdout.write(comparison_text(comparison) + "\n")
        if limit is None:
            return EXIT_OK
        failed = [c for c in comparison.checks(limit) if not c.passed]
        for c in failed:
            sys.stdout.write(f"FAIL  {c.name}  {c.message}\n")
        return EXIT_THRESHOLD if failed else EXIT_OK
    guarded(debug, body)


@app.command()
def plot(
    report: Path = typer.Argument(..., help="JSON report from estimate --json or check --json"),
    output: Path = typer.Option(Path("lipcheck.png"), "--output", "-o", help="image to write"),
    debug: bool = typer.Option(False, help="show tracebacks"),
) -> None:
    """Per-layer bounds (log scale) with the running AutoLip product; radii when data was given."""
    def body() -> int:
        from lipcheck.gate.comparison import load_report
        from lipcheck.plot import plot_report
        plot_report(load_report(report), output)
        err.print(f"wrote {output}")
        return EXIT_OK
    guarded(debug, body)
