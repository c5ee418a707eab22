"""Probe (uncertified): pool_cnn bounded as a product of pieces, each a channel-wise LipSDP.

    OMP_NUM_THREADS=1 .venv/bin/python bench/probe_pieces.py [--steps 15] [--max-evals 60]
        [--pieces 01,12,23,234]

Needs bench/out/pool_cnn.onnx (bench/bench_pool_cnn.py writes it). A piece is a run of the
linear maps 0..4 (conv1 conv2 conv3 fc1 fc2) with the ReLU + MaxPool gaps between them, its
hidden nodes' multipliers channel-wise as in sdp_conv_pool (the fc1 node of a tail
per-neuron). Closing conv: rho = max_w lambda_max(B_w
X_w^-1 B_w^H); closing fc1: the arrow sum; closing fc2: fc1 as a dense node after the sum.
Values are the search's best rho (not float64-certified): for deciding only.
"""
from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from lipcheck.estimators.upper.conv_chain import (
    CircularChain,
    ConvLayer,
    _grid,
    _taps,
    half_frequencies,
)
from lipcheck.estimators.upper.conv_pool import PooledModel, _phases
from lipcheck.estimators.upper.sdp_conv_pool import _Data, arrow_sum, fast_start, last_k

ROOT = Path(__file__).resolve().parent.parent


def load(path: Path):
    m = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in m.graph.initializer}
    convs, gemms = [], []
    size = 28
    for node in m.graph.node:
        if node.op_type == "Conv":
            w = init[node.input[1]]
            convs.append(ConvLayer(w, (1, 1), (1, 1), (1, 1), (size, size), (size, size)))
            size //= 2
        if node.op_type == "Gemm":
            gemms.append(init[node.input[1]])
    return convs, gemms


class Piece:
    def __init__(self, convs, gemms, maps: list[int]):
        """maps: indices 0..4 into conv1 conv2 conv3 fc1 fc2 (consecutive)."""
        self.maps = maps
        cidx = [i for i in maps if i < 3]
        self.kind = "conv" if maps[-1] < 3 else ("dense" if maps[-1] == 3 else "tail")
        self.dense_only = not cidx
        if self.dense_only:
            return
        hidden = [convs[i] for i in (cidx[:-1] if self.kind == "conv" else cidx)]
        layers = hidden + ([convs[cidx[-1]]] if self.kind == "conv" else [])
        pools = [(2, 2)] * len(hidden) + ([None] if self.kind == "conv" else [])
        in_ph, h_ph, last = _phases(layers, pools, 1)
        grid = _grid(layers, in_ph)
        taps = [_taps(layer, in_ph[i], h_ph[i]) for i, layer in enumerate(layers)]
        phases = h_ph[:len(hidden)]
        h_dims = [c.weight.shape[0] * math.prod(p) for c, p in zip(hidden, phases, strict=True)]
        p_dims = [d // 4 for d in h_dims]
        if self.kind == "conv":
            close = np.zeros((1, hidden[-1].weight.shape[0], 1, 1))
            phases = in_ph[:len(hidden)] + [in_ph[-1]]
        else:
            close = gemms[0].reshape(256, 128, 3, 3)
            phases = in_ph + [last]
        dims = [layers[0].weight.shape[1] * math.prod(in_ph[0])] + h_dims
        base = CircularChain(grid, phases, dims, taps, close, 1.0, hidden)
        self.model = PooledModel(base, h_ph[:len(hidden)], pools[:len(hidden)], h_dims, p_dims)
        self.data = _Data(self.model)
        if self.kind == "conv":
            keep, _ = half_frequencies(grid)
            sym = base.symbol(len(hidden))[keep]
            r = self.data.patterns[-1][2].numpy()
            self.data.a[-1] = torch.from_numpy(sym @ r)
        self.fc2 = torch.from_numpy(gemms[1])

    def spectrum(self, layers, tfc=None):
        k = last_k(self.data, layers)
        if k is None:
            return None
        if self.kind == "conv":
            return torch.linalg.eigvalsh((k + k.mH) / 2).reshape(-1)
        s = arrow_sum(self.data, k)
        if self.kind == "dense":
            return torch.linalg.eigvalsh(s)
        x = torch.diag(tfc) - 0.25 * tfc[:, None] * s * tfc[None, :]
        low, info = torch.linalg.cholesky_ex(x)
        if int(info) != 0:
            return None
        y = torch.linalg.solve_triangular(low, self.fc2.T, upper=False)
        return torch.linalg.eigvalsh(y.T @ y)

    def start(self):
        """ECLipsE-Fast's scalars (sdp_conv_pool.fast_start); for a dense tail also t_fc =
        2 / lambda_max(K), K the arrow's sum (so the fc1 node starts at T/2)."""
        layers = fast_start(self.data, 1.0)
        if self.kind != "tail":
            return layers, None
        top = float(torch.linalg.eigvalsh(arrow_sum(self.data, last_k(self.data, layers)))[-1])
        return layers, torch.full((256,), 2.0 / top, dtype=torch.float64)


def optimise(piece: Piece, steps: int, stages=(10.0, 100.0, 1000.0), max_evals: int = 10**9):
    layers, tfc = piece.start()
    flat = [v for layer in layers for v in layer] + ([tfc] if tfc is not None else [])
    shape = [len(layer) for layer in layers]
    logs = [torch.log(v).requires_grad_(True) for v in flat]
    state = {"best": math.inf, "evals": 0}

    def unpack():
        vals = [torch.exp(v) for v in logs]
        out, at = [], 0
        for n in shape:
            out.append(tuple(vals[at:at + n]))
            at += n
        return out, (vals[-1] if tfc is not None else None)

    with torch.no_grad():
        ev0 = piece.spectrum(*unpack())
    state["start"] = float(ev0[-1] if piece.kind != "conv" else ev0.max())
    for sharp in stages:
        opt = torch.optim.LBFGS(logs, lr=1, max_iter=steps, history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-10,
                                tolerance_change=1e-13)

        def closure(s=sharp, opt=opt):
            if state["evals"] >= max_evals:
                raise StopIteration
            opt.zero_grad()
            state["evals"] += 1
            ev = piece.spectrum(*unpack())
            if ev is None or not bool(torch.isfinite(ev.detach()).all()):
                loss = sum(v.sum() for v in logs) * 0 + 1e3
            else:
                top = ev.max()
                state["best"] = min(state["best"], float(top.detach()))
                loss = torch.log(top) + torch.logsumexp(s * (ev / top.detach() - 1), 0) / s
            loss.backward()
            return loss
        try:
            opt.step(closure)
        except StopIteration:
            break
        print(f"  stage {sharp}: best {math.sqrt(state['best']):.4g} after {state['evals']} evals",
              flush=True)
    return math.sqrt(state["start"]), math.sqrt(state["best"]), state["evals"]


def norms(convs, gemms) -> list[float]:
    out = []
    for c in convs:
        op = torch.nn.functional
        x = torch.randn(1, c.weight.shape[1], *c.in_size, dtype=torch.float64)
        w = torch.from_numpy(c.weight)
        for _ in range(1000):
            y = op.conv2d(x, w, padding=1)
            x = op.conv_transpose2d(y, w, padding=1)
            x = x / x.norm()
        out.append(float(op.conv2d(x, w, padding=1).norm()))
    out += [float(np.linalg.norm(g, 2)) for g in gemms]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--max-evals", type=int, default=10**9)
    ap.add_argument("--pieces", default="01,12,23")
    args = ap.parse_args()
    torch.set_num_threads(1)
    convs, gemms = load(ROOT / "bench" / "out" / "pool_cnn.onnx")
    n = norms(convs, gemms)
    print("norms", [f"{v:.4g}" for v in n], "product", f"{math.prod(n):.4g}")
    for spec in args.pieces.split(","):
        maps = [int(c) for c in spec]
        if len(maps) == 1:
            continue
        if maps[0] >= 3:
            continue
        t0 = time.monotonic()
        piece = Piece(convs, gemms, maps)
        s, b, e = optimise(piece, args.steps, max_evals=args.max_evals)
        prod = math.prod(n[i] for i in maps)
        print(f"piece {spec} ({piece.kind}): grid {piece.model.base.grid}, node sizes "
              f"{[d.shape[-2] for d in piece.data.a]}, start {s:.4g}, best {b:.4g}, "
              f"product {prod:.4g}, ratio {prod / b:.3g}, {e} evals, "
              f"{time.monotonic() - t0:.1f} s, load {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
