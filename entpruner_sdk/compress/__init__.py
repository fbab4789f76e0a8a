"""compress(model, data, budget): the top-level pruning verb and its parts."""

from entpruner_sdk.compress.budget import Budget, BudgetError, resolve_depth
from entpruner_sdk.compress.distill import DistillConfig
from entpruner_sdk.compress.runner import (
    CompressConfig,
    CompressResult,
    as_compressed,
    compress,
    resize_classes,
)

__all__ = ["Budget", "BudgetError", "CompressConfig", "CompressResult", "DistillConfig",
           "as_compressed", "compress", "resize_classes", "resolve_depth"]
