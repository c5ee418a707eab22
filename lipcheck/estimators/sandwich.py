"""The interval [certified lower, certified upper] that contains the true constant.

`Sandwich(lower, upper)` gives the gap upper / lower and warnings as (code, message):
- "bound_violation" when lower > upper (1 + 1e-9): both are claimed certified, so
  one of them is wrong; a certified lower bound is a quotient of two evaluations of
  the network, so this is a bug in the upper bound's method, reported, never hidden;
- "np_hard_gap" when the gap exceeds GAP_WARN: what it would take to narrow it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from lipcheck.results import GlobalBound

GAP_WARN = 1.5
VIOLATION_TOL = 1e-9
SDP_METHODS = ("sdp-net", "sdp-conv", "sdp", "eclipse", "eclipse-fast")   # LipSDP-class bounds


@dataclass
class Sandwich:
    lower: GlobalBound | None
    upper: GlobalBound | None
    warnings: list[tuple[str, str]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        pair = self._pair()
        if pair is None:
            return
        if self.violated:
            self.warnings.append(("bound_violation", _violation_message(*pair)))
        elif self.gap is not None and self.gap > GAP_WARN:
            self.warnings.append(("np_hard_gap", _gap_message(*pair, self.gap)))

    def _pair(self) -> tuple[GlobalBound, GlobalBound] | None:
        """(lower, upper) when both are certified and the upper one is an upper bound."""
        lower, upper = self.lower, self.upper
        if lower is None or upper is None:
            return None
        if not (lower.certified and upper.certified and upper.kind == "upper"):
            return None
        return lower, upper

    @property
    def usable(self) -> bool:
        return self._pair() is not None

    @property
    def gap(self) -> float | None:
        pair = self._pair()
        if pair is None or pair[0].value <= 0 or not math.isfinite(pair[1].value):
            return None
        return pair[1].value / pair[0].value

    @property
    def violated(self) -> bool:
        pair = self._pair()
        return pair is not None and pair[0].value > pair[1].value * (1 + VIOLATION_TOL)

    def interval(self) -> tuple[float, float] | None:
        pair = self._pair()
        if pair is None:
            return None
        return pair[0].value, pair[1].value


def _violation_message(lower: GlobalBound, upper: GlobalBound) -> str:
    return (f"BUG: certified lower bound {lower.value:.6g} ({lower.method}) exceeds certified "
            f"upper bound {upper.value:.6g} ({upper.method}). The lower bound is a quotient "
            "||f(x)-f(y)||/||x-y|| evaluated on the network, so the upper-bound method "
            f"{upper.method!r} is wrong for this model; please report it with the witness "
            "(--save-witness)")


def _likely_loose(lower: GlobalBound, upper: GlobalBound) -> str:
    if upper.method in ("seqlip-exact", "exact", "exact-enumeration", "exact-brute-force"):
        return ("the upper bound is exact for its model class, so the lower bound is the "
                "loose side")
    if lower.method in ("exact-region",):
        return "the lower bound is attained by the exact enumeration, so the upper bound is loose"
    if upper.method in SDP_METHODS:
        return ("the upper bound is usually the loose side (an SDP bound treats every unit's "
                "slope as free in [0, 1], including patterns no input reaches)")
    return ("the upper bound is usually the loose side (products of per-layer norms ignore "
            "which units can be active together)")


def _narrowing(upper: GlobalBound) -> str:
    if upper.method == "sdp-net":
        return ("a longer sdp-net search (--method sdp-net with a larger --time-budget: its "
                "evaluation count grows with the budget, up to 5000)")
    return ("an exact SeqLip or SDP upper bound (--method seqlip-exact / --method sdp) where "
            "the model is small enough")


def _gap_message(lower: GlobalBound, upper: GlobalBound, gap: float) -> str:
    return (f"the true Lipschitz constant lies in [{lower.value:.6g}, {upper.value:.6g}] "
            f"(gap {gap:.2f}x). Computing it exactly is NP-hard (Scaman & Virmaux 2018). "
            f"{_sentence(_likely_loose(lower, upper))}. To narrow it: {_narrowing(upper)}, "
            "or a longer lower-bound search (--lower-rounds N, capped by --lower-budget)")


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]
