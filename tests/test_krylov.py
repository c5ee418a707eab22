"""spectral/krylov.py: the one Lanczos routine, its stopping rules, and the exact-Gram
threshold built on it, against dense eigvalsh."""
import numpy as np
import pytest
from test_spectral_conv import conv_graph

from lipcheck.spectral.dense_gram import top_eigenvalue
from lipcheck.spectral.krylov import ResidualBelow, RitzSettled, lanczos
from lipcheck.spectral.padded_gram import input_gram, real_entries
from lipcheck.spectral.polyphase import conv_spec, phase_kernel


def wishart(n: int, rank: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).standard_normal((rank, n))
    return a.T @ a


def test_an_invariant_subspace_ends_the_run_with_the_exact_top() -> None:
    g = np.diag(np.arange(1.0, 11.0))
    start = np.zeros(10)
    start[:2] = 1.0  # spans an invariant subspace: beta is ~0 after two steps
    run = lanczos(lambda v: g @ v, start, 8)
    assert run.steps == 2 and run.betas[-1] <= 1e-30 * 2
    value, residual, vector = run.top()
    assert value == pytest.approx(2.0, rel=1e-15) and residual <= 1e-30
    assert abs(vector[1]) == pytest.approx(1.0, rel=1e-12)


def test_without_a_rule_every_step_runs_and_the_rules_stop_earlier() -> None:
    g = wishart(200, 400, 1)
    start = np.random.default_rng(2).standard_normal(200)
    assert lanczos(lambda v: g @ v, start, 30).steps == 30
    settled = lanczos(lambda v: g @ v, start, 200, RitzSettled(1e-5))
    small = lanczos(lambda v: g @ v, start, 200, ResidualBelow(1e-6))
    top = np.linalg.eigvalsh(g)[-1]
    assert settled.steps < 200 and settled.steps % 4 == 0
    assert top * (1 - 1e-4) <= settled.top()[0] <= top * (1 + 1e-12)
    value, residual, _ = small.top()
    assert residual <= 1e-6 * value and value == pytest.approx(top, rel=1e-10)


def test_a_non_finite_product_drops_the_step() -> None:
    calls = []

    def matvec(v: np.ndarray) -> np.ndarray:
        calls.append(1)
        return v * (np.nan if len(calls) == 2 else np.arange(1.0, 11.0))
    run = lanczos(matvec, np.ones(10), 8)
    assert run.steps == 1 and np.isfinite(run.top()[0])


@pytest.mark.parametrize("c, size, seed", [(8, 12, 1), (16, 8, 2), (3, 16, 7)])
def test_exact_gram_threshold_is_the_top_eigenvalue(c: int, size: int, seed: int) -> None:
    """The estimate tau starts from: a Rayleigh quotient (never above lambda_max beyond
    rounding) within 1e-9 of it on Grams above the eigvalsh cutoff (256 rows)."""
    graph = conv_graph(c, c, (size, size), (3, 3), {"pads": [1] * 4}, seed=seed)
    pk = phase_kernel(conv_spec(graph.nodes[0], graph.constants["w"]))
    gram = input_gram(pk.taps[0].numpy(), pk, real_entries(pk))
    assert gram.shape[0] > 256
    top = float(np.linalg.eigvalsh(gram)[-1])
    estimate = top_eigenvalue(gram)
    assert top * (1 - 1e-9) <= estimate <= top * (1 + 1e-12)
