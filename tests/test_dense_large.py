"""Dense certified norms above the eigvalsh size (issue 12: VGG's 25088 x 4096 layer):
the Gram by float64 column chunks and the Lanczos + Cholesky certificate stay above the
truth and within 1e-4 of it. Truth: sigma(A kron B) = sigma(A) sigma(B)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from lipcheck.spectral import dense_gram, operator
from lipcheck.spectral.operator import matrix_norm


@pytest.mark.parametrize("as_tensor", [True, False])
def test_large_dense_norm_is_certified_and_tight(as_tensor: bool, monkeypatch) -> None:
    monkeypatch.setattr(dense_gram, "GRAM_CHUNK_ENTRIES", 1 << 18)   # several chunks
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((42, 44)), rng.standard_normal((50, 50))
    m = np.kron(a, b)                                               # 2100 x 2200
    assert min(m.shape) > operator.EIGH_MAX
    truth = scipy.linalg.svdvals(a)[0] * scipy.linalg.svdvals(b)[0]
    if as_tensor:   # the float32 matrix is the operator: its own truth (float64 Gram)
        m = torch.from_numpy(m).float()
        m64 = m.double().numpy()
        truth = float(np.sqrt(scipy.linalg.eigvalsh(m64 @ m64.T)[-1]))
    value = matrix_norm(m)
    reference = truth
    assert reference <= value <= reference * (1 + 1e-4)


def test_large_dense_norm_with_inf_is_inf() -> None:
    m = torch.ones(2100, 2100)
    m[3, 4] = float("inf")
    assert matrix_norm(m) == float("inf")
