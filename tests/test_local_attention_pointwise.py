"""Elementwise smooth steps (Exp, Tanh, Sigmoid, Erf, Sqrt, Reciprocal, Gelu, Pow 2, and
Add / Sub / Mul / Div of two dynamic inputs): ranges against sampled values, slopes against
derivatives at sampled points, and a written-out attention block (exp / sum softmax,
mean / variance LayerNorm, GELU) through the torch front end against a Jacobian search."""
from __future__ import annotations

import math

import pytest
import torch
from test_local_attention import _ascent, _box, _contains, _inside, _jacobian_norms
from torch import nn

from lipcheck.graph import OpKind
from lipcheck.loaders.torch_loader import load_module
from lipcheck.propagation import InputSet, build_program
from lipcheck.propagation.pointwise import (
    binary_factors,
    binary_range,
    pointwise_derivative,
    pointwise_range,
    pointwise_slope,
)
from lipcheck.propagation.program import Affine, Program
from lipcheck.propagation.smooth import Binary, Pointwise, Product
from lipcheck.propagation.smooth_lipschitz import smooth_bounds

OPS = [(OpKind.EXP, "none", False), (OpKind.TANH, "none", False),
       (OpKind.SIGMOID, "none", False), (OpKind.ERF, "none", False),
       (OpKind.SQRT, "none", True), (OpKind.RECIPROCAL, "none", True),
       (OpKind.GELU, "none", False), (OpKind.GELU, "tanh", False), (OpKind.POW, "none", False)]


@pytest.mark.parametrize("op, approximate, shift", OPS)
def test_pointwise_ranges_and_slopes_hold_at_sampled_points(op, approximate, shift) -> None:
    gen = torch.Generator().manual_seed(5)
    step = Pointwise(op, approximate)
    lo, hi = _box(gen, 40, scale=1.5)
    if shift:       # Sqrt, Reciprocal: away from 0
        lo, hi = lo.abs() + 0.1, lo.abs() + 0.1 + (hi - lo)
    box = (lo, hi)
    out, slope = pointwise_range(step, box), pointwise_slope(step, box)
    xs = _inside(gen, box, 300)
    assert _contains(out, step.run(xs))
    grad = torch.func.vmap(torch.func.grad(lambda v: step.run(v[None])[0]))(xs.reshape(-1))
    assert bool((grad.abs().reshape(xs.shape).amax(dim=(0, 2)) <= slope * (1 + 1e-9)).all())
    assert _contains(pointwise_derivative(step, box), grad.reshape(xs.shape))
    assert bool(torch.isfinite(slope).all())


def test_gelu_range_reaches_its_minimum_and_no_range_for_bad_inputs() -> None:
    step = Pointwise(OpKind.GELU)
    f64 = torch.float64
    lo, _ = pointwise_range(step, (torch.tensor([[-2.0]], dtype=f64),
                                   torch.tensor([[0.0]], dtype=f64)))
    minimum = torch.nn.functional.gelu(torch.tensor(-0.7518, dtype=f64))
    assert -0.1701 <= float(lo) <= float(minimum) <= -0.1699
    sqrt = Pointwise(OpKind.SQRT)
    assert math.isinf(float(pointwise_slope(sqrt, (torch.tensor([[-1.0]]),
                                                   torch.tensor([[1.0]])))[0]))
    inv = Pointwise(OpKind.RECIPROCAL)
    lo, hi = pointwise_range(inv, (torch.tensor([[-1.0]]), torch.tensor([[1.0]])))
    assert math.isinf(float(lo)) and math.isinf(float(hi))


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
@pytest.mark.parametrize("shapes", [((2, 3), (2, 3)), ((2, 3), (2, 1)), ((1, 3), (2, 3))])
def test_binary_ranges_and_factors_hold_at_sampled_points(op, shapes) -> None:
    gen = torch.Generator().manual_seed(3)
    a_shape, b_shape = shapes
    step = Binary(op, a_shape, b_shape, tuple(torch.broadcast_shapes(a_shape, b_shape)))
    na, nb = math.prod(a_shape), math.prod(b_shape)
    ba = _box(gen, na, batch=1)
    lo, hi = _box(gen, nb, batch=1)
    bb = (lo.abs() + 0.5, hi.abs() + lo.abs() + 0.6) if op == "div" else (lo, hi)
    out = binary_range(step, ba, bb)
    xa, xb = _inside(gen, ba, 200)[:, 0], _inside(gen, bb, 200)[:, 0]
    assert _contains(out, step.run(xa, xb))
    on_a, on_b = binary_factors(step, ba, bb)
    found = _jacobian_norms(lambda v: step.run(v[:, :na], v[:, na:]), torch.cat([xa, xb], 1))
    assert float(found.max()) <= float(on_a[0] + on_b[0]) * (1 + 1e-9)


def test_a_value_times_itself_is_a_square() -> None:
    step = Binary("mul", (1, 2), (1, 2), (1, 2))
    box = (torch.tensor([[-1.0, 0.5]]), torch.tensor([[2.0, 1.0]]))
    lo, hi = binary_range(step, box, box, same=True)
    assert lo.tolist() == [[0.0, 0.25]] and hi.tolist() == [[4.0, 1.0]]


class _WrittenOut(nn.Module):
    """One head of attention with softmax as exp / sum, LayerNorm as mean / variance /
    sqrt, and a GELU feed-forward: every elementwise step, no fused op."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 6)
        self.up, self.down = nn.Linear(6, 8), nn.Linear(8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.q(x) @ self.k(x).transpose(-1, -2) / 3.0
        e = torch.exp(scores)
        z = x + (e / e.sum(dim=-1, keepdim=True)) @ self.v(x)
        c = z - z.mean(dim=-1, keepdim=True)
        z = c / torch.sqrt((c * c).mean(dim=-1, keepdim=True) + 1e-3)
        return z + self.down(torch.tanh(nn.functional.gelu(self.up(z))))


def test_a_written_out_block_gets_a_sound_finite_bound() -> None:
    torch.manual_seed(0)
    module = _WrittenOut().eval()
    graph = load_module(module, [(1, 4, 6)])
    program = build_program(graph, smooth=True)
    x = torch.randn(5, 24, dtype=torch.float64)
    with torch.no_grad():
        want = module.double()(x.reshape(5, 4, 6)).reshape(5, 24)
    torch.testing.assert_close(program.run(x), want, atol=1e-5, rtol=1e-5)
    gen = torch.Generator().manual_seed(1)
    centre = torch.randn(1, 24, generator=gen, dtype=torch.float64)
    s = InputSet.box(centre - 0.1, centre + 0.1)
    bounds = smooth_bounds(program, s)[1]
    # on the centre alone the Jacobian hull is the Jacobian there: every rule is exact
    hull = smooth_bounds(program, InputSet.box(centre, centre))[1]["interval-jacobian"]
    torch.testing.assert_close(hull, _jacobian_norms(program.run, centre), rtol=1e-6, atol=0)

    def truth(v: torch.Tensor) -> torch.Tensor:
        return module(v.reshape(-1, 4, 6)).reshape(-1, 24)
    lo, hi = s.interval()
    points = _inside(gen, (lo, hi), 32)[:, 0]
    found = max(float(_jacobian_norms(truth, points).max()),
                _ascent(truth, centre[0], lo[0], hi[0], steps=6))
    assert all(found <= float(b[0]) for b in bounds.values())
    assert math.isfinite(min(float(b[0]) for b in bounds.values()))


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_the_jacobian_hull_of_a_binary_step_is_exact_on_a_point(op: str) -> None:
    """Two affine maps of one input combined by a broadcast binary step: on a single point
    the hull is the Jacobian there (the product and quotient rules, exactly)."""
    gen = torch.Generator().manual_seed(8)
    w = [torch.randn(m, 5, generator=gen, dtype=torch.float64) for m in (6, 2)]
    steps = [Affine(w[0], torch.zeros(6, dtype=torch.float64), src=(0,)),
             Affine(w[1], torch.full((2,), 3.0, dtype=torch.float64), src=(0,)),
             Binary(op, (2, 3), (2, 1), (2, 3), src=(1, 2))]
    program = Program(steps, 5, 6)
    x = torch.rand(1, 5, generator=gen, dtype=torch.float64) * 0.2
    hull = smooth_bounds(program, InputSet.box(x, x))[1]["interval-jacobian"]
    torch.testing.assert_close(hull, _jacobian_norms(program.run, x), rtol=1e-6, atol=0)


def test_a_sigmoid_mlp_now_gets_a_local_section_above_its_jacobians() -> None:
    """Smooth activations go through the same path (they were skipped before)."""
    from graphs import mlp

    from lipcheck.local_estimate import local_section
    from lipcheck.local_set import LocalSet
    graph = mlp([4, 6, 2], OpKind.SIGMOID, seed=5)
    local = local_section(graph, LocalSet(input_range=(0.0, 1.0)), 10.0, points=16)
    assert "skipped" not in local and local["lower_bound"] <= local["upper_bound"] <= 10.0
    program = build_program(graph, smooth=True)
    gen = torch.Generator().manual_seed(2)
    points = torch.rand(200, 4, generator=gen, dtype=torch.float64)
    assert float(_jacobian_norms(program.run, points).max()) <= local["upper_bound"]
    assert local["upper_bound"] <= 1.5 * local["lower_bound"]      # near-tight on this MLP


@pytest.mark.parametrize("shape_a, shape_b", [((2, 3, 4), (2, 4, 2)), ((1, 2, 3, 2), (2, 2, 3)),
                                              ((3, 2), (2, 2, 3))])
def test_the_jacobian_hull_of_a_broadcast_product_is_exact_on_a_point(shape_a, shape_b) -> None:
    gen = torch.Generator().manual_seed(9)
    na, nb = math.prod(shape_a), math.prod(shape_b)
    steps = [Affine(torch.randn(na, 5, generator=gen, dtype=torch.float64),
                    torch.zeros(na, dtype=torch.float64), src=(0,)),
             Affine(torch.randn(nb, 5, generator=gen, dtype=torch.float64),
                    torch.ones(nb, dtype=torch.float64), src=(0,)),
             Product(shape_a, shape_b, src=(1, 2))]
    program = Program(steps, 5, 0)
    x = torch.rand(1, 5, generator=gen, dtype=torch.float64)
    bounds = smooth_bounds(program, InputSet.box(x, x))[1]
    at_x = _jacobian_norms(program.run, x)
    torch.testing.assert_close(bounds["interval-jacobian"], at_x, rtol=1e-6, atol=0)
    assert bool((at_x <= bounds["masked-autolip"]).all())
