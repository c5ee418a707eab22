"""The complete ATen converter table: importing the op files registers their converters
in `aten_registry.TABLE` (the only module that imports them all)."""
from lipcheck.loaders import (  # noqa: F401  (each module registers its converters)
    aten_attention_ops,
    aten_norm_ops,
    aten_ops,
    aten_pool_ops,
    aten_shape_ops,
)
from lipcheck.loaders.aten_registry import TABLE

__all__ = ["TABLE"]
