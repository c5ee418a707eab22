"""Write the digits test split (the one models/ was evaluated on) as an .npz for
`lipcheck check --data`: arrays x (n, 64) in [0, 1] and y (n,) integer labels.

    python bench/make_digits_npz.py digits_val.npz
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from digits_data import digits_split  # noqa: E402


def main(path: str) -> None:
    _, _, x_test, y_test = digits_split()
    np.savez(path, x=x_test.astype(np.float32), y=y_test.astype(np.int64))
    print(f"wrote {path}: {len(y_test)} samples")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "digits_val.npz")
