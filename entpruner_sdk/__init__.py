"""entpruner: entropy-guided depth pruning for DiT / SiT, and the tools to ship the result.

The verbs at the top: ``load`` / ``save`` models, ``train`` a teacher, ``sample`` from it.
"""

from entpruner_sdk.models import (
    DiffusionTransformer,
    TransformerConfig,
    config_from_name,
    count_parameters,
    forward_flops,
)
from entpruner_sdk.models.io import CheckpointError, load, save

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "DiffusionTransformer",
    "TransformerConfig",
    "config_from_name",
    "count_parameters",
    "forward_flops",
    "load",
    "save",
]
