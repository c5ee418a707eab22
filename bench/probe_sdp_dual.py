"""A floor under sdp-net's relaxation: a dual point of LipSDP-Neuron on a model's ReLU form.

    OMP_NUM_THREADS=1 .venv/bin/python bench/probe_sdp_dual.py [--model digits_cnn]
        [--evaluations 600,3000]

LipSDP-Neuron: rho ||dx||^2 - ||W_L dphi||^2 - sum_j lam_j QC_j >= 0 for all (dx, dphi),
lam >= 0, QC_j = (dphi_j - a_j dz_j)(b_j dz_j - dphi_j) (dz = W dphi_prev). Its dual: any
Z = sum_k g_k z_k z_k^T (g >= 0, z_k = (dx_k, dphi_k)) with every aggregated constraint
sum_k g_k QC_j(z_k) >= 0 gives rho* >= sum_k g_k ||W_L dphi_k||^2 / sum_k g_k ||dx_k||^2:
no multipliers certify below it. The point tried: after sdp-net's search (`evaluations`),
the eigenvectors of t_0 with softmax weights g at a few mu (dx_k), each layer's dphi_k
from the recursion's S_i^-1 (Lam M) W_i dphi_prev, then repaired: identity units dphi = dz
(their QC is an equality), a unit whose aggregated QC is negative mixed toward the centre
slope (a + b) / 2 dz just enough (QC is concave along that line). Not a certificate: float64,
the constraints met to rounding (the smallest QC relative to its unit's scale is printed);
a measured floor, the largest value over the mu tried.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from lipcheck.api import load
from lipcheck.estimators.upper import sdp_net
from lipcheck.estimators.upper.sdp_net_rho import Rho
from lipcheck.propagation.program import build_program

ROOT = Path(__file__).resolve().parent.parent
MUS = (0.0, 1e-3, 2e-3, 3e-3, 5e-3, 1e-2, 3e-2)


def centre_mix(y: torch.Tensor, z: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
               g: torch.Tensor) -> torch.Tensor:
    """dphi with every unit's aggregated QC >= 0: identity units (a = b) dphi = a dz, the
    others mixed toward (a + b) / 2 dz where the QC is negative."""
    def qc(phi: torch.Tensor) -> torch.Tensor:
        return ((phi - a[:, None] * z) * (b[:, None] * z - phi)) @ g
    centre = ((a + b) / 2)[:, None] * z
    low, high = qc(y), qc(centre)
    theta = torch.where(low < 0, -low / (high - low), torch.zeros_like(low)).clamp(0, 1)
    theta = torch.where(a == b, torch.ones_like(theta), theta)
    return (1 - theta)[:, None] * y + theta[:, None] * centre


def dual_floor(rho: Rho, lams: list[torch.Tensor], mu: float) -> tuple[float, float]:
    """sum g ||W_L dphi||^2 / sum g ||dx||^2 at the repaired point of the module docstring,
    and the smallest aggregated QC there relative to its unit's scale sum g (b - a)^2 dz^2 / 4
    (0 up to rounding, or a positive slack)."""
    t, chols = rho.forward(lams)
    values, vectors = torch.linalg.eigh(t)
    g = torch.softmax((values - values[-1]) / (mu * values[-1]), 0) if mu > 0 \
        else (torch.arange(len(values)) == len(values) - 1).double()
    keep = g > 1e-14
    g, prev = g[keep], vectors[:, keep]
    inputs, worst = float(g @ (prev * prev).sum(0)), math.inf
    for i, chol in enumerate(chols):
        z = rho.w[i] @ prev
        y = torch.cholesky_solve((lams[i] * rho.m[i])[:, None] * z, chol)
        spread = torch.clamp(rho.m[i] ** 2 - rho.p[i], min=0).sqrt()
        a, b = rho.m[i] - spread, rho.m[i] + spread
        prev = centre_mix(y, z, a, b, g)
        qc = ((prev - a[:, None] * z) * (b[:, None] * z - prev)) @ g
        scale = (((b - a)[:, None] * z) ** 2 / 4) @ g
        relu = a < b
        if relu.any():
            worst = min(worst, float((qc[relu] / scale[relu].clamp(min=1e-300)).min()))
    out = rho.w[-1] @ prev
    return float(g @ (out * out).sum(0)) / inputs, worst


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="digits_cnn")
    parser.add_argument("--evaluations", default="600,3000")
    args = parser.parse_args()
    torch.set_num_threads(1)
    form = sdp_net.dense_form(build_program(load(str(ROOT / "models" / f"{args.model}.onnx"))))
    assert form is not None, "sdp-net does not apply"
    net, weights = form
    slopes = sdp_net.unit_slopes(net)
    for count in (int(c) for c in args.evaluations.split(",")):
        began = time.monotonic()
        found = sdp_net.search(weights, slopes, count, math.inf)
        assert found is not None
        rho = Rho(weights, slopes)
        lams = [torch.from_numpy(lam) for lam in found.lams]
        with torch.no_grad():
            floors = {mu: dual_floor(rho, lams, mu) for mu in MUS}
        mu, (best, worst) = max(floors.items(), key=lambda kv: kv[1][0])
        print(f"{args.model}, {count} evaluations ({time.monotonic() - began:.0f} s): search "
              f"sqrt(rho) {math.sqrt(found.rho):.4f}; dual floor {math.sqrt(best):.4f} (mu "
              f"{mu}, smallest relative QC {worst:.1e}); by mu: "
              + ", ".join(f"{k}: {math.sqrt(v):.2f}" for k, (v, _) in floors.items()), flush=True)


if __name__ == "__main__":
    main()
