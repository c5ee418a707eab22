"""Per-layer certified bounds: tightness, speed and memory (GitHub issue 3).

    .venv/bin/python bench/bench_conv.py [--quick] [--skip-vgg224] [--skip-memory] [--only NAME]

`--only resnet18@224` (or resnet18@32, vgg11@32, vgg11@224, resnet50@224) runs one network:
the speed target (certified vs 100-iteration power iteration, one thread) is the
resnet18@224 line; the peak-RSS line is meaningful with `--only resnet50@224`.

Builds ResNet-18-, VGG-11- and ResNet-50-shaped conv/linear layer lists with random
weights (one single-node graph per layer), bounds every layer with lipcheck's default
(auto) per-layer method and prints, per network: certified / true (max, median), where
true is a dense SVD for small operators and otherwise a converged warm-started power
iteration (a lower estimate, so the ratio is pessimistic); per layer and in total, the
certified time (with the estimate) versus 100-iteration autograd power iteration over the
same layers in the same run; peak RSS. One thread. The layers share one set of work
buffers, as the nodes of one model's run do.
"""
from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one BLAS thread, before numpy / scipy load (E402 below)

import argparse  # noqa: E402
import math  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from lipcheck.graph import Graph, Node, OpKind, ValueInfo  # noqa: E402
from lipcheck.interpreter import infer_shapes  # noqa: E402
from lipcheck.rules import BoundContext, get_rule  # noqa: E402
from lipcheck.settings import Settings  # noqa: E402
from lipcheck.spectral.operator import apply_with_adjoint, dense_jacobian, node_operator, power_norm  # noqa: E402
from lipcheck.spectral.scratch import Scratch  # noqa: E402

Layer = tuple[str, int, int, int, int, int, int]  # name, c_in, c_out, k, stride, pad, input size


def resnet_layers(size: int, blocks: list[int], bottleneck: bool) -> list[Layer]:
    layers: list[Layer] = [("stem", 3, 64, 7, 2, 3, size)]
    n, c_in = (size + 1) // 2, 64
    n = (n - 1) // 2 + 1  # max pool 3x3 s2 p1
    for stage, (count, width) in enumerate(zip(blocks, [64, 128, 256, 512], strict=True)):
        for b in range(count):
            stride = 2 if stage > 0 and b == 0 else 1
            c_out = width * 4 if bottleneck else width
            layers += _block(f"l{stage + 1}.{b}", c_in, width, c_out, stride, n, bottleneck)
            n = (n - 1) // stride + 1
            c_in = c_out
    return layers


def _block(name: str, c_in: int, width: int, c_out: int, stride: int, n: int,
           bottleneck: bool) -> list[Layer]:
    m = (n - 1) // stride + 1
    if bottleneck:
        out = [(f"{name}.conv1", c_in, width, 1, 1, 0, n),
               (f"{name}.conv2", width, width, 3, stride, 1, n),
               (f"{name}.conv3", width, c_out, 1, 1, 0, m)]
    else:
        out = [(f"{name}.conv1", c_in, width, 3, stride, 1, n),
               (f"{name}.conv2", width, width, 3, 1, 1, m)]
    if stride != 1 or c_in != c_out:
        out.append((f"{name}.down", c_in, c_out, 1, stride, 0, n))
    return out


def vgg11_layers(size: int) -> list[Layer]:
    layers, c_in, n = [], 3, size
    for i, v in enumerate([64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512]):
        if v == "M":
            n //= 2
            continue
        layers.append((f"conv{i}", c_in, int(v), 3, 1, 1, n))
        c_in = int(v)
    return layers


def layer_graph(layer: Layer, gen: torch.Generator) -> Graph:
    _, c_in, c_out, k, stride, pad, n = layer
    w = torch.randn(c_out, c_in, k, k, generator=gen) * math.sqrt(2.0 / (c_in * k * k))
    node = Node("conv", OpKind.CONV, ["x", "w"], ["y"],
                {"strides": [stride] * 2, "pads": [pad] * 4, "kernel_shape": [k, k]})
    g = Graph([ValueInfo("x", (1, c_in, n, n))], ["y"], [node], {"w": w})
    infer_shapes(g)
    return g


def dense_graph(n_in: int, n_out: int, gen: torch.Generator) -> Graph:
    w = torch.randn(n_out, n_in, generator=gen) / math.sqrt(n_in)
    node = Node("fc", OpKind.GEMM, ["x", "w"], ["y"], {"transB": 1})
    g = Graph([ValueInfo("x", (1, n_in))], ["y"], [node], {"w": w})
    infer_shapes(g)
    return g


def certified(graph: Graph, settings: Settings, scratch: Scratch | None = None
              ) -> tuple[float, float | None, str, float]:
    """One layer's certified bound; `scratch` shares work buffers between the layers as
    one model's run does (lipcheck estimate bounds all nodes with one BoundContext)."""
    node = graph.nodes[0]
    start = time.perf_counter()
    bound = get_rule(node.op).bound(node, BoundContext(graph, settings, scratch or Scratch()))
    return bound.value, bound.estimate, bound.method, time.perf_counter() - start


def truth(graph: Graph, estimate: float | None) -> float:
    """Dense SVD when small, else a converged power iteration (float32, warm start not
    needed: up to 400 iterations, tolerance 1e-6), or the estimate if larger (pass None
    where the estimate is the certified value itself, as for exact-gram)."""
    node = graph.nodes[0]
    ctx = BoundContext(graph, Settings(dtype="float64"))
    op = node_operator(node, ctx)
    if min(op.n_in, op.n_out) <= 2048 and op.n_in * op.n_out <= 2**23:
        return float(torch.linalg.matrix_norm(dense_jacobian(op), 2))
    op32 = node_operator(node, ctx, torch.float32)
    result = power_norm(op32, 400, 1e-6, 0).value
    return max(result, estimate or 0.0)


def warm_power(op, v: torch.Tensor, iters: int) -> float:
    """Plain autograd power iteration on A^T A (the reference the issue compares with)."""
    sigma = 0.0
    with torch.no_grad():
        for _ in range(iters):
            v = v / v.norm()
            u, adjoint = apply_with_adjoint(op, v)
            sigma = max(sigma, float(u.norm()))
            v = adjoint(u)
    return sigma


def power100(graph: Graph) -> float:
    op = node_operator(graph.nodes[0], BoundContext(graph, Settings()), torch.float32)
    start = time.perf_counter()
    warm_power(op, torch.randn(op.in_shape), 100)
    return time.perf_counter() - start


LAYER_BUDGET = 60.0  # seconds per layer: the numbers in the issue note were taken with this


def run_network(name: str, layers: list[Layer], with_truth: bool, with_power: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    settings = Settings(layer_budget=LAYER_BUDGET)
    ratios, cert_time, power_time = [], 0.0, 0.0
    # one-time library set-up, charged to neither side
    warm = layer_graph(("warm-up", 4, 4, 3, 2, 1, 16), gen)
    certified(warm, settings), power100(warm)
    scratch = Scratch()
    print(f"\n== {name}: {len(layers)} conv layers")
    for layer in layers:
        graph = layer_graph(layer, gen)
        value, estimate, method, seconds = certified(graph, settings, scratch)
        cert_time += seconds
        line = f"{layer[0]:>12} {layer[1]:>4}->{layer[2]:<4} k{layer[3]} s{layer[4]} " \
               f"@{layer[6]:<4} {method:>10} {value:9.4f} " \
               f"est {estimate or float('nan'):9.4f} {seconds:6.2f}s"
        if with_power:
            seconds_power = power100(graph)
            power_time += seconds_power
            line += f"  power100 {seconds_power:5.2f}s"
        if with_truth:
            true = truth(graph, None if method.startswith("exact") else estimate)
            ratios.append(value / true)
            line += f"  true {true:9.4f}  ratio {value / true:.4f}"
        print(line, flush=True)
    if ratios:
        print(f"{name}: certified/true max {max(ratios):.4f} "
              f"median {statistics.median(ratios):.4f}")
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"{name}: certified (with estimate) {cert_time:.2f}s"
          + (f", 100-iteration power iteration {power_time:.2f}s, "
             f"speed-up {power_time / cert_time:.2f}x" if with_power else "")
          + f" [load average {load}]")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


NETWORKS = {
    "resnet18@32": (lambda: resnet_layers(32, [2, 2, 2, 2], False), True, False),
    "vgg11@32": (lambda: vgg11_layers(32), True, False),
    "resnet18@224": (lambda: resnet_layers(224, [2, 2, 2, 2], False), True, True),
    "vgg11@224": (lambda: vgg11_layers(224), True, False),
    "resnet50@224": (lambda: resnet_layers(224, [3, 4, 6, 3], True), False, False),
}


def _skipped(name: str, args: argparse.Namespace) -> bool:
    big = name.endswith("@224")
    return (args.quick and big) or (args.skip_vgg224 and name == "vgg11@224") or \
        (args.skip_memory and name == "resnet50@224")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="32x32 inputs only")
    parser.add_argument("--skip-vgg224", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--only", choices=list(NETWORKS), help="run one network")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name, (layers, with_truth, with_power) in NETWORKS.items():
        if args.only and name != args.only:
            continue
        if not args.only and _skipped(name, args):
            continue
        run_network(name, layers(), with_truth, with_power)
    print(f"peak RSS {peak_rss_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
