"""Data: bundled datasets, user data loaders with validation, and an optional latent space."""

from entpruner_sdk.data.bundled import BUNDLED, load_bundled
from entpruner_sdk.data.classes import describe_classes, resolve_labels
from entpruner_sdk.data.datasets import (
    DataError,
    ImageDataset,
    eight_bit,
    from_arrays,
    load_data,
    open_data,
    save_npz,
    unit_range,
)
from entpruner_sdk.data.folder import ImageFolder
from entpruner_sdk.data.streamed import StreamedImages
from entpruner_sdk.data.table import ImageTable

__all__ = ["BUNDLED", "DataError", "ImageDataset", "ImageFolder", "ImageTable", "StreamedImages",
           "describe_classes", "eight_bit", "from_arrays", "load_bundled", "load_data",
           "open_data", "resolve_labels", "save_npz", "unit_range"]
