"""sdp-conv for a residual block y = S x + W2 s(W1 x) as a unit (the shortcut as feed-through).

For multipliers T = diag(t) per hidden channel (the LMI in sdp_residual_cert), the
smallest rho is, for fixed T,
  rho(T) = max_w lambda_max(S^H S + G_w (T - A2^H A2)^{-1} G_w^H),  G = S^H A2 + (b/2) A1^H T.
T is found by L-BFGS on a smooth maximum of log eig over log t (two scalar starts, the
same search as sdp_conv), then proved in float64. The result is a segment bound
(segments.py) from the block's input to its Add: the whole-network composition uses it in
place of the product over the block; the branch keeps its own bound.
"""
from __future__ import annotations

import math
import time
from typing import Any

import torch

from lipcheck.estimators.upper.residual_block import (
    Block,
    ResidualModel,
    dense_model,
    residual_model,
)
from lipcheck.estimators.upper.sdp_cost import (
    certificate_seconds,
    may_start,
    over_work,
    warm_optimiser,
)
from lipcheck.estimators.upper.sdp_residual_cert import STOPPED, certify_residual, symbols
from lipcheck.estimators.upper.segments import Segment
from lipcheck.estimators.upper.seqlip import ChainBound
from lipcheck.settings import Settings

STEPS = 40
SHARPNESS = (30.0, 300.0)
STARTS = (2.0, 1.25)   # T = scale * max_w lambda_max(A2^H A2) I
ACTIVE = 24            # frequencies the search starts on (the worst at the first start)
ROUNDS = 4             # searches, each on the active set grown by the worst left out
DENSE_WIDTH = 256      # widest map bounded as dense matrices as well (per-neuron multipliers)


def _spectrum(mats: dict[str, torch.Tensor], t: torch.Tensor, slope: float):
    """Eigenvalues of S^H S + G (T - A2^H A2)^{-1} G^H per frequency, or None if infeasible."""
    tc = t.to(mats["a1"].dtype)
    low, info = torch.linalg.cholesky_ex(torch.diag_embed(tc) - mats["gram2"])
    if bool((info != 0).any()):
        return None
    g = mats["sa2"] + (slope / 2) * mats["a1"].mH * tc[None, None, :]
    y = torch.linalg.solve_triangular(low, g.mH, upper=False)
    k = mats["ss"] + y.mH @ y
    return torch.linalg.eigvalsh((k + k.mH) / 2)


def _matrices(model: ResidualModel) -> dict[str, torch.Tensor]:
    sym = symbols(model)
    a1, a2, s = (torch.from_numpy(m) for m in (sym.a1, sym.a2, sym.s))
    if model.grid == 1:   # dense matrices: their one "frequency" is real
        a1, a2, s = (m.real.contiguous() for m in (a1, a2, s))
    return {"a1": a1, "gram2": a2.mH @ a2, "sa2": s.mH @ a2, "ss": s.mH @ s}


def _top_per_frequency(mats: dict[str, torch.Tensor], t: torch.Tensor, slope: float):
    """The top eigenvalue at every frequency (inf everywhere if infeasible), no gradient."""
    with torch.no_grad():
        ev = _spectrum(mats, t, slope)
    if ev is None:
        return torch.full((mats["a1"].shape[0],), math.inf, dtype=torch.float64)
    return ev[..., -1]


def optimise(model: ResidualModel, steps: int, deadline: float, reserve: float = 0.0
             ) -> tuple[Any, int, bool]:
    """The best feasible multipliers found (numpy), the evaluations, whether the deadline
    cut the search. The search runs on an active set of frequencies (the ACTIVE worst at
    the start), grown by the worst ones left out after each round (ROUNDS at most; each
    round starts where the last ended). An evaluation starts only if it and `reserve`
    seconds (the certificate) plus one all-frequency evaluation fit before the deadline."""
    mats = _matrices(model)
    slope = model.branch.slope
    top = float(torch.linalg.eigvalsh(mats["gram2"])[..., -1].max())
    full_t = torch.full((mats["a1"].shape[1],), STARTS[0] * max(top, 1e-300),
                        dtype=torch.float64)
    clock = time.monotonic()
    tops = _top_per_frequency(mats, full_t, slope)
    full_seconds = time.monotonic() - clock
    full_best = float(tops.max())
    best: dict[str, Any] = {"evals": 1, "reserve": reserve + full_seconds}
    active = torch.argsort(tops, descending=True)[:ACTIVE]
    starts = [torch.full_like(full_t, math.log(x * max(top, 1e-300))) for x in STARTS]
    for _ in range(ROUNDS):
        best.update(value=math.inf, t=None)
        try:
            _search({k: v[active] for k, v in mats.items()}, starts, slope, steps, best,
                    deadline)
        except TimeoutError:
            return (full_t if best["t"] is None else best["t"]).numpy(), best["evals"], True
        if best["t"] is None:
            break
        tops = _top_per_frequency(mats, best["t"], slope)
        if float(tops.max()) < full_best:
            full_best, full_t = float(tops.max()), best["t"]
        taken = set(active.tolist())
        missing = [int(w) for w in torch.argsort(tops, descending=True)[:ACTIVE // 2]
                   if int(w) not in taken]
        if not missing or float(tops[missing].max()) <= float(tops[active].max()):
            break
        active = torch.cat([active, torch.tensor(missing, dtype=active.dtype)])
        starts = [torch.log(best["t"])]
    return full_t.numpy(), best["evals"], False


def _search(mats: dict[str, torch.Tensor], starts: list[torch.Tensor], slope: float,
            steps: int, best: dict, deadline: float) -> None:
    for start in starts:
        log = start.clone().requires_grad_(True)
        for sharp in SHARPNESS:
            opt = torch.optim.LBFGS([log], lr=1, max_iter=steps, history_size=20,
                                    line_search_fn="strong_wolfe", tolerance_grad=1e-10,
                                    tolerance_change=1e-13)
            opt.step(_closure(opt, log, mats, slope, sharp, best, deadline))


def _closure(opt, log: torch.Tensor, mats: dict[str, torch.Tensor], slope: float,
             sharp: float, best: dict, deadline: float):
    def closure():
        now = time.monotonic()
        if not may_start(deadline, best.get("eval_seconds", best["reserve"]), best["reserve"]):
            raise TimeoutError
        best["evals"] += 1
        opt.zero_grad()
        t = torch.exp(log)
        ev = _spectrum(mats, t, slope)
        if ev is None:
            loss = log.sum() * 0 + 1e3
        else:
            flat = ev.reshape(-1)
            top = float(flat.detach().max())
            if top < best["value"]:
                best["value"], best["t"] = top, t.detach().clone()
            loss = torch.log(flat.max()) + torch.logsumexp(
                sharp * (flat / top - 1), 0) / sharp
        loss.backward()
        best["eval_seconds"] = max(best.get("eval_seconds", 0.0), time.monotonic() - now)
        return loss
    return closure


def bound_model(model: ResidualModel, settings: Settings, deadline: float, label: str
                ) -> tuple[float | None, str, bool]:
    """The certified block bound of one model (None if refused or not run), what was done,
    whether the deadline cut the search."""
    blocks = model.branch.dims[0] + model.branch.dims[1]
    reserve = 2 * certificate_seconds((model.grid * model.grid + 2) // 2, blocks)
    head = f"{label}: {model.grid}x{model.grid} frequencies, blocks of {blocks}"
    if over_work(settings.extra, (model.grid * model.grid + 2) // 2, blocks):
        return None, f"{head}: not run (above the quick limits of --method auto; " \
                     "--method sdp-conv runs it)", False
    if not may_start(deadline, reserve, reserve):
        return None, f"{head}: not run (its certificate, predicted {reserve:.2g} s, does not " \
                     "fit in the time left)", True
    t, evals, cut = optimise(model, int(settings.extra.get("sdp_conv_steps", STEPS)),
                             deadline, reserve)
    head += f", {evals} evaluations{' (cut by the deadline)' if cut else ''}"
    took = time.monotonic()
    rho, ok, detail = certify_residual(model, t, deadline=deadline)
    took = time.monotonic() - took
    if not ok and detail != STOPPED and time.monotonic() + took <= deadline:
        # the first shift may have been too small
        rho, ok, detail = certify_residual(model, t, shift_scale=8.0, deadline=deadline)
    if not ok:
        return None, f"{head}: certificate refused ({detail})", cut or detail == STOPPED
    value = math.sqrt(rho) * (1 + 1e-9)
    return value, f"{head}: {value:.9g} (float64 Cholesky per frequency: {detail})", cut


def sdp_residual(block: Block, settings: Settings, deadline: float) -> ChainBound | None:
    """The branch keeps its AutoLip product; the block as a unit becomes a segment bound:
    the smaller of channel-wise multipliers on the circular model and, where the block's
    maps are at most `sdp_residual_dense_width` wide, per-neuron ones on dense matrices."""
    chain = block.chain
    start = time.monotonic()
    model = residual_model(block, settings)
    if model is None:
        return None
    warm_optimiser()
    kind = "projection shortcut" if block.shortcut else "identity shortcut"
    found = [bound_model(model, settings, deadline, "channel-wise multipliers")]
    width = int(settings.extra.get("sdp_residual_dense_width", DENSE_WIDTH))
    dense = dense_model(block, settings, width) if width > 0 else None
    if dense is not None:
        found.append(bound_model(dense, settings, deadline, "per-neuron multipliers (dense)"))
    cut = any(c for _, _, c in found)
    details = "; ".join(d for _, d, _ in found)
    head = f"sdp-conv residual block ({kind}) {block.source}..{block.add.name} as a unit"
    values = [v for v, _, _ in found if v is not None]
    if not values:
        return ChainBound(chain.autolip_product, chain.autolip_certified, False,
                          f"{head}: {details}: AutoLip product kept", time.monotonic() - start,
                          cut)
    segment = Segment(block.source, block.add.name, block.nodes, min(values), True, "sdp-conv",
                      f"{head}: {details}")
    return ChainBound(chain.autolip_product, chain.autolip_certified, True,
                      f"branch: AutoLip product; {segment.detail}", time.monotonic() - start,
                      cut, segment=segment)
