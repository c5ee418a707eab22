"""Times `estimate` on a ~1M-parameter CNN at 3x32x32, relative to one forward pass.

Run: .venv/bin/python bench/bench_estimate.py   (one thread; ratios measured in one run)
"""
from __future__ import annotations

import time

import torch
from torch import nn

from lipcheck.api import EstimateOptions, estimate
from lipcheck.settings import Settings


def cnn() -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
    layers = block(3, 32) + block(32, 64) + [nn.MaxPool2d(2)] + block(64, 128) + \
        [nn.MaxPool2d(2)] + block(128, 128) + [nn.MaxPool2d(2)] + block(128, 256) + \
        block(256, 256) + [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 10)]
    torch.manual_seed(0)
    model = nn.Sequential(*layers).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
            m.running_mean.normal_()
    return model


def timed(fn, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    torch.set_num_threads(1)
    model = cnn()
    params = sum(p.numel() for p in model.parameters())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model(x)
        forward = timed(lambda: model(x), repeat=20)
    print(f"CNN: {params / 1e6:.2f} M parameters, input 1x3x32x32, forward {forward * 1e3:.2f} ms")
    for method in ("auto", "power"):
        settings = Settings(layer_method=method)
        options = EstimateOptions(methods=("autolip",), lower_budget=0)
        start = time.perf_counter()
        report = estimate(model, [(1, 3, 32, 32)], settings, options)
        seconds = time.perf_counter() - start
        ub = [b for b in report.bounds if b.method == "autolip"][0]
        print(f"layer-method={method:5s}: {seconds:6.2f} s = {seconds / forward:8.0f} forward "
              f"passes; AutoLip {ub.value:.4g} ({'certified' if ub.certified else 'estimate'}); "
              f"load {report.timings['load']:.2f} s, layers {report.timings['layers']:.2f} s")


if __name__ == "__main__":
    main()
