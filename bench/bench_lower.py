"""Lower bounds against exact values and upper bounds (GitHub issue 5).

  .venv/bin/python bench/bench_lower.py [--nets N] [--budgets 1,10,60] [--skip-models]
                                       [--models digits_cnn,...]

1. Random 2-layer ReLU nets (hidden width <= 16): brute-force exact constant, the
   certified lower bound (5 s budget), AutoLip and (when present) exact SeqLip upper
   bounds; the relative differences lower/exact and upper/exact.
2. models/digits_*.onnx (when present): the gap (best certified upper / lower) for the
   default deterministic search (DEFAULT_ROUNDS rounds) and at each lower-bound budget
   (rounds until the clock stops), on the whole input space and on the pixel box [0, 1].
   Times are wall-clock and CPU seconds, with os.getloadavg() (shared machines).
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lipcheck.estimators.exact.pwl_chain import mlp_graph
from lipcheck.estimators.lower.rounds import DEFAULT_ROUNDS, lower_bound
from lipcheck.estimators.upper.autolip import autolip, bound_nodes
from lipcheck.settings import Settings

MODELS = Path(__file__).resolve().parent.parent / "models"


def brute_force(w1: np.ndarray, w2: np.ndarray) -> float:
    return max(np.linalg.norm(w2 @ np.diag(s) @ w1, 2)
               for s in itertools.product((0.0, 1.0), repeat=w1.shape[0]))


def certified_uppers(graph, methods: list[str]) -> dict[str, float]:
    settings = Settings()
    nodes = bound_nodes(graph, settings)
    out = {"autolip": autolip(graph, nodes).value}
    try:
        from lipcheck.estimators.upper.global_bounds import global_bounds
    except ImportError:
        return out
    for b in global_bounds(graph, nodes, methods, settings):
        if b.kind == "upper" and b.certified:
            out[b.method] = min(b.value, out.get(b.method, float("inf")))
    return out


def random_nets(count: int) -> None:
    print("| n_in | hidden | exact | lower | lower/exact-1 | seqlip-exact/exact-1 "
          "| autolip/exact |")
    print("|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for i in range(count):
        n_in, h = [(16, 16), (8, 12), (4, 16), (12, 8)][i % 4]
        w1, w2 = rng.standard_normal((h, n_in)) / np.sqrt(n_in), rng.standard_normal((5, h)) / 4
        b1, b2 = rng.standard_normal(h) * 0.5, rng.standard_normal(5)
        graph = mlp_graph([w1, w2], [b1, b2])
        w1, w2 = (graph.constants[k].double().numpy() for k in ("W0", "W1"))
        exact = brute_force(w1, w2) if n_in >= h else None
        low = lower_bound(graph, budget_s=5.0, seed=0).value
        ups = certified_uppers(graph, ["seqlip-exact"])
        ref = exact if exact is not None else ups.get("seqlip-exact", float("nan"))
        seq = ups.get("seqlip-exact", float("nan"))
        note = "" if exact else " (seqlip-exact, an upper bound here)"
        print(f"| {n_in} | {h} | {ref:.9g}{note} | {low:.9g} | "
              f"{low / ref - 1:.1e} | {seq / ref - 1:.1e} | {ups['autolip'] / ref:.3f} |")
        assert low <= ref * (1 + 1e-9), "certified lower bound above the exact constant"


def model_gaps(budgets: list[float], names: list[str]) -> None:
    try:
        from lipcheck.loaders.dispatch import load_model
    except ImportError:
        print("lipcheck.loaders.dispatch is missing: model rows skipped")
        return
    for name in names:
        path = MODELS / f"{name}.onnx"
        if not path.exists():
            print(f"{path} not found: skipped")
            continue
        graph = load_model(path)
        start = time.perf_counter()
        ups = certified_uppers(graph, ["all"])
        best = min(ups, key=ups.get)
        print(f"\n{name}: best certified upper {ups[best]:.6g} ({best}; "
              f"{time.perf_counter() - start:.1f} s); all: "
              + ", ".join(f"{k}={v:.4g}" for k, v in sorted(ups.items())))
        print("| budget s | rounds | box | lower | method | wall s | cpu s | load | gap |")
        print("|---|---|---|---|---|---|---|---|---|")
        runs = [(None, DEFAULT_ROUNDS)] + [(b, None) for b in budgets]
        for (budget, rounds), box in itertools.product(runs, (None, (0.0, 1.0))):
            _gap_row(graph, budget, rounds, box, ups[best])


def _gap_row(graph, budget: float | None, rounds: int | None, box, upper: float) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    low = lower_bound(graph, budget_s=budget or 1e9, seed=0, input_range=box, rounds=rounds)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"| {'-' if budget is None else f'{budget:g}'} | {low.extra['rounds']} | "
          f"{'[0,1]' if box else 'none'} | {low.value:.6g} | {low.method} | {wall:.2f} | "
          f"{cpu:.2f} | {os.getloadavg()[0]:.1f} | {upper / low.value:.3f} |", flush=True)
    assert low.value <= upper * (1 + 1e-9), "lower bound above a certified upper"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", type=int, default=8)
    parser.add_argument("--budgets", default="1,10,60")
    parser.add_argument("--skip-models", action="store_true")
    parser.add_argument("--models", default="digits_mlp,digits_spectral,digits_cnn,digits_resnet")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()}")
    random_nets(args.nets)
    if not args.skip_models:
        model_gaps([float(b) for b in args.budgets.split(",")], args.models.split(","))


if __name__ == "__main__":
    main(sys.argv[1:])
