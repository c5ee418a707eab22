"""Certified upper bounds: every value these modules label certified is at least the true
Lipschitz constant (L2 to L2) of what it bounds. A method that cannot certify (too large,
solver missing, budget spent) falls back to a certified bound or says it is an estimate.
`global_bounds` also runs the heuristic SeqLip variants and labels them estimates."""
