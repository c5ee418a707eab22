"""Linear bounds of a ReLU network over an L2 ball: CROWN ranges, and the backward pass
that branch and bound (`bab.py`) optimises.

`backward` gives a lower bound over B(x0, eps) of  lam . a_top + const, where a_k =
relu(z_k), z_k = W_k a_(k-1) + b_k, a_(-1) = x: each a_k is replaced by linear bounds valid
on z_k's range [l, u] (Zhang et al., NeurIPS 2018): a = z where l >= 0, a = 0 where u <= 0,
and for the others a <= u (z - l) / (u - l) (used where the coefficient is < 0) and
a >= alpha z (alpha in [0, 1], used where it is >= 0: alpha-CROWN). In a branch-and-bound
domain a split unit has a known sign (its range is clamped at 0), and the split's
constraint (z >= 0 or z <= 0) enters with a multiplier beta >= 0 (beta-CROWN, Wang et al.,
NeurIPS 2021): for g <= 0 on the domain, min m >= min (m + beta g). Any alpha in [0, 1] and
beta >= 0 give a valid bound, so the parameters can be optimised freely; the input is
closed exactly (lam . x0 - eps ||lam|| + const).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lipcheck.propagation.input_set import InputSet
from lipcheck.propagation.ranges import widen
from lipcheck.propagation.relu_net import ReluNet

Range = tuple[torch.Tensor, torch.Tensor]
ROUNDING = 1e-9      # relative to the sum of the terms' magnitudes (float64: ~1e-13)


@dataclass
class Relax:
    """Per-unit parameters of one backward pass, each per layer (B, m, n_k) or None."""

    alphas: list[torch.Tensor] | None = None
    betas: list[torch.Tensor] | None = None
    splits: list[torch.Tensor] | None = None   # (B, n_k): +1 z >= 0, -1 z <= 0, 0 free


def clamp_split(lo: torch.Tensor, hi: torch.Tensor, split: torch.Tensor | None) -> Range:
    if split is None:
        return lo, hi
    return (torch.where(split > 0, lo.clamp(min=0), lo),
            torch.where(split < 0, hi.clamp(max=0), hi))


def default_alpha(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """CROWN's lower slope: 1 where u >= -l, else 0."""
    return (hi >= -lo).to(lo.dtype)


def relax_layer(lam, lo, hi, alpha, beta, split, linear):
    """(coefficient on z, constant, magnitude of the constant's terms) for lam . a, a =
    relu(z) (or z where `linear`)."""
    lo, hi = lo[:, None, :], hi[:, None, :]
    active, dead = (lo >= 0) | linear, (hi <= 0) & ~linear
    unstable = ~(active | dead)
    slope = torch.where(unstable, hi / torch.where(unstable, hi - lo, 1.0), 0.0)
    neg = lam < 0
    coef = torch.where(active, lam, torch.where(
        dead, 0.0, torch.where(neg, lam * slope, lam * alpha)))
    terms = torch.where(unstable & neg, -lam * slope * lo, 0.0)
    if beta is not None:
        coef = coef - split[:, None, :] * beta
    return coef, terms.sum(dim=2), terms.abs().sum(dim=2)


def backward(net: ReluNet, lam: torch.Tensor, const: torch.Tensor, top: int,
             ranges: list[Range], center: torch.Tensor, eps: float, relax: Relax | None = None,
             keep: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(lower bound, magnitude) over each ball of lam . a_top + const; lam (B, m, n_top),
    const (B, m), ranges[k] the (B, n_k) range of z_k. `keep` collects each layer's lam."""
    relax = relax or Relax()
    mag = const.abs()
    for k in range(top, -1, -1):
        split = None if relax.splits is None else relax.splits[k]
        lo, hi = clamp_split(*ranges[k], split)
        alpha = (default_alpha(lo, hi)[:, None, :] if relax.alphas is None
                 else relax.alphas[k])
        beta = None if relax.betas is None else relax.betas[k]
        if keep is not None:
            keep.insert(0, lam)
        coef, terms, size = relax_layer(lam, lo, hi, alpha, beta, split, net.linear[k])
        const = const + terms + coef @ net.biases[k]
        mag = mag + size + coef.abs() @ net.biases[k].abs()
        lam = coef @ net.weights[k]
    mid = torch.einsum("bmn,bn->bm", lam, center)
    spread = eps * torch.linalg.vector_norm(lam, dim=2)
    return mid - spread + const, mag + torch.einsum("bmn,bn->bm", lam.abs(), center.abs()) + spread


def crown_ranges(net: ReluNet, center: torch.Tensor, eps: float,
                 prior: list[Range | None] | None = None) -> list[Range]:
    """Ranges of z_0 .. z_(L-2) over each ball (B, n_k): CROWN, intersected with interval
    bounds and with `prior` (other sound ranges of a layer's first units, e.g. the
    program's for the ReLUs of one of its activations), widened against rounding."""
    ranges: list[Range] = []
    for k in range(len(net.linear)):
        w, b = net.weights[k], net.biases[k]
        if k == 0:                                       # exact on the ball
            mid, rad = center @ w.T + b, eps * torch.linalg.norm(w, dim=1)
            bounds = widen(mid - rad, mid + rad)
        else:
            lo, hi = outputs(net, k - 1, ranges[-1])
            mid, rad = (lo + hi) / 2 @ w.T + b, (hi - lo) / 2 @ w.abs().T
            c_lo, c_hi = _crown_layer(net, k, ranges, center, eps)
            bounds = widen(torch.maximum(mid - rad, c_lo), torch.minimum(mid + rad, c_hi))
        known = None if prior is None else prior[k]
        ranges.append(bounds if known is None else _intersect_first(bounds, known))
    return ranges


def interval_ranges(net: ReluNet, s: InputSet,
                    prior: list[Range | None] | None = None) -> list[Range]:
    """Ranges of z_0 .. z_(L-2) over each set of `s` (any kind): the first layer's exact
    (InputSet.affine_range), then interval arithmetic, intersected with `prior` as in
    crown_ranges and widened against rounding."""
    ranges: list[Range] = []
    for k in range(len(net.linear)):
        w, b = net.weights[k], net.biases[k]
        if k == 0:
            batch = s.center.shape[0]
            bounds = s.affine_range(w[None].expand(batch, -1, -1), b[None].expand(batch, -1))
        else:
            lo, hi = outputs(net, k - 1, ranges[-1])
            mid, rad = (lo + hi) / 2 @ w.T + b, (hi - lo) / 2 @ w.abs().T
            bounds = (mid - rad, mid + rad)
        bounds = widen(*bounds)
        known = None if prior is None else prior[k]
        ranges.append(bounds if known is None else _intersect_first(bounds, known))
    return ranges


def _crown_layer(net: ReluNet, k: int, ranges: list[Range], center: torch.Tensor, eps: float,
                 splits: list[torch.Tensor] | None = None) -> Range:
    """CROWN bounds of z_k over each ball from the ranges of the layers before it (with
    the split units' signs fixed, where given)."""
    w, b = net.weights[k], net.biases[k]
    both = torch.cat([w, -w])[None].expand(center.shape[0], -1, -1)
    shift = torch.cat([b, -b])[None].expand(center.shape[0], -1)
    low, _ = backward(net, both, shift, k - 1, ranges, center, eps,
                      Relax(splits=None if splits is None else splits[:k]))
    m = w.shape[0]
    return low[:, :m], -low[:, m:]


def _intersect_first(bounds: Range, known: Range) -> Range:
    """`bounds` with its first units (carried values follow them) intersected with `known`."""
    n = known[0].shape[1]
    lo, hi = bounds
    return (torch.cat([torch.maximum(lo[:, :n], known[0]), lo[:, n:]], dim=1),
            torch.cat([torch.minimum(hi[:, :n], known[1]), hi[:, n:]], dim=1))


def outputs(net: ReluNet, k: int, bounds: Range) -> Range:
    """The range of layer k's outputs from its inputs' range."""
    lo, hi = bounds
    linear = net.linear[k]
    return torch.where(linear, lo, lo.clamp(min=0)), torch.where(linear, hi, hi.clamp(min=0))


def refine_ranges(net: ReluNet, ranges: list[Range], splits: list[torch.Tensor],
                  center: torch.Tensor, eps: float) -> list[Range]:
    """Ranges on branch-and-bound domains (B, n_k each): every layer after the first
    re-bounded by CROWN with the split units' signs fixed, intersected with the given
    ranges. Sound on each domain: there a split unit's ReLU is the identity or 0."""
    out = [clamp_split(*ranges[0], splits[0])]
    for k in range(1, len(ranges)):
        c_lo, c_hi = _crown_layer(net, k, out, center, eps, splits)
        lo, hi = widen(torch.maximum(ranges[k][0], c_lo), torch.minimum(ranges[k][1], c_hi))
        out.append(clamp_split(lo, hi, splits[k]))
    return out
