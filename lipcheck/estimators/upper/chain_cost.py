"""Whether a dense chain method can finish its fixed work before the deadline.

A time cap is a promise (issue 12): SeqLip (exact and greedy), LipSDP and ECLipsE first
form each part's dense matrix and factor it (SVD, inverse, eigendecomposition) and end
with a float64 check; none of that can be cut short, and on 1500-wide layers it ran 5 to
6 times past a 2 s cap. Its cost is predicted from the parts' sizes (m n min(m, n)
multiply-adds each, times a per-method factor measured here) and this machine's float64
matmul rate (lipcheck.estimators.lower.cost, measured once under the current load); a
chain whose fixed work cannot finish keeps its AutoLip product and says it was cut.
"""
from __future__ import annotations

import math
import time

from lipcheck.estimators.lower.cost import machine_rate
from lipcheck.estimators.upper.chains import Chain
from lipcheck.estimators.upper.seqlip import ChainBound

# seconds x rate / sum m n min(m, n), measured on a 100-1500-1500-10 MLP (gesvd SVDs and
# pair products for SeqLip: 56 and 64; inverses, eigh and the check for ECLipsE-Fast: 37)
FACTOR = {"seqlip-exact": 70.0, "seqlip-greedy": 70.0, "eclipse-fast": 45.0,
          "eclipse": 45.0, "sdp": 45.0}


def dense_work(chain: Chain) -> float:
    return float(sum(m * n * min(m, n) for m, n in (p.shape for p in chain.parts)))


def predicted_seconds(chain: Chain, method: str) -> float:
    return FACTOR[method] * dense_work(chain) / machine_rate()


def too_slow(chain: Chain, method: str, deadline: float) -> ChainBound | None:
    """None if the method's fixed work on `chain` is predicted to end before the deadline;
    otherwise the chain's AutoLip product, marked as cut by the budget (for greedy SeqLip,
    whose values are estimates, not called certified either)."""
    need = predicted_seconds(chain, method)
    if time.monotonic() + need <= deadline or math.isinf(deadline):
        return None
    certified = chain.autolip_certified and method != "seqlip-greedy"   # greedy: an estimate
    return ChainBound(chain.autolip_product, certified, False,
                      f"{method} not run: its dense factorisations (predicted {need:.2g} s) do not "
                      "fit in the time left: AutoLip product kept", 0.0, True)
