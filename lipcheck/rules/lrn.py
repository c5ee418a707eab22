"""LRN (local response normalisation across channels): a certified bound.

y_c = x_c / s_c^beta, s_c = k + a S_c, S_c = sum_{j in W(c)} x_j^2, a = alpha / size, W(c)
the window of channels around c (at most m = min(size, C) of them). Positions and samples
are independent (block-diagonal Jacobian); at one position

    J = D - U,  D = diag(s_c^-beta),  U_cj = 2 a beta x_c x_j s_c^(-beta-1) [j in W(c)].

With k > 0, alpha >= 0, beta >= 0: s_c >= k, so ||D|| <= k^-beta (equality at x = 0).
Row c of U: sum_j |U_cj| <= 2 a beta |x_c| sqrt(m S_c) s_c^(-beta-1) <= 2 beta sqrt(m) t (k+t)^(-beta-1)
with t = a S_c (x_c^2 <= S_c, Cauchy-Schwarz). Each entry: |x_c x_j| <= S_c, so it is at most
2 beta t (k+t)^(-beta-1), and a column has at most m of them. max_t t (k+t)^(-beta-1) is at
t = k / beta: k^-beta (beta/(beta+1))^(beta+1) / beta. The Schur test
||U|| <= sqrt(max row sum * max column sum) then gives

    L <= k^-beta (1 + 2 m^(3/4) (beta/(beta+1))^(beta+1)),

a certified bound (not exact: the true constant lies between k^-beta and it). k <= 0 or
alpha < 0 lets s_c reach 0 (unbounded); beta < 0 grows faster than linearly (unbounded).
"""
from __future__ import annotations

import math

import torch

from lipcheck.graph import Node, OpKind
from lipcheck.rules.registry import BoundContext, NodeBound, Rule, analytic, register, unbounded

MARGIN = 1 + 1e-12


def _params(node: Node) -> tuple[int, float, float, float]:
    return (int(node.attrs["size"]), float(node.attrs.get("alpha", 1e-4)),
            float(node.attrs.get("beta", 0.75)), float(node.attrs.get("bias", 1.0)))


def _lrn_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    x = inputs[0]
    size, alpha, beta, bias = _params(node)
    sq = x * x
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    zeros = torch.zeros_like(sq.narrow(1, 0, 1))
    padded = torch.cat([zeros] * before + [sq] + [zeros] * after, dim=1)
    total = sum(padded.narrow(1, i, x.shape[1]) for i in range(size))
    return [x / (bias + alpha / size * total) ** beta]


def lrn_constant(size: int, channels: int, alpha: float, beta: float, bias: float) -> float:
    """The certified bound of the module docstring (inf where LRN is not Lipschitz)."""
    if bias <= 0 or alpha < 0 or beta < 0:
        return math.inf
    base = bias ** -beta
    if alpha == 0 or beta == 0:
        return base * MARGIN
    m = min(size, channels)
    return base * (1 + 2 * m ** 0.75 * (beta / (beta + 1)) ** (beta + 1)) * MARGIN


def _lrn_bound(node: Node, ctx: BoundContext) -> NodeBound:
    size, alpha, beta, bias = _params(node)
    value = lrn_constant(size, int(node.input_shapes[0][1]), alpha, beta, bias)
    if not math.isfinite(value):
        return unbounded(f"LRN with bias={bias}, alpha={alpha}, beta={beta} is not globally "
                         "Lipschitz (needs bias > 0, alpha >= 0, beta >= 0)")
    return analytic(value, detail="k^-beta (1 + 2 m^(3/4) (beta/(beta+1))^(beta+1)) "
                                  "(certified, Schur test)")


register(Rule(OpKind.LRN, "normalisation", _lrn_run, _lrn_bound,
              "k^-beta (1 + 2 m^(3/4) (beta/(beta+1))^(beta+1)), m = min(size, C) "
              "(certified; >= k^-beta, its value at x = 0); unbounded if k <= 0", derivation=__doc__))
