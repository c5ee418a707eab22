"""A lower bound on every slope-independent relaxation of models/digits_cnn (issue 11).

LipSDP, ECLipsE and sdp-conv (through its MaxPool) all bound the largest
||M D2 A2 P D1 A1|| over diagonals D with entries in [0, 1] and row-stochastic window
maps P, chosen independently; the norm is convex in each, so vertices suffice (0/1
diagonals, window selections). This coordinate ascent (30 seeded restarts, each step the
best D2 given the top singular pair, then per window the best member and its D1 entry)
finds such a product: no relaxation of that family can certify below it.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_independent_slopes.py
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lipcheck.api import load
from lipcheck.estimators.upper.autolip import bound_nodes
from lipcheck.estimators.upper.chains import find_chains
from lipcheck.estimators.upper.conv_pool import PooledChain, find_pooled
from lipcheck.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def matrices() -> tuple[np.ndarray, ...]:
    g = load(str(ROOT / "models" / "digits_cnn.onnx"))
    s = Settings()
    nb = bound_nodes(g, s)
    (chain,) = [c for c in find_pooled(g, nb, s, find_chains(g, nb, s))
                if isinstance(c, PooledChain)]
    return tuple(p.matrix() for p in chain.parts)


def ascent(a1, a2, m, windows, rng, steps: int = 50) -> float:
    d1 = rng.integers(0, 2, a1.shape[0]).astype(float)
    d2 = rng.integers(0, 2, a2.shape[0]).astype(float)
    sel = np.array([rng.choice(w) for w in windows])
    value = 0.0
    for _ in range(steps):
        pool = np.zeros((len(windows), a1.shape[0]))
        pool[np.arange(len(windows)), sel] = 1.0
        jac = m @ (d2[:, None] * (a2 @ (pool @ (d1[:, None] * a1))))
        u, sv, vt = np.linalg.svd(jac)
        value = max(value, float(sv[0]))
        a = a1 @ vt[0]
        back = m.T @ u[:, 0]
        d2_new = (back * (a2 @ (pool @ (d1 * a))) > 0).astype(float)
        grad = a2.T @ (d2_new * back)
        d1_new, sel_new = d1.copy(), sel.copy()
        for w, members in enumerate(windows):
            gains = grad[w] * a[members]
            k = int(np.argmax(gains))
            sel_new[w], d1_new[members[k]] = members[k], float(gains[k] > 0)
        if np.array_equal(d1_new, d1) and np.array_equal(d2_new, d2) \
                and np.array_equal(sel_new, sel):
            break
        d1, d2, sel = d1_new, d2_new, sel_new
    return value


def main() -> None:
    a1, a2, m = matrices()
    channels, n = 8, 8
    idx = np.arange(channels * n * n).reshape(channels, n, n)
    windows = [idx[c, 2 * i:2 * i + 2, 2 * j:2 * j + 2].ravel()
               for c in range(channels) for i in range(n // 2) for j in range(n // 2)]
    rng = np.random.default_rng(0)
    best = max(ascent(a1, a2, m, windows, rng) for _ in range(30))
    print(f"largest slope-independent product found: {best:.4f}")


if __name__ == "__main__":
    main()
