"""Graph rewrites that keep the function and tighten the bounds.

`fuse_batchnorm`: Conv -> BatchNormalization (inference) becomes one Conv with the
BatchNorm's per-channel scale folded into the kernel. The function is unchanged and
||BN o Conv|| <= ||BN|| ||Conv||, so the fused operator norm is at least as tight.
"""
from __future__ import annotations

import dataclasses

import torch

from lipcheck.graph import Graph, Node, OpKind
from lipcheck.rules.linear import NEAR_ZERO_VARIANCE


def fuse_batchnorm(graph: Graph) -> Graph:
    producers, consumers = graph.producers(), graph.consumers()
    fused: dict[str, Node] = {}   # BatchNorm node name -> fused conv
    dropped: set[str] = set()     # conv names replaced
    constants = dict(graph.constants)
    for bn in graph.nodes:
        conv = _fusable_conv(graph, bn, producers, consumers)
        if conv is None:
            continue
        fused[bn.name] = _fuse(graph, conv, bn, constants)
        dropped.add(conv.name)
    if not fused:
        return graph
    nodes = [fused.get(n.name, n) for n in graph.nodes if n.name not in dropped]
    return Graph(list(graph.inputs), list(graph.outputs), nodes, constants, dict(graph.metadata))


def _fusable_conv(graph: Graph, bn: Node, producers: dict, consumers: dict) -> Node | None:
    if bn.op != OpKind.BATCH_NORM or graph.dynamic_inputs(bn) != [0]:
        return None
    conv = producers.get(bn.inputs[0])
    if conv is None or conv.op != OpKind.CONV or graph.dynamic_inputs(conv) != [0]:
        return None
    var = graph.constant(bn, 4)
    eps = float(bn.attrs.get("epsilon", 1e-5))
    if var is None or float((var.double() + eps).min()) < NEAR_ZERO_VARIANCE:
        return None  # left alone so that the BatchNorm rule warns about it
    if len(consumers.get(conv.outputs[0], [])) != 1 or conv.outputs[0] in graph.outputs:
        return None
    return conv


def _fuse(graph: Graph, conv: Node, bn: Node, constants: dict[str, torch.Tensor]) -> Node:
    weight = graph.constants[conv.inputs[1]].double()
    bias = graph.constant(conv, 2)
    bias = torch.zeros(weight.shape[0], dtype=torch.float64) if bias is None else bias.double()
    scale, beta, mean, var = (graph.constants[v].double() for v in bn.inputs[1:5])
    a = scale / torch.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
    dtype = graph.constants[conv.inputs[1]].dtype
    w_name, b_name = f"{conv.name}.fused_bn.weight", f"{conv.name}.fused_bn.bias"
    constants[w_name] = (weight * a.reshape((-1,) + (1,) * (weight.dim() - 1))).to(dtype)
    constants[b_name] = ((bias - mean) * a + beta).to(dtype)
    return dataclasses.replace(
        conv, name=conv.name, inputs=[conv.inputs[0], w_name, b_name],
        outputs=list(bn.outputs),
        source_op=f"{conv.source_op or 'Conv'}+{bn.source_op or 'BatchNormalization'}",
        input_shapes=[conv.input_shapes[0], tuple(constants[w_name].shape),
                      tuple(constants[b_name].shape)]
        if conv.input_shapes else [], output_shapes=list(bn.output_shapes))
