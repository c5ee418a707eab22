"""Bound propagation over an input set: the ranges every unit takes on the set.

- `input_set`: the set (a box, or L2 / Linf balls around given points), batched, and the
  exact range of an affine function over it;
- `program`: a feed-forward graph lowered to dense steps (affine, ReLU-family, max pool);
- `ranges`: interval bounds, then CROWN-style back-substitution, for every step's input;
- `jacobian`: the interval hull of every (Clarke) Jacobian on the set, propagated
  backwards, and the L2 norms it certifies (the local Lipschitz constants);
- `zonotope` (with `box_norm`): the rows of those Jacobians as a zonotope propagated
  backwards (shared generators kept), and an SDP-dual bound of its largest L2 norm.

The estimators use these; nothing here knows about reports or the terminal.
"""
from lipcheck.propagation.input_set import InputSet
from lipcheck.propagation.jacobian import jacobian_hull, local_lipschitz, row_norm_bounds
from lipcheck.propagation.program import Program, UnsupportedLocal, build_program
from lipcheck.propagation.ranges import Ranges, propagate

__all__ = ["InputSet", "Program", "Ranges", "UnsupportedLocal", "build_program",
           "jacobian_hull", "local_lipschitz", "propagate", "row_norm_bounds"]
