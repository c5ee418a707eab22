"""The complete ATen converter table: importing the op files registers their converters
in `aten_registry.TABLE` (the only module that imports them all)."""
from lipcheck.loaders import (aten_attention_ops, aten_norm_ops, aten_ops,  # noqa: F401
                              aten_pool_ops, aten_shape_ops)
from lipcheck.loaders.aten_registry import TABLE

__all__ = ["TABLE"]
