"""Whole-network bounds from chain bounds, one per method.

For a method, each chain (see lipcheck.estimators.upper.chains) gets that method's bound;
the network bound is AutoLip over the DAG with the chain's first node carrying the
chain bound and its other nodes carrying 1 (a chain's inner values have one consumer,
so this replaces exactly the product of the chain's AutoLip node bounds). A chain the
method cannot handle (too large, missing solver, budget spent) keeps its AutoLip
product. The network bound is certified only if every part is; a heuristic chain
value makes the whole bound an estimate. For a pure MLP it is the chain bound.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from itertools import pairwise

import numpy as np

from lipcheck.errors import UserError
from lipcheck.estimators.exact.pairmax import MAX_NODES
from lipcheck.estimators.upper.autolip import autolip
from lipcheck.estimators.upper.chain_cost import too_slow
from lipcheck.estimators.upper.chains import Chain, find_chains
from lipcheck.estimators.upper.conv_pool import find_pooled
from lipcheck.estimators.upper.eclipse import eclipse
from lipcheck.estimators.upper.sdp import lipsdp_neuron
from lipcheck.estimators.upper.sdp_conv_pool import sdp_conv_pooled
from lipcheck.estimators.upper.sdp_cost import warm_optimiser
from lipcheck.estimators.upper.sdp_net import sdp_net
from lipcheck.estimators.upper.sdp_schur import lipsdp_descent
from lipcheck.estimators.upper.sdp_solver import require_cvxpy
from lipcheck.estimators.upper.seqlip import (
    ChainBound,
    dense_factor,
    exact_chain,
    greedy_chain,
    lowrank_factors,
)
from lipcheck.graph import Graph, OpKind
from lipcheck.numerics import well_scaled
from lipcheck.results import GlobalBound, tightest_certified  # noqa: F401 (re-exported)
from lipcheck.rules import NodeBound
from lipcheck.settings import Settings

METHODS = ("autolip", "seqlip-exact", "seqlip-greedy", "seqlip-lowrank", "sdp", "eclipse",
           "sdp-conv", "sdp-net")
# `--method auto`: what is cheap (< ~2 s a chain here) and useful; "quick" variants are
# the same methods with smaller count limits and size gates, reported under their names.
DEFAULT_METHODS = ("autolip", "eclipse-fast", "seqlip-exact:quick", "sdp:quick",
                   "sdp-conv:quick", "sdp-net:quick")
WHOLE_NET = "sdp-net"    # a method of the whole graph (sdp_net), not of chains
QUICK = ":quick"
SDP_MAX_DIM = 1100       # reduced LipSDP-Neuron matrix size for the barrier method
CONIC_MAX_DIM = 400      # ... for cvxpy (slopes the barrier's ECLipsE-Fast start refuses)
QUICK_SDP_DIM = 200      # barrier only, in the default set
QUICK_CONV_WORK = 1e9    # sdp-conv in the default set: frequencies x block size^3 of one
                         # evaluation at most (the first-row CNN 2e8; ResNet-18 @224's
                         # residual blocks 3e9-2e10: each would take the whole budget)
# larger LipSDP-Neuron matrices (barrier slopes): first-order descent on the multipliers
# (sdp_schur), a count of steps; the float64 check limits the size
DESCENT_MAX_DIM, QUICK_DESCENT_DIM = 4000, 2000
DESCENT_STEPS, QUICK_DESCENT_STEPS = 300, 60
QUICK_EXACT_MAX_N = 32   # seqlip-exact in the default set: pairs of at most this many units
QUICK_NODES = 150        # ... and at most this many branch-and-bound boxes a pair
ECLIPSE_MAX_WIDTH = 4096
ECLIPSE_SDP_MAX_WIDTH = 200  # per-layer SDPs of ECLipsE (not Fast)
DEFAULT_RANK = 200

ChainMethod = Callable[[Chain, Settings, float], ChainBound | None]


def _weights(chain: Chain) -> list[np.ndarray]:
    return [p.matrix() for p in chain.parts]


def _pair_sizes(chain: Chain) -> list[int]:
    return [min(a.shape[0], b.shape[1]) for a, b in pairwise(chain.parts)]


def _seqlip_exact(quick: bool) -> ChainMethod:
    def run(chain: Chain, settings: Settings, deadline: float) -> ChainBound | None:
        if not chain.dense(settings) or (quick and max(_pair_sizes(chain)) > QUICK_EXACT_MAX_N):
            return None
        if (late := too_slow(chain, "seqlip-exact", deadline)) is not None:
            return late
        nodes = QUICK_NODES if quick else int(settings.extra.get("seqlip_nodes", MAX_NODES))
        result = exact_chain(chain, settings, deadline, nodes)
        if chain.autolip_certified and chain.autolip_product < result.value:
            result.value = chain.autolip_product
            result.detail += " (AutoLip product smaller)"
        return result
    return run


def _seqlip_greedy(chain: Chain, settings: Settings, deadline: float) -> ChainBound | None:
    if not chain.dense(settings):
        return None
    if (late := too_slow(chain, "seqlip-greedy", deadline)) is not None:
        return late
    return greedy_chain([dense_factor(p) for p in chain.parts], chain.slopes, deadline)


def _seqlip_lowrank(chain: Chain, settings: Settings, deadline: float) -> ChainBound | None:
    rank = int(settings.extra.get("seqlip_rank", DEFAULT_RANK))
    result = greedy_chain(lowrank_factors(chain, settings, rank), chain.slopes, deadline)
    result.detail = (f"top-{rank} singular triplets per part (truncation not bounded); "
                     + result.detail)
    return result


def _from_sdp(result, chain: Chain) -> ChainBound:
    """A verified SDP value, or the chain's AutoLip product when it did not verify; the
    smaller of two certified bounds is certified."""
    if not result.certified:
        return ChainBound(chain.autolip_product, chain.autolip_certified, False,
                          f"{result.detail}: AutoLip product kept", result.seconds,
                          result.cut_by_budget)
    value = min(result.value, chain.autolip_product) if chain.autolip_certified else result.value
    return ChainBound(value, True, True, result.detail, result.seconds, result.cut_by_budget)


def _sdp(quick: bool) -> ChainMethod:
    def run(chain: Chain, settings: Settings, deadline: float) -> ChainBound | None:
        dims = [p.shape for p in chain.parts]
        size = min(dims[0]) + sum(d[0] for d in dims[:-1])
        barrier = all(a * b >= 0 and a + b != 0 for a, b in chain.slopes)
        if quick:
            limit = QUICK_SDP_DIM if barrier else 0
        else:
            limit = SDP_MAX_DIM if barrier else CONIC_MAX_DIM
        descent = barrier and limit < size <= (QUICK_DESCENT_DIM if quick else DESCENT_MAX_DIM)
        if quick and _convolutional(chain):   # the default set leaves conv chains to sdp-conv
            descent = False
        if not chain.dense(settings) or (size > limit and not descent):
            return None
        if (late := too_slow(chain, "sdp", deadline)) is not None:
            return late
        if descent:
            steps = QUICK_DESCENT_STEPS if quick else DESCENT_STEPS
            return _from_sdp(lipsdp_descent(_weights(chain), chain.slopes, steps,
                                            deadline - time.monotonic()), chain)
        return _from_sdp(lipsdp_neuron(_weights(chain), chain.slopes,
                                       seconds=deadline - time.monotonic()), chain)
    return run


def _convolutional(chain: Chain) -> bool:
    return any(n.op in (OpKind.CONV, OpKind.CONV_TRANSPOSE) for p in chain.parts for n in p.nodes)


def _eclipse(fast: bool) -> ChainMethod:
    def run(chain: Chain, settings: Settings, deadline: float) -> ChainBound | None:
        width = max(p.shape[0] for p in chain.parts[:-1])
        max_width = ECLIPSE_MAX_WIDTH if fast else ECLIPSE_SDP_MAX_WIDTH
        if not chain.dense(settings) or width > max_width:
            return None
        if (late := too_slow(chain, "eclipse-fast" if fast else "eclipse", deadline)) is not None:
            return late
        seconds = deadline - time.monotonic()
        return _from_sdp(eclipse(_weights(chain), chain.slopes, fast, seconds), chain)
    return run


def _sdp_conv(quick: bool) -> ChainMethod:
    def run(chain: Chain, settings: Settings, deadline: float) -> ChainBound | None:
        if quick:   # a count-based size gate (settings.extra may set its own)
            settings = replace(settings, extra={"sdp_conv_max_work": QUICK_CONV_WORK,
                                                **settings.extra})
        return sdp_conv_pooled(chain, settings, deadline)
    return run


CHAIN_METHODS: dict[str, ChainMethod] = {
    "seqlip-exact": _seqlip_exact(False), "seqlip-exact" + QUICK: _seqlip_exact(True),
    "seqlip-greedy": _seqlip_greedy, "seqlip-lowrank": _seqlip_lowrank,
    "sdp": _sdp(False), "sdp" + QUICK: _sdp(True),
    "eclipse-fast": _eclipse(True), "eclipse": _eclipse(False),
    # sdp_conv, and chains through MaxPools (conv_pool)
    "sdp-conv": _sdp_conv(False), "sdp-conv" + QUICK: _sdp_conv(True),
}


def _compose(graph: Graph, node_bounds: dict[str, NodeBound], chains: list[Chain],
             results: list[ChainBound | None], method: str) -> tuple[float, bool]:
    bounds = dict(node_bounds)
    certified = True
    for chain, result in zip(chains, results, strict=True):  # one result per chain
        if result is None:
            continue
        certified &= result.certified
        bounds[chain.nodes[0].name] = NodeBound(result.value, method, result.certified)
        for node in chain.nodes[1:]:
            bounds[node.name] = NodeBound(1.0, "in-chain", True)
    segments = [r.segment for r in results if r is not None and r.segment is not None]
    total = autolip(graph, bounds, segments)
    return total.value, certified and total.certified


def _chain_record(chain: Chain, result: ChainBound | None) -> dict:
    if result is None:
        return {"chain": chain.name, "value": chain.autolip_product,
                "certified": chain.autolip_certified,
                "detail": "method not applicable: AutoLip product kept"}
    record = {"chain": chain.name, "value": result.value, "certified": result.certified,
              "complete": result.complete, "detail": result.detail,
              "autolip": chain.autolip_product, "cut_by_budget": result.cut_by_budget}
    if result.segment is not None:  # a bound of the whole block, from its input to its Add
        seg = result.segment
        record["segment"] = {"from": seg.input, "to": seg.end, "value": seg.value,
                             "certified": seg.certified, "nodes": sorted(seg.nodes),
                             "detail": seg.detail}
    return record


def _run_method(name: str, graph: Graph, node_bounds: dict[str, NodeBound], chains: list[Chain],
                settings: Settings, deadline: float) -> GlobalBound | None:
    start = time.monotonic()
    try:
        results = [CHAIN_METHODS[name](c, settings, _share(name, deadline, len(chains) - i))
                   if _well_scaled(c, node_bounds) else None for i, c in enumerate(chains)]
    except UserError as exc:  # missing optional solver
        return GlobalBound(name, math.inf, False, kind="estimate", detail=str(exc))
    if all(r is None for r in results):
        return None
    base = name.removesuffix(QUICK)
    value, certified = _compose(graph, node_bounds, chains, results, base)
    records = [_chain_record(c, r) for c, r in zip(chains, results, strict=True)]
    detail = "; ".join(f"{r['chain']}: {r['detail']}" for r in records)
    cut = any(r is not None and r.cut_by_budget for r in results)
    extra: dict = {"chains": records, "cut_by_budget": cut}
    if name.endswith(QUICK):
        extra["mode"] = "quick"
        detail = "quick limits of --method auto; " + detail
    if extra["cut_by_budget"]:
        detail = "cut short by the time budget (value not reproducible); " + detail
    return GlobalBound(base, value, certified, kind="upper" if certified else "estimate",
                       seconds=time.monotonic() - start, detail=detail, extra=extra)


def _share(name: str, deadline: float, left: int) -> float:
    """sdp-conv's deadline for the next of `left` chains: an equal share of the time left
    (what a chain does not use goes to the later ones); other methods: the whole."""
    if name.removesuffix(QUICK) != "sdp-conv" or left <= 1:
        return deadline
    now = time.monotonic()
    return now + max(deadline - now, 0.0) / left


def _well_scaled(chain: Chain, node_bounds: dict[str, NodeBound]) -> bool:
    """Layer norms and their product in a range where the methods' float64 algebra is safe."""
    norms = [node_bounds[n.name].value for n in chain.nodes if n.name in node_bounds]
    return well_scaled(norms + [chain.autolip_product])


def expand_methods(methods: list[str] | tuple[str, ...]) -> list[str]:
    """Method names to run, in order: `all` is every method, `eclipse` both ECLipsE
    variants, and a quick variant is dropped when the full method is asked for too."""
    if "all" in methods:
        methods = METHODS
    known = set(METHODS) | set(CHAIN_METHODS) | {WHOLE_NET + QUICK}
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise UserError(f"unknown method {unknown[0]!r}: choose from {', '.join(METHODS)}, all")
    names: list[str] = []
    for m in methods:
        names += ["eclipse-fast", "eclipse"] if m == "eclipse" else [m]
    names = list(dict.fromkeys(names))
    return [n for n in names if not (n.endswith(QUICK) and n.removesuffix(QUICK) in names)]


SOLVER_METHODS = ("sdp", "eclipse")   # cvxpy's layer or whole-chain SDPs


def prepare(methods: list[str] | tuple[str, ...]) -> None:
    """The one-time imports of the methods' libraries (cvxpy: about a second; torch's
    optimiser stack for sdp-conv), made before global_bounds starts its clock: a time
    budget caps the methods' work, not a process's first import (api records this step
    as its own timing)."""
    names = expand_methods(methods)
    if any(n in SOLVER_METHODS for n in names):
        try:
            require_cvxpy()
        except UserError:
            pass    # the method itself reports the missing extra
    if any(n.removesuffix(QUICK) == "sdp-conv" for n in names):
        warm_optimiser()


def global_bounds(graph: Graph, node_bounds: dict[str, NodeBound],
                  methods: list[str] | tuple[str, ...], settings: Settings) -> list[GlobalBound]:
    """Every requested whole-network bound computed within settings.time_budget, sorted
    by value. Methods that apply to no chain of the graph are left out."""
    start = time.monotonic()
    names = expand_methods(methods)
    out: list[GlobalBound] = []
    if "autolip" in names:
        base = autolip(graph, node_bounds)
        kind = "upper" if base.certified else "estimate"
        out.append(GlobalBound("autolip", base.value, base.certified, kind=kind,
                               seconds=base.seconds))
    chain_names = [n for n in names if n != "autolip"]
    chains = find_chains(graph, node_bounds, settings) if chain_names else []
    for i, name in enumerate(chain_names):
        remaining = settings.time_budget - (time.monotonic() - start)
        if remaining <= 0:
            out.append(GlobalBound(name.removesuffix(QUICK), math.inf, False, kind="estimate",
                                   detail="not run: the time budget was spent",
                                   extra={"cut_by_budget": True}))
            continue
        deadline = time.monotonic() + remaining / (len(chain_names) - i)
        if name.removesuffix(QUICK) == WHOLE_NET:
            bound = sdp_net(graph, deadline, name.endswith(QUICK),
                            settings.time_budget / len(chain_names))
            out += [bound] if bound is not None else []
            continue
        own = (find_pooled(graph, node_bounds, settings, chains)
               if name.removesuffix(QUICK) == "sdp-conv" else chains)
        bound = _run_method(name, graph, node_bounds, own, settings, deadline)
        if bound is not None:
            out.append(bound)
    return sorted(out, key=lambda b: b.value)


