"""Numerical hygiene: refuse NaN/Inf weights, turn overflow into an honest infinite bound.

A certified bound must never be a finite number that is wrong, nor a NaN. Two things can
break that: non-finite parameters (refused up front, naming the tensor), and floating-point
overflow while bounds are multiplied along the graph (a huge but finite weight, 1e30 in
float32 or 1e200 in float64). Overflow gives +inf, which is a true (if useless) upper
bound; `checked_bound` makes sure it is reported as infinite with the warning code
"overflow" and that a NaN never escapes.
"""
from __future__ import annotations

import math
import sys

import torch

from lipcheck.errors import BadWeightsError, UserError
from lipcheck.finite import count_nan, count_nonfinite
from lipcheck.graph import Graph, OpKind

OVERFLOW = "overflow"
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a --dtype value."""
    try:
        return DTYPES[name]
    except KeyError:
        raise UserError(f"--dtype {name!r}: choose from {', '.join(DTYPES)}") from None


# +-inf is a value only in constants that are added (attention masks add -inf); the
# ONNX loader calls check_finite_constants itself; torch buffers follow the same rule
ADDITIVE = frozenset({OpKind.ADD, OpKind.SUB, OpKind.SUM, OpKind.MAX, OpKind.MIN})


def check_finite_constants(graph: Graph) -> None:
    """BadWeightsError naming the first floating constant with a NaN entry, or with an
    infinite one that some node other than an additive one reads."""
    readers: dict[str, set[OpKind]] = {}
    for node in graph.nodes:
        for value in node.inputs:
            readers.setdefault(value, set()).add(node.op)
    for name, tensor in graph.constants.items():
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        bad = count_nonfinite(tensor)   # block by block: no whole-tensor masks
        if bad == 0 or (count_nan(tensor) == 0 and readers.get(name, set()) <= ADDITIVE):
            continue
        raise BadWeightsError(f"weight {name!r} has {bad} NaN/Inf value(s) "
                              f"of {tensor.numel()}")


def overflow_message(what: str) -> str:
    return (f"{what} overflowed the floating-point range: the bound is reported as infinite "
            "(a huge weight, e.g. 1e30, makes the product of layer bounds exceed ~1.8e308)")


def checked_bound(value: float) -> tuple[float, bool]:
    """(value, overflowed): NaN and +-inf become +inf with overflowed=True."""
    if math.isnan(value) or math.isinf(value):
        return math.inf, True
    return value, False


def safe_rss(values: list[float]) -> float:
    """sqrt(sum x^2) without intermediate overflow (math.hypot scales internally)."""
    return math.hypot(*values)


def round_up_tiny(product: float, positive: bool) -> float:
    """A product of positive numbers that fell into the subnormal range (or to 0) has lost
    most of its relative precision: step it up one ulp so it stays an upper bound."""
    if positive and 0.0 <= product < sys.float_info.min:
        return math.nextafter(product, math.inf)
    return product


# Chain methods (SeqLip, SDP, ECLipsE) square and multiply layer matrices in float64: layer
# norms outside this range can overflow to inf or underflow to 0 (a certified 0 would be a
# finite wrong bound), so they are not run on such chains and AutoLip's product is kept.
WELL_SCALED = (1e-60, 1e60)


def well_scaled(values: list[float]) -> bool:
    lo, hi = WELL_SCALED
    return all(lo <= v <= hi for v in values if v != 0.0) and all(math.isfinite(v) for v in values)
