"""A conv/activation chain closed by a dense layer, as circular convolutions on one grid.

Every hidden linear part of the chain must be one 2-D Conv (BatchNormalization folded,
shape-only nodes ignored); the last part may be anything with few outputs (Flatten +
Gemm, AveragePool + Flatten + Gemm, ...): it is kept as its dense matrix M.

Embedding. Each Conv is the restriction of a circular correlation on an N-grid: its real
inputs sit at [0, n), its real outputs at [0, m), and N is large enough that every read of
a padding position lands on a slot that is not real (N - pad >= n) and no read past the
right end wraps (N > s(m-1) + r(k-1) - pad). Non-real hidden slots are zero in the real
network: a slope of 0, which the activation's interval [0, b] contains, so the circular
chain with slopes in [0, b] on *all* slots contains the real one (and the input
restriction is dropped, which can only enlarge the norm).

Polyphase. With P_i the product of the strides from layer i on, layer i's input on the
grid N_i = G P_i is C_i P_i^2 phase channels on a common coarse G-grid, and every layer
becomes a stride-1 circular correlation there: out[P_o q + u] reads
in[P_i q + s u + r j - pad], phase (s u + r j - pad) mod P_i at offset floor(. / P_i).
So in the unitary DFT of the G-grid every layer is block diagonal, A_i(w) of size
(C_{i+1} P_{i+1}^2) x (C_i P_i^2), and M becomes one (n_out x C P^2) block per frequency.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from lipcheck.estimators.upper.chains import SHAPE_ONLY, Chain, LinearPart
from lipcheck.graph import Graph, OpKind
from lipcheck.spectral.freq_gram import gamma

MAX_CLOSE_OUTPUTS = 256   # rows of the closing dense layer
MAX_CLOSE_ENTRIES = 2**23
CHECK_TOLERANCE = 1e-9    # relative agreement of the circular model with the real part


@dataclass
class ConvLayer:
    weight: np.ndarray                 # (C_out, C_in, kh, kw), groups expanded, BN folded
    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads: tuple[int, int]              # begin pads
    in_size: tuple[int, int]           # real input grid n
    out_size: tuple[int, int]          # real output grid m


@dataclass
class CircularChain:
    """The chain on the coarse grid: taps[i] maps offsets to (d_{i+1}, d_i) matrices."""
    grid: int                          # G (the same along both axes)
    phases: list[tuple[int, int]]      # P_i per layer input, then the last hidden layer
    dims: list[int]                    # d_0 (input phase channels), d_1, ..., d_{k-1}
    taps: list[dict[tuple[int, int], np.ndarray]]
    close: np.ndarray                  # (n_out, C_last, m_h, m_w): the dense last part
    slope: float                       # activations' slopes lie in [0, slope]
    layers: list[ConvLayer]

    @property
    def freqs(self) -> int:
        return self.grid * self.grid

    def twiddles(self, offsets: list[tuple[int, int]]) -> np.ndarray:
        """(F, len(offsets)) e^{2 pi i w.a / G}, the angle reduced exactly in integers."""
        g = self.grid
        w = np.array([(a, b) for a in range(g) for b in range(g)], dtype=np.int64)
        off = np.array(offsets, dtype=np.int64).reshape(-1, 2)
        angle = 2 * np.pi * ((w @ off.T) % g) / g
        return np.cos(angle) + 1j * np.sin(angle)

    def symbol(self, i: int) -> np.ndarray:
        """A_i(w), (F, d_{i+1}, d_i) complex128."""
        offsets = list(self.taps[i])
        stack = np.stack([self.taps[i][a] for a in offsets])          # (T, r, c)
        return np.einsum("ft,trc->frc", self.twiddles(offsets), stack)

    def symbol_error(self, i: int) -> float:
        """Bound on ||computed A_i(w) - exact A_i(w)||_F, every w: entry (r, c) is a sum
        of T products with twiddles accurate to ~8u, so its error is below
        gamma(T + 10) sum_a |k_a[r, c]|."""
        stack = np.stack(list(self.taps[i].values()))
        return gamma(len(stack) + 10) * float(np.linalg.norm(np.abs(stack).sum(axis=0)))

    def border(self) -> np.ndarray:
        """B(w) = (1/sqrt F) sum_q M(q) e^{2 pi i w.q / G}: (F, n_out, d_last), so that
        M x = sum_w B(w) x^(w) for the unitary DFT x^ of the last hidden layer."""
        n_out, c, mh, mw = self.close.shape
        ph, pw = self.phases[-1]
        g = self.grid
        full = np.zeros((n_out, c, g * ph, g * pw))
        full[:, :, :mh, :mw] = self.close
        poly = full.reshape(n_out, c, g, ph, g, pw).transpose(0, 1, 3, 5, 2, 4)
        poly = poly.reshape(n_out, c * ph * pw, g * g)
        positions = [(a, b) for a in range(g) for b in range(g)]
        return np.einsum("fq,ocq->foc", self.twiddles(positions), poly) / math.sqrt(self.freqs)

    def border_error(self) -> float:
        """Bound on ||computed B - exact B||_F over all frequencies together."""
        n_out, c, mh, mw = self.close.shape
        ph, pw = self.phases[-1]
        g = self.grid
        full = np.zeros((n_out, c, g * ph, g * pw))
        full[:, :, :mh, :mw] = np.abs(self.close)
        poly = full.reshape(n_out, c, g, ph, g, pw).sum(axis=(2, 4)) / math.sqrt(self.freqs)
        return gamma(self.freqs + 12) * float(np.linalg.norm(poly)) * math.sqrt(self.freqs)


def conv_layers(parts: list[LinearPart], graph: Graph) -> list[ConvLayer] | None:
    """Each part as one 2-D conv layer; None unless every part is one."""
    layers = [_conv_of(p, graph) for p in parts]
    found = [layer for layer in layers if layer is not None]
    return found if len(found) == len(layers) else None


def _two(values) -> tuple[int, int]:
    """A 2-D conv's pair (strides, dilations, spatial size) as ints."""
    first, second = (int(v) for v in values)
    return first, second


def _conv_of(part: LinearPart, graph: Graph) -> ConvLayer | None:
    nodes = [n for n in part.nodes if n.op not in SHAPE_ONLY]
    if not nodes or nodes[0].op != OpKind.CONV or any(n.op != OpKind.BATCH_NORM for n in nodes[1:]):
        return None
    conv = nodes[0]
    if int(conv.input_shapes[0][0]) != 1:   # the model is one sample's circular convolutions
        return None
    weight = graph.constant(conv, 1)
    auto_pad = conv.attrs.get("auto_pad", "NOTSET")
    if weight is None or weight.dim() != 4 or auto_pad not in ("NOTSET", b"NOTSET"):
        return None
    w = weight.detach().double().cpu().numpy()
    group = int(conv.attrs.get("group", 1))
    w = _expand_groups(w, group)
    for bn in nodes[1:]:
        params = [p for p in (graph.constant(bn, i) for i in range(1, 5)) if p is not None]
        if len(params) < 4:
            return None
        scale, _, _, var = (p.detach().double().cpu().numpy() for p in params)
        w = w * (scale / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5))))[:, None, None, None]
    pads = [int(v) for v in conv.attrs.get("pads", [0] * 4)]
    strides = _two(conv.attrs.get("strides", [1, 1]))
    dilations = _two(conv.attrs.get("dilations", [1, 1]))
    in_size, out_size = conv.input_shapes[0][2:], nodes[-1].output_shapes[0][2:]
    if len(in_size) != 2 or len(out_size) != 2:
        return None
    return ConvLayer(w, strides, dilations, (pads[0], pads[1]), _two(in_size), _two(out_size))


def _expand_groups(w: np.ndarray, group: int) -> np.ndarray:
    if group == 1:
        return w
    c_out, c_in_g = w.shape[:2]
    per = c_out // group
    dense = np.zeros((c_out, c_in_g * group) + w.shape[2:])
    for g in range(group):
        dense[g * per:(g + 1) * per, g * c_in_g:(g + 1) * c_in_g] = w[g * per:(g + 1) * per]
    return dense


def _grid(layers: list[ConvLayer], phases: list[tuple[int, int]]) -> int:
    """The smallest G such that every layer is a restriction of its circular version."""
    need = 1
    for layer, p_in in zip(layers, phases, strict=False):
        for ax in range(2):
            n, m, s = layer.in_size[ax], layer.out_size[ax], layer.strides[ax]
            k, r, pad = layer.weight.shape[2 + ax], layer.dilations[ax], layer.pads[ax]
            fine = max(n + pad, s * (m - 1) + r * (k - 1) - pad + 1, m * s)
            need = max(need, -(-fine // p_in[ax]))
    return need


def _taps(layer: ConvLayer, p_in: tuple[int, int], p_out: tuple[int, int]) -> dict:
    """The stride-1 taps on the coarse grid (see the module docstring)."""
    c_out, c_in, kh, kw = layer.weight.shape
    taps: dict[tuple[int, int], np.ndarray] = {}
    for uh in range(p_out[0]):
        for uw in range(p_out[1]):
            row = np.arange(c_out) * p_out[0] * p_out[1] + uh * p_out[1] + uw
            for jh in range(kh):
                for jw in range(kw):
                    rh = layer.strides[0] * uh + layer.dilations[0] * jh - layer.pads[0]
                    rw = layer.strides[1] * uw + layer.dilations[1] * jw - layer.pads[1]
                    offset = (rh // p_in[0], rw // p_in[1])
                    col = (np.arange(c_in) * p_in[0] * p_in[1] + (rh % p_in[0]) * p_in[1]
                           + rw % p_in[1])
                    mat = taps.setdefault(offset, np.zeros((c_out * p_out[0] * p_out[1],
                                                             c_in * p_in[0] * p_in[1])))
                    mat[np.ix_(row, col)] += layer.weight[:, :, jh, jw]
    return taps


def circular_chain(chain: Chain, graph: Graph, refine: int = 1) -> tuple[CircularChain | None, str]:
    """The chain's circular model, or None and why it does not apply. refine > 1 splits
    every layer into refine^2 more phases (a coarser grid): multipliers may then differ
    between positions of different phase (periodic with period refine)."""
    if any(a != 0 or b <= 0 for a, b in chain.slopes):
        return None, "needs activation slopes in [0, b] (ReLU, sigmoid, tanh, ...)"
    if len({b for _, b in chain.slopes}) != 1:
        return None, "needs the same slope interval on every hidden layer"
    layers = conv_layers(chain.parts[:-1], graph)
    if layers is None:
        return None, ("every hidden linear part must be one 2-D Conv (BatchNormalization folded), "
                      "on a batch of 1")
    n_out, n_in = chain.parts[-1].shape
    if n_out > MAX_CLOSE_OUTPUTS or n_out * n_in > MAX_CLOSE_ENTRIES:
        return None, f"the closing linear part has {n_out} outputs (at most {MAX_CLOSE_OUTPUTS})"
    phases = [(refine, refine)]
    for layer in reversed(layers):
        phases.insert(0, (phases[0][0] * layer.strides[0], phases[0][1] * layer.strides[1]))
    grid = _grid(layers, phases)
    taps = [_taps(layer, phases[i], phases[i + 1]) for i, layer in enumerate(layers)]
    dims = [layers[0].weight.shape[1] * math.prod(phases[0])]
    dims += [layer.weight.shape[0] * math.prod(p)
             for layer, p in zip(layers, phases[1:], strict=True)]
    last = layers[-1]
    close = chain.parts[-1].matrix().reshape(n_out, last.weight.shape[0], *last.out_size)
    model = CircularChain(grid, phases, dims, taps, close, chain.slopes[0][1], layers)
    if not _agrees(model, chain):
        return None, "the circular model did not reproduce the chain's convolutions"
    return model, ""


def apply_layer(model: CircularChain, i: int, x: np.ndarray) -> np.ndarray:
    """Layer i of the circular model on a real input (C, n_h, n_w): the real outputs."""
    layer, (ph, pw), (qh, qw), g = model.layers[i], model.phases[i], model.phases[i + 1], model.grid
    full = np.zeros((x.shape[0], g * ph, g * pw))
    full[:, :x.shape[1], :x.shape[2]] = x
    poly = full.reshape(-1, g, ph, g, pw).transpose(0, 2, 4, 1, 3).reshape(-1, g, g)
    spec = np.fft.fft2(poly).reshape(poly.shape[0], -1).T                     # (F, d_i)
    out = np.einsum("frc,fc->fr", model.symbol(i), spec).T.reshape(-1, g, g)
    out = np.fft.ifft2(out).real.reshape(-1, qh, qw, g, g).transpose(0, 3, 1, 4, 2)
    out = out.reshape(-1, g * qh, g * qw)
    return out[:, :layer.out_size[0], :layer.out_size[1]]


def _agrees(model: CircularChain, chain: Chain) -> bool:
    """One random input per layer through the circular model and the real part."""
    rng = np.random.default_rng(0)
    for i, (layer, part) in enumerate(zip(model.layers, chain.parts[:-1], strict=True)):
        x = rng.standard_normal((layer.weight.shape[1],) + layer.in_size)
        ours = apply_layer(model, i, x)
        with torch.no_grad():
            theirs = part.operator.apply(torch.from_numpy(x).reshape(part.operator.in_shape)
                                         .to(part.operator.dtype)).double().cpu().numpy()
        if ours.size != theirs.size:
            return False
        err = np.linalg.norm(ours.ravel() - theirs.ravel())
        scale = max(float(np.linalg.norm(theirs)), 1e-300) * math.sqrt(x.size)
        if not err <= CHECK_TOLERANCE * scale:
            return False
    return True


def half_frequencies(grid: int) -> tuple[np.ndarray, np.ndarray]:
    """One frequency of each conjugate pair {w, -w} of the G x G grid (flat indices) and
    its weight (2, or 1 where w = -w): blocks at -w are the conjugates of those at w."""
    keep, weight = [], []
    for a in range(grid):
        for b in range(grid):
            ma, mb = (-a) % grid, (-b) % grid
            if (a, b) <= (ma, mb):
                keep.append(a * grid + b)
                weight.append(1.0 if (a, b) == (ma, mb) else 2.0)
    return np.array(keep), np.array(weight)
