"""Estimators: pure functions from a Graph (and per-node results) to results.

Grouped by what their numbers guarantee:
- `upper/`     certified upper bounds (AutoLip, SeqLip-exact, LipSDP, ECLipsE) and the
               driver that composes chain bounds into a network bound;
- `lower/`     certified lower bounds (attained difference quotients of the network);
- `exact/`     exact values where they can be computed (tiny piecewise-linear nets, the
               per-pair maximum of SeqLip by enumeration or branch and bound);
- `heuristic/` estimates that are neither bound (greedy SeqLip);
- `sandwich`   the interval [certified lower, certified upper] and its warnings.
"""
