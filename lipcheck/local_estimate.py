"""`estimate --input-range LO,HI` / `--around x.npz --eps R [--norm 2|inf]`: the local
Lipschitz constant (L2) of the network on an input set, beside the global one.

Upper side (certified, per set): bound propagation gives every unit's range on the set
(lipcheck.propagation: interval, then CROWN), then the smallest of three bounds of
sup ||J(x)||_2 over the set: the masked AutoLip product (dead units removed), the interval
hull of the Jacobians, exact enumeration of the slope vertices when they are few, and on
MLP chains ECLipsE-Fast and LipSDP-Neuron on the weights with the dead units removed. The
global certified bound also holds on the set, so the reported value is never above it.
Graphs with products of two dynamic inputs, softmax or LayerNorm / RMSNorm (attention,
transformer encoders) get interval ranges and masked AutoLip with local factors for those
steps (`propagation.smooth_lipschitz`): finite where the global bound is not.
Lower side (certified, per set): the largest Jacobian norm found at points of the set
(`points` random points, count-based and seeded), each a derivative inside the set.
With several balls each gets its own interval: the constant on their union can be larger.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lipcheck.errors import UserError
from lipcheck.estimators.upper.local_chain import chain_bounds
from lipcheck.estimators.upper.local_net import net_bounds
from lipcheck.graph import Graph
from lipcheck.local_set import LocalSet
from lipcheck.propagation import (
    InputSet,
    Program,
    Ranges,
    build_program,
    local_lipschitz,
    propagate,
)
from lipcheck.propagation.masked import masked_product
from lipcheck.propagation.smooth_lipschitz import smooth_bounds
from lipcheck.propagation.vertices import vertex_lipschitz

POINTS = 64


def load_centres(path: Path, n_in: int) -> torch.Tensor:
    try:
        with np.load(path, allow_pickle=False) as archive:
            key = "x" if "x" in archive.files else (archive.files or [None])[0]
            if key is None:
                raise UserError(f"--around {path}: the archive holds no array")
            x = np.asarray(archive[key], dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise UserError(f"--around {path}: not a readable .npz file ({exc})") from None
    if x.size % n_in or not np.all(np.isfinite(x)):
        raise UserError(f"--around {path}: array {key!r} of shape {x.shape} is not finite "
                        f"points of {n_in} values each")
    return torch.from_numpy(x.reshape(-1, n_in))


def input_set(spec: LocalSet, n_in: int) -> InputSet:
    if spec.around is not None:
        assert spec.eps is not None, "LocalSet.validated(): --around needs --eps"
        return InputSet.ball(load_centres(spec.around, n_in), spec.eps, spec.norm)
    assert spec.input_range is not None, "a LocalSet is a box or balls"
    lo, hi = spec.input_range
    return InputSet.box(torch.full((1, n_in), float(lo)), torch.full((1, n_in), float(hi)))


def sampled_lower(program: Program, s: InputSet, points: int, seed: int) -> torch.Tensor:
    """(B,): the largest ||J(x)||_2 at each set's centre and `points` - 1 random points
    strictly inside it (the centre is often special: a constant input to a LayerNorm)."""
    gen = torch.Generator().manual_seed(seed)
    b, n = s.center.shape
    d = torch.rand(b, points, n, generator=gen, dtype=torch.float64) * 2 - 1
    if s.kind == "l2":
        d = d / torch.linalg.vector_norm(d, dim=2, keepdim=True).clamp(min=1e-300)
        d = d * torch.rand(b, points, 1, generator=gen, dtype=torch.float64) ** (1 / n)
    d[:, 0] = 0
    # a box's radius is its half-widths (B, n), a ball's one float
    scale = s.radius[:, None, :] if isinstance(s.radius, torch.Tensor) else s.radius
    x = (s.center[:, None, :] + 0.999 * d * scale).reshape(-1, n)
    jac = torch.func.vmap(torch.func.jacrev(lambda v: program.run(v[None])[0]))(x)
    return torch.linalg.matrix_norm(jac, ord=2).reshape(b, points).amax(dim=1)


def local_section(graph: Graph, spec: LocalSet, global_upper: float | None,
                  seed: int = 0, points: int = POINTS) -> dict[str, Any]:
    """The report's `local` object (schema: `local`)."""
    start = time.perf_counter()
    program = build_program(graph, smooth=True)
    s = input_set(spec, program.n_in)
    ranges: Ranges
    if program.smooth:    # products, softmax, norms: interval ranges, masked AutoLip
        ranges, candidates = smooth_bounds(program, s)
    else:
        ranges, candidates = _relu_bounds(program, s)
    names = list(candidates)
    stacked = torch.stack([candidates[k] for k in names])
    best, which = stacked.min(dim=0)
    methods = [names[int(i)] for i in which]
    values = best.tolist()
    if global_upper is not None and math.isfinite(global_upper):
        methods = ["global" if global_upper < v else m
                   for v, m in zip(values, methods, strict=True)]
        values = [min(v, global_upper) for v in values]
    lower = sampled_lower(program, s, points, seed).tolist()
    return {"set": _describe(spec, s), "kind": s.kind, "sets": s.batch,
            "upper_bound": max(values), "lower_bound": max(lower), "certified": True,
            "global_upper_bound": global_upper if _finite(global_upper) else None,
            "global_unbounded": global_upper is not None and math.isinf(global_upper),
            "propagation": "interval" if program.smooth else "crown",
            "unstable_units": ranges.unstable(program), "points_searched": points,
            "per_set": [{"upper_bound": v, "method": m, "lower_bound": lo}
                        for v, m, lo in zip(values, methods, lower, strict=True)],
            "methods": {k: [float(v) if math.isfinite(v) else None for v in candidates[k]]
                        for k in names},
            "seconds": round(time.perf_counter() - start, 6)}


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _relu_bounds(program: Program, s: InputSet) -> tuple[Ranges, dict[str, torch.Tensor]]:
    ranges = propagate(program, s)
    hull = local_lipschitz(program, ranges)
    # off chains vertex_lipschitz is this same interval hull: not computed twice
    vertices = vertex_lipschitz(program, ranges) if program.is_chain else hull
    return ranges, {"masked-autolip": masked_product(program, ranges),
                    "interval-jacobian": hull,
                    "slope-vertices": vertices,
                    **chain_bounds(program, ranges),
                    **net_bounds(program, s, ranges)}


def _describe(spec: LocalSet, s: InputSet) -> str:
    if spec.around is not None:
        return f"{s.describe()} around each of {s.batch} point(s) of {spec.around}"
    return s.describe()

