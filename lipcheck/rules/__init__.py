"""Per-op Lipschitz rules. Importing this package registers every rule."""
from lipcheck.rules import (  # noqa: F401  (each module registers its rules on import)
    activations,
    arithmetic,
    conv,
    linear,
    lrn,
    normalization,
    pooling,
    structural,
)
from lipcheck.rules.registry import (
    RULES,
    BoundContext,
    Merge,
    Method,
    NodeBound,
    Rule,
    get_rule,
    register,
)

__all__ = ["RULES", "BoundContext", "Merge", "Method", "NodeBound", "Rule", "get_rule", "register"]
