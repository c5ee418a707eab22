import torch

from lipcheck.estimators.upper.autolip import autolip, bound_nodes
from lipcheck.graph import Graph, Node, OpKind, ValueInfo
from lipcheck.interpreter import infer_shapes, run_graph
from lipcheck.passes import fuse_batchnorm
from lipcheck.settings import Settings


def _conv_bn(shared: bool = False) -> Graph:
    gen = torch.Generator().manual_seed(0)
    c = {"w": torch.randn(4, 2, 3, 3, generator=gen), "b": torch.randn(4, generator=gen),
         "s": torch.rand(4, generator=gen) + 0.5, "beta": torch.randn(4, generator=gen),
         "m": torch.randn(4, generator=gen), "v": torch.rand(4, generator=gen) + 0.1}
    nodes = [Node("conv", OpKind.CONV, ["x", "w", "b"], ["c"], {"pads": [1, 1, 1, 1]}),
             Node("bn", OpKind.BATCH_NORM, ["c", "s", "beta", "m", "v"], ["y"], {"epsilon": 1e-5})]
    outputs = ["y", "c"] if shared else ["y"]
    g = Graph([ValueInfo("x", (1, 2, 5, 5))], outputs, nodes, c)
    infer_shapes(g)
    return g


def test_fused_graph_computes_the_same_function_with_a_tighter_bound():
    g = _conv_bn()
    fused = fuse_batchnorm(g)
    assert [n.op for n in fused.nodes] == [OpKind.CONV]
    x = torch.randn(1, 2, 5, 5)
    assert torch.allclose(run_graph(g, {"x": x})["y"], run_graph(fused, {"x": x})["y"], atol=1e-5)
    before = autolip(g, bound_nodes(g, Settings())).value
    after = autolip(fused, bound_nodes(fused, Settings())).value
    assert after <= before * (1 + 1e-9)
    assert after < before  # random per-channel scales: strictly tighter here


def test_conv_with_another_consumer_is_not_fused():
    g = _conv_bn(shared=True)
    assert fuse_batchnorm(g) is g
