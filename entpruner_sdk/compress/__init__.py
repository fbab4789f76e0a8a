"""compress(model, data, budget): the top-level pruning verb and its parts; ``plan`` says
which blocks it would remove, without fine-tuning."""

from entpruner_sdk.compress.budget import Budget, BudgetError, resolve_depth
from entpruner_sdk.compress.config import CompressConfig, recovery_lr
from entpruner_sdk.compress.distill import DistillConfig
from entpruner_sdk.compress.plan import CompressPlan, plan
from entpruner_sdk.compress.runner import CompressResult, compress
from entpruner_sdk.compress.teacher import as_compressed
from entpruner_sdk.models.transformer import resize_classes

__all__ = ["Budget", "BudgetError", "CompressConfig", "CompressPlan", "CompressResult",
           "DistillConfig", "as_compressed", "compress", "plan", "recovery_lr", "resize_classes",
           "resolve_depth"]
