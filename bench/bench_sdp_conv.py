"""sdp-conv (issue 11) against AutoLip, the other certified bounds and the lower bounds.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_sdp_conv.py [--heuristic] [--json out.json]

Each model runs in its own process (`--one NAME`), one thread, default settings
(`--method auto`, which includes sdp-conv), plus `--method sdp-conv` alone for its time;
peak memory is that process's maximum resident set size (torch included). Models:
- cnn: conv(1->16,k3)-relu-conv(16->32,k3,s2)-relu-linear(4608->10) at 1x28x28, seed 0
  (bench_seqlip's CNN, the issue's first row);
- cnn3: conv(1->16,k3,p1)-relu-conv(16->32,k3,s2,p1)-BN-relu-conv(32->32,k3,s2,p1)-relu-
  linear(1568->10) at 1x28x28, seed 1 (random weights; BN with random statistics);
- models/digits_cnn.onnx and models/digits_resnet.onnx;
- resnet18_32: ResNet-18 for 3x32x32 inputs (3x3 stem, no max pool; bench/archs.Basic blocks,
  random weights, BatchNorm with random statistics, folded), only `--method sdp-conv` with
  `--time-budget 540` (and AutoLip); no lower bound search (`--one resnet18_32` alone).
--heuristic adds low-rank SeqLip (k=200, an estimate, not a bound) on the two CNNs.
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
sys.path.insert(0, str(ROOT / "bench"))

MODELS = ("cnn", "cnn3", "digits_cnn", "digits_resnet")
LARGE = ("resnet18_32",)   # run only when named: `--one resnet18_32`
RESNET_BUDGET = 540.0   # the whole run (loading, per-layer bounds, sdp-conv) under 10 min


def cnn3_graph(seed: int = 1) -> Graph:
    torch.manual_seed(seed)
    c1 = torch.nn.Conv2d(1, 16, 3, padding=1)
    c2 = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1)
    c3 = torch.nn.Conv2d(32, 32, 3, stride=2, padding=1)
    fc = torch.nn.Linear(32 * 7 * 7, 10)
    consts = {f"w{i}": c.weight.detach() for i, c in enumerate((c1, c2, c3))}
    consts.update({f"b{i}": c.bias.detach() for i, c in enumerate((c1, c2, c3))})
    consts.update({"bns": torch.rand(32) + 0.5, "bnb": torch.randn(32),
                   "bnm": torch.randn(32) * 0.1, "bnv": torch.rand(32) + 0.5,
                   "wf": fc.weight.detach(), "bf": fc.bias.detach()})
    nodes = [Node("conv0", OpKind.CONV, ["x", "w0", "b0"], ["c0"], {"pads": [1, 1, 1, 1]}),
             Node("relu0", OpKind.RELU, ["c0"], ["r0"]),
             Node("conv1", OpKind.CONV, ["r0", "w1", "b1"], ["c1"],
                  {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
             Node("bn1", OpKind.BATCH_NORM, ["c1", "bns", "bnb", "bnm", "bnv"], ["n1"],
                  {"epsilon": 1e-5}),
             Node("relu1", OpKind.RELU, ["n1"], ["r1"]),
             Node("conv2", OpKind.CONV, ["r1", "w2", "b2"], ["c2"],
                  {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
             Node("relu2", OpKind.RELU, ["c2"], ["r2"]),
             Node("flat", OpKind.FLATTEN, ["r2"], ["f"], {"axis": 1}),
             Node("fc", OpKind.GEMM, ["f", "wf", "bf"], ["y"], {"transB": 1})]
    g = Graph([ValueInfo("x", (1, 1, 28, 28))], ["y"], nodes, consts)
    infer_shapes(g)
    return g


def resnet18_32(seed: int = 0) -> torch.nn.Module:
    """ResNet-18 for 32x32 inputs: conv3x3(64)-BN-ReLU, 4 stages of 2 basic blocks
    (64, 128, 256, 512 channels; stride 2 and a 1x1 conv + BN shortcut where a stage
    starts), global average pool, linear(10)."""
    from archs import Basic, _bn
    torch.manual_seed(seed)
    layers = [torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False), _bn(64), torch.nn.ReLU()]
    cin = 64
    for i, c in enumerate((64, 128, 256, 512)):
        for j in range(2):
            layers.append(Basic(cin, c, 2 if (i > 0 and j == 0) else 1))
            cin = c
    layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(cin, 10)]
    return torch.nn.Sequential(*layers).eval()


def large(name: str) -> dict:
    """One run of `--method sdp-conv` (and AutoLip) on a large model, its time and memory."""
    torch.set_num_threads(1)
    row: dict = {"model": name}
    start = time.monotonic()
    report = estimate(resnet18_32(), [(1, 3, 32, 32)],
                      settings=Settings(time_budget=RESNET_BUDGET, timeout=2 * RESNET_BUDGET),
                      options=EstimateOptions(methods=("autolip", "sdp-conv"), lower_budget=0))
    row["sdp_conv_alone_seconds"] = time.monotonic() - start
    for b in report.bounds:
        if b.method in ("autolip", "sdp-conv"):
            row[b.method] = b.value
            row[b.method + "_certified"] = b.kind == "upper"
            if b.method == "sdp-conv":
                row["sdp_conv_seconds"], row["sdp_conv_detail"] = b.seconds, b.detail
    upper = [b for b in report.bounds if b.kind == "upper"]
    best = min(upper, key=lambda b: b.value)
    row["best_upper"], row["best_method"], row["lower"] = best.value, best.method, None
    row["auto_seconds"] = math.nan
    row["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row["loadavg"] = os.getloadavg()
    return row


def model_of(name: str):
    if name == "cnn":
        from bench_seqlip import cnn_graph
        return cnn_graph()
    if name == "cnn3":
        return cnn3_graph()
    return str(ROOT / "models" / f"{name}.onnx")


def one(name: str, heuristic: bool) -> dict:
    if name in LARGE:
        return large(name)
    torch.set_num_threads(1)
    row: dict = {"model": name}
    start = time.monotonic()
    report = estimate(model_of(name), settings=Settings(),
                      options=EstimateOptions(methods=("auto",)))
    row["auto_seconds"] = time.monotonic() - start
    upper = [b for b in report.bounds if b.kind == "upper"]
    for b in report.bounds:
        if b.method in ("autolip", "sdp-conv", "eclipse-fast"):
            row[b.method] = b.value
            row[b.method + "_certified"] = b.kind == "upper"
    best = min(upper, key=lambda b: b.value)
    row["best_upper"], row["best_method"] = best.value, best.method
    lower = report.lower_bound
    row["lower"] = getattr(lower, "value", None) if lower is not None else None
    start = time.monotonic()
    alone = estimate(model_of(name), settings=Settings(),
                     options=EstimateOptions(methods=("sdp-conv",), lower_budget=0))
    row["sdp_conv_alone_seconds"] = time.monotonic() - start
    conv = [b for b in alone.bounds if b.method == "sdp-conv"]
    row["sdp_conv_seconds"] = conv[0].seconds if conv else None
    row["sdp_conv_detail"] = conv[0].detail if conv else "not applicable"
    if heuristic and name.startswith("cnn"):
        settings = Settings()
        rep = estimate(model_of(name), settings=settings,
                       options=EstimateOptions(methods=("seqlip-lowrank",), lower_budget=0))
        row["seqlip_lowrank"] = next(
            (b.value for b in rep.bounds if b.method == "seqlip-lowrank"), None)
    row["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row["loadavg"] = os.getloadavg()
    return row


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isinf(v)) else f"{v:.4g}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--one")
    parser.add_argument("--heuristic", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.heuristic)))
        return
    rows = []
    for name in MODELS:
        cmd = [sys.executable, __file__, "--one", name]
        cmd += ["--heuristic"] if args.heuristic else []
        out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print("| model | AutoLip | sdp-conv (certified) | best certified (method) | best lower | "
          "low-rank SeqLip (heuristic) | sdp-conv time | auto time | peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {_fmt(r.get('autolip'))} | {_fmt(r.get('sdp-conv'))} | "
              f"{_fmt(r['best_upper'])} ({r['best_method']}) | {_fmt(r['lower'])} | "
              f"{_fmt(r.get('seqlip_lowrank'))} | {_fmt(r['sdp_conv_seconds'])} s | "
              f"{r['auto_seconds']:.1f} s | {r['max_rss_mb']:.0f} MB |")


if __name__ == "__main__":
    main()
