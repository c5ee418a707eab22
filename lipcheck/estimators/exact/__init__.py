"""Exact values: the Lipschitz constant of tiny piecewise-linear chains by enumeration of
their reachable activation regions, and SeqLip's per-pair maximum over slope patterns by
enumeration or branch and bound. Each is exact when it completes; a cut-short run returns
a certified bound or a lower estimate and says which."""
