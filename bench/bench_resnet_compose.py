"""Issue 11 (a), measured: what one LipSDP-Neuron over a span of residual blocks gives
against the product of per-block bounds, on models/digits_resnet (an experiment: the value
is the best the L-BFGS search found for the dense per-neuron LMI, feasible in float64 but
not certified: no rounding margins).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_resnet_compose.py

A span is a run of graph nodes from one value to another: linear nodes become dense
matrices, Add a sum, every ReLU a new variable h_k with slope in [0, 1]. With z = [x; h],
each value is E z and the output E_y z; LipSDP-Neuron with T_k = diag(t_k) reads
  Q = rho J_x^T J_x - E_y^T E_y - sum_k [(1/2)(J_k^T T_k E_k + E_k^T T_k J_k) - J_k^T T_k J_k] >= 0,
and for fixed T the smallest rho is lambda_max(M_xx + M_xh (-M_hh)^{-1} M_hx).
"""
from __future__ import annotations

import math
import os
import time

import numpy as np
import torch

from lipcheck.api import load
from lipcheck.graph import OpKind
from lipcheck.rules import BoundContext
from lipcheck.settings import Settings
from lipcheck.spectral.operator import dense_jacobian, node_operator


def program(graph, start: str, stop: str):
    """(E_y, [(E_pre_k, width_k)], d0): every value of the span as a matrix on z."""
    ctx = BoundContext(graph, Settings())
    d0 = int(np.prod(next(n for n in graph.nodes if start in n.inputs).input_shapes[0]))
    cols, acts, exprs = d0, [], {start: np.eye(d0)}
    for node in graph.nodes:
        if not any(v in exprs for v in node.inputs):
            continue
        ins = [exprs[v] for v in node.inputs if v in exprs]
        if node.op == OpKind.ADD:
            width = max(e.shape[1] for e in ins)
            out = sum(np.pad(e, ((0, 0), (0, width - e.shape[1]))) for e in ins)
        elif node.op == OpKind.RELU:
            acts.append(ins[0])
            out = np.zeros((ins[0].shape[0], cols + ins[0].shape[0]))
            out[:, cols:] = np.eye(ins[0].shape[0])
            cols += ins[0].shape[0]
        else:
            jac = dense_jacobian(node_operator(node, ctx)).numpy()
            out = jac @ ins[0]
        exprs[node.outputs[0]] = out
        if node.outputs[0] == stop:
            break
    pad = lambda e: np.pad(e, ((0, 0), (0, cols - e.shape[1])))  # noqa: E731
    return pad(exprs[stop]), [pad(e) for e in acts], d0


def sdp_value(ey: np.ndarray, acts: list[np.ndarray], d0: int, steps: int = 60) -> float:
    ey_t = torch.from_numpy(ey)
    pres = [torch.from_numpy(e) for e in acts]
    widths = [e.shape[0] for e in acts]
    offsets = np.cumsum([d0] + widths)
    base = ey_t.T @ ey_t

    def rho_of(log_t: torch.Tensor) -> torch.Tensor:
        t = torch.exp(log_t)
        m = base.clone()
        for k, pre in enumerate(pres):
            tk = t[offsets[k] - d0:offsets[k + 1] - d0]
            rows = torch.zeros_like(m)
            rows[offsets[k]:offsets[k + 1]] = tk[:, None] * pre
            m = m + 0.5 * (rows + rows.T)
            idx = torch.arange(offsets[k], offsets[k + 1])
            m[idx, idx] = m[idx, idx] - tk
        n = -m[d0:, d0:]
        low, info = torch.linalg.cholesky_ex(n)
        if int(info) != 0:
            return None
        y = torch.linalg.solve_triangular(low, m[d0:, :d0], upper=False)
        s = m[:d0, :d0] + y.T @ y
        return torch.linalg.eigvalsh((s + s.T) / 2)

    best = [math.inf]
    top = float(torch.linalg.matrix_norm(base, 2))
    starts = []
    for growth in (2.0, 8.0, 32.0, 128.0, 512.0):   # earlier layers need larger multipliers
        for scale in (2.0, 4.0):
            log_t = torch.cat([torch.full((w,), math.log(scale * top) + (len(widths) - 1 - k)
                                          * math.log(growth), dtype=torch.float64)
                               for k, w in enumerate(widths)])
            if rho_of(log_t) is not None:
                starts.append(log_t)
        if len(starts) >= 2:
            break
    for start in starts[:2]:
        log_t = start.clone().requires_grad_(True)
        opt = torch.optim.LBFGS([log_t], lr=1, max_iter=steps, history_size=20,
                                line_search_fn="strong_wolfe")
        opt.step(_closure(opt, log_t, rho_of, best))
    return math.sqrt(best[0])


def _closure(opt, log_t: torch.Tensor, rho_of, best: list[float]):
    def closure():
        opt.zero_grad()
        ev = rho_of(log_t)
        if ev is None:
            loss = log_t.sum() * 0 + 1e3
        else:
            best[0] = min(best[0], float(ev[-1].detach()))
            smooth = torch.logsumexp(100 * (ev / ev[-1].detach() - 1), 0) / 100
            loss = torch.log(ev[-1]) + smooth
        loss.backward()
        return loss
    return closure


SPANS = [("input", "/3/Relu_1_output_0", "stem conv-BN-ReLU + block 1 + ReLU"),
         ("/2/Relu_output_0", "/3/Relu_1_output_0", "block 1 + ReLU"),
         ("/4/MaxPool_output_0", "logits", "block 2 + ReLU + GAP + linear"),
         ("/4/MaxPool_output_0", "/5/Relu_1_output_0", "block 2 + ReLU")]


def main() -> None:
    torch.set_num_threads(1)
    graph = load("models/digits_resnet.onnx")
    for start, stop, name in SPANS:
        clock = time.monotonic()
        ey, acts, d0 = program(graph, start, stop)
        value = sdp_value(ey, acts, d0)
        print(f"{name}: one SDP {value:.5g} (z of {ey.shape[1]}), "
              f"{time.monotonic() - clock:.0f} s, load {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
