"""Reusable work buffers for the per-block loops of the spectral bounds."""
from __future__ import annotations

import math

import torch


class Scratch:
    """Reusable buffers for the block loops: a fresh large tensor costs its page faults
    (about 0.3 ms per MB on the project's machine), so the loops take views of these. A
    view stays valid until the next `take` of the same name."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype,
             device: torch.device) -> torch.Tensor:
        numel = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < numel or buffer.dtype != dtype \
                or buffer.device != device:
            buffer = torch.empty(numel, dtype=dtype, device=device)
            self._buffers[name] = buffer
        return buffer[:numel].view(shape)

    def clear(self) -> None:
        """Release every buffer (before a step that needs the memory for itself)."""
        self._buffers.clear()
