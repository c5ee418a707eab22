"""Certified robustness with local constants: each sample on its own ball B(x, eps).

For a sample x with predicted class c, the margin m_j = f_c - f_j stays positive on the L2
ball B(x, eps) when m_j(x) > eps * K_cj, with K_cj an upper bound of the Lipschitz constant
of f_c - f_j *on that ball*. K_cj comes from bound propagation (lipcheck.propagation):
CROWN ranges of every unit on the ball, then the sup over the ball of ||(e_c - e_j) J||:
the smaller of exact enumeration of the slope vertices (when the unstable units are few)
and the interval hull of the Jacobians. (Masked AutoLip per row, `graph_masked`, certified
no more samples on the digits models and costs an SVD per sample and layer: not used.)
Samples the whole ball leaves are tried on nested balls (`local_shells`): the margin
only has to exceed sum_k (t_k - t_(k-1)) K_cj(t_k), the constants on balls of radius t_k,
which grow with the radius. Every number is certified (float64, widened against
rounding); models the propagation
does not handle are reported as skipped, with the reason, and the gate keeps the global
rule.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lipcheck.graph import Graph
from lipcheck.local_shells import shell_constants, shell_radius, shell_sum
from lipcheck.propagation import InputSet, Program, UnsupportedLocal, build_program, propagate
from lipcheck.propagation.jacobian import row_norm_bounds
from lipcheck.propagation.vertices import vertex_bounds

SHELLS = 4    # nested balls for the samples the whole ball leaves (count-based)
SLACK = 1e-9  # margins come from the graph, the constants from its lowering (|diff| ~ 1e-14)
METHOD = "crown ranges + slope-vertex enumeration (interval hull past 4096 vertices)"


@dataclass
class LocalRobustness:
    """Per-sample certification on B(x, eps) from local constants of the margins."""

    eps: float
    certified: np.ndarray | None        # (N,) bool: correct and certified on its ball
    lipschitz: np.ndarray | None        # (N,) max_j K_cj: local constant of the margins
    radii: np.ndarray | None            # (N,) certified radius (<= eps) from the shells
    unstable: int = 0                   # activations with an undecided sign, summed over samples
    seconds: float = 0.0
    skipped: str | None = None          # why no local certification was made
    shells: int = 1                     # nested balls used (1: the whole ball only)

    @property
    def certified_accuracy(self) -> float | None:
        return None if self.certified is None else float(self.certified.mean())

    def to_dict(self) -> dict[str, Any]:
        if self.skipped is not None:
            return {"eps": self.eps, "skipped": self.skipped, "certified_accuracy": None}
        assert self.lipschitz is not None and self.radii is not None, "set unless skipped"
        return {"eps": self.eps, "norm": "2", "method": METHOD, "shells": self.shells,
                "certified_accuracy": self.certified_accuracy,
                "median_lipschitz": float(np.median(self.lipschitz)),
                "unstable_units": self.unstable, "seconds": round(self.seconds, 6),
                "lipschitz": [round(float(v), 8) for v in self.lipschitz],
                "radii": [round(float(r), 8) for r in self.radii]}


def margin_rows(pred: torch.Tensor, classes: int) -> torch.Tensor:
    """(N, C, C): row j is e_c - e_j (zero for j = c)."""
    eye = torch.eye(classes, dtype=torch.float64)
    return eye[pred][:, None, :] - eye[None]


def margin_constants(program: Program, centers: torch.Tensor, eps: float,
                     rows: torch.Tensor) -> tuple[np.ndarray, int]:
    """(N, C) K_cj on each B(x, eps) (0 at j = c) and the number of unstable units."""
    ranges = propagate(program, InputSet.ball(centers, eps, "2"))
    k = row_norm_bounds(program, ranges, rows)
    if program.is_chain:   # elsewhere vertex_bounds is this same interval hull
        k = torch.minimum(k, vertex_bounds(program, ranges, rows))
    return k.numpy(), ranges.unstable(program)


def certify_local(graph: Graph, x: np.ndarray, y: np.ndarray, logits: np.ndarray,
                  eps: float, shells: int = SHELLS) -> LocalRobustness:
    """Which samples keep their (correct) class on all of B(x, eps), from local constants
    on the ball and, for the samples it leaves, on `shells` nested balls (local_shells)."""
    start = time.perf_counter()
    pred = logits.argmax(axis=1)
    centers = torch.from_numpy(np.asarray(x, dtype=np.float64)).reshape(len(x), -1)
    rows = margin_rows(torch.from_numpy(pred), logits.shape[1])
    try:
        program = build_program(graph)
        k, unstable = margin_constants(program, centers, eps, rows)
    except UnsupportedLocal as exc:
        return LocalRobustness(eps, None, None, None, skipped=str(exc))
    others = ~np.eye(logits.shape[1], dtype=bool)[pred]
    margins = np.where(others, logits[np.arange(len(pred)), pred][:, None] - logits - SLACK,
                       np.inf)
    k = np.where(others, k, 0.0)
    correct = pred == y
    single = np.all(margins > eps * k, axis=1)
    candidates = correct & ~single & np.all(margins > 0, axis=1)

    def constants(index: np.ndarray, radius: float) -> np.ndarray:
        found = margin_constants(program, centers[index], radius, rows[index])[0]
        return np.where(others[index], found, 0.0)
    ks = shell_constants(constants, k, margins, candidates, eps, max(1, shells))
    certified = correct & np.all(margins > shell_sum(ks, eps), axis=1)
    radii = np.where(correct, shell_radius(ks, margins, eps).min(axis=1), 0.0)
    return LocalRobustness(eps, certified, k.max(axis=1), radii, unstable,
                           time.perf_counter() - start, shells=max(1, shells))
