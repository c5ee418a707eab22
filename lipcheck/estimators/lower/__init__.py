"""Certified lower bounds: every value is a difference quotient ||f(p) - f(q)|| / ||p - q||
of the exact network at two points, evaluated in float64 and lowered by a rounding margin,
so it is at most the true Lipschitz constant. The search (ascents, smoothing) only steers."""
