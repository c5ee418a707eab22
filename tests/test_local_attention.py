"""Local rules for the smooth steps (products of two dynamic inputs, softmax, LayerNorm /
RMSNorm): every interval rule against values sampled in the box, every local factor against
Jacobian norms at points of the box (and near-tight where the maximiser is known), and masked
AutoLip over small random attention blocks against the Jacobian norms a search finds."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lipcheck.propagation import InputSet
from lipcheck.propagation.program import Act, Add, Affine, Program
from lipcheck.propagation.smooth import Norm, Product, Softmax
from lipcheck.propagation.smooth_lipschitz import (
    norm_factor,
    product_norms,
    smooth_autolip,
    softmax_factor,
)
from lipcheck.propagation.smooth_ranges import (
    norm_range,
    product_range,
    propagate_values,
    softmax_range,
)

TOL = 1e-9


def _box(gen: torch.Generator, n: int, scale: float = 2.0, batch: int = 2):
    centre = torch.randn(batch, n, generator=gen, dtype=torch.float64) * scale
    radius = torch.rand(batch, n, generator=gen, dtype=torch.float64) * scale / 2
    return centre - radius, centre + radius


def _inside(gen: torch.Generator, box, count: int = 200) -> torch.Tensor:
    """(count, B, n) points of the box: uniform, and half of them at random vertices."""
    lo, hi = box
    u = torch.rand(count, *lo.shape, generator=gen, dtype=torch.float64)
    u[count // 2:] = u[count // 2:].round()
    return lo + u * (hi - lo)


def _contains(bounds, values: torch.Tensor) -> bool:
    lo, hi = bounds
    spread = TOL * (1 + values.abs())
    return bool(((values >= lo - spread) & (values <= hi + spread)).all())


def _norm_step(gen: torch.Generator, shape, centred: bool, eps: float = 1e-3) -> Norm:
    d = shape[-1]
    scale = torch.randn(d, generator=gen, dtype=torch.float64)
    bias = torch.randn(d, generator=gen, dtype=torch.float64) if centred else torch.zeros(d)
    return Norm(tuple(shape), len(shape) - 1, scale, bias.double(), eps, centred)


@pytest.mark.parametrize("shape_a, shape_b", [((2, 3, 4), (2, 4, 5)), ((3, 4), (2, 4, 2)),
                                              ((1, 2, 3, 2), (2, 2, 3))])
def test_product_range_contains_sampled_products(shape_a, shape_b) -> None:
    gen = torch.Generator().manual_seed(1)
    step = Product(shape_a, shape_b)
    bx, by = _box(gen, math.prod(shape_a)), _box(gen, math.prod(shape_b))
    out = product_range(step, bx, by)
    xs, ys = _inside(gen, bx), _inside(gen, by)
    z = torch.stack([step.run(x, y) for x, y in zip(xs, ys, strict=True)])
    assert _contains(out, z)
    # corners: the range of one term is attained, so the width is not inflated (1-dim k)
    one = Product((1, 1), (1, 1))
    assert torch.allclose(product_range(one, (torch.tensor([[-1.0]]), torch.tensor([[2.0]])),
                                        (torch.tensor([[-3.0]]), torch.tensor([[1.0]])))[0],
                          torch.tensor([[-6.0]]))


def test_softmax_rows_times_values_stay_in_the_hull_of_the_values() -> None:
    gen = torch.Generator().manual_seed(2)
    soft, prod = Softmax((2, 4, 4), 2), Product((2, 4, 4), (2, 4, 3))
    logits, by = _box(gen, 32, scale=3.0), _box(gen, 24)
    p_range = softmax_range(soft, logits)
    out = product_range(prod, p_range, by, rows_sum_to_one=True)
    loose = product_range(prod, p_range, by)
    assert bool((out[1] - out[0] <= loose[1] - loose[0] + 1e-12).all())
    assert bool((out[1] - out[0] < loose[1] - loose[0]).any())      # tighter somewhere
    ps = torch.stack([soft.run(z) for z in _inside(gen, logits)])
    z = torch.stack([prod.run(p, y) for p, y in zip(ps, _inside(gen, by), strict=True)])
    assert _contains(out, z)


@pytest.mark.parametrize("shape, axis, scale", [((3, 5), 1, 2.0), ((4, 3), 0, 2.0),
                                                ((2, 6), 1, 20.0)])
def test_softmax_range_contains_sampled_probabilities(shape, axis, scale) -> None:
    gen = torch.Generator().manual_seed(3)
    step = Softmax(shape, axis)
    box = _box(gen, math.prod(shape), scale)
    out = softmax_range(step, box)
    p = torch.stack([step.run(z) for z in _inside(gen, box)])
    assert _contains(out, p)
    # exact per entry: the bounds are attained at the vertex that favours (or hurts) i
    lo, hi = box
    z = torch.where(torch.eye(shape[1] if axis == 1 else shape[0], dtype=torch.bool)[0]
                    .reshape((1, -1) if axis == 1 else (-1, 1)).expand(shape).reshape(1, -1),
                    hi[:1], lo[:1])
    assert torch.allclose(step.run(z)[0, 0], out[1][0, 0])


@pytest.mark.parametrize("centred", [True, False])
@pytest.mark.parametrize("scale", [0.05, 1.0, 5.0])
def test_norm_range_contains_sampled_outputs(centred: bool, scale: float) -> None:
    gen = torch.Generator().manual_seed(4)
    step = _norm_step(gen, (3, 6), centred)
    box = _box(gen, 18, scale)
    out = norm_range(step, box)
    y = torch.stack([step.run(x) for x in _inside(gen, box)])
    assert _contains(out, y)


def test_rms_norm_range_is_attained_on_the_box() -> None:
    """RMSNorm's entries are independent in the box, so each bound is attained: the upper
    one of t_0 at x_0 = hi_0 (> 0) and every other entry at its point nearest 0."""
    step = Norm((1, 4), 1, torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64),
                1e-2, False)
    lo = torch.tensor([[0.5, -1.0, 0.2, -3.0]], dtype=torch.float64)
    hi = torch.tensor([[2.0, 1.0, 0.7, -0.5]], dtype=torch.float64)
    x = torch.tensor([[2.0, 0.0, 0.2, -0.5]], dtype=torch.float64)
    assert torch.allclose(norm_range(step, (lo, hi))[1][0, 0], step.run(x)[0, 0])
    x = torch.tensor([[0.5, 1.0, 0.7, -3.0]], dtype=torch.float64)   # lower: the others far
    assert torch.allclose(norm_range(step, (lo, hi))[0][0, 0], step.run(x)[0, 0])


def test_norm_step_runs_like_torch() -> None:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 12, generator=gen, dtype=torch.float64)
    ln, rms = _norm_step(gen, (2, 6), True), _norm_step(gen, (2, 6), False)
    want = F.layer_norm(x.reshape(2, 2, 6), (6,), ln.scale, ln.bias, ln.eps).reshape(2, 12)
    torch.testing.assert_close(ln.run(x), want)
    want = F.rms_norm(x.reshape(2, 2, 6), (6,), rms.scale, rms.eps).reshape(2, 12)
    torch.testing.assert_close(rms.run(x), want)


def _jacobian_norms(fn, points: torch.Tensor) -> torch.Tensor:
    """||J(x)||_2 at each point (P, n) of a map of flat vectors."""
    jac = torch.func.vmap(torch.func.jacrev(lambda v: fn(v[None])[0]))(points)
    return torch.linalg.matrix_norm(jac, ord=2)


@pytest.mark.parametrize("scale", [0.3, 3.0])
def test_local_factors_bound_the_jacobian_on_the_box(scale: float) -> None:
    gen = torch.Generator().manual_seed(6)
    soft, ln = Softmax((3, 4), 1), _norm_step(gen, (3, 5), True)
    rms, prod = _norm_step(gen, (3, 5), False), Product((2, 3), (3, 2))
    for step, n in ((soft, 12), (ln, 15), (rms, 15)):
        box = _box(gen, n, scale, batch=1)
        factor = (softmax_factor(step, softmax_range(step, box)) if step is soft
                  else norm_factor(step, box))
        found = _jacobian_norms(step.run, _inside(gen, box, 100)[:, 0])
        assert float(found.max()) <= float(factor[0]) * (1 + 1e-9)
    bx, by = _box(gen, 6, scale, batch=1), _box(gen, 6, scale, batch=1)
    on_x, on_y = product_norms(prod, bx, by)
    both = torch.cat([_inside(gen, bx, 100)[:, 0], _inside(gen, by, 100)[:, 0]], dim=1)
    found = _jacobian_norms(lambda v: prod.run(v[:, :6], v[:, 6:]), both)
    assert float(found.max()) <= float(on_x[0] + on_y[0]) * (1 + 1e-9)


def test_local_factors_are_tight_where_the_maximiser_is_known() -> None:
    # LayerNorm with g = 1 on a tiny box: ||J|| = 1 / sigma at each point (d >= 3)
    ln = Norm((1, 6), 1, torch.ones(6, dtype=torch.float64), torch.zeros(6, dtype=torch.float64),
              1e-2, True)
    x = torch.tensor([[0.1, -0.2, 0.05, 0.0, 0.3, -0.1]], dtype=torch.float64)
    factor = float(norm_factor(ln, (x - 1e-6, x + 1e-6))[0])
    at_x = float(_jacobian_norms(ln.run, x)[0])
    assert at_x <= factor <= at_x * 1.001
    # softmax at p = (1/2, 1/2, ~0, ~0): ||J|| = 1/2 = the factor
    soft = Softmax((1, 4), 1)
    z = torch.tensor([[0.0, 0.0, -40.0, -40.0]], dtype=torch.float64)
    factor = float(softmax_factor(soft, softmax_range(soft, (z - 1e-6, z + 1e-6)))[0])
    assert abs(float(_jacobian_norms(soft.run, z)[0]) - 0.5) < 1e-9
    assert 0.5 - 1e-6 <= factor <= 0.5
    # a peaked softmax (max p ~ 0.01 off the top entry): the factor follows max p (1 - p)
    z = torch.tensor([[8.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    factor = float(softmax_factor(soft, softmax_range(soft, (z - 1e-3, z + 1e-3)))[0])
    assert factor < 0.01


def test_a_square_is_bounded_by_both_terms_of_the_product_rule() -> None:
    """x -> X X near X = 2 I: J = X^T (x) I + I (x) X has norm 4, the sum of both terms
    (each alone gives 2): the program bound must add them, and is tight here."""
    eye = torch.eye(9, dtype=torch.float64)
    program = Program([Affine(eye, torch.zeros(9, dtype=torch.float64), src=(0,)),
                       Affine(eye, torch.zeros(9, dtype=torch.float64), src=(0,)),
                       Product((3, 3), (3, 3), src=(1, 2))], 9, 9)
    x = 2 * torch.eye(3, dtype=torch.float64).reshape(1, 9)
    _, bound, _ = smooth_autolip(program, InputSet.box(x - 1e-6, x + 1e-6))
    at_x = float(_jacobian_norms(program.run, x)[0])
    assert abs(at_x - 4) < 1e-9 and at_x <= float(bound[0]) <= at_x * 1.0001


def _attention_program(gen: torch.Generator, tokens: int, d: int, hidden: int) -> Program:
    """x (tokens, d) -> LN(z + FFN(z)), z = LN(x + Wo softmax(Q K^T) V): one head, random
    weights, written directly as steps (the loaders are tested elsewhere)."""
    n = tokens * d

    def affine(w: torch.Tensor, src: int, bias: bool = True) -> Affine:
        b = torch.randn(w.shape[0], generator=gen, dtype=torch.float64) * 0.3 * bias
        return Affine(w, b, src=(src,))

    def per_token(out_dim: int, in_dim: int) -> torch.Tensor:
        w = torch.randn(out_dim, in_dim, generator=gen, dtype=torch.float64) / math.sqrt(in_dim)
        return torch.kron(torch.eye(tokens, dtype=torch.float64), w)

    keys_t = torch.zeros(n, n, dtype=torch.float64)          # (tokens, d) -> (d, tokens)
    for t in range(tokens):
        for j in range(d):
            keys_t[j * tokens + t, t * d + j] = 1.0
    steps = [affine(per_token(d, d), 0), affine(keys_t @ per_token(d, d), 0),
             affine(per_token(d, d), 0), Product((tokens, d), (d, tokens), src=(1, 2)),
             Softmax((tokens, tokens), 1, src=(4,)), Product((tokens, tokens), (tokens, d),
                                                              src=(5, 3)),
             affine(per_token(d, d), 6), Add(src=(0, 7)), _norm_step(gen, (tokens, d), True)]
    steps[-1].src = (8,)
    steps += [affine(per_token(hidden, d), 9), Act(0.0, src=(10,)),
              affine(per_token(d, hidden), 11), Add(src=(9, 12)),
              _norm_step(gen, (tokens, d), True)]
    steps[-1].src = (13,)
    return Program(steps, n, n)


def _ascent(fn, start: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, steps: int = 8):
    """Sign-gradient ascent on ||J(x) v|| (v the top right singular vector), kept in the box;
    returns the largest ||J||_2 met."""
    def flat(w: torch.Tensor) -> torch.Tensor:
        return fn(w[None])[0]

    def gain(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(flat, (u,), (v,))[1].norm()
    x, best = start.clone(), 0.0
    for _ in range(steps):
        _, s, vh = torch.linalg.svd(torch.func.jacrev(flat)(x))
        best = max(best, float(s[0]))
        grad = torch.func.grad(gain)(x, vh[0].detach())
        x = torch.minimum(torch.maximum(x + 0.05 * (hi - lo) * grad.sign(), lo), hi)
    return best


@pytest.mark.parametrize("seed", range(4))
def test_masked_autolip_bounds_every_jacobian_found_on_random_attention_blocks(seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    program = _attention_program(gen, tokens=3, d=4, hidden=6)
    centre = torch.randn(1, program.n_in, generator=gen, dtype=torch.float64)
    radius = [0.05, 0.3, 1.0, 0.01][seed]
    s = InputSet.box(centre - radius, centre + radius)
    plain = propagate_values(program, s)
    ranges, bound_t, hull_t = smooth_autolip(program, s)
    points = _inside(gen, s.interval(), 64)[:, 0]
    for k, value in enumerate(program.values(points)):
        assert _contains(plain.values[k], value), f"value {k} left its interval range"
        assert _contains(ranges.values[k], value), f"value {k} left its range"
    bound = float(bound_t[0])
    found = float(_jacobian_norms(program.run, points).max())
    lo, hi = s.interval()
    found = max(found, _ascent(program.run, points[0], lo[0], hi[0]),
                _ascent(program.run, centre[0], lo[0], hi[0]))
    assert math.isfinite(bound) and found <= bound
    assert found <= float(hull_t[0])


@pytest.mark.parametrize("kind", ["box", "l2", "linf"])
def test_the_bound_shrinks_to_the_pointwise_product_on_small_sets(kind: str) -> None:
    """Ranges that shrink with the set: the bound on a tiny set is within 10 % of the one on
    the centre alone (all factors continuous), which is >= the Jacobian norm there."""
    gen = torch.Generator().manual_seed(7)
    program = _attention_program(gen, tokens=3, d=4, hidden=6)
    centre = torch.randn(2, program.n_in, generator=gen, dtype=torch.float64)
    point = smooth_autolip(program, InputSet.box(centre, centre))[1]
    tiny = (InputSet.box(centre - 1e-5, centre + 1e-5) if kind == "box"
            else InputSet.ball(centre, 1e-5, "2" if kind == "l2" else "inf"))
    small = smooth_autolip(program, tiny)[1]
    at_centre = _jacobian_norms(program.run, centre)
    assert bool((at_centre <= point).all()) and bool((point <= small).all())
    assert bool((small <= 1.1 * point).all())
    # the Jacobian hull on a point is that point's Jacobian: its norm, up to rounding
    hull = smooth_autolip(program, InputSet.box(centre, centre))[2]
    assert torch.allclose(hull, at_centre, rtol=1e-6) and bool((at_centre <= hull).all())
    assert bool((smooth_autolip(program, tiny)[2] <= 1.05 * at_centre).all())
