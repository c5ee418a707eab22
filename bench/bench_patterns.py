"""Gaps of the default `lipcheck estimate` on MLPs (GitHub issue 12, item 3).

  PYTHONPATH=. .venv/bin/python bench/bench_patterns.py [--lipsdp DIR] [--nets a,b,...]
                                                         [--lower-budget 10] [--no-patterns]
                                                         [--both | --compare]

Nets (`--nets`, default all that are available):
  lipsdp-mnist   LipSDP's MNIST net 784-50-10 (DIR/mnist_weights.mat, no biases)
  lipsdp-random  LipSDP's random net 2-10-30-20-2 (DIR/random_weights.mat)
  mlp500         784-500-500-10 ReLU MLP, torch default init, seed 0 (bench_seqlip.mlp_graph)
  digits_mlp     models/digits_mlp.onnx
DIR holds LipSDP's published weights (github.com/arobey1/LipSDP,
LipSDP/examples/saved_weights/*.mat): they are not part of this repository.

Prints one row per net: certified lower and upper bound, gap, the lower bound's method,
the seconds of the lower-bound phase and of the whole run, with os.getloadavg().
`--no-patterns` runs the lower-bound search without the activation-pattern phase
(the "before" column of the issue's table, measured in the same run).
`--compare` runs each net without, then with the LipSDP-Neuron descent for chains above
the barrier's size (upper/sdp_schur.py; "descent" column), both with the pattern phase.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))


def lipsdp_graph(path: Path):
    import scipy.io

    from lipcheck.estimators.exact.pwl_chain import mlp_graph
    weights = [np.asarray(w, dtype=np.float64) for w in scipy.io.loadmat(path)["weights"].ravel()]
    return mlp_graph(weights, [np.zeros(w.shape[0]) for w in weights])


def nets(lipsdp: Path | None, names: list[str] | None):
    table = {}
    if lipsdp is not None:
        table["lipsdp-mnist"] = lambda: lipsdp_graph(lipsdp / "mnist_weights.mat")
        table["lipsdp-random"] = lambda: lipsdp_graph(lipsdp / "random_weights.mat")
    table["mlp500"] = lambda: __import__("bench_seqlip").mlp_graph([784, 500, 500, 10])
    table["digits_mlp"] = lambda: str(ROOT / "models" / "digits_mlp.onnx")
    for name in names or table:
        if name not in table:
            raise SystemExit(f"unknown or unavailable net {name!r} (LipSDP nets need --lipsdp DIR)")
        yield name, table[name]()


DESCENT_DIMS = {}


def descent(on: bool) -> None:
    """Turn the LipSDP descent (sdp and sdp:quick above the barrier's size) on or off."""
    from lipcheck.estimators.upper import global_bounds as gb
    if not DESCENT_DIMS:
        DESCENT_DIMS.update(full=gb.DESCENT_MAX_DIM, quick=gb.QUICK_DESCENT_DIM)
    gb.DESCENT_MAX_DIM = DESCENT_DIMS["full"] if on else 0
    gb.QUICK_DESCENT_DIM = DESCENT_DIMS["quick"] if on else 0


def run(model, lower_budget: float, patterns: bool, with_descent: bool = True) -> dict:
    from lipcheck import api
    from lipcheck.estimators.lower import rounds
    rounds.PATTERNS = patterns
    descent(with_descent)
    start = time.perf_counter()
    report = api.estimate(model, options=api.EstimateOptions(lower_budget=lower_budget))
    total = time.perf_counter() - start
    low, up = report.lower_bound, report.upper_bound
    return {"lower": low.value, "upper": up.value, "upper_method": up.method,
            "gap": up.value / low.value if low.value > 0 else float("inf"),
            "method": low.method, "lower_s": report.timings.get("lower_bound", float("nan")),
            "total_s": total,
            "violation": any(w.code == "bound_violation" for w in report.warnings)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lipsdp", type=Path, default=None)
    parser.add_argument("--nets", default=None)
    parser.add_argument("--lower-budget", type=float, default=10.0)
    parser.add_argument("--no-patterns", action="store_true")
    parser.add_argument("--both", action="store_true", help="without, then with the pattern phase")
    parser.add_argument("--compare", action="store_true",
                        help="without, then with the LipSDP descent (pattern phase on)")
    args = parser.parse_args()
    modes = ([(False, True), (True, True)] if args.both else
             [(True, False), (True, True)] if args.compare else [(not args.no_patterns, True)])
    print("| net | patterns | descent | lower | upper (method) | gap | lower method | lower s "
          "| total s | load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, model in nets(args.lipsdp, args.nets.split(",") if args.nets else None):
        for patterns, with_descent in modes:
            r = run(model, args.lower_budget, patterns, with_descent)
            load = " ".join(f"{v:.2f}" for v in os.getloadavg())
            print(f"| {name} | {'on' if patterns else 'off'} | {'on' if with_descent else 'off'} "
                  f"| {r['lower']:.9g} | {r['upper']:.9g} "
                  f"({r['upper_method']}) | {r['gap']:.5f}"
                  f"{' VIOLATION' if r['violation'] else ''} | {r['method']} | "
                  f"{r['lower_s']:.1f} | {r['total_s']:.1f} | {load} |", flush=True)


if __name__ == "__main__":
    main()
