"""sdp-conv through MaxPools: LipSDP-Neuron with the pool written as ReLUs, per frequency.

After a slope-[0, b] activation, a window's max is p = h_1 + sum_j u_j with
u_j = relu(h_j - h_1 - sum_{l<j} u_l), j = 2..m (m - 1 ReLUs a window). With independent
slopes in [0, 1] these give exactly the convex combinations of the window's differences,
which is what dp = max_W h - max_W h' is (docs/methods/sdp-conv.md). Each u_j gets the
slope constraint with a multiplier lam, and the window also q_a = |dh_W|^2 - dp^2 >= 0
with a multiplier mu (so that the LMI contains the chain split at the pool). Multipliers
are per channel and pooled phase (and j), so the LMI stays translation invariant and block
tridiagonal over the nodes x, (h_1, u_1), (h_2, u_2), ...: the link into layer i is
-(b/2) T_i A_i(w) R_{i-1}, R the 0/1 map p = R (h, u) (the same at every frequency). The
Schur recursion and the float64 arrow certificate are those of sdp_conv / sdp_conv_cert.
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from lipcheck.estimators.upper.chains import Chain
from lipcheck.estimators.upper.conv_chain import half_frequencies
from lipcheck.estimators.upper.conv_pool import PooledChain, PooledModel, pooled_model
from lipcheck.estimators.upper.sdp_conv import (
    HISTORY,
    INFEASIBLE,
    MAX_BLOCK_ENTRIES,
    sdp_conv,
)
from lipcheck.estimators.upper.sdp_conv_cert import (
    Arrow,
    Certificate,
    check_arrow,
    final_or_start,
)
from lipcheck.estimators.upper.sdp_cost import (
    Budget,
    certificate_seconds,
    may_start,
    over_work,
    warm_optimiser,
)
from lipcheck.estimators.upper.seqlip import ChainBound
from lipcheck.settings import Settings
from lipcheck.spectral.freq_gram import gamma

MIX = (1e-6, 1e-5, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1)  # the start's weight in fallbacks
# Smooth maximum of eig S, sharper stage by stage: the pool's multipliers need more
# stages than sdp_conv's two (digits_cnn: 259 with (30, 300), 227 with these, 40 steps).
SHARPNESS = (10.0, 30.0, 100.0, 300.0, 1000.0)
STEPS = 100   # L-BFGS iterations per stage (digits_cnn: 227 at 40, 216 at 150)
Layer = tuple  # (t,) or (t, lam, mu): one hidden layer's multipliers


def pool_pattern(model: PooledModel, i: int) -> tuple[np.ndarray, ...]:
    """Pool i as m - 1 ReLUs per window, u_j = relu(h_j - h_1 - sum_{l<j} u_l) and
    p = h_1 + sum_j u_j: returns C (d_u, d_h) and L (d_u, d_u, strictly lower) such that
    the constraints' part of H is [[0, (C*lam)^T], [C*lam, diag(lam) + L*lam + (L*lam)^T]]
    (row-scaled by the multipliers lam), R (d_p, d_h + d_u) with p = R (h, u), and the
    window matrix E (d_p, d_h)."""
    e = model.window(i)
    d_p, d_h = e.shape
    m = model.window_size(i)
    d_u = d_p * (m - 1)
    c, low, r = np.zeros((d_u, d_h)), np.zeros((d_u, d_u)), np.zeros((d_p, d_h + d_u))
    for q in range(d_p):
        members = np.flatnonzero(e[q])
        r[q, members[0]] = 1.0
        for j in range(1, m):
            u = q * (m - 1) + j - 1
            c[u, members[j]] -= 0.5
            c[u, members[0]] += 0.5
            low[u, q * (m - 1):u] = 0.5
            r[q, d_h + u] = 1.0
    return c, low, r, e


class _Data:
    """The model's blocks at one frequency of each conjugate pair, as torch tensors; a
    link's symbol is A_i(w) R_{i-1} (the pool's output map of the node before)."""

    def __init__(self, model: PooledModel) -> None:
        keep, weight = half_frequencies(model.base.grid)
        self.patterns: list[tuple[torch.Tensor, ...] | None] = [
            None if p is None else tuple(torch.from_numpy(v) for v in pool_pattern(model, i))
            for i, p in enumerate(model.pools)]
        links = [model.base.symbol(i)[keep] for i in range(len(model.h_dims))]
        links.append(model.base.border()[keep])
        before = [None] + self.patterns[:len(links) - 1]
        self.a = [torch.from_numpy(a if p is None else a @ p[2].numpy())
                  for a, p in zip(links, before, strict=True)]
        self.weight = torch.from_numpy(weight)
        self.half2 = (model.base.slope / 2) ** 2


def _node(data: _Data, i: int, mult: Layer, k: torch.Tensor) -> torch.Tensor | None:
    """The Cholesky factor of hidden layer i's node block X (h_i, and u_i where a pool
    follows), given K_i = A_i X_prev^{-1} A_i^H per frequency; None where not definite."""
    t = mult[0].to(k.dtype)
    x = torch.diag_embed(t) - data.half2 * t[:, None] * k * t[None, :]
    pattern = data.patterns[i]
    if pattern is not None:
        extra = pool_block(pattern, mult[1], mult[2])
        pad = torch.zeros(x.shape[0], extra.shape[0], extra.shape[0], dtype=k.dtype)
        pad[:, :x.shape[1], :x.shape[1]] = x
        x = pad + extra.to(k.dtype)
    low, info = torch.linalg.cholesky_ex(x)
    return None if bool((info != 0).any()) else low


def pool_block(pattern, lam, mu):
    """The pool's part of the node block over (h, u), numpy or torch, for a pool_pattern
    (C, L, R, E): the ReLU form's constraints (multipliers lam) and
    q_a = |h_W|^2 - p^2 >= 0 (multipliers mu, per p)."""
    c, low, r, e = pattern
    lib = torch if isinstance(c, torch.Tensor) else np
    cl, ll = c * lam[:, None], low * lam[:, None]
    top = lib.concatenate([-lib.diag(e.T @ mu), cl.T], 1)
    bottom = lib.concatenate([cl, lib.diag(lam) + ll + ll.T], 1)
    return lib.concatenate([top, bottom], 0) + (r.T * mu[None, :]) @ r


def _next_k(low: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
    y = torch.linalg.solve_triangular(low, nxt.mH, upper=False)
    return y.mH @ y


def last_k(data: _Data, layers: list[Layer]) -> torch.Tensor | None:
    """A X_last^{-1} A^H per frequency after the Schur recursion over the chain's nodes
    (A the closing map), or None where some X_j is not definite."""
    k = data.a[0] @ data.a[0].mH
    for i, mult in enumerate(layers):
        low = _node(data, i, mult, k)
        if low is None:
            return None
        k = _next_k(low, data.a[i + 1])
    return k


def arrow_sum(data: _Data, k: torch.Tensor) -> torch.Tensor:
    """S = sum_w (frequency weight) Re K_w, symmetrised."""
    s = (data.weight[:, None, None] * k.real).sum(dim=0)
    return (s + s.mT) / 2


def spectrum(data: _Data, layers: list[Layer]):
    """Eigenvalues of S = sum_w B X_last^{-1} B^H, or None where some X_j is not definite."""
    k = last_k(data, layers)
    return None if k is None else torch.linalg.eigvalsh(arrow_sum(data, k))


def fast_start(data: _Data, slope: float) -> list[Layer]:
    """ECLipsE-Fast's scalar t per layer (so X_h >= t/2), lam = t / (2m) on the pool's
    ReLUs and mu = t / (8m) on q_a (then X_h >= 3t/8 and the u block >= t/(4m) exceeds
    C X_h^{-1} C^T <= t/(6m)): feasible."""
    layers: list[Layer] = []
    k = data.a[0] @ data.a[0].mH
    for i in range(len(data.a) - 1):
        top = float(torch.linalg.eigvalsh((k + k.mH) / 2)[..., -1].max())
        t = torch.full((k.shape[-1],), 2.0 / (slope * slope * max(top, 1e-300)),
                       dtype=torch.float64)
        layers.append((t,))
        pattern = data.patterns[i]
        if pattern is not None:
            c, d_p = pattern[0], pattern[2].shape[0]
            m = 1 + round(c.shape[0] / d_p)
            lam = torch.full((c.shape[0],), float(t[0]) / (2 * m), dtype=torch.float64)
            mu = torch.full((d_p,), float(t[0]) / (8 * m), dtype=torch.float64)
            layers[-1] = (t, lam, mu)
        low = _node(data, i, layers[-1], k)
        if low is None:
            raise ArithmeticError("the start multipliers are not feasible")
        k = _next_k(low, data.a[i + 1])
    return layers


class _Stop(Exception):
    pass


def optimise(model: PooledModel, steps: int, deadline: float, reserve: float = 0.0,
             data: _Data | None = None, start: list[Layer] | None = None
             ) -> tuple[list[tuple[np.ndarray, ...]], int, bool]:
    """Multipliers by L-BFGS on a smooth maximum of log eig S over their logs, as
    sdp_conv.optimise (same stages, same deadline rule). Returns the best feasible
    multipliers seen, the evaluations used and whether the deadline cut the search.
    `data` (_Data(model)) and `start` (fast_start) if at hand."""
    data = data if data is not None else _Data(model)
    start = start if start is not None else fast_start(data, model.base.slope)
    logs = [torch.log(v).requires_grad_(True) for layer in start for v in layer]
    shape = [len(layer) for layer in start]
    state: dict[str, Any] = {"value": math.inf, "best": start, "evals": 0, "reserve": reserve}
    for sharpness in SHARPNESS:
        opt = torch.optim.LBFGS(logs, lr=1, max_iter=steps, history_size=HISTORY,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-10,
                                tolerance_change=1e-13)
        try:
            opt.step(lambda s=sharpness, o=opt: _loss(o, logs, shape, data, s, state, deadline))
        except _Stop:
            return _numpy(state["best"]), state["evals"], True
    return _numpy(state["best"]), state["evals"], False


def _group(values: list[torch.Tensor], shape: list[int]) -> list[Layer]:
    out, at = [], 0
    for n in shape:
        out.append(tuple(values[at:at + n]))
        at += n
    return out


def _numpy(layers: list[Layer]) -> list[tuple[np.ndarray, ...]]:
    return [tuple(v.detach().numpy() for v in layer) for layer in layers]


def _loss(opt, logs, shape, data: _Data, sharpness: float, state: dict, deadline: float):
    now = time.monotonic()
    if not may_start(deadline, state.get("eval_seconds", state["reserve"]), state["reserve"]):
        raise _Stop
    state["evals"] += 1
    opt.zero_grad()
    layers = _group([torch.exp(v) for v in logs], shape)
    ev = spectrum(data, layers)
    if ev is None or not bool(torch.isfinite(ev.detach()).all()) or float(ev[-1].detach()) <= 0:
        loss = sum(v.sum() for v in logs) * 0 + INFEASIBLE
    else:
        top = float(ev[-1].detach())
        if top < state["value"]:
            state["value"] = top
            state["best"] = [tuple(v.detach().clone() for v in layer) for layer in layers]
        smooth = torch.logsumexp(sharpness * (ev / ev[-1].detach() - 1), 0) / sharpness
        loss = torch.log(ev[-1]) + smooth
    loss.backward()
    state["eval_seconds"] = max(state.get("eval_seconds", 0.0), time.monotonic() - now)
    return loss


def blocks(model: PooledModel, layers: list[tuple[np.ndarray, ...]]
           ) -> tuple[np.ndarray, np.ndarray]:
    """H_w for every frequency over the nodes x, (h_1, u_1), ... (F, D, D) complex128, and
    the border B(w) R_last on the last node."""
    sizes, half = _node_sizes(model), model.base.slope / 2
    starts = np.cumsum([0] + sizes)
    out = np.zeros((model.freqs, starts[-1], starts[-1]), dtype=np.complex128)
    out[:, np.arange(sizes[0]), np.arange(sizes[0])] = 1.0
    out_map = None
    for i, mult in enumerate(layers):
        prev, node = slice(starts[i], starts[i + 1]), slice(starts[i + 1], starts[i + 2])
        d_h = model.h_dims[i]
        h = slice(starts[i + 1], starts[i + 1] + d_h)
        out[:, h, h] = np.diag(mult[0])
        sym = model.base.symbol(i) if out_map is None else model.base.symbol(i) @ out_map
        low = -half * mult[0][None, :, None] * sym
        out[:, h, prev] = low
        out[:, prev, h] = low.conj().transpose(0, 2, 1)
        out_map = None
        if model.pools[i] is not None:
            pattern = pool_pattern(model, i)
            out_map = pattern[2]
            out[:, node, node] += pool_block(pattern, mult[1], mult[2])
    border = model.base.border()
    return out, (border if out_map is None else border @ out_map)


def _node_sizes(model: PooledModel) -> list[int]:
    sizes = [model.base.dims[0]]
    for i, d_h in enumerate(model.h_dims):
        pooled = model.pools[i] is not None
        sizes.append(d_h + model.p_dim(i) * (model.window_size(i) - 1) if pooled else d_h)
    return sizes


def link_formation_error(model: PooledModel, layers: list[tuple[np.ndarray, ...]],
                         border_scale: float = 1.0) -> float:
    """Bound on the spectral norm of (computed - exact) arrow. A pool's node block holds
    sums of at most three multiplier terms (their halves exact), at most 2m + 2 nonzeros a
    row: gamma(4) relative each, bounded by Gershgorin; a link A_i(w) R is a copy of A_i(w)'s
    columns (R has one 1 per column), each used by at most m of R's rows, so its error is
    at most sqrt(m) times A_i's (as in sdp_conv_cert.formation_error); the same for B R."""
    half, total = model.base.slope / 2, 0.0
    for i, mult in enumerate(layers):
        stack = np.stack(list(model.base.taps[i].values()))
        size = float(np.linalg.norm(np.abs(stack).sum(axis=0)))
        err = model.base.symbol_error(i) + gamma(4) * size
        total += half * float(np.max(mult[0])) * err * _spread(model, i - 1)
        if model.pools[i] is not None:   # sums of two or three terms in the node block
            m = model.window_size(i)
            size = float(np.max(mult[0])) + float(np.max(mult[1])) + 2 * float(np.max(mult[2]))
            total += gamma(4) * (2 * m + 2) * size
    total += model.base.border_error() * border_scale * _spread(model, len(layers) - 1)
    return total * (1 + 1e-6)


def _spread(model: PooledModel, i: int) -> float:
    pool = model.pools[i] if i >= 0 else None
    return 1.0 if pool is None else math.sqrt(pool[0] * pool[1])


def certify(model: PooledModel, layers: list[tuple[np.ndarray, ...]], rho: float | None = None,
            margin: bool = True, deadline: float = math.inf) -> Certificate:
    """sdp_conv_cert's shifted arrow Cholesky on the pooled blocks (same rules, same
    second attempt); margin=False drops the allowances (tests only). The border is first
    scaled by a power of two s ~ 1 / sqrt(rho): [[H, s B^H], [s B, s^2 rho I]] >= 0 iff the
    arrow is (a congruence; exact in floating point), and the Cholesky's rounding, which
    grows with |Z|_F^2 ~ trace S, then stays small next to the small multipliers."""
    h, border = blocks(model, layers)
    scale = _border_scale(model, layers)
    form = link_formation_error(model, layers, scale) if margin else 0.0
    diagonal = np.abs(np.diagonal(h[0]).real)
    arrow = Arrow(h.shape[0], h.shape[1], lambda part: h[part], border * scale, [diagonal])
    scaled = None if rho is None else rho * scale * scale
    result = check_arrow(arrow, scaled, form, model.freqs * float(np.sum(diagonal)), margin,
                         deadline)
    result.rho /= scale * scale
    result.detail += f" (border scaled by 2^{round(math.log2(scale))}: rho {result.rho:.9g})"
    return result


def _border_scale(model: PooledModel, layers: list[tuple[np.ndarray, ...]]) -> float:
    """A power of two near 1 / sqrt(rho(layers)) (1 where the multipliers are infeasible)."""
    ev = spectrum(_Data(model), [tuple(torch.from_numpy(v) for v in layer) for layer in layers])
    if ev is None or not float(ev[-1]) > 0:
        return 1.0
    return 2.0 ** round(-0.5 * math.log2(float(ev[-1])))


def sdp_conv_pooled(chain: Chain, settings: Settings, deadline: float) -> ChainBound | None:
    """sdp-conv for any chain: a pooled chain gets the joint bound through its pools, or
    the product of its pieces' and its other nodes' bounds where that is smaller."""
    if not isinstance(chain, PooledChain):
        return sdp_conv(chain, settings, deadline)
    start = time.monotonic()
    split = _split(chain, settings, deadline)   # the pieces first: the fallback is kept
    joint = _joint(chain, settings, deadline)
    best = joint if joint.certified and (not split.certified or joint.value <= split.value) \
        else split
    detail = (f"through the MaxPool(s): {joint.detail}" if best is joint else
              f"{split.detail} (the joint bound {joint.value:.6g} is not smaller: {joint.detail})")
    return ChainBound(best.value, best.certified, best.complete, detail,
                      time.monotonic() - start, joint.cut_by_budget or split.cut_by_budget)


def _joint(chain: PooledChain, settings: Settings, deadline: float) -> ChainBound:
    start = time.monotonic()
    model, why = pooled_model(chain)
    if model is None or model.freqs * sum(_node_sizes(model)) ** 2 > MAX_BLOCK_ENTRIES:
        return ChainBound(math.inf, False, False, why or "blocks too large")
    if over_work(settings.extra, model.freqs, sum(_node_sizes(model))):
        return ChainBound(math.inf, False, False, "not run: above the quick limits of "
                          "--method auto (--method sdp-conv runs it)")
    warm_optimiser()
    predicted = certificate_seconds(model.freqs, sum(_node_sizes(model)))
    if not may_start(deadline, predicted, predicted):
        return ChainBound(math.inf, False, False, "not run: no time for its certificate",
                          cut_by_budget=True)
    data = _Data(model)
    begin = fast_start(data, model.base.slope)
    begun = time.monotonic()   # the start's certificate: the fallback, and the reserve's measure
    first = certify(model, _numpy(begin), deadline=deadline)
    reserve = Budget.measured(deadline, predicted, time.monotonic() - begun).reserve
    layers, evals, cut = optimise(model, int(settings.extra.get("sdp_conv_pool_steps", STEPS)),
                                  deadline, reserve, data, begin)
    begun = time.monotonic()
    cert = certify(model, layers, deadline=deadline)
    cert = _interior(model, layers, cert, deadline, time.monotonic() - begun, _numpy(begin))
    head = (f"{model.base.grid}x{model.base.grid} frequencies, blocks of "
            f"{sum(_node_sizes(model))}, channel-wise multipliers, {evals} evaluations"
            f"{' (cut by the deadline)' if cut else ''}")
    cut = cut or cert.stopped
    cert, head = final_or_start(first, cert, head)
    if not cert.verified:
        return ChainBound(math.inf, False, False, f"{head}; certificate refused ({cert.detail})",
                          time.monotonic() - start, cut)
    value = math.sqrt(cert.rho) * (1 + 1e-9)
    return ChainBound(value, True, True, f"{head}; float64 arrow Cholesky: {cert.detail}",
                      time.monotonic() - start, cut)


def _interior(model: PooledModel, layers, cert: Certificate, deadline: float,
              took: float, start: list[tuple[np.ndarray, ...]]) -> Certificate:
    """Where the optimum sits too near the boundary for the float64 check: the LMI is
    affine in the multipliers (for fixed rho) and strictly feasible at the start, so a
    convex combination theta * start + (1 - theta) * best is feasible with room
    proportional to theta, at a value at most theta * rho_start + (1 - theta) rho_best.
    A try starts only if it ends before the deadline (predicted: as long as the first).
    `start`: fast_start's multipliers (numpy)."""
    for theta in MIX:
        if cert.verified or time.monotonic() + took > deadline:
            break
        mixed = [tuple(theta * a + (1 - theta) * b for a, b in zip(s, m, strict=True))
                 for s, m in zip(start, layers, strict=True)]
        cert = certify(model, mixed, deadline=deadline)
    return cert


def _split(chain: PooledChain, settings: Settings, deadline: float) -> ChainBound:
    """The chain cut at its pools: every piece's sdp-conv bound (or AutoLip product) times
    the AutoLip bounds of the nodes in no piece."""
    value, certified = chain.outside, chain.outside_certified
    for piece in chain.pieces:
        found = sdp_conv(piece, settings, deadline)
        if found is None or found.segment is not None:   # a residual branch: not a piece
            found = ChainBound(piece.autolip_product, piece.autolip_certified, True, "")
        value *= found.value
        certified &= found.certified
    return ChainBound(value, certified, True, f"split at the pool(s): {value:.6g}")

