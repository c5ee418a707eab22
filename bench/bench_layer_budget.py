"""--layer-budget as a cap (issue 12 item 1): every layer's time against the budget.

    .venv/bin/python bench/bench_layer_budget.py [--budget 5] [--only resnet18@224]

Bounds every layer of ResNet-18 @224 and VGG-11 @224 (its convs and its three classifier
layers, 25088 x 4096 the largest) through the per-layer driver (`bound_nodes`, under the
layer clock), one single-node graph per layer, one thread, and prints per layer: seconds,
method, whether the budget cut it, and the certified value; then the largest layer time
against budget + max(1 s, 10 %) and the number of layers cut. The load average is printed
beside the timings (the machine is shared: compare within a run).
"""
from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from bench_conv import dense_graph, layer_graph, resnet_layers, vgg11_layers  # noqa: E402

from lipcheck.estimators.upper.autolip import bound_nodes  # noqa: E402
from lipcheck.settings import Settings  # noqa: E402
from lipcheck.spectral import layer_clock  # noqa: E402

torch.set_num_threads(1)


def graphs(name: str):
    gen = torch.Generator().manual_seed(0)
    if name == "resnet18@224":
        return [(layer[0], layer_graph(layer, gen)) for layer in resnet_layers(224, [2, 2, 2, 2],
                                                                             False)]
    convs = [(layer[0], layer_graph(layer, gen)) for layer in vgg11_layers(224)]
    return convs + [(f"fc{i}", dense_graph(a, b, gen))
                    for i, (a, b) in enumerate([(25088, 4096), (4096, 4096), (4096, 1000)])]


def run(name: str, budget: float) -> None:
    layer_clock.warm_up()
    settings = Settings(layer_budget=budget)
    worst, cut, total = 0.0, 0, 0.0
    for layer, graph in graphs(name):
        start = time.perf_counter()
        (bound,) = bound_nodes(graph, settings).values()
        seconds = time.perf_counter() - start
        worst, total = max(worst, seconds), total + seconds
        cut += bound.cut_by_budget is not None
        mark = f"cut ({bound.cut_by_budget['stopped']})" if bound.cut_by_budget else ""
        print(f"{name} {layer:12s} {seconds:7.3f}s {bound.method:16s} {bound.value:10.4f} {mark}"
              f"  load {os.getloadavg()[0]:.1f}", flush=True)
    limit = budget + max(1.0, 0.1 * budget)
    print(f"{name}: budget {budget:g}s, largest layer {worst:.2f}s (limit {limit:.2f}s: "
          f"{'held' if worst <= limit else 'NOT held'}), {cut} layers cut, total {total:.1f}s, "
          f"load {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=float, default=5.0)
    parser.add_argument("--only", choices=["resnet18@224", "vgg11@224"])
    args = parser.parse_args()
    for name in [args.only] if args.only else ["resnet18@224", "vgg11@224"]:
        run(name, args.budget)


if __name__ == "__main__":
    main()
