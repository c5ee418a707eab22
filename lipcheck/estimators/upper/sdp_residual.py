"""sdp-conv for a residual block y = x + W2 s(W1 x) as a unit (identity as feed-through).

W1, W2 are stride-1 convs whose output grid equals their input grid (so the identity is
the identity on the same real positions), s has slopes in [0, b]. With multipliers
T = diag(t) per hidden channel, rho >= Lip^2 when for all (dx, dh), dh = D W1 dx,
  rho |dx|^2 - |dx + W2 dh|^2 - dh^T T (b W1 dx - dh) >= 0,
i.e. per frequency of the circular embedding (conv_chain)
  Q_w = [[(rho - 1) I, -(A2 + (b/2) A1^H T)], [., T - A2^H A2]] >= 0.
For fixed T: rho(T) = 1 + max_w lambda_max(G_w (T - A2^H A2)^{-1} G_w^H). The certificate
factors every shifted Q_w in float64 with Demmel's margin plus the error of forming the
blocks. In the whole-network composition the block's bound L is carried by the branch as
L - 1: AutoLip adds the identity path's 1 at the Add (checked to be a plain sum).
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from lipcheck.estimators.upper.chains import Chain
from lipcheck.estimators.upper.conv_chain import (
    CircularChain,
    _grid,
    _taps,
    apply_layer,
    conv_layers,
)
from lipcheck.estimators.upper.sdp_cost import certificate_seconds, may_start, warm_optimiser
from lipcheck.estimators.upper.seqlip import ChainBound
from lipcheck.graph import OpKind
from lipcheck.rules import BoundContext, Merge, get_rule
from lipcheck.settings import Settings
from lipcheck.spectral.freq_gram import UNIT_ROUNDOFF, gamma

STEPS = 40
SHARPNESS = (30.0, 300.0)
RHO_SLACK = 1e-7


def residual_add(chain: Chain, settings: Settings):
    """The Add node that closes `x + chain(x)` (a plain sum with factor 1 in AutoLip), or None."""
    graph = chain.graph
    if graph is None or len(chain.parts) != 2:
        return None
    source = chain.nodes[0].inputs[graph.dynamic_inputs(chain.nodes[0])[0]]
    out = chain.nodes[-1].outputs[0]
    users = graph.consumers().get(out, [])
    if len(users) != 1 or users[0].op != OpKind.ADD:
        return None
    add = users[0]
    if sorted(add.inputs) != sorted([source, out]) or source == out:
        return None
    if len({tuple(shape) for shape in add.input_shapes}) != 1:
        return None
    bound = get_rule(OpKind.ADD).bound(add, BoundContext(graph, settings))
    if bound.merge != Merge.SUM or bound.value != 1.0 or not bound.certified:
        return None
    return add


def residual_model(chain: Chain) -> CircularChain | None:
    if chain.graph is None or any(a != 0 for a, _ in chain.slopes):
        return None
    layers = conv_layers(chain.parts, chain.graph)
    if layers is None:
        return None
    first, second = layers
    if any(s != 1 for layer in layers for s in layer.strides):
        return None
    if first.out_size != first.in_size or second.out_size != second.in_size or \
            second.in_size != first.out_size or second.weight.shape[0] != first.weight.shape[1]:
        return None
    phases = [(1, 1)] * 3
    grid = _grid(layers, phases)
    taps = [_taps(layer, (1, 1), (1, 1)) for layer in layers]
    dims = [first.weight.shape[1], first.weight.shape[0], second.weight.shape[0]]
    model = CircularChain(grid, phases, dims, taps, np.zeros((0, dims[2]) + first.in_size),
                          chain.slopes[0][1], layers)
    rng = np.random.default_rng(0)
    for i, part in enumerate(chain.parts):
        x = rng.standard_normal((layers[i].weight.shape[1],) + layers[i].in_size)
        with torch.no_grad():
            want = part.operator.apply(torch.from_numpy(x).reshape(part.operator.in_shape)
                                       .to(part.operator.dtype)).double().numpy().ravel()
        got = apply_layer(model, i, x).ravel()
        scale = max(float(np.linalg.norm(want)), 1e-300) * math.sqrt(x.size)
        if got.size != want.size or not np.linalg.norm(got - want) <= 1e-9 * scale:
            return None
    return model


def _spectrum(a1, a2, gram2, t, slope: float):
    """Eigenvalues of G_w (T - A2^H A2)^{-1} G_w^H for every w, or None if infeasible."""
    tc = t.to(a1.dtype)
    low, info = torch.linalg.cholesky_ex(torch.diag_embed(tc) - gram2)
    if bool((info != 0).any()):
        return None
    g = a2 + (slope / 2) * a1.mH * tc[None, None, :]
    y = torch.linalg.solve_triangular(low, g.mH, upper=False)
    k = y.mH @ y
    return torch.linalg.eigvalsh((k + k.mH) / 2)


def optimise(model: CircularChain, steps: int, deadline: float, reserve: float = 0.0
             ) -> tuple[np.ndarray, int, bool]:
    """Multipliers by L-BFGS on a smooth maximum of log(1 + eig) over all frequencies,
    from two scalar starts; the best feasible seen, the evaluations, whether cut. An
    evaluation starts only if it and `reserve` seconds (the certificate) fit before the
    deadline (the first predicted to cost `reserve`, later ones the slowest so far)."""
    a1, a2 = (torch.from_numpy(model.symbol(i)) for i in range(2))
    gram2 = a2.mH @ a2
    top = float(torch.linalg.eigvalsh(gram2)[..., -1].max())
    best: dict[str, Any] = {"value": math.inf, "t": None, "evals": 0, "reserve": reserve}
    try:
        for scale in (2.0, 1.25):   # start: T = scale * max lambda(A2^H A2) I
            log = torch.full((a1.shape[1],), math.log(scale * max(top, 1e-300)),
                             dtype=torch.float64, requires_grad=True)
            for sharp in SHARPNESS:
                opt = torch.optim.LBFGS([log], lr=1, max_iter=steps, history_size=20,
                                        line_search_fn="strong_wolfe", tolerance_grad=1e-10,
                                        tolerance_change=1e-13)
                opt.step(_closure(opt, log, (a1, a2, gram2), model.slope, sharp, best, deadline))
        cut = False
    except TimeoutError:
        cut = True
    t = best["t"]
    if t is None:
        t = torch.full((a1.shape[1],), 2 * top, dtype=torch.float64)
    return t.numpy(), best["evals"], cut


def _closure(opt, log: torch.Tensor, mats: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
             slope: float, sharp: float, best: dict, deadline: float):
    def closure():
        now = time.monotonic()
        if not may_start(deadline, best.get("eval_seconds", best["reserve"]), best["reserve"]):
            raise TimeoutError
        best["evals"] += 1
        opt.zero_grad()
        t = torch.exp(log)
        ev = _spectrum(*mats, t, slope)
        if ev is None:
            penalty = log.sum() * 0 + 1e3
            penalty.backward()
            best["eval_seconds"] = max(best.get("eval_seconds", 0.0), time.monotonic() - now)
            return penalty
        flat = ev.reshape(-1)
        top = float(flat.detach().max())
        if top < best["value"]:
            best["value"], best["t"] = top, t.detach().clone()
        loss = torch.log(1 + flat.max()) + torch.logsumexp(
            sharp * ((1 + flat) / (1 + top) - 1), 0) / sharp
        loss.backward()
        best["eval_seconds"] = max(best.get("eval_seconds", 0.0), time.monotonic() - now)
        return loss
    return closure


def certify_residual(model: CircularChain, t: np.ndarray, rho: float | None = None,
                     margin: bool = True, shift_scale: float = 1.25) -> tuple[float, bool, str]:
    """Prove Q_w(rho, T) > 0 for every frequency in float64; rho None: the smallest the
    shifted blocks allow (plus RHO_SLACK)."""
    a1, a2 = model.symbol(0), model.symbol(1)
    c, h = a2.shape[1], a2.shape[2]
    half = model.slope / 2
    g = a2 + half * a1.conj().transpose(0, 2, 1) * t[None, None, :]
    low_block = np.diag(t)[None] - a2.conj().transpose(0, 2, 1) @ a2
    n = c + h
    size = [float(np.linalg.norm(np.abs(np.stack(list(model.taps[i].values()))).sum(axis=0)))
            for i in range(2)]
    e1, e2 = model.symbol_error(0), model.symbol_error(1)
    err_g = e2 + half * float(t.max()) * (e1 + gamma(4) * size[0]) + gamma(2) * size[1]
    err_gram = 2 * size[1] * e2 + e2 * e2 + gamma(n + 2) * size[1] ** 2
    form = (2 * err_g + err_gram) * (1 + 1e-6) if margin else 0.0
    gm = gamma(n + 4)
    trace_t = float(t.sum())
    shift = shift_scale * (2 * gm * (trace_t + n * 4 * size[1] ** 2) + form) if margin else 0.0
    shifted = low_block - shift * np.eye(h)[None]
    try:
        low = np.linalg.cholesky(shifted)
    except np.linalg.LinAlgError:
        return math.inf, False, "T - A2^H A2 is not positive definite"
    z = np.linalg.solve(low, g.conj().transpose(0, 2, 1))          # L^{-1} G^H per frequency
    k = z.conj().transpose(0, 2, 1) @ z
    top = float(np.linalg.eigvalsh((k + k.conj().transpose(0, 2, 1)) / 2)[:, -1].max())
    if rho is None:
        rho = 1 + shift + top * (1 + RHO_SLACK) + 1e-300
    q = np.zeros((a1.shape[0], n, n), dtype=np.complex128)
    q[:, :c, :c] = (rho - 1 - shift) * np.eye(c)
    q[:, :c, c:] = -g
    q[:, c:, :c] = -g.conj().transpose(0, 2, 1)
    q[:, c:, c:] = shifted
    try:
        r = np.linalg.cholesky(q)
    except np.linalg.LinAlgError:
        return rho, False, "a frequency block is not positive definite"
    frob = np.sum(np.abs(r) ** 2, axis=(1, 2)).max() * (1 + gamma(n * n + 2))
    rounding = 4 * UNIT_ROUNDOFF * (abs(rho) + shift + float(t.max()) + size[1] ** 2)
    need = gm * frob + form + rounding if margin else 0.0
    ok = (shift > need) if margin else True
    return rho, bool(ok), (
        f"rho {rho:.9g}, shift {shift:.3g} > rounding + formation {need:.3g}" if ok
        else f"shift {shift:.3g} below the rounding + formation bound {need:.3g}")


def sdp_residual(chain: Chain, settings: Settings, deadline: float) -> ChainBound | None:
    """The residual block x + chain(x) as a unit, carried by the chain as L - 1."""
    if residual_add(chain, settings) is None:
        return None
    start = time.monotonic()
    model = residual_model(chain)
    if model is None:
        return None
    warm_optimiser()
    reserve = certificate_seconds(model.freqs, model.dims[0] + model.dims[1])
    if not may_start(deadline, reserve, reserve):
        return ChainBound(chain.autolip_product, chain.autolip_certified, False,
                          f"sdp-conv not run: its certificate alone (predicted {reserve:.2g} s) "
                          "does not fit in the time left: AutoLip product kept",
                          time.monotonic() - start, True)
    t, evals, cut = optimise(model, STEPS, deadline, reserve)
    took = time.monotonic()
    rho, ok, detail = certify_residual(model, t)
    took = time.monotonic() - took
    if not ok and time.monotonic() + took <= deadline:   # the first shift may have been too small
        rho, ok, detail = certify_residual(model, t, shift_scale=8.0)
    seconds = time.monotonic() - start
    head = (f"sdp-conv residual block x + F(x) as a unit: {model.grid}x{model.grid} frequencies, "
            f"{evals} evaluations{' (cut by the deadline)' if cut else ''}")
    if not ok:
        return ChainBound(chain.autolip_product, chain.autolip_certified, False,
                          f"{head}; certificate refused ({detail}): AutoLip product kept",
                          seconds, cut)
    block = math.sqrt(rho) * (1 + 1e-9)
    value = max(block - 1.0, 0.0)
    if chain.autolip_certified and chain.autolip_product <= value:
        return ChainBound(chain.autolip_product, True, True,
                          f"{head}; block bound {block:.6g} not below 1 + the branch's AutoLip "
                          "product: product kept", seconds, cut)
    return ChainBound(value, True, True, f"{head}; block bound {block:.9g} (float64 Cholesky per "
                      f"frequency: {detail}), carried by the branch as block - 1", seconds, cut,
                      block=block)
