"""sdp-net on input sets: LipSDP-Neuron of the ReLU form with each unit's slopes on the set.

On a set, a ReLU unit of the form (propagation.relu_net) whose input range is <= 0 has
slope 0 between any two points of the set, one whose range is >= 0 slope 1, the others
[0, 1]; identity units 1. With those per-unit slopes sdp_net's search and float64 check
bound the Lipschitz constant on the set (every incremental constraint holds for every
pair of points in it). The ranges: CROWN on L2 balls (with the program's own ranges
intersected), interval arithmetic from the exact first layer on boxes and Linf balls.
Count-based like `--method auto`'s sdp-net: the sets share QUICK_TOTAL_WORK multiply-adds
(each search at least SCALE_EVALUATIONS evaluations, else none runs), at most MAX_SETS sets.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from lipcheck.estimators.upper.sdp_certificate import reduce_ends
from lipcheck.estimators.upper.sdp_net import (
    SCALE_EVALUATIONS,
    certified_lipschitz,
    dense_form,
    quick_evaluations,
)
from lipcheck.propagation.input_set import InputSet
from lipcheck.propagation.program import Program
from lipcheck.propagation.ranges import Ranges
from lipcheck.propagation.relu_bounds import Range, crown_ranges, interval_ranges
from lipcheck.propagation.relu_net import ReluNet

MAX_SETS = 4


def set_slopes(net: ReluNet, ranges: list[Range], b: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(a, b) per unit of each hidden layer on set b: identity [1, 1]; a ReLU [1, 1] if its
    input is >= 0 on the set, [0, 0] if <= 0, else [0, 1]."""
    out = []
    for (lo, hi), linear in zip(ranges, net.linear, strict=True):
        lin = linear.numpy()
        out.append((np.where(lin | (lo[b].numpy() >= 0), 1.0, 0.0),
                    np.where(lin | (hi[b].numpy() > 0), 1.0, 0.0)))
    return out


def drop_dead(weights: list[np.ndarray], slopes: list[tuple[np.ndarray, np.ndarray]]
              ) -> tuple[list[np.ndarray], list[tuple[np.ndarray, np.ndarray]]] | None:
    """The same constant without the units of slope [0, 0] (their outputs do not move on
    the set: their rows and the next layer's columns go), or None when a layer has no unit
    left (the function is constant on the set). Smaller Q, and no multiplier the search
    cannot move (they drift to their caps and spoil the float64 check's scaling)."""
    w, out = list(weights), []
    for k, (a, b) in enumerate(slopes):
        keep = (a != 0) | (b != 0)
        if not keep.any():
            return None
        w[k], w[k + 1] = w[k][keep], w[k + 1][:, keep]
        out.append((a[keep], b[keep]))
    return w, out


def set_lipschitz(weights: list[np.ndarray], slopes: list[tuple[np.ndarray, np.ndarray]],
                  evaluations: int) -> float | None:
    """certified_lipschitz of the net on a set (`slopes` its units' slopes there), dead
    units dropped first; 0 when some layer is all dead."""
    live = drop_dead(weights, slopes)
    if live is None:
        return 0.0
    return certified_lipschitz(reduce_ends(live[0]), live[1], evaluations)


def form_ranges(net: ReluNet, s: InputSet, ranges: Ranges) -> list[Range]:
    prior = [None if k is None else ranges.pre[k] for k in net.origin]
    if s.kind == "l2":
        return crown_ranges(net, s.center, float(s.radius), prior)
    return interval_ranges(net, s, prior)


def net_bounds(program: Program, s: InputSet, ranges: Ranges) -> dict[str, torch.Tensor]:
    """{"sdp-net": (B,)} certified bounds on each set (inf where the check failed), or {}
    where it does not apply (not a ReLU form, Q past the dense check, too many sets or
    too little work per set)."""
    form = dense_form(program) if s.batch <= MAX_SETS else None
    if form is None:
        return {}
    net, weights = form
    evaluations = quick_evaluations(weights, s.batch)
    if evaluations < SCALE_EVALUATIONS:
        return {}
    found = form_ranges(net, s, ranges)
    out = torch.full((s.batch,), math.inf, dtype=torch.float64)
    for b in range(s.batch):
        value = set_lipschitz(weights, set_slopes(net, found, b), evaluations)
        if value is not None:
            out[b] = value
    return {"sdp-net": out}


def margin_lipschitz(net: ReluNet, ranges: list[Range], b: int, row: torch.Tensor,
                     evaluations: int) -> float | None:
    """The certified sdp-net constant of x -> row . f(x) on set b (its ReLU-form `ranges`),
    or None where the float64 check failed."""
    weights = [w.numpy() for w in net.weights]
    weights[-1] = (row.numpy() @ weights[-1])[None]
    return set_lipschitz(weights, set_slopes(net, ranges, b), evaluations)
