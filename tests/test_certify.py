"""Certified radii and certified accuracy: hand-computed radii, soundness against attacks,
the per-class-pair rule only where it is valid, estimates labelled as estimates."""
import copy
import dataclasses
import math

import numpy as np
import pytest
import torch

from lipcheck.api import EstimateOptions, estimate
from lipcheck.errors import UserError
from lipcheck.gate.robustness import certify, last_affine, load_data, predict, radii
from lipcheck.graph import Graph, Node, OpKind, ValueInfo
from lipcheck.interpreter import infer_shapes, run_graph
from lipcheck.settings import Settings

NO_LOWER = EstimateOptions(methods=("autolip",), lower_budget=0)


def dense_graph(weights: list[np.ndarray], tail: tuple[OpKind, ...] = (), batch: int = 1,
                act: OpKind = OpKind.RELU) -> Graph:
    """Gemm (transB=1, no bias) layers with `act` between them, then the tail ops."""
    consts, nodes, x = {}, [], "x"
    for i, w in enumerate(weights):
        consts[f"w{i}"] = torch.tensor(w, dtype=torch.float32)
        nodes.append(Node(f"fc{i}", OpKind.GEMM, [x, f"w{i}"], [f"h{i}"], {"transB": 1}))
        x = f"h{i}"
        if i < len(weights) - 1:
            nodes.append(Node(f"act{i}", act, [x], [f"a{i}"]))
            x = f"a{i}"
    for j, op in enumerate(tail):
        attrs = {"axis": -1} if op == OpKind.SOFTMAX else {}
        nodes.append(Node(f"tail{j}", op, [x], [f"t{j}"], attrs))
        x = f"t{j}"
    g = Graph([ValueInfo("x", (batch, weights[0].shape[1]))], [x], nodes, consts)
    infer_shapes(g)
    return g


def run(graph: Graph, x, y, eps=None, settings: Settings | None = None):
    report = estimate(graph, settings=settings, options=NO_LOWER)
    return certify(graph, report, np.asarray(x, float), np.asarray(y), eps), report


def test_linear_two_classes_radius_by_hand():
    # f(x) = W x, W = [[2, 0], [0, 1]]: f_0 - f_1 = 2 x_0 - x_1, gradient (2, -1).
    graph = dense_graph([np.array([[2.0, 0.0], [0.0, 1.0]])])
    rob, report = run(graph, [[1.0, 0.0], [0.0, 3.0]], [0, 1], eps=0.8)
    assert report.upper_bound.value == pytest.approx(2.0)
    assert rob.method == "per-class-pair" and rob.certified
    # margins 2 and 3 over ||(2,-1)|| = sqrt 5 (exact: the distance to the boundary 2x0 = x1)
    assert rob.radii == pytest.approx([2 / math.sqrt(5), 3 / math.sqrt(5)], rel=1e-9)
    assert rob.certified_accuracy == 1.0 and rob.clean_accuracy == 1.0
    rob_far, _ = run(graph, [[1.0, 0.0], [0.0, 3.0]], [0, 1], eps=1.0)
    assert rob_far.certified_accuracy == 0.5  # 0.894 <= 1.0 < 1.342


def test_linear_radius_is_exact_for_a_linear_model():
    graph = dense_graph([np.array([[2.0, 0.0], [0.0, 1.0]])])
    rob, _ = run(graph, [[1.0, 0.0]], [0])
    normal = np.array([-2.0, 1.0]) / math.sqrt(5)   # towards the boundary
    for scale, same in ((1 - 1e-6, True), (1 + 1e-6, False)):
        x = np.array([1.0, 0.0]) + normal * rob.radii[0] * scale
        logits = predict(graph, x[None]).numpy()[0]
        assert (logits.argmax() == 0) == same


def test_global_rule_when_an_op_follows_the_last_layer():
    # relu after the last Gemm: the per-pair rule does not apply; L = ||W|| = 2,
    # radius = margin / (sqrt 2 * 2) at x = (1, 0) with logits (2, 0).
    graph = dense_graph([np.array([[2.0, 0.0], [0.0, 1.0]])], tail=(OpKind.RELU,))
    assert last_affine(graph) is None
    rob, _ = run(graph, [[1.0, 0.0]], [0])
    assert rob.method == "global"
    assert rob.radii[0] == pytest.approx(2 / (2 * math.sqrt(2)), rel=1e-6)
    assert rob.radii[0] <= 2 / (2 * math.sqrt(2))   # bounds are rounded up, never down


def test_two_layer_three_classes_by_hand():
    # h = relu(diag(1, 2) x); logits = (h0, h1, h0 + h1); L(h) = 2.
    w1, w2 = np.diag([1.0, 2.0]), np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    graph = dense_graph([w1, w2], tail=(OpKind.IDENTITY,))
    # x = (3, 0.5): h = (3, 1), logits (3, 1, 4): class 2 with margins 1 and 3;
    # ||M2 - M0|| = ||M2 - M1|| = 1, so K = 2 for both pairs: radius min(1/2, 3/2) = 0.5.
    # The global rule alone: L = ||W2|| * 2 = 2 sqrt 3, radius 1 / (sqrt 2 * 2 sqrt 3).
    rob, report = run(graph, [[3.0, 0.5], [3.0, 0.5]], [2, 0], eps=0.4)
    assert report.upper_bound.value == pytest.approx(2 * math.sqrt(3), rel=1e-6)
    assert rob.method == "per-class-pair"
    assert rob.radii[0] == pytest.approx(0.5, rel=1e-6) and rob.radii[0] <= 0.5
    assert rob.radii[1] == 0.0          # misclassified: no certified radius
    assert rob.certified_accuracy == 0.5 and rob.clean_accuracy == 0.5
    k_global = math.sqrt(2) * 2 * math.sqrt(3)
    _, r_global = radii(np.array([[3.0, 1.0, 4.0]]), np.full((3, 3), k_global))
    assert r_global[0] == pytest.approx(1 / k_global)


def test_ties_and_zero_rows():
    # identical rows: f_0 - f_1 is constant, never flips while positive
    pred, r = radii(np.array([[2.0, 1.0], [1.0, 1.0]]), np.zeros((2, 2)))
    assert list(pred) == [0, 0] and r[0] == math.inf and r[1] == 0.0


def _attack_free(graph: Graph, x: np.ndarray, radius: np.ndarray, seed: int = 0) -> bool:
    """No random or gradient-directed perturbation inside the radius changes the class."""
    gen = np.random.default_rng(seed)
    base = predict(graph, x).numpy().argmax(1)
    for i in range(len(x)):
        if radius[i] == 0:
            continue
        dirs = gen.standard_normal((64, x.shape[1]))
        xi = torch.tensor(x[i], dtype=torch.float64, requires_grad=True)
        out = run_graph(graph, {"x": xi[None]}, dtype=torch.float64, grad=True)[graph.outputs[0]]
        for j in range(out.shape[1]):
            if j != base[i]:
                (grad,) = torch.autograd.grad(out[0, j] - out[0, base[i]], xi, retain_graph=True)
                dirs = np.vstack([dirs, grad.numpy()])
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        moved = predict(graph, x[i] + dirs * radius[i] * 0.999).numpy().argmax(1)
        if np.any(moved != base[i]):
            return False
    return True


def test_radii_are_sound_on_a_random_network():
    gen = np.random.default_rng(1)
    graph = dense_graph([gen.standard_normal((8, 4)), gen.standard_normal((8, 8)) / 2,
                         gen.standard_normal((3, 8))])
    x = gen.standard_normal((30, 4))
    y = predict(graph, x).numpy().argmax(1)
    rob, _ = run(graph, x, y)
    assert rob.certified and rob.method == "per-class-pair"
    assert np.all(rob.radii > 0)
    assert _attack_free(graph, x, rob.radii)


def test_per_pair_is_at_least_the_global_radius():
    gen = np.random.default_rng(2)
    weights = [gen.standard_normal((6, 5)), gen.standard_normal((4, 6))]
    pair_graph = dense_graph(weights)
    global_graph = dense_graph(weights, tail=(OpKind.RELU,))  # same logits where positive
    x = gen.standard_normal((40, 5))
    y = predict(pair_graph, x).numpy().argmax(1)
    rob_pair, report = run(pair_graph, x, y)
    lip = report.upper_bound.value
    logits = predict(pair_graph, x).numpy()
    _, r_global = radii(logits, np.full((4, 4), math.sqrt(2) * lip))
    assert np.all(rob_pair.radii >= r_global * (1 - 1e-12))
    assert np.any(rob_pair.radii > r_global * 1.01)
    assert last_affine(global_graph) is None


def test_softmax_output_uses_the_global_rule_and_stays_sound():
    gen = np.random.default_rng(3)
    graph = dense_graph([gen.standard_normal((6, 3)), gen.standard_normal((3, 6))],
                        tail=(OpKind.SOFTMAX,))
    x = gen.standard_normal((20, 3))
    y = predict(graph, x).numpy().argmax(1)
    rob, _ = run(graph, x, y)
    assert rob.method == "global" and rob.certified
    assert _attack_free(graph, x, rob.radii)


def _as_estimate(report):
    """The same numbers as if the first layer were a power-iteration estimate."""
    report = copy.deepcopy(report)
    report.layers[0].certified = False
    report.bounds = [dataclasses.replace(b, certified=False, kind="estimate")
                     for b in report.bounds]
    return report


def test_estimated_bounds_give_estimated_radii():
    gen = np.random.default_rng(4)
    graph = dense_graph([gen.standard_normal((6, 4)), gen.standard_normal((3, 6))])
    x = gen.standard_normal((20, 4))
    y = predict(graph, x).numpy().argmax(1)
    rob_cert, report = run(graph, x, y, eps=0.01)
    assert rob_cert.certified and report.upper_bound is not None
    estimated = _as_estimate(report)
    assert estimated.upper_bound is None
    rob = certify(graph, estimated, x, y, 0.01)
    assert not rob.certified            # same numbers, but labelled as estimates
    assert rob.radii == pytest.approx(rob_cert.radii)
    # an estimate only after the last affine layer's input keeps the per-pair rule certified
    tail_only = copy.deepcopy(report)
    tail_only.layers[-1].certified = False
    tail_only.bounds = estimated.bounds
    assert certify(graph, tail_only, x, y, 0.01).certified


def test_batched_graph_and_vmap_match_a_plain_loop():
    gen = np.random.default_rng(5)
    weights = [gen.standard_normal((5, 4)), gen.standard_normal((3, 5))]
    graph4 = dense_graph(weights, batch=4)
    graph1 = dense_graph(weights, batch=1)
    x = gen.standard_normal((10, 4))   # 10 is not a multiple of 4: padded
    expected = np.stack([run_graph(graph1, {"x": torch.tensor(s[None])}, dtype=torch.float64)
                         [graph1.outputs[0]].numpy()[0] for s in x])
    assert predict(graph4, x).numpy() == pytest.approx(expected, rel=1e-12)
    assert predict(graph1, x).numpy() == pytest.approx(expected, rel=1e-12)
    y = expected.argmax(1)
    rob4, _ = run(graph4, x, y)
    rob1, _ = run(graph1, x, y)
    # the batched graph's bound is valid per sample, and here the same numbers
    assert rob4.radii == pytest.approx(rob1.radii, rel=1e-9)


def test_matmul_and_gemm_matrices():
    gen = np.random.default_rng(6)
    w = gen.standard_normal((4, 3)).astype(np.float32)
    g = Graph([ValueInfo("x", (1, 4))], ["y"],
              [Node("mm", OpKind.MATMUL, ["x", "w"], ["y"])], {"w": torch.tensor(w)})
    infer_shapes(g)
    assert last_affine(g)[1] == pytest.approx(w.T.astype(float))
    g2 = Graph([ValueInfo("x", (1, 4))], ["y"],
               [Node("g", OpKind.GEMM, ["x", "w"], ["y"], {"alpha": -2.0})],
               {"w": torch.tensor(w)})
    infer_shapes(g2)
    assert last_affine(g2)[1] == pytest.approx(-2 * w.T.astype(float))


def test_data_errors(tmp_path):
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((3, 4)))
    with pytest.raises(UserError, match="missing array"):
        load_data(tmp_path / "nolabels.npz")
    np.savez(tmp_path / "short.npz", x=np.zeros((3, 4)), y=np.zeros(2, int))
    with pytest.raises(UserError, match="one label per row"):
        load_data(tmp_path / "short.npz")
    (tmp_path / "junk.npz").write_text("not an archive")
    with pytest.raises(UserError, match="not a readable"):
        load_data(tmp_path / "junk.npz")
    graph = dense_graph([np.eye(2)])
    with pytest.raises(UserError, match="labels must lie in 0..1"):
        run(graph, [[1.0, 0.0]], [5])
