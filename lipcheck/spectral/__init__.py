"""Operator norms of the affine nodes: exact, power iteration, certified bounds."""
