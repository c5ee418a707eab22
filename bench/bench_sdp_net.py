"""sdp-net (LipSDP-Neuron of the whole network in its ReLU form) against AutoLip, sdp-conv,
the lower bound and heuristic SeqLip: the table of docs/methods/sdp-net.md.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_sdp_net.py [--models a,b] [--json out.json]

Each (model, run) is its own process (`--one MODEL RUN`), one thread; peak memory is that
process's maximum resident set size (torch included). Runs:
- auto: the default `estimate` (sdp-net:quick among the methods), with its lower bound;
- full: `--method sdp-net` alone (its count from the budget), `--time-budget 1200`, no lower search;
- full300: the same at `--time-budget 300`;
- seqlip: `--method seqlip-lowrank` (k = 200, an estimate, not a bound).
Models: models/digits_cnn.onnx, models/digits_resnet.onnx, and pool2: a random
conv(1->6,k3,p1)-relu-maxpool2-conv(6->12,k3,p1)-relu-maxpool2-linear(->10) at 1x12x12.
Every row carries os.getloadavg() at its end: this machine is shared.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from lipcheck.api import EstimateOptions, estimate
from lipcheck.graph import Graph, Node, OpKind, ValueInfo
from lipcheck.interpreter import infer_shapes
from lipcheck.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
BUDGETS = {"full": 1200.0, "full300": 300.0}   # --time-budget of the runs (default 60)
MODELS = ("digits_cnn", "digits_resnet", "pool2")
RUNS = {"auto": dict(methods=("auto",)),
        "full": dict(methods=("sdp-net",), lower_budget=0),
        "full300": dict(methods=("sdp-net",), lower_budget=0),
        "seqlip": dict(methods=("seqlip-lowrank",), lower_budget=0)}


def pool2_graph(seed: int = 0) -> Graph:
    gen = torch.Generator().manual_seed(seed)
    c = {"w0": torch.randn(6, 1, 3, 3, generator=gen) / 3, "b0": torch.randn(6, generator=gen),
         "w1": torch.randn(12, 6, 3, 3, generator=gen) / 7, "b1": torch.randn(12, generator=gen),
         "wf": torch.randn(10, 108, generator=gen) / 10}
    pool = {"kernel_shape": [2, 2], "strides": [2, 2]}
    nodes = [Node("conv0", OpKind.CONV, ["x", "w0", "b0"], ["c0"], {"pads": [1, 1, 1, 1]}),
             Node("relu0", OpKind.RELU, ["c0"], ["r0"]),
             Node("pool0", OpKind.MAX_POOL, ["r0"], ["p0"], pool),
             Node("conv1", OpKind.CONV, ["p0", "w1", "b1"], ["c1"], {"pads": [1, 1, 1, 1]}),
             Node("relu1", OpKind.RELU, ["c1"], ["r1"]),
             Node("pool1", OpKind.MAX_POOL, ["r1"], ["p1"], pool),
             Node("flat", OpKind.FLATTEN, ["p1"], ["f"], {"axis": 1}),
             Node("fc", OpKind.GEMM, ["f", "wf"], ["y"], {"transB": 1})]
    g = Graph([ValueInfo("x", (1, 1, 12, 12))], ["y"], nodes, c)
    infer_shapes(g)
    return g


def model_of(name: str):
    return pool2_graph() if name == "pool2" else str(ROOT / "models" / f"{name}.onnx")


def one(name: str, run: str) -> dict:
    torch.set_num_threads(1)
    settings = Settings(time_budget=BUDGETS.get(run, 60.0))
    start = time.monotonic()
    report = estimate(model_of(name), settings=settings, options=EstimateOptions(**RUNS[run]))
    row: dict = {"model": name, "run": run, "seconds": time.monotonic() - start}
    for b in report.bounds:
        row[b.method] = b.value
        row[b.method + "_kind"] = b.kind
        if b.method == "sdp-net":
            row["sdp_net_seconds"] = b.seconds
            row["evaluations"] = b.extra.get("evaluations")
            row["cut_by_budget"] = b.extra.get("cut_by_budget")
    if report.lower_bound is not None:
        row["lower"] = report.lower_bound.value
    row["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row["loadavg"] = os.getloadavg()
    return row


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isinf(v)) else f"{v:.4g}"


def table(rows: list[dict]) -> None:
    fulls = [run for run in BUDGETS if any(r["run"] == run for r in rows)]
    print("| model | AutoLip | sdp-conv (auto) | sdp-net auto (evaluations, time) | "
          + "".join(f"sdp-net --time-budget {BUDGETS[run]:.0f} (evaluations, time) | "
                    for run in fulls)
          + "best lower | low-rank SeqLip (heuristic) | auto time | peak RSS (auto) |")
    print("|---" * (8 + len(fulls)) + "|")
    for name in dict.fromkeys(r["model"] for r in rows):
        by = {r["run"]: r for r in rows if r["model"] == name}
        auto, seq = by.get("auto", {}), by.get("seqlip", {})
        print(f"| {name} | {_fmt(auto.get('autolip'))} | {_fmt(auto.get('sdp-conv'))} | "
              f"{_fmt(auto.get('sdp-net'))} ({auto.get('evaluations')}, "
              f"{_fmt(auto.get('sdp_net_seconds'))} s) | "
              + "".join(f"{_fmt(by.get(run, {}).get('sdp-net'))} "
                        f"({by.get(run, {}).get('evaluations')}, "
                        f"{_fmt(by.get(run, {}).get('sdp_net_seconds'))} s) | " for run in fulls)
              + f"{_fmt(auto.get('lower'))} | {_fmt(seq.get('seqlip-lowrank'))} | "
              f"{_fmt(auto.get('seconds'))} s | {_fmt(auto.get('max_rss_mb'))} MB |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--one", nargs=2)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--runs", default="auto,full,seqlip")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*args.one)))
        return
    rows = []
    for name in args.models.split(","):
        for run in args.runs.split(","):
            out = subprocess.run([sys.executable, __file__, "--one", name, run],
                                 capture_output=True, text=True, check=True,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"})
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    table(rows)


if __name__ == "__main__":
    main()
