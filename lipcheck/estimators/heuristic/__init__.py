"""Heuristic estimates: neither upper nor lower bounds (greedy SeqLip's pattern search).
Their values are reported as estimates, never as certified."""
