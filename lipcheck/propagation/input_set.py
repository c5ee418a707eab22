"""Input sets, batched: B boxes, or B L2 / Linf balls of one radius around given points.

Everything is flat float64: centres (B, n). `affine_range` gives the exact range of
x -> A x + c over each set (dual norms for balls, |A| times the half-widths for a box).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class InputSet:
    center: torch.Tensor            # (B, n)
    kind: str                       # "box", "l2" or "linf"
    radius: torch.Tensor | float    # box: half-widths (B, n); ball: the radius

    def __post_init__(self) -> None:
        if self.kind not in ("box", "l2", "linf"):
            raise ValueError(f"unknown input set kind {self.kind!r}")
        self.center = self.center.to(torch.float64)
        if isinstance(self.radius, torch.Tensor):
            self.radius = self.radius.to(torch.float64)

    @classmethod
    def box(cls, lo: torch.Tensor, hi: torch.Tensor) -> InputSet:
        lo, hi = lo.to(torch.float64), hi.to(torch.float64)
        return cls((lo + hi) / 2, "box", (hi - lo) / 2)

    @classmethod
    def ball(cls, center: torch.Tensor, radius: float, norm: str = "2") -> InputSet:
        kind = {"2": "l2", "inf": "linf"}[str(norm)]
        return cls(center.reshape(center.shape[0], -1), kind, float(radius))

    @property
    def batch(self) -> int:
        return self.center.shape[0]

    def slice(self, start: int, stop: int) -> InputSet:
        radius = self.radius[start:stop] if isinstance(self.radius, torch.Tensor) else self.radius
        return InputSet(self.center[start:stop], self.kind, radius)

    def describe(self) -> str:
        if self.kind == "box":
            lo = float((self.center - self.radius).min())
            hi = float((self.center + self.radius).max())
            return f"box [{lo:g}, {hi:g}]"
        name = "L2" if self.kind == "l2" else "Linf"
        return f"{name} ball of radius {self.radius:g}"

    def interval(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A box that contains each set: (lo, hi), each (B, n)."""
        return self.center - self.radius, self.center + self.radius

    def affine_range(self, a: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(lower, upper) of A x + c over each set; A (B, m, n), c (B, m)."""
        mid = torch.einsum("bmn,bn->bm", a, self.center) + c
        if self.kind == "box":
            spread = torch.einsum("bmn,bn->bm", a.abs(), self.radius)
        elif self.kind == "l2":
            spread = self.radius * torch.linalg.vector_norm(a, dim=2)
        else:
            spread = self.radius * a.abs().sum(dim=2)
        return mid - spread, mid + spread
