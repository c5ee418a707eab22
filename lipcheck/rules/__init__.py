"""Per-op Lipschitz rules. Importing this package registers every rule."""
from lipcheck.rules.registry import (RULES, BoundContext, Merge, Method, NodeBound, Rule,
                                     get_rule, register)
from lipcheck.rules import (activations, arithmetic, conv, linear, lrn, normalization,  # noqa: F401
                            pooling, structural)

__all__ = ["RULES", "BoundContext", "Merge", "Method", "NodeBound", "Rule", "get_rule", "register"]
