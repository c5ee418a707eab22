"""Issue 11's last CNN row: 3 x (conv3x3 pad1 + ReLU + MaxPool2) + Linear 1152-256-10 at
1x28x28, trained here, then AutoLip vs sdp-conv vs ECLipsE-Fast vs the best lower bound.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_pool_cnn.py [--epochs 3] [--json out.json]

Data: scikit-learn's 8x8 digits (models/digits_data.py's split) upsampled bilinearly to
28x28. Training: Adam (lr 1e-3), batches of 64, a fixed shuffle, torch.manual_seed(0),
one thread. The model is written to bench/out/pool_cnn.onnx (git-ignored, made here).
Each estimate runs in this process, default settings; os.getloadavg() is printed with
every timing (the machine is shared).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT / "models"))
from digits_data import digits_split  # noqa: E402

from lipcheck.api import EstimateOptions, estimate  # noqa: E402
from lipcheck.settings import Settings  # noqa: E402


def pool_cnn() -> nn.Module:
    layers: list[nn.Module] = []
    for c_in, c_out in ((1, 32), (32, 64), (64, 128)):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(1152, 256), nn.ReLU(),
                         nn.Linear(256, 10))


def data() -> tuple[torch.Tensor, ...]:
    x, y, x_test, y_test = digits_split()
    up = [nn.functional.interpolate(torch.from_numpy(v).reshape(-1, 1, 8, 8), size=(28, 28),
                                    mode="bilinear", align_corners=False) for v in (x, x_test)]
    return up[0], torch.from_numpy(y).long(), up[1], torch.from_numpy(y_test).long()


def train(epochs: int) -> tuple[nn.Module, float, float]:
    torch.manual_seed(0)
    model = pool_cnn()
    x, y, x_test, y_test = data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    start = time.monotonic()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x_test).argmax(1) == y_test).float().mean())
    return model, accuracy, time.monotonic() - start


def export(model: nn.Module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), str(path), dynamo=False,
                      opset_version=17, do_constant_folding=False, input_names=["input"],
                      output_names=["logits"])


def measure(path: Path) -> dict:
    row: dict = {}
    start = time.monotonic()
    report = estimate(str(path), settings=Settings(), options=EstimateOptions(methods=("auto",)))
    row["auto_seconds"] = time.monotonic() - start
    for b in report.bounds:
        row[b.method] = b.value
        row[b.method + "_kind"] = b.kind
        if b.method == "sdp-conv":
            row["sdp_conv_detail"] = b.detail
            row["sdp_conv_seconds"] = b.seconds
    upper = [b for b in report.bounds if b.kind == "upper"]
    best = min(upper, key=lambda b: b.value)
    row["best_upper"], row["best_method"] = best.value, best.method
    lower = report.lower_bound
    row["lower"] = getattr(lower, "value", None) if lower is not None else None
    row["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row["loadavg"] = os.getloadavg()
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, accuracy, seconds = train(args.epochs)
    path = OUT / "pool_cnn.onnx"
    export(model, path)
    row = {"model": "pool_cnn", "test_accuracy": accuracy, "train_seconds": seconds,
           "train_loadavg": os.getloadavg(), **measure(path)}
    print(json.dumps(row, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=1))
    if row.get("autolip") and row.get("best_upper"):
        print(f"AutoLip / best certified = {row['autolip'] / row['best_upper']:.3g}")


if __name__ == "__main__":
    main()
