"""The backward zonotope of Jacobian rows (Shi et al.-style linear relaxation) and its box
norm: against brute force on the box, and against every ||r J(x)|| found in the set by
sampling and a short hill climb (small conv nets, a residual one, digits_cnn)."""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from graphs import conv_net
from test_propagation import pool_cnn

from lipcheck.loaders.dispatch import load_model
from lipcheck.loaders.torch_loader import load_module
from lipcheck.propagation import InputSet, build_program, propagate
from lipcheck.propagation.box_norm import sup_norm
from lipcheck.propagation.jacobian import row_norm_bounds
from lipcheck.propagation.zonotope import zonotope, zonotope_row_bounds

ROOT = Path(__file__).resolve().parents[1]


def test_the_box_norm_bound_lies_between_the_vertex_maximum_and_the_column_sum():
    gen = torch.Generator().manual_seed(0)
    for q in (1, 3, 7):
        d = torch.randn(4, 5, generator=gen, dtype=torch.float64)
        gens = torch.randn(4, 5, q, generator=gen, dtype=torch.float64)
        corners = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=q)),
                               dtype=torch.float64)                  # (2^q, q)
        exact = torch.linalg.vector_norm(d[:, None] + corners @ gens.transpose(1, 2),
                                         dim=2).amax(dim=1)
        bound = sup_norm(d, gens)
        columns = torch.linalg.vector_norm(torch.cat([d[..., None], gens], 2), dim=1).sum(1)
        assert bool((exact <= bound).all() and (bound <= columns * (1 + 1e-9)).all())
        assert bool((bound <= exact * 1.26).all())        # sqrt(pi / 2): the SDP's gap


def row_norms(program, points: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(B, P, m) ||r J(x)|| at points (B, P, n) for rows (B, m, n_out)."""
    jac = torch.func.vmap(torch.func.jacrev(lambda v: program.run(v[None])[0]))(
        points.reshape(-1, program.n_in)).reshape(*points.shape[:2], program.n_out, -1)
    return torch.linalg.vector_norm(torch.einsum("bmo,bpoi->bpmi", rows, jac), dim=3)


def largest_found(program, centers, radius, rows, count=200, climbs=20) -> torch.Tensor:
    """(B, m): the largest ||r J|| at random points of each ball, then a hill climb from
    the best (random moves kept when they increase it, staying in the ball)."""
    gen = torch.Generator().manual_seed(1)
    b, n = centers.shape
    d = torch.randn(b, count, n, generator=gen, dtype=torch.float64)
    d = d / d.norm(dim=2, keepdim=True) * radius * torch.rand(b, count, 1, generator=gen) ** 0.2
    norms = row_norms(program, centers[:, None] + d, rows)            # (B, P, m)
    best, where = norms.max(dim=1)
    point = d.gather(1, where[..., None].expand(-1, -1, n))           # (B, m, n)
    for step in range(climbs):
        move = torch.randn(point.shape, generator=gen, dtype=torch.float64)
        trial = point + move / move.norm(dim=2, keepdim=True) * radius * 0.3 * 0.9 ** step
        trial = trial * (radius / trial.norm(dim=2, keepdim=True)).clamp(max=1.0)
        found = torch.stack([row_norms(program, centers[:, None] + trial[:, j:j + 1],
                                       rows)[:, 0, j] for j in range(rows.shape[1])], dim=1)
        better = found > best
        best, point = torch.where(better, found, best), torch.where(better[..., None], trial,
                                                                     point)
    return best


GRAPHS = {
    "conv": lambda: conv_net(seed=2, size=4),
    "pool": lambda: load_module(pool_cnn(), [(1, 1, 6, 6)]),
    "residual": lambda: conv_net(seed=6, residual=True, size=4),
}


@pytest.mark.parametrize("name", GRAPHS)
def test_the_zonotope_bounds_every_row_norm_found_in_the_ball(name):
    program = build_program(GRAPHS[name]())
    gen = torch.Generator().manual_seed(8)
    centers = torch.randn(3, program.n_in, generator=gen, dtype=torch.float64)
    rows = torch.randn(3, 2, program.n_out, generator=gen, dtype=torch.float64)
    ranges = propagate(program, InputSet.ball(centers, 0.8, "2"))
    z = zonotope(program, ranges, rows)
    raw = sup_norm(z.d, z.gens)
    found = largest_found(program, centers, 0.8, rows)
    assert bool((found <= raw).all())
    bound = zonotope_row_bounds(program, ranges, rows)
    assert bool((found <= bound).all())
    assert bool((bound <= row_norm_bounds(program, ranges, rows) * (1 + 1e-9)).all())


def test_the_zonotope_is_exact_when_every_unit_is_stable():
    program = build_program(GRAPHS["pool"]())
    gen = torch.Generator().manual_seed(9)
    centers = torch.randn(2, program.n_in, generator=gen, dtype=torch.float64)
    rows = torch.randn(2, 3, program.n_out, generator=gen, dtype=torch.float64)
    ranges = propagate(program, InputSet.ball(centers, 1e-7, "2"))
    assert ranges.unstable(program) == 0
    z = zonotope(program, ranges, rows)
    at_centre = row_norms(program, centers[:, None], rows)[:, 0]
    assert torch.allclose(sup_norm(z.d, z.gens), at_centre, rtol=1e-7)


def test_the_zonotope_on_digits_cnn_balls_bounds_what_is_found_and_beats_the_hull():
    sys.path.insert(0, str(ROOT / "models"))
    from digits_data import digits_split
    program = build_program(load_model(ROOT / "models" / "digits_cnn.onnx"))
    centers = torch.from_numpy(digits_split()[2][:3].astype(np.float64))
    pred = program.run(centers).argmax(dim=1)
    rows = torch.eye(10, dtype=torch.float64)[pred][:, None] - torch.eye(10)[[1, 4, 7]][None]
    ranges = propagate(program, InputSet.ball(centers, 0.1, "2"))
    bound = zonotope_row_bounds(program, ranges, rows)
    found = largest_found(program, centers, 0.1, rows, count=100, climbs=10)
    assert bool((found <= bound).all())
    hull = row_norm_bounds(program, ranges, rows)
    assert bool(((bound < hull / 1.2) | (hull == 0)).all())     # a row e_c - e_c is 0
