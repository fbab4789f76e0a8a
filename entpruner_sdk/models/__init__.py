"""DiT / SiT models: configs, the transformer, and checkpoint I/O."""

from entpruner_sdk.models.config import (
    TransformerConfig,
    config_from_name,
    registry_names,
)
from entpruner_sdk.models.transformer import (
    DiffusionTransformer,
    count_parameters,
    forward_flops,
    resize_classes,
)

__all__ = [
    "DiffusionTransformer",
    "TransformerConfig",
    "config_from_name",
    "count_parameters",
    "forward_flops",
    "registry_names",
    "resize_classes",
]
