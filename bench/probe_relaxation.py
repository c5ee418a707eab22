"""Probe: the largest ||J|| over independent slopes/window selections of pool_cnn (or a span).

J = [fc2 D4 fc1] P3 D3 conv3 P2 D2 conv2 P1 D1 conv1 with D 0/1 and P a window selection,
chosen independently: every slope-independent relaxation (LipSDP, ECLipsE, sdp-conv and
products of such pieces) certifies at least this. Coordinate ascent from seeded restarts.

    OMP_NUM_THREADS=1 .venv/bin/python bench/probe_relaxation.py [--span 0-4] [--restarts 10]
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_pieces import ROOT, load  # noqa: E402


class Net:
    def __init__(self, convs, gemms, lo: int, hi: int):
        self.w = [torch.from_numpy(c.weight) for c in convs] + [torch.from_numpy(g) for g in gemms]
        self.lo, self.hi = lo, hi             # the maps lo..hi (0..4)
        self.in_shapes = [(1, 28, 28), (32, 14, 14), (64, 7, 7), (1152,), (256,)]

    def apply(self, x, gaps):
        """Map lo, then for every next map: its gap (selection, 0/1) then the map."""
        for i in range(self.lo, self.hi + 1):
            if i > self.lo:
                x = gaps[i - 1].apply(x)
            x = self.map(i, x)
        return x

    def map(self, i, x):
        if i < 3:
            return F.conv2d(x.reshape(1, *x.shape[-3:]), self.w[i], padding=1)[0]
        return self.w[i] @ x.reshape(-1)


class Gap:
    """Gap after map i: window selections (pooled gaps 0..2) and a 0/1 per window."""
    def __init__(self, i: int, shape, rng):
        self.i, self.shape = i, shape
        if i < 3:
            c, h, w = shape
            self.out = (c, h // 2, w // 2)
            self.sel = torch.from_numpy(rng.integers(0, 4, self.out))
        else:
            self.out = shape
            self.sel = None
        self.on = torch.from_numpy(rng.integers(0, 2, self.out).astype(np.float64))

    def windows(self, z):
        c, h, w = self.out
        z = z[:, :2 * h, :2 * w].reshape(c, h, 2, w, 2).permute(0, 1, 3, 2, 4)
        return z.reshape(c, h, w, 4)

    def apply(self, z):
        if self.sel is None:
            return self.on * z
        picked = torch.gather(self.windows(z), 3, self.sel[..., None])[..., 0]
        return self.on * picked

    def update(self, z, g):
        """Best selection and 0/1 given the forward input z and backward g (pooled)."""
        if self.sel is None:
            self.on = (g * z > 0).double()
            return
        gains = self.windows(z) * g[..., None]
        best, self.sel = gains.max(dim=3)
        self.on = (best > 0).double()


def jac(net: Net, gaps) -> torch.Tensor:
    n_in = math.prod(net.in_shapes[net.lo])
    eye = torch.eye(n_in, dtype=torch.float64)
    cols = [net.apply(eye[k].reshape(net.in_shapes[net.lo]), gaps).reshape(-1)
            for k in range(n_in)] if n_in <= 64 else None
    if cols is not None:
        return torch.stack(cols, 1)
    x = torch.zeros(net.in_shapes[net.lo], dtype=torch.float64, requires_grad=True)
    y = net.apply(x, gaps).reshape(-1)
    rows = []
    for k in range(y.numel()):
        (g,) = torch.autograd.grad(y[k], x, retain_graph=True)
        rows.append(g.reshape(-1))
    return torch.stack(rows)


def top_pair(net: Net, gaps, iters: int = 60):
    """Top singular value and input vector of J (power iteration with autograd)."""
    x = torch.randn(net.in_shapes[net.lo], dtype=torch.float64)
    for _ in range(iters):
        x = (x / x.norm()).requires_grad_(True)
        y = net.apply(x, gaps)
        (g,) = torch.autograd.grad(0.5 * (y * y).sum(), x)
        x = g.detach()
    x = x / x.norm()
    return float(net.apply(x, gaps).norm()), x


def sweep(net: Net, gaps, x):
    """Each gap in turn: the best choice given the others, for the direction x and the
    output direction u = J x / |J x|."""
    with torch.no_grad():
        y = net.apply(x, gaps)
        u = y / y.norm()
    for k, gap in enumerate(gaps):
        if gap is None:
            continue
        z = x
        for i in range(net.lo, k + 1):   # forward to the gap's input
            if i > net.lo:
                z = gaps[i - 1].apply(z)
            z = net.map(i, z)
        p = gap.apply(z).detach().requires_grad_(True)
        out = p
        for i in range(k + 1, net.hi + 1):
            if i > k + 1:
                out = gaps[i - 1].apply(out)
            out = net.map(i, out)
        (g,) = torch.autograd.grad((out.reshape(-1) * u.reshape(-1)).sum(), p)
        gap.update(z.detach(), g)


def ascent(net: Net, rng, rounds: int = 30) -> float:
    shapes = [(32, 28, 28), (64, 14, 14), (128, 7, 7), (256,)]
    gaps = [Gap(i, shapes[i], rng) if net.lo <= i < net.hi else None for i in range(4)]
    best = 0.0
    for _ in range(rounds):
        value, x = top_pair(net, gaps)
        best = max(best, value)
        sweep(net, gaps, x)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--span", default="0-4")
    ap.add_argument("--restarts", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    convs, gemms = load(ROOT / "bench" / "out" / "pool_cnn.onnx")
    lo, hi = (int(v) for v in args.span.split("-"))
    net = Net(convs, gemms, lo, hi)
    rng = np.random.default_rng(0)
    values = [ascent(net, rng, args.rounds) for _ in range(args.restarts)]
    print(f"span {args.span}: independent-slope products found {[f'{v:.4g}' for v in values]}, "
          f"largest {max(values):.4g}")


if __name__ == "__main__":
    main()
