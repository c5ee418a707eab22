"""Local constants in use: per-sample certification on balls (the gate) and the `local`
section of estimate, against attacks, sampled Jacobians and the global bounds."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from graphs import conv_net, function_of, mlp

from lipcheck.api import EstimateOptions, estimate
from lipcheck.gate.robustness import certify, predict
from lipcheck.graph import OpKind
from lipcheck.local_certify import certify_local
from lipcheck.local_set import LocalSet
from lipcheck.report import load_schema
from lipcheck.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def report_of(graph, **local):
    options = EstimateOptions(methods=("autolip",), lower_budget=0,
                              local=LocalSet(**local) if local else None)
    return estimate(graph, settings=Settings(), options=options)


def attack(graph, x: np.ndarray, label: int, eps: float, steps: int = 40) -> bool:
    """True when PGD (L2, from random starts) finds a point of B(x, eps) classified != label."""
    f = function_of(graph)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.tensor(x, dtype=torch.float64).reshape(-1)
    for _ in range(3):
        d = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        z = (x0 + d / d.norm() * eps * 0.5).requires_grad_(True)
        for _ in range(steps):
            out = f(z)
            other = out.clone()
            other[label] = -math.inf
            loss = other.max() - out[label]
            if loss.item() > 0:
                return True
            g, = torch.autograd.grad(loss, z)
            with torch.no_grad():
                step = z + 0.2 * eps * g / g.norm().clamp(min=1e-12)
                delta = step - x0
                z = (x0 + delta * min(1.0, eps / float(delta.norm()))).requires_grad_(True)
    return False


def toy_data(graph, n: int = 40, seed: int = 0):
    gen = np.random.default_rng(seed)
    x = gen.normal(size=(n, int(np.prod(graph.inputs[0].shape))))
    y = predict(graph, x).numpy().argmax(axis=1)
    y[:3] = (y[:3] + 1) % 3          # a few wrong labels
    return x, y


def test_every_locally_certified_sample_survives_an_attack():
    graph = mlp([6, 12, 10, 3], seed=21)
    x, y = toy_data(graph)
    eps = 0.3
    local = certify_local(graph, x, y, predict(graph, x).numpy(), eps)
    assert 0 < local.certified.sum() < len(y)
    assert not local.certified[:3].any() and np.all(local.radii <= eps)
    for i in np.flatnonzero(local.certified):
        assert not attack(graph, x[i], y[i], eps), i
    attacked = [i for i in np.flatnonzero(~local.certified[3:]) + 3
                if attack(graph, x[i], y[i], eps)]
    assert attacked  # the attack is strong enough to matter


def test_local_constants_certify_at_least_what_the_global_rule_does():
    graph = mlp([6, 12, 10, 3], seed=22)
    x, y = toy_data(graph)
    rob = certify(graph, report_of(graph), x, y, eps=0.2)
    assert rob.local is not None and rob.local.skipped is None
    assert rob.certified_accuracy_global <= rob.local.certified_accuracy
    assert rob.certified_accuracy == pytest.approx(np.mean(
        (rob.radii > 0.2) | rob.local.certified))
    assert json.dumps(rob.to_dict(), allow_nan=False)


def test_on_a_linear_model_local_and_global_agree():
    graph = mlp([5, 3], seed=23)
    x, y = toy_data(graph)
    y = predict(graph, x).numpy().argmax(axis=1)
    for eps in (0.1, 0.5, 1.0):
        rob = certify(graph, report_of(graph), x, y, eps=eps)
        assert rob.local.certified_accuracy == rob.certified_accuracy_global


def test_a_model_outside_the_propagation_keeps_the_global_rule():
    graph = mlp([4, 6, 3], OpKind.SIGMOID, seed=2)
    x = np.random.default_rng(1).normal(size=(6, 4))
    y = predict(graph, x).numpy().argmax(axis=1)
    rob = certify(graph, report_of(graph), x, y, eps=0.01)
    assert rob.local.skipped and "Sigmoid" in rob.local.skipped
    assert rob.certified_accuracy == rob.certified_accuracy_global


def test_a_residual_model_is_certified_locally_and_survives_attacks():
    graph = conv_net(seed=4, residual=True, size=4)
    x = np.random.default_rng(2).normal(size=(12, 2 * 4 * 4))
    y = predict(graph, x).numpy().argmax(axis=1)
    eps = 0.05
    local = certify_local(graph, x, y, predict(graph, x).numpy(), eps)
    assert local.skipped is None and local.certified.any()
    for i in np.flatnonzero(local.certified):
        assert not attack(graph, x[i], y[i], eps), i


@pytest.mark.parametrize("seed", range(4))
def test_local_bounds_sit_between_found_jacobians_and_the_global_bound(seed, tmp_path):
    graph = mlp([5, 9, 7, 4], seed=30 + seed)
    gen = np.random.default_rng(seed)
    centres = gen.normal(size=(3, 5))
    radius = float(gen.choice([0.05, 0.5, 2.0]))
    path = tmp_path / "centres.npz"
    np.savez(path, x=centres)
    report = report_of(graph, around=path, eps=radius, norm="2")
    local = report.local
    assert local["upper_bound"] <= report.upper_bound.value
    f = function_of(graph)
    tgen = torch.Generator().manual_seed(seed)
    for centre, per in zip(centres, local["per_set"], strict=True):
        assert per["lower_bound"] <= per["upper_bound"]
        for _ in range(30):
            d = torch.randn(5, generator=tgen, dtype=torch.float64)
            scale = radius * torch.rand(1, generator=tgen).item()
            point = torch.tensor(centre) + d / d.norm() * scale
            jac = torch.autograd.functional.jacobian(f, point)
            assert float(torch.linalg.matrix_norm(jac, ord=2)) <= per["upper_bound"]
    data = report.to_dict()
    import jsonschema
    jsonschema.validate(json.loads(json.dumps(data, allow_nan=False)), load_schema())


def test_a_box_gives_a_local_section_and_a_skip_is_a_warning():
    report = report_of(mlp([4, 6, 2], seed=5), input_range=(0.0, 1.0))
    assert report.local["set"] == "box [0, 1]" and report.local["sets"] == 1
    skipped = report_of(mlp([4, 6, 2], OpKind.SOFTPLUS, seed=5), input_range=(0.0, 1.0))
    assert "skipped" in skipped.local
    assert any(w.code == "local_skipped" for w in skipped.warnings)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lipcheck", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


@pytest.mark.parametrize("args,message", [
    (["--around", "{pts}"], "--around needs --eps"),
    (["--eps", "0.1"], "--eps needs --around"),
    (["--around", "{pts}", "--eps", "0.1", "--norm", "1"], "--norm '1'"),
    (["--around", "missing.npz", "--eps", "0.1"], "missing.npz: no such file"),
])
def test_bad_local_options_are_one_line_user_errors(args, message, tmp_path):
    np.savez(tmp_path / "pts.npz", x=np.zeros((2, 64)))
    args = [a.format(pts=tmp_path / "pts.npz") for a in args]
    proc = run_cli("estimate", "models/digits_mlp.onnx", "--lower-budget", "0", *args)
    assert proc.returncode == 2 and message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_digits_mlp_reaches_the_local_certified_accuracy_target():
    sys.path.insert(0, str(ROOT / "models"))
    from digits_data import digits_split
    _, _, x, y = digits_split()
    from lipcheck.loaders.dispatch import load_model
    graph = load_model(ROOT / "models" / "digits_mlp.onnx")
    local = certify_local(graph, x.astype(np.float64), y, predict(graph, x).numpy(), 0.1)
    assert local.certified_accuracy >= 0.90
