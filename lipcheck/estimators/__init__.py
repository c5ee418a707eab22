"""Estimators: pure functions from a Graph (and per-node results) to results."""
