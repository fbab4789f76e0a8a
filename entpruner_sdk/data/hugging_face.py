"""Hugging Face ``datasets``: a dataset of images and class labels read as an ``ImageDataset``.

A dataset in memory (``load_dataset(...)``, ``Dataset.from_dict``), streamed or not, one
saved with ``save_to_disk`` (a folder), or one ``load_dataset`` finds by name (``hf:NAME``, or
``hf:NAME:CONFIG``: a dataset on the Hub, or a folder of its data files); the command line's
``--data`` takes the last two. The images come from its ``Image`` column, decoded by PIL and
held as 8-bit pixels, and the labels from its ``ClassLabel`` column, whose names become the
class names. Needs the ``hf`` extra.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from entpruner_sdk.data.datasets import DataError, ImageDataset, pil_pixels, stack_pixels
from entpruner_sdk.utils.progress import progress_bar, quiet

IMAGE_COLUMNS = ("image", "img", "picture")  # by name, where no column has the Image type
LABEL_COLUMNS = ("label", "labels", "fine_label", "class")
SAVED_MARKERS = ("dataset_dict.json", "state.json")  # what save_to_disk writes
HUB_PREFIX = "hf:"  # --data hf:uoft-cs/cifar10


def is_hub_name(data: Any) -> bool:
    """Whether ``data`` names a dataset for ``load_dataset``: ``hf:NAME[:CONFIG]``."""
    return isinstance(data, str) and data.startswith(HUB_PREFIX)


def is_hugging_face(data: Any) -> bool:
    """Whether ``data`` is a ``datasets`` object: a ``Dataset``, an ``IterableDataset`` or a
    dict of them by split (without importing ``datasets``)."""
    return type(data).__module__.split(".")[0] == "datasets"


def is_saved(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder ``save_to_disk`` wrote (one dataset, or one per split)."""
    return Path(path).is_dir() and any((Path(path) / marker).is_file()
                                       for marker in SAVED_MARKERS)


def load_saved(path: str | os.PathLike, *, split: str = "train", num_classes: int | None = None,
               image_size: int | None = None) -> ImageDataset:
    """A folder ``save_to_disk`` wrote, read whole (``split`` picks one of a dict's)."""
    load_from_disk = _datasets(f"{path}, a Hugging Face dataset saved with save_to_disk,"
                               ).load_from_disk
    return from_hugging_face(load_from_disk(str(path)), split=split, num_classes=num_classes,
                             image_size=image_size, name=Path(path).name)


def load_hub(spec: str, *, split: str = "train", num_classes: int | None = None,
             image_size: int | None = None) -> ImageDataset:
    """``hf:NAME[:CONFIG]`` through ``load_dataset``: downloaded from the Hub once, then read
    from its cache (``HF_HUB_OFFLINE=1`` reads the cache without asking the Hub); NAME may
    also be a local folder of the dataset's data files (Parquet, CSV + images, ...)."""
    name, _, config = spec[len(HUB_PREFIX):].partition(":")
    load_dataset = _datasets(spec).load_dataset
    try:
        table = load_dataset(name, config or None, split=split)
    except ValueError as error:  # an unknown split or config, in datasets' words
        raise DataError(f"{spec}: {error}") from None
    except (ConnectionError, FileNotFoundError) as error:
        raise DataError(f"cannot load the Hugging Face dataset {name!r}: {error}. Check the "
                        "name; without the Hub, load it once where it is reachable and save "
                        "it with save_to_disk, then pass that folder") from None
    return from_hugging_face(table, split=split, num_classes=num_classes, image_size=image_size,
                             name=name.rstrip("/").rsplit("/", 1)[-1])


def from_hugging_face(data: Any, *, split: str = "train", num_classes: int | None = None,
                      image_size: int | None = None, name: str | None = None) -> ImageDataset:
    """Materialise a Hugging Face dataset of images and class labels. ``split``: the one
    taken from a ``DatasetDict`` (and named beside ``name``, when not ``train``);
    ``image_size``: each image scaled on its short side and centre-cropped to that size, as a
    class folder's are (needed when sizes differ). ``name``: what reports call it (default:
    the dataset's own name)."""
    if hasattr(data, "keys") and not hasattr(data, "features"):  # a DatasetDict
        if split not in data:
            raise DataError(f"this Hugging Face dataset holds the splits {', '.join(data)}, "
                            f"not {split!r}: pick one (split=, --split)")
        data = data[split]
    name = (name or getattr(data.info, "dataset_name", None) or "hugging-face") + (
        "" if split == "train" else f"-{split}")
    image_column = _column(data, "Image", IMAGE_COLUMNS, "images")
    label_column = _column(data, "ClassLabel", LABEL_COLUMNS, "class labels")
    rows = data.select_columns([image_column, label_column])  # no other column is decoded
    images, labels = _read(_python_rows(rows), image_column, label_column, image_size, name)
    names = _class_names(data, label_column)
    if num_classes is None:
        num_classes = len(names) if names else int(labels.max()) + 1
    return ImageDataset(stack_pixels(images, f"the Hugging Face dataset {name}"), labels,
                        num_classes, class_names=names or None, name=name)


def _datasets(what: str) -> Any:
    """The ``datasets`` package, or a ``DataError`` that names the extra to install. Its own
    bars (downloads, "Generating train split") follow ``--quiet`` as ours do."""
    try:
        import datasets
    except ImportError as error:
        raise DataError(f"reading {what} needs the hf extra: pip install "
                        "'entpruner-sdk[hf]'") from error
    if quiet():
        datasets.disable_progress_bars()
    return datasets


def _column(data: Any, kind: str, names: Sequence[str], what: str) -> str:
    """The column of this feature type (``Image``, ``ClassLabel``), else the first of
    ``names`` the dataset has; refused, listing the columns, when there is neither."""
    features = data.features or {}
    typed = [column for column, feature in features.items() if type(feature).__name__ == kind]
    if len(typed) == 1:
        return typed[0]
    named = [column for column in names if column in features]
    if named:
        return named[0]
    raise DataError(f"cannot tell which column of this Hugging Face dataset holds the {what}: "
                    f"its columns are {', '.join(features) or 'unknown'}; rename it to "
                    f"{names[0]!r} (dataset.rename_column) or cast it to {kind}")


def _python_rows(data: Any) -> Iterable[dict]:
    """The rows as Python objects (PIL images, ints), whatever format was set on them."""
    return data.with_format(None) if hasattr(data, "with_format") else data


def _read(rows: Iterable[dict], image_column: str, label_column: str,
          image_size: int | None, name: str) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each row's image as 8-bit pixels [1, C, H, W], and the labels; a bar while a large
    dataset decodes (silenced by ``--quiet``)."""
    from PIL import Image

    from entpruner_sdk.data.folder import center_crop

    images, labels = [], []
    # tqdm takes the total from len(), which a streamed dataset lacks
    for index, row in enumerate(progress_bar(rows, desc=f"reading {name}", leave=False)):
        image, label = row[image_column], row[label_column]
        if not isinstance(image, Image.Image):
            raise DataError(f"row {index}'s {image_column!r} is a {type(image).__name__}, not "
                            "an image: cast the column to datasets.Image()")
        if label is None or int(label) < 0:  # ClassLabel's -1: no label
            raise DataError(f"row {index} has no class label ({label!r}); drop the unlabelled "
                            "rows (dataset.filter) first")
        # 8-bit first: a 16-bit grey scan is scaled, not clipped
        pixels = pil_pixels(image, f"row {index}'s {image_column!r}")
        if image_size is not None:
            cropped = center_crop(Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1
                                                  else pixels), image_size)
            pixels = np.asarray(cropped).reshape(image_size, image_size, -1)
        images.append(torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None])
        labels.append(int(label))
    if not images:
        raise DataError("the Hugging Face dataset is empty")
    return images, torch.tensor(labels)


def _class_names(data: Any, label_column: str) -> list[str]:
    """The ``ClassLabel``'s names, when the label column has them."""
    feature = (data.features or {}).get(label_column)
    return list(getattr(feature, "names", None) or [])
