"""NaN/Inf counts of a tensor, block by block (the loaders, numerics and spectral use it).

A whole-tensor `torch.isinf(t)` / `~torch.isfinite(t)` / `.sum()` allocates masks and an
int64 upcast several times the weight's size (VGG-11's 0.4 GB layer: +0.5 to +0.9 GB of
peak memory); blocks keep the extra memory at a few MB."""
from __future__ import annotations

from collections.abc import Callable

import torch

BLOCK = 1 << 22  # elements per block (16 MB of float32)


def count(tensor: torch.Tensor, test: Callable[[torch.Tensor], torch.Tensor]) -> int:
    """Entries where `test` (an elementwise mask) holds; 0 for non-float or empty tensors."""
    if not tensor.is_floating_point() or not tensor.numel():
        return 0
    return sum(int(torch.count_nonzero(test(block)))
               for block in tensor.reshape(-1).split(BLOCK))


def count_nan(tensor: torch.Tensor) -> int:
    return count(tensor, torch.isnan)


def count_inf(tensor: torch.Tensor) -> int:
    return count(tensor, torch.isinf)


def count_nonfinite(tensor: torch.Tensor) -> int:
    return count(tensor, lambda t: ~torch.isfinite(t))
