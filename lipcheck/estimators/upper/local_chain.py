"""The chain methods (ECLipsE-Fast, LipSDP-Neuron) on an input set, for MLP-shaped programs.

On a set, a unit whose range is <= 0 is dead (ReLU: slope 0 everywhere on the set): its
row of W_i and column of W_{i+1} go, which leaves the same function on the set. The
remaining units of a layer keep the hull of their slope intervals ([1, 1] when all are
stable and active), and the global chain methods run unchanged on the pruned weights, so
every certificate they verify holds on the set. Programs with a max pool are not chains
here (None).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from lipcheck.estimators.upper.eclipse import eclipse
from lipcheck.estimators.upper.sdp import lipsdp_neuron
from lipcheck.propagation.jacobian import slope_interval
from lipcheck.propagation.program import Act, Affine, Program
from lipcheck.propagation.ranges import Ranges

SDP_MAX_SETS = 8


def is_chain(program: Program) -> bool:
    kinds = [type(s) for s in program.steps]
    return (len(kinds) >= 3 and len(kinds) % 2 == 1
            and all(k is (Affine if i % 2 == 0 else Act) for i, k in enumerate(kinds)))


def pruned(program: Program, ranges: Ranges, b: int
           ) -> tuple[list[np.ndarray], list[tuple[float, float]]] | None:
    """(weights, per-layer slope hulls) on set b with dead units removed; None: constant."""
    affine = [s for s in program.steps[0::2] if isinstance(s, Affine)]
    act = [s for s in program.steps[1::2] if isinstance(s, Act)]
    assert len(affine) + len(act) == len(program.steps), "a chain (is_chain) only"
    weights = [s.weight.numpy() for s in affine]
    slopes = []
    for layer, step in enumerate(act):
        i = 2 * layer + 1
        lo, hi = ranges.pre[i][0][b], ranges.pre[i][1][b]
        s_lo, s_hi = slope_interval(step.alpha, lo, hi)
        alive = (s_hi > 0).numpy()
        if not alive.any():
            return None
        weights[layer] = weights[layer][alive]
        weights[layer + 1] = weights[layer + 1][:, alive]
        slopes.append((float(s_lo[alive].min()), float(s_hi[alive].max())))
    return weights, slopes


def chain_bounds(program: Program, ranges: Ranges) -> dict[str, torch.Tensor]:
    """{"eclipse-fast": (B,), "sdp": (B,)}: certified bounds on each set (inf: none)."""
    if not is_chain(program):
        return {}
    batch = ranges.batch
    names = ["eclipse-fast"] + (["sdp"] if batch <= SDP_MAX_SETS else [])
    out = {name: torch.full((batch,), math.inf, dtype=torch.float64) for name in names}
    for b in range(batch):
        found = pruned(program, ranges, b)
        for name in names:
            if found is None:
                out[name][b] = 0.0
                continue
            result = (eclipse(*found, fast=True) if name == "eclipse-fast"
                      else lipsdp_neuron(*found))
            if result.certified and np.isfinite(result.value):
                out[name][b] = result.value
    return out
