"""A two-conv chain closed by a dense layer, as sparse matrices on the real neurons only.

For per-neuron LipSDP multipliers (sdp_conv_neuron): no circular embedding, so no
non-real ("dummy") hidden slots. Every neuron index is position-major, (row, col, channel),
so that the neurons of one output row of a conv form a contiguous range and a conv reads
a contiguous range of input rows.

Structure used. With T1 diagonal, eliminating the first hidden layer from LipSDP-Neuron
leaves the input and the second hidden layer; there M = W2 T1^{-1} W2^T couples only
output rows whose receptive fields share an input row. Grouping the second layer's rows
into slabs of `height` rows (the smallest height with s * height >= (k - 1) * dilation)
makes M block tridiagonal over slabs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse

from lipcheck.estimators.upper.conv_chain import ConvLayer


@dataclass
class NeuronChain:
    w1: scipy.sparse.csr_matrix        # (d1, n0)
    w2: scipy.sparse.csr_matrix        # (d2, d1)
    close: np.ndarray                  # (n_out, d2), columns position-major
    slope: float                       # activations' slopes in [0, slope]
    slabs: list[tuple[int, int]]       # second-layer row ranges [lo, hi) of each slab
    reads: list[tuple[int, int]]       # first-layer neuron range each slab reads

    @property
    def dims(self) -> tuple[int, int, int]:
        return self.w1.shape[1], self.w1.shape[0], self.w2.shape[0]


def conv_matrix(layer: ConvLayer) -> scipy.sparse.csr_matrix:
    """The conv as a sparse (m_h m_w C_out, n_h n_w C_in) matrix, position-major indices."""
    c_out, c_in, kh, kw = layer.weight.shape
    (mh, mw), (nh, nw) = layer.out_size, layer.in_size
    r, c, co, ci, jh, jw = np.meshgrid(np.arange(mh), np.arange(mw), np.arange(c_out),
                                       np.arange(c_in), np.arange(kh), np.arange(kw),
                                       indexing="ij")
    rr = layer.strides[0] * r + layer.dilations[0] * jh - layer.pads[0]
    cc = layer.strides[1] * c + layer.dilations[1] * jw - layer.pads[1]
    ok = (rr >= 0) & (rr < nh) & (cc >= 0) & (cc < nw)
    rows = ((r * mw + c) * c_out + co)[ok]
    cols = ((rr * nw + cc) * c_in + ci)[ok]
    vals = layer.weight[co, ci, jh, jw][ok]
    shape = (mh * mw * c_out, nh * nw * c_in)
    return scipy.sparse.coo_matrix((vals, (rows, cols)), shape=shape).tocsr()


def slab_height(layer: ConvLayer) -> int:
    """Rows per slab such that only adjacent slabs read a common input row."""
    need = (layer.weight.shape[2] - 1) * layer.dilations[0]
    return max(1, -(-need // layer.strides[0]))


def neuron_chain(layers: list[ConvLayer], close: np.ndarray, slope: float) -> NeuronChain | None:
    """close: (n_out, C, m_h, m_w), the dense last part on the second conv's output. None
    where a slab reads nothing or slabs two apart share an input (M is then not block
    tridiagonal over the slabs)."""
    first, second = layers
    w1, w2 = conv_matrix(first), conv_matrix(second)
    n_out = close.shape[0]
    close = close.transpose(0, 2, 3, 1).reshape(n_out, -1)
    height = slab_height(second)
    row = second.out_size[1] * second.weight.shape[0]      # neurons per output row
    slabs, reads = [], []
    for lo in range(0, second.out_size[0], height):
        hi = min(second.out_size[0], lo + height)
        cols = w2[lo * row:hi * row].indices
        if cols.size == 0:
            return None
        slabs.append((lo * row, hi * row))
        reads.append((int(cols.min()), int(cols.max()) + 1))
    if any(reads[q - 2][1] > reads[q][0] for q in range(2, len(reads))):
        return None
    return NeuronChain(w1, w2, close, slope, slabs, reads)
