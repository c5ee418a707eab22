"""LRN (local response normalisation across channels): a certified bound.

y_c = x_c / s_c^beta, s_c = k + a S_c, S_c = sum_{j in W(c)} x_j^2, a = alpha / size, W(c)
the window of channels around c (at most m = min(size, C) of them). Positions and samples
are independent (block-diagonal Jacobian); at one position

    J_cc = s_c^(-beta-1) (k + q + (1 - 2 beta) p),      p = a x_c^2, q = a sum_{j != c} x_j^2,
    J_cj = -2 a beta x_c x_j s_c^(-beta-1)  (j in W(c), j != c),   s_c = k + p + q.

Needs k > 0, alpha >= 0, beta >= 0 (else s_c reaches 0 or y grows faster than linearly:
unbounded). Schur test: ||J|| <= sqrt(max row sum x max column sum) of |J|.

Rows. With e = |1 - 2 beta|, b = beta sqrt(m - 1) and Cauchy-Schwarz on the at most m - 1
others, sum_{j != c} |J_cj| <= 2 beta sqrt(m-1) sqrt(p q) s^(-beta-1)
<= b (lam p + q / lam) s^(-beta-1) for any lam > 0, so a row sums to at most
s^(-beta-1) (k + C (s - k)) with C = max(1 + b/lam, e + b lam); lam solves
b lam^2 + (e - 1) lam - b = 0 (both terms equal). Over s >= k, h(s) = s^(-beta-1)(k + C(s-k))
peaks at s* = k (beta+1)(C-1)/(beta C) when s* > k, with h(s*) = k^-beta g(C),
g(C) = (s*/k)^(-beta-1) (C-1)/beta; else at s = k, where h = k^-beta (g(C) = 1).

Columns. |J_jj| <= k^-beta g(max(1, e)) (the row argument without the others). An
off-diagonal J_cj has 2 sqrt(a x_c^2 a x_j^2) <= s_c - k, so |J_cj| <= beta (s_c - k)
s_c^(-beta-1) <= k^-beta (beta/(beta+1))^(beta+1); channel j lies in at most m - 1 other
windows. Hence

    L <= k^-beta sqrt(g(C) (g(max(1, e)) + (m - 1) (beta/(beta+1))^(beta+1))),

a certified bound, not exact: the true constant lies between k^-beta (the Jacobian at x = 0)
and it (k^-beta times at most 1.5 for beta <= 1 and m <= 5, 1.7 for beta <= 2).
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
    e, b = abs(1 - 2 * beta), beta * math.sqrt(m - 1)
    if b == 0:
        row = _peak(max(1.0, e), beta)
    else:
        lam = ((1 - e) + math.sqrt((1 - e) ** 2 + 4 * b * b)) / (2 * b)
        row = _peak(max(1 + b / lam, e + b * lam), beta)
    column = _peak(max(1.0, e), beta) + (m - 1) * (beta / (beta + 1)) ** (beta + 1)
    return base * math.sqrt(row * column) * MARGIN


def _peak(c: float, beta: float) -> float:
    """max over s >= 1 of s^(-beta-1) (1 + c (s - 1)), for c >= 1."""
    s = (beta + 1) * (c - 1) / (beta * c)
    return 1.0 if s <= 1 else s ** (-beta - 1) * (c - 1) / beta


def _lrn_bound(node: Node, ctx: BoundContext) -> NodeBound:
    size, alpha, beta, bias = _params(node)
    value = lrn_constant(size, int(node.input_shapes[0][1]), alpha, beta, bias)
    if not math.isfinite(value):
        return unbounded(f"LRN with bias={bias}, alpha={alpha}, beta={beta} is not globally "
                         "Lipschitz (needs bias > 0, alpha >= 0, beta >= 0)")
    return analytic(value, detail=f"Schur test on |J| (certified), m = "
                                  f"{min(size, int(node.input_shapes[0][1]))}")


register(Rule(OpKind.LRN, "normalisation", _lrn_run, _lrn_bound,
              "k^-beta sqrt(row x column sum bound), m = min(size, C) (certified; >= k^-beta, "
              "its value at x = 0); unbounded if k <= 0", derivation=__doc__))
