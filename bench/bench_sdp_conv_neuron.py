"""What limits sdp-conv's channel-wise LMI: the dummy slots or the shared multipliers?

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_sdp_conv_neuron.py [--full SECONDS]

On small copies of the first-row CNN (conv(1->c1,k3)-relu-conv(c1->c2,k3,s2)-relu-linear,
seed 0) three LMIs, each searched by L-BFGS to convergence (searched sqrt(rho), not
certified): the circular channel-wise one (sdp_conv.optimise), the same on the real
neurons only (dense matrices, one multiplier per channel shared by its real positions:
no dummies), and per-neuron multipliers on the real neurons (dense LipSDP-Neuron).
--full SECONDS: on the first-row CNN itself, the per-neuron search (neuron_eval) from the
channel-wise optimum for that long, printing its progress.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lipcheck.estimators.upper.autolip import bound_nodes
from lipcheck.estimators.upper.chains import find_chains
from lipcheck.estimators.upper.conv_chain import circular_chain
from lipcheck.estimators.upper.neuron_conv import neuron_chain
from lipcheck.estimators.upper.neuron_eval import NeuronProblem
from lipcheck.estimators.upper.sdp_conv import _symbols, fast_start, optimise, spectrum
from lipcheck.estimators.upper.sdp_conv_neuron import start_point
from lipcheck.estimators.upper.sdp_cost import Budget
from lipcheck.graph import Graph, Node, OpKind, ValueInfo
from lipcheck.interpreter import infer_shapes
from lipcheck.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent))


def small_cnn(size: int, c1: int, c2: int, seed: int = 0) -> Graph:
    torch.manual_seed(seed)
    a, b = torch.nn.Conv2d(1, c1, 3), torch.nn.Conv2d(c1, c2, 3, stride=2)
    m = (size - 5) // 2 + 1
    fc = torch.nn.Linear(c2 * m * m, 10)
    consts = {"w1": a.weight.detach(), "b1": a.bias.detach(), "w2": b.weight.detach(),
              "b2": b.bias.detach(), "w3": fc.weight.detach().reshape(10, c2, m, m),
              "b3": fc.bias.detach()}
    nodes = [Node("conv1", OpKind.CONV, ["x", "w1", "b1"], ["c1"]),
             Node("relu1", OpKind.RELU, ["c1"], ["r1"]),
             Node("conv2", OpKind.CONV, ["r1", "w2", "b2"], ["c2"], {"strides": [2, 2]}),
             Node("relu2", OpKind.RELU, ["c2"], ["r2"]),
             Node("fc", OpKind.CONV, ["r2", "w3", "b3"], ["y"])]
    g = Graph([ValueInfo("x", (1, 1, size, size))], ["y"], nodes, consts)
    infer_shapes(g)
    return g


def lbfgs(value, params, stages=(30.0, 300.0, 3000.0), steps=100) -> float:
    """The smallest top eigenvalue seen by L-BFGS on a smooth maximum of log eig."""
    best = [math.inf]
    for sharpness in stages:
        opt = torch.optim.LBFGS(params, lr=1, max_iter=steps, history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-12,
                                tolerance_change=1e-14)

        def closure(opt=opt, sharpness=sharpness):
            opt.zero_grad()
            ev = value()
            if ev is None or float(ev[-1].detach()) <= 0:
                loss = sum(p.sum() for p in params) * 0 + 1e3
            else:
                best[0] = min(best[0], float(ev[-1].detach()))
                loss = torch.log(ev[-1]) + torch.logsumexp(
                    sharpness * (ev / ev[-1].detach() - 1), 0) / sharpness
            loss.backward()
            return loss
        opt.step(closure)
    return best[0]


def dense_lmi(weights: list[np.ndarray], groups: list[np.ndarray | None]) -> float:
    """rho of the dense chain with multipliers shared within `groups` (None: per neuron)."""
    a = [torch.from_numpy(weights[0])[None], torch.from_numpy(weights[1])[None]]
    border, weight = torch.from_numpy(weights[2])[None], torch.ones(1, dtype=torch.float64)
    start = fast_start(a, 1.0)
    params = [torch.full((len(t) if g is None else int(g.max()) + 1,), float(torch.log(t[0])),
                         dtype=torch.float64, requires_grad=True)
              for t, g in zip(start, groups, strict=True)]

    def value():
        ts = [torch.exp(p if g is None else p[torch.from_numpy(g)])
              for p, g in zip(params, groups, strict=True)]
        return spectrum(a, border, weight, ts, 1.0)
    return lbfgs(value, params)


def chain_and_model(g: Graph):
    s = Settings(extra={"sdp_conv_dense": False})
    (chain,) = find_chains(g, bound_nodes(g, s), s)
    model, _ = circular_chain(chain, g)
    return chain, model


def three_lmis(size: int, c1: int, c2: int) -> None:
    chain, model = chain_and_model(small_cnn(size, c1, c2))
    ts, _, _ = optimise(model, 100, Budget())
    circ = float(spectrum(*_symbols(model), [torch.from_numpy(t) for t in ts], 1.0)[-1])
    weights = [p.matrix() for p in chain.parts]
    m1, m2 = size - 2, (size - 5) // 2 + 1
    groups = [np.repeat(np.arange(c1), m1 * m1), np.repeat(np.arange(c2), m2 * m2)]
    channel = dense_lmi(weights, groups)
    neuron = dense_lmi(weights, [None, None])
    print(f"1x{size}x{size} conv 1->{c1}, {c1}->{c2}: circular channel-wise "
          f"{math.sqrt(circ):.4f}, real neurons channel-wise {math.sqrt(channel):.4f}, "
          f"per-neuron {math.sqrt(neuron):.4f} (load {os.getloadavg()[0]:.1f})", flush=True)


def full(seconds: float) -> None:
    from bench_seqlip import cnn_graph
    _, model = chain_and_model(cnn_graph())
    sym = _symbols(model)
    ts, _, _ = optimise(model, 40, Budget(), sym, fast_start(sym[0], 1.0))
    rho = float(spectrum(*sym, [torch.from_numpy(t) for t in ts], 1.0)[-1])
    problem = NeuronProblem(neuron_chain(model.layers, model.close, model.slope))
    logs = [torch.log(torch.from_numpy(t)).requires_grad_(True)
            for t in start_point(model, ts, rho)]
    first = problem.spectrum(*[torch.exp(t.detach()) for t in logs])
    print(f"circular {math.sqrt(rho):.5f}; its multipliers on the real neurons "
          f"{math.sqrt(float(first[-1])):.5f}", flush=True)
    begin, count = time.monotonic(), [0]

    def value():
        if time.monotonic() - begin > seconds:
            raise TimeoutError
        count[0] += 1
        if count[0] % 10 == 0:
            print(f"{count[0]} evaluations, {time.monotonic() - begin:.0f} s", flush=True)
        return problem.spectrum(*[torch.exp(t) for t in logs])
    try:
        lbfgs(value, logs, stages=(300.0, 3000.0), steps=100000)
    except TimeoutError:
        pass
    ev = problem.spectrum(*[torch.exp(t.detach()) for t in logs])
    print(f"per-neuron after {count[0]} evaluations: {math.sqrt(float(ev[-1])):.5f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--full", type=float, default=0.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for size, c1, c2 in ((12, 4, 8), (12, 16, 32)):
        three_lmis(size, c1, c2)
    if args.full > 0:
        full(args.full)


if __name__ == "__main__":
    main()
