"""dense_gram: the float64 Gram by symmetric rank-k updates (any memory layout of the
input) equals the float64 product, and the certified norm stays above the dense SVD's
value and within 1e-5 of it, also when the Lanczos threshold is too low (the certificate
raises it) or useless (the Frobenius fallback)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from lipcheck.spectral import dense_gram
from lipcheck.spectral.dense_gram import certified_top, float64_gram, gram_norm


def _layouts(rows: int, cols: int) -> list[np.ndarray | torch.Tensor]:
    rng = np.random.default_rng(rows * cols)
    m = rng.standard_normal((rows, cols))
    f32 = torch.from_numpy(m).float()
    return [m, np.asfortranarray(m), f32, f32.T.contiguous().T, torch.from_numpy(m.T.copy()).T]


@pytest.mark.parametrize("rows,cols", [(40, 300), (300, 40), (257, 260)])
def test_float64_gram_equals_the_product(rows: int, cols: int, monkeypatch) -> None:
    monkeypatch.setattr(dense_gram, "GRAM_CHUNK_ENTRIES", 1000)   # many chunks
    monkeypatch.setattr(dense_gram, "MIRROR_ROWS", 7)             # many mirror blocks
    for m in _layouts(rows, cols):
        m64 = torch.as_tensor(m).double().numpy()
        small = m64 @ m64.T if rows <= cols else m64.T @ m64
        gram, frobenius = float64_gram(m)
        assert gram.flags.c_contiguous and gram.shape == small.shape
        np.testing.assert_allclose(gram, small, rtol=0, atol=1e-10 * np.abs(small).max())
        assert np.array_equal(gram, gram.T)
        assert frobenius >= float(np.square(m64).sum())


@pytest.mark.parametrize("shape", [(300, 700), (700, 300), (400, 400)])
def test_gram_norm_is_above_the_svd_and_tight(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[0])
    for m in (rng.standard_normal(shape), torch.from_numpy(rng.standard_normal(shape)).float()):
        truth = scipy.linalg.svdvals(torch.as_tensor(m).double().numpy())[0]
        value = gram_norm(m)
        assert truth <= value <= truth * (1 + 1e-5)


def test_a_low_threshold_is_raised_until_proven(monkeypatch) -> None:
    rng = np.random.default_rng(1)
    m = rng.standard_normal((300, 500))
    top = scipy.linalg.eigvalsh(m @ m.T)[-1]
    monkeypatch.setattr(dense_gram, "top_eigenvalue", lambda g: top * (1 - 5e-4))
    tau = certified_top(m @ m.T)
    assert tau is not None and top < tau <= top * (1 + 1e-3)


def test_an_unprovable_threshold_falls_back_to_frobenius(monkeypatch) -> None:
    rng = np.random.default_rng(2)
    m = rng.standard_normal((300, 500))
    monkeypatch.setattr(dense_gram, "top_eigenvalue", lambda g: 1.0)   # far below
    assert certified_top(m @ m.T) is None
    value = gram_norm(m)
    assert value >= np.sqrt(np.square(m).sum()) >= scipy.linalg.svdvals(m)[0]
