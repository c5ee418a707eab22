"""The issue-13 target: a transformer encoder layer (d = 32, 2 heads, sequence 8, post-
LayerNorm, ReLU, no dropout; tests/data/make_transformer.py) gets a finite certified local
bound on the box [-1, 1] from both its .onnx and its .pt2, the two agree, and the bound is
above every Jacobian norm found inside the set, the truth taken from the torch module's
weights through an independent forward pass (checked against the module)."""
from __future__ import annotations

import math
import sys
from functools import cache
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_local_attention import _ascent, _jacobian_norms
from torch.nn.attention import SDPBackend, sdpa_kernel

from lipcheck.loaders.dispatch import load_model
from lipcheck.local_estimate import local_section
from lipcheck.local_set import LocalSet
from lipcheck.propagation import InputSet, build_program
from lipcheck.propagation.smooth_lipschitz import smooth_bounds
from lipcheck.render import local_line

DATA = Path(__file__).resolve().parent / "data"
SHAPE = (1, 8, 32)
N = 256
# Same weights and op semantics; the graphs differ only in float64 rounding (the attention
# scale 1/4 applied as 1/2 to Q and to K in the ONNX graph, exact in binary; affine steps
# merged in another order: ~1e-13) and in the ONNX LayerNorm eps, stored as float32
# (9.99999975e-06: relative 2.5e-8 in eps, at most that in each 1/sqrt(v + eps) factor).
AGREE = 1e-6


@cache
def _program(suffix: str):
    return build_program(load_model(DATA / f"transformer_encoder.{suffix}"), smooth=True)


@cache
def _module() -> torch.nn.Module:
    sys.path.insert(0, str(DATA))
    try:
        from make_transformer import encoder
    finally:
        sys.path.remove(str(DATA))
    return encoder().double()


def _reference(v: torch.Tensor) -> torch.Tensor:
    """The encoder layer written out from the module's weights: (B, 256) -> (B, 256)."""
    m = _module()     # built before any vmap by `_truth`: its initialisation draws numbers
    x = v.reshape(-1, 8, 32)
    q, k, val = (x @ m.self_attn.in_proj_weight.T + m.self_attn.in_proj_bias).chunk(3, dim=-1)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1, 8, 2, 16).transpose(1, 2)
    att = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / 4.0, dim=-1) @ heads(val)
    att = m.self_attn.out_proj(att.transpose(1, 2).reshape(-1, 8, 32))
    z = F.layer_norm(x + att, (32,), m.norm1.weight, m.norm1.bias, m.norm1.eps)
    out = z + m.linear2(F.relu(m.linear1(z)))
    return F.layer_norm(out, (32,), m.norm2.weight, m.norm2.bias, m.norm2.eps).reshape(-1, N)


def _truth():
    _module()
    return _reference


def _box(radius: float, centre: torch.Tensor | None = None) -> InputSet:
    c = torch.zeros(1, N, dtype=torch.float64) if centre is None else centre
    return InputSet.box(c - radius, c + radius)


def test_the_reference_forward_is_the_module() -> None:
    x = torch.randn(3, N, dtype=torch.float64)
    with torch.no_grad():
        want = _module()(x.reshape(3, 8, 32)).reshape(3, N)
    torch.testing.assert_close(_truth()(x), want)
    torch.testing.assert_close(_program("pt2").run(x), want, atol=1e-5, rtol=1e-5)


def test_both_formats_give_a_finite_bound_on_the_box_and_agree() -> None:
    bounds = {s: float(smooth_bounds(_program(s), _box(1.0))[1]["masked-autolip"][0])
              for s in ("onnx", "pt2")}
    assert all(math.isfinite(b) and b > 0 for b in bounds.values())
    assert abs(bounds["onnx"] - bounds["pt2"]) <= AGREE * bounds["pt2"]


def test_the_local_section_is_finite_and_names_the_global_as_unbounded() -> None:
    graph = load_model(DATA / "transformer_encoder.pt2")
    local = local_section(graph, LocalSet(input_range=(-1.0, 1.0)), math.inf, points=2)
    assert local["global_unbounded"] and local["global_upper_bound"] is None
    assert local["propagation"] == "interval" and local["certified"]
    assert math.isfinite(local["upper_bound"]) and local["lower_bound"] <= local["upper_bound"]
    # the centre (a constant input: LayerNorm at its steepest) is searched first
    truth = _truth()
    centre = float(torch.linalg.matrix_norm(
        torch.func.jacrev(lambda v: truth(v[None])[0])(torch.zeros(N, dtype=torch.float64)),
        ord=2))
    assert local["lower_bound"] >= centre * (1 - 1e-6)
    line = local_line(local)
    assert line.startswith("local on box [-1, 1]:") and "global: no finite bound" in line


@pytest.mark.parametrize("radius, centred", [(1.0, True), (0.05, False)])
def test_the_bound_is_above_every_jacobian_norm_found_in_the_set(radius, centred) -> None:
    gen = torch.Generator().manual_seed(11)
    centre = (torch.zeros(1, N, dtype=torch.float64) if centred
              else torch.rand(1, N, generator=gen, dtype=torch.float64) * 1.8 - 0.9)
    s = _box(radius, centre)
    bounds = smooth_bounds(_program("onnx"), s)[1]
    bound = min(float(b[0]) for b in bounds.values())
    lo, hi = s.interval()
    points = torch.cat([centre, lo + torch.rand(15, N, generator=gen, dtype=torch.float64)
                        * (hi - lo)])
    truth = _truth()
    norms = _jacobian_norms(truth, points)
    best = points[int(norms.argmax())]
    found = max(float(norms.max()), _ascent(truth, best, lo[0], hi[0], steps=4))
    assert math.isfinite(bound) and found <= bound


def test_a_pre_norm_gelu_encoder_from_torch_gets_a_sound_bound() -> None:
    """Another layout through the torch front end (LayerNorm before each block, GELU, scale
    and biases not at their initial values): finite, and above the Jacobian norms found."""
    torch.manual_seed(3)
    layer = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation="gelu",
                                             norm_first=True, batch_first=True).eval()
    with torch.no_grad():
        for norm in (layer.norm1, layer.norm2):
            norm.weight.uniform_(-1.5, 1.5)
            norm.bias.normal_(0, 0.3)
        layer.self_attn.in_proj_bias.normal_(0, 0.3)
    program = build_program(load_model_of(layer, (1, 4, 8)), smooth=True)
    layer = layer.double()

    def truth(v: torch.Tensor) -> torch.Tensor:   # the math kernel: forward-mode AD works
        with sdpa_kernel(SDPBackend.MATH):
            return layer(v.reshape(-1, 4, 8)).reshape(-1, 32)
    gen = torch.Generator().manual_seed(4)
    centre = torch.randn(1, 32, generator=gen, dtype=torch.float64)
    s = _box(0.3, centre)
    bounds = smooth_bounds(program, s)[1]
    bound = min(float(b[0]) for b in bounds.values())
    lo, hi = s.interval()
    points = torch.cat([centre, lo + torch.rand(15, 32, generator=gen, dtype=torch.float64)
                        * (hi - lo)])
    with torch.no_grad():
        torch.testing.assert_close(program.run(points), truth(points), atol=1e-5, rtol=1e-5)
    found = max(float(_jacobian_norms(truth, points).max()),
                _ascent(truth, centre[0], lo[0], hi[0], steps=4))
    assert math.isfinite(bound) and found <= bound


def load_model_of(module: torch.nn.Module, shape: tuple[int, ...]):
    from lipcheck.loaders.torch_loader import load_module
    return load_module(module, [shape])
