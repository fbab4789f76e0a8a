"""entpruner: entropy-guided depth pruning for DiT / SiT, and the tools to ship the result.

The verbs at the top: ``load`` / ``save`` models, ``train`` a teacher, ``sample`` from it,
``plan`` which blocks a compression would remove, ``compress`` it to a budget on your data,
and ``evaluate`` the result.
"""

from entpruner_sdk.compress import (
    Budget,
    BudgetError,
    CompressConfig,
    CompressPlan,
    CompressResult,
    compress,
    plan,
)
from entpruner_sdk.data import (
    DataError,
    ImageDataset,
    ImageFolder,
    ImageTable,
    load_data,
    open_data,
)
from entpruner_sdk.data.latents import LatentSpace
from entpruner_sdk.evaluation.evaluate import evaluate
from entpruner_sdk.evaluation.report import EvaluationReport
from entpruner_sdk.models import (
    DiffusionTransformer,
    TransformerConfig,
    config_from_name,
    count_parameters,
    forward_flops,
)
from entpruner_sdk.models.io import CheckpointError, save
from entpruner_sdk.sampling import sample
from entpruner_sdk.teachers import load_teacher
from entpruner_sdk.teachers import resolve_model as load  # a teacher's name or any model path
from entpruner_sdk.training import TrainConfig, train

__version__ = "0.1.0"

__all__ = [
    "Budget",
    "BudgetError",
    "CheckpointError",
    "CompressConfig",
    "CompressPlan",
    "CompressResult",
    "DataError",
    "DiffusionTransformer",
    "EvaluationReport",
    "ImageDataset",
    "ImageFolder",
    "ImageTable",
    "LatentSpace",
    "TrainConfig",
    "TransformerConfig",
    "compress",
    "config_from_name",
    "count_parameters",
    "evaluate",
    "forward_flops",
    "load",
    "load_data",
    "load_teacher",
    "open_data",
    "plan",
    "sample",
    "save",
    "train",
]
