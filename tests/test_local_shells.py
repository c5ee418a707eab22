"""Nested balls (shells) in the gate: the sum rule against the single-ball rule, and every
sample certified with shells against a PGD attack (small nets and digits_cnn)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from graphs import conv_net

from lipcheck.gate.robustness import predict
from lipcheck.loaders.dispatch import load_model
from lipcheck.local_certify import certify_local, margin_bounds, margin_rows
from lipcheck.local_shells import Shells, certificate, shell_radius, shell_sum
from lipcheck.propagation import build_program

ROOT = Path(__file__).resolve().parents[1]


def test_one_shell_is_the_single_ball_rule():
    k = np.array([[2.0, 4.0, 0.5]])
    margins = np.array([[0.1, 0.6, 0.02]])
    assert np.allclose(shell_sum([k], 0.2), 0.2 * k)
    assert np.allclose(shell_radius([k], margins, 0.2), [[0.05, 0.15, 0.04]])


def test_the_shell_sum_uses_the_running_minimum_from_outside():
    ks = [np.array([3.0]), np.array([1.0]), np.array([2.0]), np.array([4.0])]
    # envelope min_{j >= k}: 1, 1, 2, 4 -> (0.1 / 4) * 8
    assert np.isclose(shell_sum(ks, 0.1)[0], 0.2)
    # the running sum 0.025, 0.05, 0.1, 0.2 reaches 0.07 inside the third shell
    radius = shell_radius(ks, np.array([0.07]), 0.1)[0]
    assert np.isclose(radius, 0.05 + (0.07 - 0.05) / 2.0)
    assert shell_radius(ks, np.array([0.3]), 0.1)[0] == 0.1
    assert shell_radius(ks, np.array([-1.0]), 0.1)[0] == 0.0


def test_the_certificate_mixes_an_inner_lower_bound_with_the_outer_constants():
    ks = [np.array([[1.0]]), np.array([[2.0]]), np.array([[10.0]])]
    lows = [np.array([[0.5]]), np.array([[0.4]]), np.array([[-1.0]])]
    margins = np.array([[0.6]])
    # k = 0: 0.6 - 0.1 * 13 = -0.7; k = 1: 0.5 - 0.1 * 12 = -0.7; k = 2: 0.4 - 1.0 = -0.6
    assert np.isclose(certificate(Shells(ks, lows), margins, 0.3)[0, 0], -0.6)
    lows[1] = np.array([[1.2]])
    assert np.isclose(certificate(Shells(ks, lows), margins, 0.3)[0, 0], 0.2)
    lows[2] = np.array([[0.7]])                      # the whole ball's own lower bound
    assert np.isclose(certificate(Shells(ks, lows), margins, 0.3)[0, 0], 0.7)


def test_margin_lower_bounds_and_constants_hold_at_sampled_points():
    graph = conv_net(seed=4, size=4)
    program = build_program(graph)
    gen = torch.Generator().manual_seed(3)
    centers = torch.randn(5, program.n_in, generator=gen, dtype=torch.float64)
    pred = program.run(centers).argmax(dim=1)
    rows = margin_rows(pred, program.n_out)
    k, low, _ = margin_bounds(program, centers, 0.4, rows)
    d = torch.randn(5, 400, program.n_in, generator=gen, dtype=torch.float64)
    d = d / d.norm(dim=2, keepdim=True) * 0.4 * torch.rand(5, 400, 1, generator=gen) ** 0.1
    points = (centers[:, None] + d).reshape(-1, program.n_in).requires_grad_(True)
    margins = torch.einsum("bmo,bpo->bpm", rows, program.run(points).reshape(5, 400, -1))
    assert bool((torch.from_numpy(low)[:, None] <= margins).all())
    grads = torch.stack([torch.autograd.grad(margins[..., j].sum(), points, retain_graph=True)[0]
                         for j in range(program.n_out)], dim=1)     # (B * P, m, n)
    found = grads.norm(dim=2).reshape(5, 400, -1).amax(dim=1)
    assert bool((found <= torch.from_numpy(k)).all())
    assert bool((torch.from_numpy(low) > -torch.inf).all())


def pgd_flips(program, x: torch.Tensor, label: torch.Tensor, eps: float, steps: int = 50,
              restarts: int = 3) -> torch.Tensor:
    """(N,) True where an L2 PGD attack on the margin finds a point of B(x, eps) with
    another class (batched, on the lowered network: the same function as the graph)."""
    gen = torch.Generator().manual_seed(5)
    flipped = torch.zeros(len(x), dtype=torch.bool)
    rows = torch.arange(len(x))
    for _ in range(restarts):
        d = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        d = (d / d.norm(dim=1, keepdim=True) * eps * 0.5).requires_grad_(True)
        for _ in range(steps):
            out = program.run(x + d)
            other = out.clone()
            other[rows, label] = -torch.inf
            loss = other.amax(dim=1) - out[rows, label]
            flipped |= (loss > 0).detach()
            g, = torch.autograd.grad(loss.sum(), d)
            with torch.no_grad():
                d += 0.15 * eps * g / g.norm(dim=1, keepdim=True).clamp(min=1e-12)
                d *= (eps / d.norm(dim=1, keepdim=True)).clamp(max=1.0)
    return flipped


def check_shells(graph, x: np.ndarray, eps: float) -> tuple[int, int]:
    logits = predict(graph, x).numpy()
    y = logits.argmax(axis=1)
    one = certify_local(graph, x, y, logits, eps, shells=1, lower=False)
    four = certify_local(graph, x, y, logits, eps, shells=4)
    assert not (one.certified & ~four.certified).any()          # shells only add
    assert np.all(four.radii >= one.radii - 1e-12) and np.all(four.radii <= eps)
    program = build_program(graph)
    chosen = np.flatnonzero(four.certified)
    flips = pgd_flips(program, torch.from_numpy(x[chosen]).reshape(len(chosen), -1),
                      torch.from_numpy(y[chosen]), eps)
    assert not flips.any(), chosen[flips.numpy()]
    loose = np.flatnonzero(~four.certified)
    assert pgd_flips(program, torch.from_numpy(x[loose]).reshape(len(loose), -1),
                     torch.from_numpy(y[loose]), 4 * eps).any()   # the attack can flip
    return int(one.certified.sum()), int(four.certified.sum())


def test_samples_certified_with_shells_survive_an_attack_on_a_conv_net():
    graph = conv_net(seed=3, size=4)
    x = np.random.default_rng(1).normal(size=(40, 2 * 4 * 4))
    one, four = check_shells(graph, x, 0.15)
    assert four > one


def test_samples_certified_with_shells_survive_an_attack_on_digits_cnn():
    sys.path.insert(0, str(ROOT / "models"))
    from digits_data import digits_split
    x = digits_split()[2][:32].astype(np.float64)
    graph = load_model(ROOT / "models" / "digits_cnn.onnx")
    one, four = check_shells(graph, x, 0.05)
    assert four > one
