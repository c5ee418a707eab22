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

from lipcheck.estimators.upper.residual_block import Block, ResidualModel, residual_model
from lipcheck.estimators.upper.sdp_cost import certificate_seconds, may_start, warm_optimiser
from lipcheck.estimators.upper.sdp_residual_cert import certify_residual, symbols
from lipcheck.estimators.upper.segments import Segment
from lipcheck.estimators.upper.seqlip import ChainBound
from lipcheck.settings import Settings

STEPS = 40
SHARPNESS = (30.0, 300.0)
STARTS = (2.0, 1.25)   # T = scale * max_w lambda_max(A2^H A2) I


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
    return {"a1": a1, "gram2": a2.mH @ a2, "sa2": s.mH @ a2, "ss": s.mH @ s}


def optimise(model: ResidualModel, steps: int, deadline: float, reserve: float = 0.0
             ) -> tuple[Any, int, bool]:
    """The best feasible multipliers seen (numpy), the evaluations, whether the deadline
    cut the search. An evaluation starts only if it and `reserve` seconds (the
    certificate) fit before the deadline."""
    mats = _matrices(model)
    top = float(torch.linalg.eigvalsh(mats["gram2"])[..., -1].max())
    best: dict[str, Any] = {"value": math.inf, "t": None, "evals": 0, "reserve": reserve}
    try:
        for scale in STARTS:
            log = torch.full((mats["a1"].shape[1],), math.log(scale * max(top, 1e-300)),
                             dtype=torch.float64, requires_grad=True)
            for sharp in SHARPNESS:
                opt = torch.optim.LBFGS([log], lr=1, max_iter=steps, history_size=20,
                                        line_search_fn="strong_wolfe", tolerance_grad=1e-10,
                                        tolerance_change=1e-13)
                opt.step(_closure(opt, log, mats, model.branch.slope, sharp, best, deadline))
        cut = False
    except TimeoutError:
        cut = True
    t = best["t"]
    if t is None:
        t = torch.full((mats["a1"].shape[1],), 2 * max(top, 1e-300), dtype=torch.float64)
    return t.numpy(), best["evals"], cut


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


def sdp_residual(block: Block, settings: Settings, deadline: float) -> ChainBound | None:
    """The branch keeps its AutoLip product; the block as a unit becomes a segment bound."""
    chain = block.chain
    start = time.monotonic()
    model = residual_model(block, settings)
    if model is None:
        return None
    warm_optimiser()
    blocks = model.branch.dims[0] + model.branch.dims[1]
    half = (model.grid * model.grid + 2) // 2
    reserve = 2 * certificate_seconds(half, blocks)
    kind = "projection shortcut" if block.shortcut else "identity shortcut"
    head = (f"sdp-conv residual block ({kind}) as a unit: {model.grid}x{model.grid} "
            f"frequencies, blocks of {blocks}")

    def keep(detail: str, cut: bool) -> ChainBound:
        return ChainBound(chain.autolip_product, chain.autolip_certified, False,
                          f"{head}; {detail}: AutoLip product kept", time.monotonic() - start,
                          cut)
    if not may_start(deadline, reserve, reserve):
        return keep(f"not run: its certificate (predicted {reserve:.2g} s) does not fit in "
                    "the time left", True)
    t, evals, cut = optimise(model, int(settings.extra.get("sdp_conv_steps", STEPS)),
                             deadline, reserve)
    head += f", {evals} evaluations{' (cut by the deadline)' if cut else ''}"
    took = time.monotonic()
    rho, ok, detail = certify_residual(model, t)
    took = time.monotonic() - took
    if not ok and time.monotonic() + took <= deadline:   # the first shift may have been too small
        rho, ok, detail = certify_residual(model, t, shift_scale=8.0)
    if not ok:
        return keep(f"certificate refused ({detail})", cut)
    value = math.sqrt(rho) * (1 + 1e-9)
    segment = Segment(block.source, block.add.name, block.nodes, value, True, "sdp-conv",
                      f"{head}; float64 Cholesky per frequency: {detail}")
    return ChainBound(chain.autolip_product, chain.autolip_certified, True,
                      f"branch: AutoLip product; block {block.source}..{block.add.name} as a "
                      f"unit: {value:.9g} ({segment.detail})", time.monotonic() - start, cut,
                      segment=segment)
