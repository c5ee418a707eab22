"""Result records shared by the estimators (no presentation here)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class GlobalBound:
    """A bound on the Lipschitz constant of the whole network (or of a chain).

    kind: "upper" (certified=True means proven >= the true constant),
          "lower" (certified=True means proven <= the true constant),
          "estimate" (a heuristic: neither).
    """

    method: str
    value: float
    certified: bool
    kind: str = "upper"
    seconds: float = 0.0
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def tightest_certified(bounds: list[GlobalBound]) -> GlobalBound | None:
    """The smallest certified upper bound, or None when there is none."""
    certified = [b for b in bounds if b.certified and b.kind == "upper"]
    return min(certified, key=lambda b: b.value, default=None)
