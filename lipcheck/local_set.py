"""The input set of `estimate --input-range` / `--around --eps --norm`, checked before torch
is imported (lipcheck.local_estimate bounds the constant on it)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from lipcheck.errors import UserError


@dataclass(frozen=True)
class LocalSet:
    """What the user asked for: a box, or balls around the points of an .npz."""

    input_range: tuple[float, float] | None = None
    around: Path | None = None
    eps: float | None = None
    norm: str = "2"

    def validated(self) -> LocalSet:
        if self.around is None and self.eps is not None:
            raise UserError("--eps needs --around (the centres of the balls)")
        if self.around is not None and not (self.eps is not None and math.isfinite(self.eps)
                                            and self.eps > 0):
            raise UserError("--around needs --eps, a finite radius > 0")
        if self.around is not None and not Path(self.around).is_file():
            raise UserError(f"--around {self.around}: no such file")
        if self.norm not in ("2", "inf"):
            raise UserError(f"--norm {self.norm!r}: choose 2 or inf")
        return self

    @property
    def wanted(self) -> bool:
        return self.input_range is not None or self.around is not None
