"""Conv chains that run through non-overlapping MaxPools, and their circular model.

A pooled chain is a path linear -> act [-> MaxPool] -> linear -> ... in which some gaps
between linear parts hold one MaxPool (kernel = stride, no padding, no dilation) next to
their activations. Slopes in [0, b] make the activations nondecreasing, and a
nondecreasing s commutes with a max (max s(z) = s(max z)), so the pool is taken after the
activation whatever their order in the graph. `find_pooled` returns the chain list that
sdp-conv uses: every pooled chain replaces the ordinary chains inside it (its `pieces`).

Model. The pool is a stride-k "layer" for the polyphase scheme of conv_chain: with P_h the
phases of the activation's grid and P_p = P_h / k those of the pool's, every window of the
pooled position P_p q + u is the k_h x k_w phases k u + e of the same coarse position q.
So the pool only couples phase channels at one coarse position (the 0/1 matrix `window`,
d_p x d_h), the same at every frequency.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lipcheck.estimators.upper.chains import (
    Chain,
    LinearPart,
    _compose,
    _hull,
    _kind,
    _paths,
    _slopes,
)
from lipcheck.estimators.upper.conv_chain import (
    MAX_CLOSE_ENTRIES,
    MAX_CLOSE_OUTPUTS,
    CircularChain,
    _agrees,
    _grid,
    _taps,
    conv_layers,
)
from lipcheck.graph import Graph, Node, OpKind
from lipcheck.rules import BoundContext, NodeBound
from lipcheck.settings import Settings


@dataclass
class PooledChain(Chain):
    """A chain with MaxPools: pools[i] is the window (k_h, k_w) after hidden layer i's
    activation (None: no pool); pieces are the ordinary chains it replaces."""
    pools: list[tuple[int, int] | None] = field(default_factory=list)
    pieces: list[Chain] = field(default_factory=list)
    outside: float = math.inf          # product of the bounds of the nodes in no piece
    outside_certified: bool = False


def pool_window(node: Node) -> tuple[int, int] | None:
    """The window of a 2-D MaxPool with kernel = stride, no padding or dilation, else None."""
    if node.op != OpKind.MAX_POOL or len(node.outputs) != 1:
        return None
    kernel = [int(k) for k in node.attrs.get("kernel_shape", [])]
    strides = [int(s) for s in node.attrs.get("strides") or [1] * len(kernel)]
    pads = [int(p) for p in node.attrs.get("pads") or [0] * 2 * len(kernel)]
    dil = [int(d) for d in node.attrs.get("dilations") or [1] * len(kernel)]
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    shape = node.input_shapes[0] if node.input_shapes else ()
    if len(kernel) != 2 or strides != kernel or any(pads) or any(d != 1 for d in dil) \
            or auto_pad not in ("NOTSET", b"NOTSET") or len(shape) != 4:
        return None
    out = node.output_shapes[0][2:]
    if [int(n) // k for n, k in zip(shape[2:], kernel, strict=True)] != [int(m) for m in out]:
        return None   # ceil_mode overhang: a window reaches past the input
    return kernel[0], kernel[1]


def _kind_p(node: Node, graph: Graph, bounds: dict[str, NodeBound]) -> str | None:
    if pool_window(node) is not None and len(graph.dynamic_inputs(node)) == 1:
        return "pool"
    return _kind(node, graph, bounds)


def _pooled_paths(graph: Graph, bounds: dict[str, NodeBound]) -> list[list[Node]]:
    """Maximal single-consumer paths of linear, activation and pool nodes."""
    return _paths(graph, bounds, _kind_p)


def _gap(nodes: list[Node], graph: Graph) -> tuple[tuple[float, float], tuple | None] | None:
    """The composed slope interval and the pool of a gap between two linear parts."""
    acts = [n for n in nodes if n.op != OpKind.MAX_POOL]
    pools = [pool_window(n) for n in nodes if n.op == OpKind.MAX_POOL]
    if not acts or len(pools) > 1:
        return None
    lo, hi = _slopes(acts[0], graph)
    for node in acts[1:]:
        a, b = _slopes(node, graph)
        lo, hi = _hull(lo * a, lo * b, hi * a, hi * b)
    if pools and lo < 0:   # only a nondecreasing activation commutes with the max
        return None
    return (lo, hi), (pools[0] if pools else None)


def _pooled_chain(path: list[Node], graph: Graph, bounds: dict[str, NodeBound],
                  ctx: BoundContext) -> PooledChain | None:
    kinds = [_kind_p(n, graph, bounds) for n in path]
    while kinds and kinds[0] != "linear":
        path, kinds = path[1:], kinds[1:]
    while kinds and kinds[-1] != "linear":
        path, kinds = path[:-1], kinds[:-1]
    if "pool" not in kinds:
        return None
    groups: list[list[Node]] = [[]]
    gaps: list[list[Node]] = []
    for node, kind in zip(path, kinds, strict=True):
        if kind == "linear":
            if len(gaps) == len(groups):
                groups.append([])
            groups[-1].append(node)
        else:
            if len(gaps) < len(groups):
                gaps.append([])
            gaps[-1].append(node)
    found = [f for f in (_gap(g, graph) for g in gaps) if f is not None]
    if len(found) != len(gaps):
        return None
    parts = [LinearPart(g, _compose(g, ctx)) for g in groups]
    product = math.prod(bounds[n.name].value for n in path)
    certified = all(bounds[n.name].certified for n in path)
    return PooledChain(path, parts, [f[0] for f in found], product, certified, graph=graph,
                       pools=[f[1] for f in found])


def find_pooled(graph: Graph, bounds: dict[str, NodeBound], settings: Settings,
                chains: list[Chain]) -> list[Chain]:
    """`chains` with every pooled chain that has a circular model in place of its pieces."""
    ctx = BoundContext(graph, settings)
    out = list(chains)
    for path in _pooled_paths(graph, bounds):
        pooled = _pooled_chain(path, graph, bounds, ctx)
        if pooled is None or pooled_model(pooled)[0] is None:
            continue
        names = {n.name for n in pooled.nodes}
        pooled.pieces = [c for c in out if {n.name for n in c.nodes} <= names]
        inside = {n.name for c in pooled.pieces for n in c.nodes}
        rest = [bounds[n.name] for n in pooled.nodes if n.name not in inside]
        pooled.outside = math.prod(b.value for b in rest)
        pooled.outside_certified = all(b.certified for b in rest)
        out = [c for c in out if c not in pooled.pieces] + [pooled]
    return out


@dataclass
class PooledModel:
    """The circular model of a pooled chain. base holds the convs' taps (base.symbol(i)),
    the closing border and the grid; base.phases[i] is conv i's input phase and
    base.phases[-1] the last hidden node's. h_phases[i] is conv i's output phase."""
    base: CircularChain
    h_phases: list[tuple[int, int]]
    pools: list[tuple[int, int] | None]
    h_dims: list[int]
    p_dims: list[int | None]

    @property
    def freqs(self) -> int:
        return self.base.freqs

    @property
    def sizes(self) -> list[int]:
        """The nodes' dimensions in order: x, h_1, [p_1], h_2, ..."""
        out = [self.base.dims[0]]
        for h, p in zip(self.h_dims, self.p_dims, strict=True):
            out += [h] if p is None else [h, p]
        return out

    def pool(self, i: int) -> tuple[int, int]:
        """The window (k_h, k_w) of the pool after hidden layer i (ValueError: none)."""
        found = self.pools[i]
        if found is None:
            raise ValueError(f"no pool after hidden layer {i}")
        return found

    def window_size(self, i: int) -> int:
        """m: the entries of one window of pool i."""
        kh, kw = self.pool(i)
        return kh * kw

    def p_dim(self, i: int) -> int:
        """The pooled node's dimension after hidden layer i (ValueError: no pool)."""
        found = self.p_dims[i]
        if found is None:
            raise ValueError(f"no pool after hidden layer {i}")
        return found

    def window(self, i: int) -> np.ndarray:
        """The (d_p, d_h) 0/1 matrix of pool i: p phase channel <- the phases of its window."""
        (kh, kw), (ph, pw) = self.pool(i), self.h_phases[i]
        qh, qw = ph // kh, pw // kw
        e = np.zeros((self.p_dim(i), self.h_dims[i]))
        for c in range(self.h_dims[i] // (ph * pw)):
            for a in range(ph):
                for b in range(pw):
                    e[c * qh * qw + (a // kh) * qw + b // kw, c * ph * pw + a * pw + b] = 1.0
        return e


def pooled_model(chain: PooledChain, refine: int = 1) -> tuple[PooledModel | None, str]:
    """The circular model, or None and why it does not apply; refine as in
    conv_chain.circular_chain (multipliers periodic with period refine)."""
    graph = chain.graph
    if graph is None or any(a != 0 or b <= 0 for a, b in chain.slopes) \
            or len({b for _, b in chain.slopes}) != 1:
        return None, "needs the same activation slopes [0, b] on every hidden layer"
    layers = conv_layers(chain.parts[:-1], graph)
    if layers is None:
        return None, "every hidden linear part must be one 2-D Conv (BatchNormalization folded)"
    n_out, n_in = chain.parts[-1].shape
    if n_out > MAX_CLOSE_OUTPUTS or n_out * n_in > MAX_CLOSE_ENTRIES:
        return None, f"the closing linear part has {n_out} outputs (at most {MAX_CLOSE_OUTPUTS})"
    in_phases, h_phases, last = _phases(layers, chain.pools, refine)
    grid = _grid(layers, in_phases)
    taps = [_taps(layer, in_phases[i], h_phases[i]) for i, layer in enumerate(layers)]
    h_dims = [layer.weight.shape[0] * math.prod(p) for layer, p in zip(layers, h_phases,
                                                                        strict=True)]
    p_dims = [None if w is None else layer.weight.shape[0] * math.prod(p) // math.prod(w)
              for layer, p, w in zip(layers, h_phases, chain.pools, strict=True)]
    size = layers[-1].out_size
    if chain.pools[-1] is not None:
        size = (size[0] // chain.pools[-1][0], size[1] // chain.pools[-1][1])
    close = chain.parts[-1].matrix().reshape(n_out, layers[-1].weight.shape[0], *size)
    dims = [layers[0].weight.shape[1] * math.prod(in_phases[0])] + h_dims
    base = CircularChain(grid, in_phases + [last], dims, taps, close, chain.slopes[0][1], layers)
    for i, layer in enumerate(layers):
        one = CircularChain(grid, [in_phases[i], h_phases[i]], dims[i:i + 2], [taps[i]],
                            close, base.slope, [layer])
        piece = Chain(chain.parts[i].nodes, [chain.parts[i], chain.parts[i]], [])  # one conv
        if not _agrees(one, piece):
            return None, "the circular model did not reproduce the chain's convolutions"
    return PooledModel(base, h_phases, list(chain.pools), h_dims, p_dims), ""


def _phases(layers, pools, refine: int):
    """Input phases of every conv, output phases of every conv, and the last node's."""
    phase = (refine, refine)
    in_phases: list[tuple[int, int]] = []
    h_phases: list[tuple[int, int]] = []
    for layer, pool in zip(reversed(layers), reversed(pools), strict=True):
        after = phase
        h = after if pool is None else (after[0] * pool[0], after[1] * pool[1])
        h_phases.insert(0, h)
        phase = (h[0] * layer.strides[0], h[1] * layer.strides[1])
        in_phases.insert(0, phase)
    return in_phases, h_phases, (refine, refine)

