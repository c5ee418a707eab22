import os

# One BLAS thread (set before numpy loads OpenBLAS): scipy's SVD of a 512x512 matrix
# takes ~2.5 s with the default thread pool on this shared 2-core box, ~0.15 s with one.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

# Torch's pool follows OMP_NUM_THREADS (1 unless set), so `OMP_NUM_THREADS=2 pytest` flushes out
# results that depend on the thread count.
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
