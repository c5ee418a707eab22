"""Local bounds on the transformer encoder fixture (tests/data/transformer_encoder.*): the
certified upper bounds (masked AutoLip, Jacobian hull) from .onnx and .pt2 on boxes, against
the largest Jacobian norm found (the centre, random points, then sign ascent on ||J v||) on
the torch module itself (math attention kernel, float64).

    python bench/bench_local_attention.py [--points 31] [--steps 10]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from lipcheck.loaders.dispatch import load_model
from lipcheck.propagation import InputSet, build_program
from lipcheck.propagation.smooth_lipschitz import smooth_bounds

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
N = 256
SETS = [(1.0, True), (0.1, False), (0.01, False), (0.001, False)]   # (radius, centred at 0)


def _module() -> torch.nn.Module:
    sys.path.insert(0, str(DATA))
    from make_transformer import encoder
    return encoder().double()


def _norms(fn, points: torch.Tensor) -> torch.Tensor:
    jac = torch.func.vmap(torch.func.jacrev(lambda v: fn(v[None])[0]))(points)
    return torch.linalg.matrix_norm(jac, ord=2)


def _ascent(fn, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, steps: int) -> float:
    def flat(w: torch.Tensor) -> torch.Tensor:
        return fn(w[None])[0]

    def gain(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(flat, (u,), (v,))[1].norm()
    best = 0.0
    for _ in range(steps):
        _, s, vh = torch.linalg.svd(torch.func.jacrev(flat)(x))
        best = max(best, float(s[0]))
        grad = torch.func.grad(gain)(x, vh[0].detach())
        x = torch.minimum(torch.maximum(x + 0.05 * (hi - lo) * grad.sign(), lo), hi)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=31)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    module = _module()

    def truth(v: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel(SDPBackend.MATH):
            return module(v.reshape(-1, 8, 32)).reshape(-1, N)
    programs = {s: build_program(load_model(DATA / f"transformer_encoder.{s}"), smooth=True)
                for s in ("onnx", "pt2")}
    gen = torch.Generator().manual_seed(0)
    print("| box | format | masked-autolip | interval-jacobian | s | found | ratio |")
    print("|---|---|---|---|---|---|---|")
    for radius, centred in SETS:
        centre = (torch.zeros(1, N, dtype=torch.float64) if centred
                  else torch.rand(1, N, generator=gen, dtype=torch.float64) * 1.8 - 0.9)
        s = InputSet.box(centre - radius, centre + radius)
        lo, hi = s.interval()
        points = torch.cat([centre, lo + torch.rand(args.points, N, generator=gen,
                                                    dtype=torch.float64) * (hi - lo)])
        norms = _norms(truth, points)
        found = max(float(norms.max()),
                    _ascent(truth, points[int(norms.argmax())], lo[0], hi[0], args.steps))
        for name, program in programs.items():
            start = time.perf_counter()
            bounds = {k: float(v[0]) for k, v in smooth_bounds(program, s)[1].items()}
            seconds = time.perf_counter() - start
            best = min(bounds.values())
            print(f"| {radius} {'at 0' if centred else 'random centre'} | {name} | "
                  f"{bounds['masked-autolip']:.4g} | {bounds['interval-jacobian']:.4g} | "
                  f"{seconds:.2f} | {found:.5g} | {best / found:.3g} |")


if __name__ == "__main__":
    main()
