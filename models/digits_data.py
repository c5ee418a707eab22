"""scikit-learn's 8x8 digits (shipped with sklearn, no download), split the same way
every time: pixels scaled to [0, 1], a stratified 75/25 split with a fixed seed."""
from __future__ import annotations

import numpy as np

TEST_FRACTION = 0.25
SPLIT_SEED = 0


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): x float32 of shape (n, 64) in [0, 1], y int64
    class labels stored as float32 (cast with .astype(int) / .long() for training)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=data.target)
    return x_train, y_train, x_test, y_test
