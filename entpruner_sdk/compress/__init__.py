"""compress(model, data, budget): the top-level pruning verb and its parts."""

from entpruner_sdk.compress.budget import Budget, BudgetError, resolve_depth
from entpruner_sdk.compress.config import CompressConfig, recovery_lr
from entpruner_sdk.compress.distill import DistillConfig
from entpruner_sdk.compress.runner import CompressResult, compress
from entpruner_sdk.compress.teacher import as_compressed
from entpruner_sdk.models.transformer import resize_classes

__all__ = ["Budget", "BudgetError", "CompressConfig", "CompressResult", "DistillConfig",
           "as_compressed", "compress", "recovery_lr", "resize_classes", "resolve_depth"]
