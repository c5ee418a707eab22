"""Certified robustness with local constants: each sample on its own ball B(x, eps).

For a sample x with predicted class c, the margin m_j = f_c - f_j stays positive on the L2
ball B(x, eps) when m_j(x) > eps * K_cj, with K_cj an upper bound of the Lipschitz constant
of f_c - f_j *on that ball*. K_cj comes from bound propagation (lipcheck.propagation):
CROWN ranges of every unit on the ball, then the sup over the ball of ||(e_c - e_j) J||:
the smaller of exact enumeration of the slope vertices (when the unstable units are few)
and the interval hull of the Jacobians. (Masked AutoLip per row, `graph_masked`, certified
no more samples on the digits models and costs an SVD per sample and layer: not used.)
The same ranges give CROWN lower bounds of the margins on the ball (back-substitution of
e_c - e_j): a sample also counts when they are all positive. Samples the whole ball
leaves are tried on nested balls (`local_shells`): the margin only has to exceed
sum_k (t_k - t_(k-1)) K_cj(t_k), the constants on balls of radius t_k, which grow with the
radius, or a CROWN lower bound on an inner ball the rest of that sum. Every number is
certified (float64, widened against rounding); models the propagation does not handle
are reported as skipped, with the reason, and the gate keeps the global rule.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lipcheck.estimators.upper.local_net import margin_lipschitz
from lipcheck.graph import Graph
from lipcheck.local_shells import Shells, certificate, collect, shell_radius
from lipcheck.propagation import InputSet, Program, UnsupportedLocal, build_program, propagate
from lipcheck.propagation.bab import Limits, chunked_ranges, verify
from lipcheck.propagation.jacobian import row_norm_bounds
from lipcheck.propagation.ranges import Ranges, back_substitute
from lipcheck.propagation.relu_bounds import Range
from lipcheck.propagation.relu_net import ReluNet, relu_form, relu_form_refusal
from lipcheck.propagation.vertices import vertex_bounds

SHELLS = 4    # nested balls for the samples the whole ball leaves (count-based)
SLACK = 1e-9  # margins come from the graph, the constants from its lowering (|diff| ~ 1e-14)
METHOD = ("crown ranges + slope-vertex enumeration (interval hull past 4096 vertices) "
          "and CROWN margin bounds, on nested balls")


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
    bab: dict[str, Any] | None = None   # branch and bound on the margins left (bab_domains > 0)
    sdp: dict[str, Any] | None = None   # sdp-net constants of the margins left (sdp_margins > 0)
    margin_stages: bool = True          # the model has a ReLU form: branch and bound and the
                                        # sdp stage could run on it

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
                "radii": [round(float(r), 8) for r in self.radii],
                **({} if self.bab is None else {"branch_and_bound": self.bab}),
                **({} if self.sdp is None else {"sdp_margins": self.sdp})}


def margin_rows(pred: torch.Tensor, classes: int) -> torch.Tensor:
    """(N, C, C): row j is e_c - e_j (zero for j = c)."""
    eye = torch.eye(classes, dtype=torch.float64)
    return eye[pred][:, None, :] - eye[None]


def margin_bounds(program: Program, centers: torch.Tensor, eps: float, rows: torch.Tensor,
                  ranges: Ranges | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """On each B(x, eps): K_cj (N, C), a lower bound of each margin r . f (CROWN, from the
    same ranges: `ranges`, else propagated here), and the number of unstable units."""
    ball = InputSet.ball(centers, eps, "2")
    ranges = propagate(program, ball) if ranges is None else ranges
    k = row_norm_bounds(program, ranges, rows)
    if program.is_chain:   # elsewhere vertex_bounds is this same interval hull
        k = torch.minimum(k, vertex_bounds(program, ranges, rows))
    n = len(program.steps)
    upper = back_substitute(program, {n: -rows}, torch.zeros(rows.shape[:2], dtype=torch.float64),
                            n, ranges, ball)
    low = -upper - SLACK - 1e-9 * upper.abs()
    return k.numpy(), low.numpy(), ranges.unstable(program)


def certify_local(graph: Graph, x: np.ndarray, y: np.ndarray, logits: np.ndarray,
                  eps: float, shells: int = SHELLS, lower: bool = True,
                  bab_domains: int = 0, sdp_margins: int = 0) -> LocalRobustness:
    """Which samples keep their (correct) class on all of B(x, eps), from local bounds
    on the ball and, for the samples it leaves, on `shells` nested balls (local_shells),
    then (`bab_domains` > 0) branch and bound on the margins still open (`bab_margins`),
    then (`sdp_margins` > 0) sdp-net constants of the margins still open (`sdp_stage`).
    `lower=False` drops the margins' CROWN lower bounds (constants only: for comparisons)."""
    start = time.perf_counter()
    pred = logits.argmax(axis=1)
    centers = torch.from_numpy(np.asarray(x, dtype=np.float64)).reshape(len(x), -1)
    rows = margin_rows(torch.from_numpy(pred), logits.shape[1])
    try:
        program = build_program(graph)
        ranges = propagate(program, InputSet.ball(centers, eps, "2"))
        k, low, unstable = margin_bounds(program, centers, eps, rows, ranges)
    except UnsupportedLocal as exc:
        return LocalRobustness(eps, None, None, None, skipped=str(exc))
    others = ~np.eye(logits.shape[1], dtype=bool)[pred]
    margins = np.where(others, logits[np.arange(len(pred)), pred][:, None] - logits - SLACK,
                       np.inf)

    def bounds(index: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
        found_k, found_l, _ = margin_bounds(program, centers[index], radius, rows[index])
        found_l = found_l if lower else np.full_like(found_l, -np.inf)
        return np.where(others[index], found_k, 0.0), np.where(others[index], found_l, np.inf)
    k, low = np.where(others, k, 0.0), np.where(others, low if lower else -np.inf, np.inf)
    correct = pred == y
    whole = Shells([k], [low])
    candidates = correct & np.all(margins > 0, axis=1) & ~np.all(
        certificate(whole, margins, eps) > 0, axis=1)
    found = collect(bounds, (k, low), margins, candidates, eps, max(1, shells))
    shown = certificate(found, margins, eps) > 0
    certified = correct & np.all(shown, axis=1)
    bab, sdp = None, None
    open_rows = (correct & np.all(margins > 0, axis=1) & ~certified)[:, None] & ~shown
    net, why = _relu_form(program) if bab_domains > 0 or sdp_margins > 0 else (None, "")
    skip = {"certified": np.zeros_like(certified), "skipped": why}
    if bab_domains > 0:
        bab = ({**skip, "proved": np.zeros_like(open_rows), "domains": bab_domains}
               if net is None else
               bab_margins(net, ranges, centers, eps, rows, open_rows, bab_domains))
        certified = certified | bab.pop("certified")
        open_rows = open_rows & ~bab.pop("proved") & ~certified[:, None]
    if sdp_margins > 0:
        sdp = ({**skip, "evaluations": sdp_margins} if net is None else
               sdp_stage(net, program, ranges, centers, eps, pred, open_rows, margins,
                         found, sdp_margins))
        certified = certified | sdp.pop("certified")
    radii = np.where(certified, eps, np.where(correct, _radius(found, margins, eps), 0.0))
    return LocalRobustness(eps, certified, k.max(axis=1), radii, unstable,
                           time.perf_counter() - start, shells=max(1, shells), bab=bab,
                           sdp=sdp, margin_stages=relu_form_refusal(program) is None)


def _relu_form(program: Program) -> tuple[ReluNet | None, str]:
    """The program's ReLU form for the margin stages, or None and why not."""
    try:
        return relu_form(program), ""
    except UnsupportedLocal as exc:
        return None, str(exc)


def _prior(net: ReluNet, ranges: Ranges, index: torch.Tensor) -> list[Range | None]:
    """The program's ranges of the samples `index` on the ReLU form's layers they start."""
    return [None if k is None else (ranges.pre[k][0][index], ranges.pre[k][1][index])
            for k in net.origin]


def bab_margins(net: ReluNet, ranges: Ranges, centers: torch.Tensor, eps: float,
                rows: torch.Tensor, open_rows: np.ndarray, domains: int) -> dict[str, Any]:
    """Branch and bound (`propagation.bab`) on the margins `open_rows` (N, C) of samples
    nothing else certified, with the program's `ranges` on the balls (tighter through
    pools than the ReLU form's): `certified` (N,) where every open margin of a sample with
    some is proved, `proved` (N, C) the margins proved, with counts for the report."""
    start = time.perf_counter()
    none = np.zeros(len(open_rows), dtype=bool)
    proved_rows = np.zeros_like(open_rows)
    sample, row = np.nonzero(open_rows)
    tried = np.unique(sample)
    index = torch.from_numpy(tried)
    outcome = verify(net, centers[index], eps, torch.from_numpy(np.searchsorted(tried, sample)),
                     rows[sample, row], Limits(domains=domains), prior=_prior(net, ranges, index))
    proved = none.copy()
    failed = np.unique(sample[~outcome.certified.numpy()])
    proved[np.setdiff1d(tried, failed)] = True
    proved_rows[sample, row] = outcome.certified.numpy()
    return {"certified": proved, "proved": proved_rows, "domains": domains,
            "samples_tried": int(len(tried)),
            "samples_certified": int(proved.sum()), "margins_tried": int(len(sample)),
            "margins_certified": int(outcome.certified.sum()),
            "margins_attacked": int(outcome.attacked.sum()),
            "seconds": round(time.perf_counter() - start, 6)}


def sdp_stage(net: ReluNet, program: Program, ranges: Ranges, centers: torch.Tensor,
              eps: float, pred: np.ndarray, open_rows: np.ndarray, margins: np.ndarray,
              found: Shells, evaluations: int) -> dict[str, Any]:
    """The margins `open_rows` (N, C) by sdp-net's constants K_k of f_c - f_j on the nested
    balls B(x, t_k) of `found` (LipSDP-Neuron of the ReLU form with each unit's slopes on
    the ball), each taken with the smaller of K_k and found's own constant, in the shell
    rule (`local_shells.certificate`, with found's CROWN lower bounds): the whole ball
    first, then inner balls from the outside in while the rule could still hold with every
    constant left at the margin's gradient norm at x (no constant can be smaller). A
    sample is tried when every open margin exceeds eps times that norm, its smallest margin
    first; it stops at the first margin left open. `certified` (N,) and counts."""
    start = time.perf_counter()
    certified = np.zeros(len(open_rows), dtype=bool)
    grads = {i: _gradient_norms(program, centers[i], pred[i])
             for i in np.nonzero(open_rows.any(axis=1))[0]}
    tried = [i for i, g in grads.items()
             if np.all(margins[i][open_rows[i]] > eps * g[open_rows[i]])]
    counts = {"margins_tried": 0, "margins_certified": 0, "searches": 0}
    if tried:
        index = torch.from_numpy(np.asarray(tried))
        forms = _shell_forms(net, program, ranges, centers, index, eps, len(found.ks))
        for b, i in enumerate(tried):
            certified[i] = True
            for j in np.argsort(np.where(open_rows[i], margins[i], np.inf))[:open_rows[i].sum()]:
                row = torch.zeros(margins.shape[1], dtype=torch.float64)
                row[pred[i]], row[j] = 1.0, -1.0
                pick = (slice(i, i + 1), slice(j, j + 1))
                cheap = Shells([k[pick] for k in found.ks], [lo[pick] for lo in found.lows])
                counts["margins_tried"] += 1
                if not _margin_by_shells(net, forms, b, row, cheap, margins[pick],
                                         grads[i][j], eps, evaluations, counts):
                    certified[i] = False
                    break
                counts["margins_certified"] += 1
    return {"certified": certified, "evaluations": evaluations,
            "samples_tried": len(tried), "samples_certified": int(certified.sum()), **counts,
            "seconds": round(time.perf_counter() - start, 6)}


def _shell_forms(net: ReluNet, program: Program, ranges: Ranges, centers: torch.Tensor,
                 index: torch.Tensor, eps: float, shells: int) -> list[list[Range]]:
    """The ReLU form's ranges on B(x, eps k / shells), k = 1..shells, of the samples
    `index` (the program's own ranges intersected, as in branch and bound; `ranges` are
    the program's on the whole balls of every sample)."""
    out, inner = [], centers[index]
    for k in range(1, shells + 1):
        radius = eps * k / shells
        prior = (_prior(net, ranges, index) if k == shells else
                 _prior(net, propagate(program, InputSet.ball(inner, radius, "2")),
                        torch.arange(len(index))))
        out.append(chunked_ranges(net, inner, radius, prior))
    return out


def _margin_by_shells(net: ReluNet, forms: list[list[Range]], b: int, row: torch.Tensor,
                      cheap: Shells, margin: np.ndarray, gradient: float, eps: float,
                      evaluations: int, counts: dict[str, int]) -> bool:
    """Is the margin proved by sdp-net constants on the shells (outermost first)?"""
    ks = [k.copy() for k in cheap.ks]
    for k in range(len(ks) - 1, -1, -1):
        optimistic = Shells([np.minimum(v, gradient) if q <= k else v
                             for q, v in enumerate(ks)], cheap.lows)
        if not certificate(optimistic, margin, eps)[0] > 0:
            return False
        counts["searches"] += 1
        searched = margin_lipschitz(net, forms[k], b, row, evaluations)
        if searched is not None:
            ks[k] = np.minimum(ks[k], searched)
        if certificate(Shells(ks, cheap.lows), margin, eps)[0] > 0:
            return True
    return False


def _gradient_norms(program: Program, center: torch.Tensor, c: int) -> np.ndarray:
    """(C,) ||grad (f_c - f_j)(x)||: a lower bound of every constant of f_c - f_j on a ball
    around x."""
    jac = torch.func.jacrev(lambda v: program.run(v[None])[0])(center)
    return torch.linalg.vector_norm(jac[c][None] - jac, dim=1).numpy()


def _radius(found: Shells, margins: np.ndarray, eps: float) -> np.ndarray:
    """(N,) the larger of the shell-sum radius and the largest t_k whose ball CROWN
    certifies."""
    radius = shell_radius(found.ks, margins, eps).min(axis=1)
    width = eps / len(found.ks)
    for k, low in enumerate(found.lows):
        radius = np.where(np.all(low > 0, axis=1), np.maximum(radius, width * (k + 1)), radius)
    return radius
