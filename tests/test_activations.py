"""Activation constants against sup|f'| on a fine grid, and their run() against torch."""
import math

import pytest
import torch

from lipcheck.graph import Node, OpKind
from lipcheck.rules import get_rule
from lipcheck.rules.registry import BoundContext

CASES = [
    (OpKind.RELU, {}), (OpKind.SIGMOID, {}), (OpKind.TANH, {}), (OpKind.SOFTSIGN, {}),
    (OpKind.ABS, {}), (OpKind.NEG, {}), (OpKind.SILU, {}), (OpKind.MISH, {}), (OpKind.ERF, {}),
    (OpKind.HARD_SWISH, {}), (OpKind.LEAKY_RELU, {"alpha": 0.2}),
    (OpKind.LEAKY_RELU, {"alpha": -3.0}),
    (OpKind.ELU, {"alpha": 1.0}), (OpKind.ELU, {"alpha": 2.5}), (OpKind.SELU, {}),
    (OpKind.CELU, {"alpha": 0.5}), (OpKind.HARD_SIGMOID, {"alpha": 0.2, "beta": 0.5}),
    (OpKind.SOFTPLUS, {}), (OpKind.GELU, {}), (OpKind.GELU, {"approximate": "tanh"}),
    (OpKind.CLIP, {"min": 0.0, "max": 6.0}),
]


def _slope_sup(op: OpKind, attrs: dict) -> float:
    """sup |f'| on a fine grid by autograd (a lower estimate of the true sup)."""
    node = Node("n", op, ["x"], ["y"], attrs)
    x = torch.linspace(-30, 30, 1200001, dtype=torch.float64, requires_grad=True)
    y = get_rule(op).run(node, [x])[0]
    (g,) = torch.autograd.grad(y.sum(), x)
    return float(g.abs().max())


@pytest.mark.parametrize("op,attrs", CASES, ids=lambda c: str(c))
def test_constant_is_exact_sup_of_slope(op, attrs):
    node = Node("n", op, ["x"], ["y"], attrs)
    bound = get_rule(op).bound(node, BoundContext(graph=None, settings=None))
    grid = _slope_sup(op, attrs)
    assert bound.certified
    assert bound.value >= grid * (1 - 1e-12)
    assert bound.value <= grid * (1 + 1e-6), f"{op}: {bound.value} vs grid {grid}"


def test_published_constants():
    from lipcheck.rules import activations as a
    assert a.GELU_CONSTANT == pytest.approx(1.1289, abs=1e-4)
    assert a.SILU_CONSTANT == pytest.approx(1.0998, abs=1e-4)
    assert a.SELU_GAMMA * a.SELU_ALPHA == pytest.approx(1.7581, abs=1e-4)


def test_prelu_uses_largest_slope():
    from lipcheck.graph import Graph, ValueInfo
    g = Graph([ValueInfo("x", (1, 3))], ["y"],
              [Node("p", OpKind.PRELU, ["x", "s"], ["y"])], {"s": torch.tensor([0.1, -2.5, 0.3])})
    bound = get_rule(OpKind.PRELU).bound(g.nodes[0], BoundContext(g, None))
    assert bound.value == 2.5
    x = torch.tensor([[-1.0, -1.0, 2.0]])
    assert torch.equal(get_rule(OpKind.PRELU).run(g.nodes[0], [x, g.constants["s"]])[0],
                       torch.tensor([[-0.1, 2.5, 2.0]]))


def test_selu_matches_torch():
    x = torch.linspace(-5, 5, 101)
    node = Node("n", OpKind.SELU, ["x"], ["y"])
    assert torch.allclose(get_rule(OpKind.SELU).run(node, [x])[0], torch.selu(x), atol=1e-6)
    assert not math.isinf(get_rule(OpKind.SELU).bound(node, BoundContext(None, None)).value)
