"""Local constants on the digits models: certified accuracy from global vs local constants,
and (when `eclipse_nn` imports) lipcheck's local bound against ECLipsE-Gen-Local on the
same L2 balls of digits_mlp, per point; and the margin constants of the interval hull against
the backward zonotope on digits_cnn balls.

    python bench/make_digits_npz.py /tmp/digits_val.npz
    python bench/bench_local.py /tmp/digits_val.npz [--eps 0.02,0.05,0.1] [--points 20]
    python bench/bench_local.py /tmp/digits_val.npz --eps 0.1 --sdp 120 --part 0:225
    # ECLipsE-Gen-Local: a separate install, not a dependency, e.g.
    #   pip install --no-deps --target /tmp/eclipse-site eclipse-nn   (numpy, torch, cvxpy, scipy)
    #   PYTHONPATH=/tmp/eclipse-site:. python bench/bench_local.py /tmp/digits_val.npz
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import time
from pathlib import Path

import numpy as np
import torch

from lipcheck.api import EstimateOptions, estimate
from lipcheck.gate.robustness import certify, predict
from lipcheck.loaders.dispatch import load_model
from lipcheck.local_certify import certify_local, margin_rows
from lipcheck.local_estimate import local_section
from lipcheck.local_set import LocalSet
from lipcheck.propagation import InputSet, build_program, propagate
from lipcheck.propagation.jacobian import row_norm_bounds
from lipcheck.propagation.program import Affine
from lipcheck.propagation.zonotope import zonotope_row_bounds
from lipcheck.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    graph = load_model(ROOT / "models" / f"{name}.onnx")
    options = EstimateOptions(methods=("autolip", "eclipse-fast"), lower_budget=0)
    return graph, estimate(graph, settings=Settings(), options=options)


def _local(local) -> tuple[str, str]:
    """(certified accuracy, ms per sample) of a LocalRobustness, or why it was skipped."""
    if local.skipped:
        return f"skipped ({local.skipped[:40]}...)", "-"
    return f"{local.certified_accuracy:.2%}", f"{1000 * local.seconds / len(local.radii):.1f}"


def _table(data: Path, header: str) -> tuple[np.ndarray, np.ndarray]:
    """The data set (x float64, y), after printing the load and a table's header."""
    archive = np.load(data)
    print(f"\nload {os.getloadavg()[0]:.1f}\n{header}")
    print("|---" * (header.count("|") - 1) + "|")
    return archive["x"].astype(np.float64), archive["y"]


def accuracy_table(data: Path, eps_list: list[float]) -> None:
    """Certified accuracy from the global constants, from the local ones on the whole ball
    only (the rule before nested balls and margin lower bounds), and from the gate's local
    rule (shells + CROWN margin bounds), with the time per sample of each local rule."""
    x, y = _table(data, "| model | eps | clean | global | local, one ball (ms/sample) | "
                  "local, shells + CROWN (ms/sample) | gate (global or local) |")
    for name in ("digits_mlp", "digits_spectral", "digits_cnn", "digits_resnet"):
        graph, report = load(name)
        logits = predict(graph, x).numpy()
        for eps in eps_list:
            rob = certify(graph, report, x, y, eps)
            before = _local(certify_local(graph, x, y, logits, eps, shells=1, lower=False))
            after = _local(rob.local)
            print(f"| {name} | {eps:g} | {rob.clean_accuracy:.2%} | "
                  f"{rob.certified_accuracy_global:.2%} | {before[0]} ({before[1]}) | "
                  f"{after[0]} ({after[1]}) | {rob.certified_accuracy:.2%} |")


def eclipse_table(data: Path, eps_list: list[float], points: int) -> None:
    try:
        from eclipse_nn import get_lip_estimates
    except ImportError:
        print("\n(eclipse_nn not importable: ECLipsE-Gen-Local comparison skipped)")
        return
    graph, report = load("digits_mlp")
    program = build_program(graph)
    weights = [s.weight for s in program.steps if isinstance(s, Affine)]
    biases = [s.bias for s in program.steps if isinstance(s, Affine)]
    x = np.load(data)["x"][:points].astype(np.float64)
    global_ub = report.upper_bound.value
    print(f"\nload {os.getloadavg()[0]:.1f}; digits_mlp, global certified {global_ub:.4f}")
    print("| eps | algo | median lipcheck / ECLipsE-Gen-Local | min | max | lipcheck s/pt | "
          "ECLipsE s/pt |")
    print("|---|---|---|---|---|---|---|")
    for eps in eps_list:
        np.savez("/tmp/_bench_local_pts.npz", x=x)
        start = time.perf_counter()
        ours = local_section(graph, LocalSet(around=Path("/tmp/_bench_local_pts.npz"), eps=eps),
                             global_ub)
        ours_s = (time.perf_counter() - start) / points
        ours_v = np.array([p["upper_bound"] for p in ours["per_set"]])
        for algo in ("Fast", "Acc"):
            theirs, start = [], time.perf_counter()
            for centre in x:
                with contextlib.redirect_stdout(io.StringIO()):   # it prints per layer
                    lip, _, _ = get_lip_estimates([w.clone() for w in weights], centre, eps,
                                                  biases=[b.clone() for b in biases], algo=algo)
                theirs.append(float(lip))
            theirs_s = (time.perf_counter() - start) / points
            ratio = ours_v / np.array(theirs)
            print(f"| {eps:g} | {algo} | {np.median(ratio):.3f} | {ratio.min():.3f} | "
                  f"{ratio.max():.3f} | {ours_s:.2f} | {theirs_s:.2f} |")


def zonotope_table(data: Path, eps_list: list[float], points: int) -> None:
    """Margin constants on digits_cnn balls: the interval hull of the Jacobians against the
    backward zonotope (propagation/zonotope.py), median over samples and rows j != c."""
    graph, _ = load("digits_cnn")
    program = build_program(graph)
    x = torch.from_numpy(np.load(data)["x"][:points].astype(np.float64))
    pred = program.run(x).argmax(dim=1)
    rows = margin_rows(pred, program.n_out)
    other = rows.abs().sum(dim=2) > 0
    print(f"\nload {os.getloadavg()[0]:.1f}; digits_cnn margin constants, {points} samples")
    print("| eps | hull (median K) | zonotope (median K) | median hull / zonotope | "
          "hull ms/sample | zonotope ms/sample |")
    print("|---|---|---|---|---|---|")
    for eps in eps_list:
        ranges = propagate(program, InputSet.ball(x, eps, "2"))
        start = time.perf_counter()
        hull = row_norm_bounds(program, ranges, rows)
        mid = time.perf_counter()
        zono = zonotope_row_bounds(program, ranges, rows)
        end = time.perf_counter()
        print(f"| {eps:g} | {hull[other].median():.1f} | {zono[other].median():.1f} | "
              f"{(hull / zono)[other].median():.2f} | {1000 * (mid - start) / points:.1f} | "
              f"{1000 * (end - mid) / points:.1f} |")


def bab_table(data: Path, eps_list: list[float], counts: list[int]) -> None:
    """The gate's local rule without and with branch and bound on the margins it leaves
    (`check --bab-domains N`): certified accuracy, margins proved / tried / attacked."""
    x, y = _table(data, "| model | eps | domains | certified | samples tried -> certified | "
                  "margins tried -> proved (attacked) | seconds |")
    for name in ("digits_mlp", "digits_cnn", "digits_resnet"):
        graph = load_model(ROOT / "models" / f"{name}.onnx")
        logits = predict(graph, x).numpy()
        for eps in eps_list:
            for count in [0, *counts]:
                local = certify_local(graph, x, y, logits, eps, bab_domains=count)
                b = local.bab or {}
                print(f"| {name} | {eps:g} | {count} | {local.certified_accuracy:.2%} | "
                      f"{b.get('samples_tried', '-')} -> {b.get('samples_certified', '-')} | "
                      f"{b.get('margins_tried', '-')} -> {b.get('margins_certified', '-')} "
                      f"({b.get('margins_attacked', '-')}) | {local.seconds:.1f} |", flush=True)


def sdp_table(data: Path, eps_list: list[float], domains: int, evaluations: int,
              part: slice) -> None:
    """`check --bab-domains D --sdp-margins N` on digits_cnn, samples `part` (split the
    450 over processes: about 3 s a sample at N = 120): certified, and the sdp stage's
    samples and margins tried -> certified, searches, seconds."""
    x, y = _table(data, "| samples | eps | certified | before the sdp stage | sdp samples "
                  "tried -> certified | margins tried -> proved | searches | seconds |")
    x, y = x[part], y[part]
    graph = load_model(ROOT / "models" / "digits_cnn.onnx")
    logits = predict(graph, x).numpy()
    for eps in eps_list:
        local = certify_local(graph, x, y, logits, eps, bab_domains=domains,
                              sdp_margins=evaluations)
        s = local.sdp or {}
        alone = int(local.certified.sum()) - s.get("samples_certified", 0)
        print(f"| {part.start}:{part.stop} | {eps:g} | {int(local.certified.sum())} | {alone} | "
              f"{s.get('samples_tried')} -> {s.get('samples_certified')} | "
              f"{s.get('margins_tried')} -> {s.get('margins_certified')} | "
              f"{s.get('searches')} | {local.seconds:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--eps", default="0.02,0.05,0.1")
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--bab", default="", help="comma-separated --bab-domains counts: "
                        "only the branch-and-bound table, for these counts")
    parser.add_argument("--sdp", type=int, default=0, help="--sdp-margins N: only the "
                        "digits_cnn table of the gate with --bab-domains 30 and this N")
    parser.add_argument("--part", default="0:450", help="with --sdp: samples START:STOP")
    args = parser.parse_args()
    torch.set_num_threads(1)
    eps_list = [float(e) for e in args.eps.split(",")]
    if args.sdp:
        start, stop = (int(v) for v in args.part.split(":"))
        sdp_table(Path(args.data), eps_list, 30, args.sdp, slice(start, stop))
        return
    if args.bab:
        bab_table(Path(args.data), eps_list, [int(d) for d in args.bab.split(",")])
        return
    if not args.skip_accuracy:
        accuracy_table(Path(args.data), eps_list)
    zonotope_table(Path(args.data), eps_list, args.points)
    eclipse_table(Path(args.data), eps_list, args.points)


if __name__ == "__main__":
    main()
