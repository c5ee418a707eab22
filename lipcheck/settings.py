"""Options that change what is computed (not how it is shown)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

LAYER_METHODS = ("auto", "exact", "fft", "gram", "power")


@dataclass
class Settings:
    seed: int = 0
    device: str = "cpu"
    max_iter: int = 500          # power iteration cap
    tol: float = 1e-6            # power iteration relative tolerance
    exact_max_dim: int = 2048    # dense Jacobian SVD when min(n_in, n_out) is at most this
    exact_max_entries: int = 2**23  # ... and n_in * n_out is at most this
    layer_method: str = "auto"   # per-layer operator-norm method (see LAYER_METHODS)
    time_budget: float = 60.0    # seconds, for the global methods (SeqLip, SDP, ...)
    layer_budget: float = 30.0   # cap (s) on a layer's certified norm: `auto` chooses within it,
                                 # a method past it keeps a cheaper certified bound (layer_clock)
    dtype: str = "float32"       # working precision of estimates; certificates are always float64
    timeout: float | None = None  # seconds for the whole run (lipcheck.limits.time_limit)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
