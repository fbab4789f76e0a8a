"""Data: bundled datasets, user data loaders with validation, and an optional latent space."""

from entpruner_sdk.data.bundled import BUNDLED, load_bundled
from entpruner_sdk.data.datasets import DataError, ImageDataset, load_data, save_npz

__all__ = ["BUNDLED", "DataError", "ImageDataset", "load_bundled", "load_data", "save_npz"]
