"""cvxpy glue shared by the SDP methods: the optional import, the choice of solver and
a solve with fixed tolerances and iteration caps. cvxpy (with Clarabel or SCS) is an
optional dependency: `pip install lipcheck[sdp]`. Whatever a solver returns is checked
by `sdp_certificate` before it is called certified."""
from __future__ import annotations

import time
import warnings

from lipcheck.errors import UserError

MIN_SECONDS = 0.1      # a solver's wall-clock limit, at least
CLOCKED = 0.9          # a solve that used this share of its limit may have been stopped by it
CLARABEL_MAX_DIM = 120  # Clarabel's PSD cone is dense in n^2/2: above this, SCS (less memory)


def require_cvxpy():
    try:
        import cvxpy
    except ImportError:
        raise UserError("the SDP bounds need cvxpy with Clarabel or SCS: "
                        "pip install 'lipcheck[sdp]'") from None
    return cvxpy


def pick_solver(dim: int) -> str:
    return "CLARABEL" if dim <= CLARABEL_MAX_DIM else "SCS"


def solve(problem, solver: str, seconds: float) -> bool:
    """Solve with fixed tolerances and iteration caps (the wall-clock limit is only a safety
    cap); a stopped solve is still checked by `verify`. The limit is floored at
    MIN_SECONDS, not more: --time-budget must hold when it is shared by many solves.
    Returns whether the wall-clock limit may have stopped the solver (its time reached
    CLOCKED of the limit): the value then depends on the machine's speed."""
    seconds = max(seconds, MIN_SECONDS)
    limit = {"SCS": {"time_limit_secs": seconds, "max_iters": 200_000,
                     "eps_abs": 1e-8, "eps_rel": 1e-8},
             "CLARABEL": {"time_limit": seconds, "max_iter": 200}}.get(solver, {})
    start = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "solution may be inaccurate": verify() decides
        problem.solve(solver=solver, **limit)
    took = getattr(problem.solver_stats, "solve_time", None)
    return (took if took is not None else time.monotonic() - start) >= CLOCKED * seconds
