"""The Python API: load a model, run the estimators, return a Report.

`estimate` is what `lipcheck estimate` runs; it never prints and never touches the
user's model.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lipcheck.estimators.upper.autolip import AutoLipResult, autolip, bound_nodes
from lipcheck.graph import Graph, Node
from lipcheck.limits import Deadline, check_timeout, time_limit
from lipcheck.numerics import check_finite_constants, torch_dtype
from lipcheck.passes import fuse_batchnorm
from lipcheck.report import NP_HARD_MESSAGE, LayerRecord, Report, Warning
from lipcheck.results import GlobalBound
from lipcheck.settings import Settings

if TYPE_CHECKING:
    from lipcheck.estimators.lower.netfn import NonFloatInput
    from lipcheck.gate.robustness import Robustness
    from lipcheck.gate.thresholds import Thresholds
    from lipcheck.gate.verdict import Verdict
    from lipcheck.local_set import LocalSet

Shapes = list[tuple[int, ...]] | None


@dataclass
class EstimateOptions:
    """What to compute, beyond the per-layer Settings."""

    methods: tuple[str, ...] = ("auto",)
    lower_budget: float = 10.0         # seconds: cap on the lower-bound search (0: no search)
    lower_rounds: int | None = None    # ascent rounds (None: the library default; 0: as many
                                       # as fit in lower_budget, not reproducible)
    input_range: tuple[float, float] | None = None
    witness_path: str | None = None
    arch: str | None = None
    unsafe_pickle: bool = False
    fuse_batchnorm: bool = True        # fold Conv -> BatchNorm into one Conv (tighter, same
                                       # function)
    local: Any = None                  # a lipcheck.local_set.LocalSet: bound on that set too
    extra: dict[str, Any] = field(default_factory=dict)


def load(model: Any, input_shapes: Shapes = None, arch: str | None = None,
         unsafe_pickle: bool = False, seed: int = 0, *, share_weights: bool = False) -> Graph:
    """A Graph from a path (ONNX, .pt2, TorchScript, state_dict) or an nn.Module.

    An nn.Module's weights are copied (the graph is a snapshot) unless share_weights=True."""
    if isinstance(model, Graph):
        return model
    if isinstance(model, torch.nn.Module):
        from lipcheck.errors import ShapeError
        from lipcheck.loaders.torch_loader import load_module
        if not input_shapes:
            raise ShapeError("an in-memory module needs input_shapes, e.g. [(1, 3, 32, 32)]")
        return load_module(model, input_shapes, seed=seed, share_weights=share_weights)
    from lipcheck.loaders.dispatch import load_model
    return load_model(Path(model), input_shapes=input_shapes, arch=arch,
                      unsafe_pickle=unsafe_pickle, seed=seed)


def estimate(model: Any, input_shapes: Shapes = None, settings: Settings | None = None,
             options: EstimateOptions | None = None,
             progress: Callable[[Node], None] | None = None,
             on_phase: Callable[[str, int | None], None] | None = None) -> Report:
    """Load and bound a model; stops with RunTimeout after settings.timeout seconds.

    In this process the timeout is a SIGALRM timer (main thread, POSIX) or a check after
    every node: a single long native call (one big SVD) finishes before it is seen. The CLI
    holds --timeout exactly by running this in a worker process it kills at the deadline
    (lipcheck.worker.run_with_deadline); do the same to hold it inside native calls.

    `progress(node)` runs after each node is bounded; `on_phase(name, count)` when a phase
    starts: PHASES in order (a phase that does not run is skipped), `count` the number of
    nodes for the per-layer bounds, else None."""
    settings = settings or Settings()
    options = options or EstimateOptions()
    check_timeout(settings.timeout)
    torch_dtype(settings.dtype)
    stage = _Stage(progress, on_phase)
    with time_limit(settings.timeout, stage.describe) as deadline:
        stage.deadline = deadline
        return _estimate(model, input_shapes, settings, options, stage)


PHASES = ("loading", "per-layer bounds", "global methods", "lower-bound search")


class _Stage:
    """Where a run is (for the timeout message); checks the deadline after every node."""

    def __init__(self, progress: Callable[[Node], None] | None,
                 on_phase: Callable[[str, int | None], None] | None = None) -> None:
        self.progress, self.on_phase = progress, on_phase
        self.deadline: Deadline | None = None
        self.node: Node | None = None

    def enter(self, phase: str, count: int | None = None) -> None:
        if self.on_phase is not None:
            self.on_phase(phase, count)

    def describe(self) -> str:
        if self.node is None:
            return "loading the model"
        return f"last node bounded: {self.node.name!r} ({self.node.op.value})"

    def tick(self, node: Node) -> None:
        self.node = node
        if self.progress is not None:
            self.progress(node)
        if self.deadline is not None:
            self.deadline.check(self.describe())


def _estimate(model: Any, input_shapes: Shapes, settings: Settings, options: EstimateOptions,
              stage: _Stage) -> Report:
    torch.manual_seed(settings.seed)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    stage.enter("loading")
    graph = load(model, input_shapes, options.arch, options.unsafe_pickle, settings.seed,
                 share_weights=True)  # the graph dies with this call: no copy of the weights
    check_finite_constants(graph)
    if options.fuse_batchnorm:
        graph = fuse_batchnorm(graph)
    timings["load"] = time.perf_counter() - start
    start = time.perf_counter()
    stage.enter("per-layer bounds", len(graph.nodes))
    node_bounds = bound_nodes(graph, settings, stage.tick)
    timings["layers"] = time.perf_counter() - start
    result = autolip(graph, node_bounds)
    bounds = [autolip_bound(result, timings["layers"])]
    stage.enter("global methods")
    bounds += _other_bounds(graph, node_bounds, settings, options, timings)
    if options.lower_budget > 0:
        stage.enter("lower-bound search")
    notes: list[Warning] = []
    lower = _lower(graph, settings, options, timings, notes)
    report = Report(model=graph.metadata_for_report(), settings=_settings_dict(settings, options),
                    layers=_layers(graph, result), bounds=bounds, lower_bound=lower,
                    timings=timings)
    report.local = _local(graph, report, settings, options, timings)
    report.warnings = collect_warnings(graph, result, report) + notes
    return report


def _local(graph: Graph, report: Report, settings: Settings, options: EstimateOptions,
           timings: dict[str, float]) -> dict[str, Any] | None:
    """The constant on --input-range / --around sets, beside the global one."""
    from lipcheck.local_estimate import local_section
    from lipcheck.local_set import LocalSet
    from lipcheck.propagation import UnsupportedLocal
    spec = options.local or LocalSet(input_range=options.input_range)
    if not spec.wanted:
        return None
    start = time.perf_counter()
    upper = report.upper_bound.value if report.upper_bound else None
    try:
        return local_section(graph, spec, upper, settings.seed)
    except UnsupportedLocal as exc:
        return {"set": _set_name(spec), "skipped": str(exc)}
    finally:
        timings["local"] = time.perf_counter() - start


def _set_name(spec: LocalSet) -> str:
    """The set a skipped local section names: the centres' file, or the box."""
    if spec.around:
        return str(spec.around)
    assert spec.input_range is not None, "a wanted set is balls (--around) or a box"
    return str(list(spec.input_range))



def autolip_bound(result: AutoLipResult, seconds: float) -> GlobalBound:
    kind = "upper" if result.certified else "estimate"
    detail = "product of per-node bounds along the graph"
    if not result.certified:
        detail += " (some layers are power-iteration estimates: not a certified bound)"
    return GlobalBound("autolip", result.value, result.certified, kind, seconds, detail)


def _layers(graph: Graph, result: AutoLipResult) -> list[LayerRecord]:
    return [LayerRecord.from_result(r, graph.dynamic_inputs(r.node)) for r in result.nodes]


def _settings_dict(settings: Settings, options: EstimateOptions) -> dict[str, Any]:
    out = settings.to_dict()
    out.pop("extra", None)
    out.update(methods=list(options.methods), lower_budget=options.lower_budget,
               lower_rounds=_lower_rounds(options),
               input_range=list(options.input_range) if options.input_range else None)
    return out


def _other_bounds(graph: Graph, node_bounds: dict, settings: Settings, options: EstimateOptions,
                  timings: dict[str, float]) -> list[GlobalBound]:
    try:
        from lipcheck.estimators.upper.global_bounds import (
            DEFAULT_METHODS,
            METHODS,
            global_bounds,
            prepare,
        )
    except ImportError:
        return []
    expanded = {"auto": DEFAULT_METHODS, "all": METHODS}
    wanted = [m for name in options.methods for m in expanded.get(name, (name,))]
    wanted = [m for m in dict.fromkeys(wanted) if m != "autolip"]
    if not wanted:
        return []
    start = time.perf_counter()
    prepare(wanted)
    timings["imports"] = time.perf_counter() - start
    start = time.perf_counter()
    found = global_bounds(graph, node_bounds, wanted, settings)
    timings["global_bounds"] = time.perf_counter() - start
    return [b for b in found if b.method != "autolip"]


def _lower(graph: Graph, settings: Settings, options: EstimateOptions, timings: dict[str, float],
           notes: list[Warning]) -> GlobalBound | None:
    """The lower-bound search; a model it cannot search (integer inputs) gets a warning
    in `notes` and no lower bound, not an error."""
    if options.lower_budget <= 0:
        return None
    try:
        from lipcheck.estimators.lower.netfn import NonFloatInput
        from lipcheck.estimators.lower.rounds import lower_bound
    except ImportError:
        return None
    start = time.perf_counter()
    try:
        found = lower_bound(graph, budget_s=options.lower_budget, seed=settings.seed,
                            rounds=_lower_rounds(options),
                            input_range=options.input_range)
    except NonFloatInput as exc:
        notes.append(Warning("lower_bound_skipped", non_float_message(exc)))
        return None
    finally:
        timings["lower_bound"] = time.perf_counter() - start
    timings.update((f"lower_bound.{k}", v) for k, v in getattr(found, "phases", {}).items())
    if options.witness_path and found is not None:
        from lipcheck.estimators.lower.rounds import save_witness
        save_witness(options.witness_path, found)
    return found


def non_float_message(exc: NonFloatInput) -> str:
    return (f"no lower bound: graph input {exc.input_name!r} has dtype {exc.dtype} (indices, "
            "such as token ids), which the search cannot vary continuously. Every bound in this "
            "report is with respect to the model's inputs as given, so an op that indexes with "
            "that input (Gather, an embedding) has no finite bound; for an embedding, bound the "
            "network from the embedded vectors on (load it without the lookup)")


def _lower_rounds(options: EstimateOptions) -> int | None:
    """Rounds for the lower-bound search: count-based (reproducible) unless 0."""
    if options.lower_rounds == 0:
        return None
    if options.lower_rounds is not None:
        return options.lower_rounds
    from lipcheck.estimators.lower import rounds as lower
    return getattr(lower, "DEFAULT_ROUNDS", 2)


def collect_warnings(graph: Graph, result: AutoLipResult, report: Report) -> list[Warning]:
    out = [Warning("np_hard", NP_HARD_MESSAGE)]
    out += [Warning(code, message) for code, message in graph.metadata.get("warnings", [])]
    for r in result.nodes:
        out += [Warning(code, message, r.node.name) for code, message in r.bound.warnings]
    if not result.certified and math.isfinite(result.value):
        out.append(Warning("not_certified", "the AutoLip value uses power-iteration estimates "
                           "for some layers: it is an estimate, not a certified upper bound"))
    out += _budget_warnings(report)
    out += _sandwich_warnings(report)
    if report.local and report.local.get("skipped"):
        out.append(Warning("local_skipped", report.local["skipped"]))
    return out


def _budget_warnings(report: Report) -> list[Warning]:
    """Methods whose count-based search was cut short by a wall-clock cap."""
    found = report.bounds + ([report.lower_bound] if report.lower_bound else [])
    return [Warning("cut_by_budget", f"{b.method} stopped at its time cap before its "
                    "count-based limit: still a valid bound, but it may differ between runs "
                    "(raise --time-budget / --lower-budget to make it reproducible)")
            for b in found if b.extra.get("cut_by_budget")]


def _sandwich_warnings(report: Report) -> list[Warning]:
    try:
        from lipcheck.estimators.sandwich import Sandwich
    except ImportError:
        return []
    return [Warning(code, message) for code, message in
            Sandwich(report.lower_bound, report.upper_bound).warnings]


def check(model: Any, thresholds: Thresholds | None = None, *, config: Path | None = None,
          discover_config: bool = True, cwd: Path | None = None, input_shapes: Shapes = None,
          settings: Settings | None = None, options: EstimateOptions | None = None,
          progress: Callable[[Node], None] | None = None, **limits: Any) -> Verdict:
    """What `lipcheck check` runs: the gate's Verdict (exit_code, checks, report, radii).

    Limits are Thresholds fields (max_lipschitz=2.0, max_increase="10%", data="val.npz",
    eps=0.1, ...); they win over `thresholds`, which wins over the config file."""
    from lipcheck.gate.comparison import compare, load_report
    from lipcheck.gate.thresholds import Thresholds, resolve_thresholds
    from lipcheck.gate.verdict import Verdict, evaluate
    settings = settings or Settings()
    options = options or EstimateOptions()
    wanted = _limits(limits).merged_over(thresholds or Thresholds())
    resolved = resolve_thresholds(wanted, Path(cwd) if cwd else None, config, discover_config)
    baseline = load_report(resolved.baseline) if resolved.baseline else None
    start = time.perf_counter()
    graph = load(model, input_shapes, options.arch, options.unsafe_pickle, settings.seed,
                 share_weights=True)  # the graph dies with this call: no copy of the weights
    if options.fuse_batchnorm:
        graph = fuse_batchnorm(graph)  # the graph the report's layers describe
    report = estimate(graph, input_shapes, settings, options, progress)
    robustness = _robustness(graph, report, resolved)
    comparison = compare(baseline, report.to_dict(), str(resolved.baseline)) if baseline else None
    checks = evaluate(report, resolved, robustness, comparison)
    return Verdict(report, resolved, checks, robustness, comparison, time.perf_counter() - start)


def _limits(limits: dict[str, Any]) -> Thresholds:
    from dataclasses import fields

    from lipcheck.errors import UserError
    from lipcheck.gate.thresholds import Thresholds, parse_fraction
    known = {f.name for f in fields(Thresholds)}
    unknown = sorted(set(limits) - known)
    if unknown:
        raise UserError(f"check(): unknown threshold(s) {', '.join(unknown)}; "
                        f"known: {', '.join(sorted(known))}")
    values = {k: v for k, v in limits.items() if v is not None}
    for key in ("max_increase", "min_certified_accuracy"):
        if key in values:
            values[key] = parse_fraction(values[key], "--" + key.replace("_", "-"))
    for key in ("baseline", "data"):
        if key in values:
            values[key] = Path(values[key])
    return Thresholds(**values)


def _robustness(graph: Graph, report: Report, thresholds: Thresholds) -> Robustness | None:
    if thresholds.data is None:
        return None
    from lipcheck.gate.robustness import certify, load_data
    x, y = load_data(thresholds.data)
    return certify(graph, report, x, y, thresholds.eps, bab_domains=thresholds.bab_domains or 0,
                   sdp_margins=thresholds.sdp_margins or 0)
