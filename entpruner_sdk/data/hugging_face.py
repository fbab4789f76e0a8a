"""Hugging Face ``datasets``: a dataset of images and class labels, opened as
``HuggingFaceImages`` (read one row per item, as a class folder is) or read whole as an
``ImageDataset``.

A dataset in memory (``load_dataset(...)``, ``Dataset.from_dict``), streamed or not, one
saved with ``save_to_disk`` (a folder), or one ``load_dataset`` finds by name (``hf:NAME``, or
``hf:NAME:CONFIG``: a dataset on the Hub, or a folder of its data files); the command line's
``--data`` takes the last two, which are memory-mapped: ``encode`` streams them and
``evaluate`` reads only its reference rows, so they need not fit in memory. The images come
from its ``Image`` column, decoded by PIL and held as 8-bit pixels, and the labels from its
``ClassLabel`` column, whose names become the class names. Needs the ``hf`` extra.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from entpruner_sdk.data.classes import default_names, ids_of_names
from entpruner_sdk.data.datasets import DataError, ImageDataset, pil_pixels, stack_pixels
from entpruner_sdk.data.streamed import StreamedImages, UnreadableImage, hashed_keys
from entpruner_sdk.utils.progress import progress_bar, quiet

IMAGE_COLUMNS = ("image", "img", "picture")  # by name, where no column has the Image type
LABEL_COLUMNS = ("label", "labels", "fine_label", "class", "cls")  # cls: WebDataset shards
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


def open_saved(path: str | os.PathLike, *, split: str = "train", num_classes: int | None = None,
               image_size: int | None = None) -> HuggingFaceImages:
    """A folder ``save_to_disk`` wrote, opened (``split`` picks one of a dict's)."""
    load_from_disk = _datasets(f"{path}, a Hugging Face dataset saved with save_to_disk,"
                               ).load_from_disk
    source = str(Path(path).resolve())
    return HuggingFaceImages(load_from_disk(source), split=split, num_classes=num_classes,
                             image_size=image_size, name=Path(path).name, source=source)


def open_hub(spec: str, *, split: str = "train", num_classes: int | None = None,
             image_size: int | None = None) -> HuggingFaceImages:
    """``hf:NAME[:CONFIG]`` through ``load_dataset``, opened: downloaded from the Hub once,
    then read from its cache (``HF_HUB_OFFLINE=1`` reads the cache without asking the Hub);
    NAME may also be a local folder of the dataset's data files (Parquet, CSV + images, ...)."""
    name, _, config = spec[len(HUB_PREFIX):].partition(":")
    load_dataset = _datasets(spec).load_dataset
    table, refused = None, None
    for spelling in split_spellings(split):  # val, when the dataset says validation
        try:
            table = load_dataset(name, config or None, split=spelling)
            break
        except ValueError as error:  # an unknown split or config, in datasets' words
            refused = refused or error  # the words for the split asked
            if "split" not in str(error).lower():
                break  # a config: no other spelling helps
        except (ConnectionError, FileNotFoundError) as error:
            raise DataError(f"cannot load the Hugging Face dataset {name!r}: {error}. Check "
                            "the name. Without the Hub, one downloaded before is read from the "
                            "cache with HF_HUB_OFFLINE=1 set (which also spares the tries to "
                            "reach the Hub); else load it once where the Hub is reachable, "
                            "save it with save_to_disk and pass that folder") from None
    if table is None:
        raise DataError(f"{spec}: {refused}") from None
    return HuggingFaceImages(table, split=split, num_classes=num_classes, image_size=image_size,
                             name=name.rstrip("/").rsplit("/", 1)[-1], source=spec)


def from_hugging_face(data: Any, *, split: str = "train", num_classes: int | None = None,
                      image_size: int | None = None, name: str | None = None) -> ImageDataset:
    """Materialise a Hugging Face dataset of images and class labels (``HuggingFaceImages``
    takes the same keywords); a streamed one (``IterableDataset``) is read row by row."""
    data = _split(data, split)
    if not _streamed(data):
        return HuggingFaceImages(data, split=split, num_classes=num_classes,
                                 image_size=image_size, name=name).load()
    name = _name(data, name, split)
    image_column = _column(data, "Image", IMAGE_COLUMNS, "images")
    label_column = _column(data, "ClassLabel", LABEL_COLUMNS, "class labels")
    rows = _decoded(data.select_columns([image_column, label_column]), image_column)
    images, labels = [], []
    for index, row in enumerate(progress_bar(_python_rows(rows), desc=f"reading {name}",
                                             unit="image", leave=False)):
        pixels = row_pixels(row[image_column], f"row {index}'s {image_column!r}", image_size)
        images.append(torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None])
        labels.append(row[label_column])
    if not images:
        raise DataError(f"the Hugging Face dataset {name} is empty")
    ids, names = _class_ids(labels, _class_names(data, label_column))
    if num_classes is None:
        num_classes = len(names) if names else int(ids.max()) + 1
    return ImageDataset(stack_pixels(images, f"the Hugging Face dataset {name}"),
                        ids, num_classes, class_names=names or None, name=name)


class HuggingFaceImages(StreamedImages):
    """A Hugging Face dataset of images and class labels, read one row per item (a map-style
    ``Dataset``: in memory, or memory-mapped from the Arrow files ``load_dataset`` and
    ``save_to_disk`` write, so one larger than memory streams as a class folder does).

    ``split``: the one taken from a ``DatasetDict`` (and named beside ``name``, when not
    ``train``); ``image_size``: each image scaled on its short side and centre-cropped to
    that size, as a class folder's are (needed when sizes differ); ``num_classes``: the
    model's, when it has more classes than the dataset's labels; ``name``: what reports call
    it (default: the dataset's own name); ``source``: how to open it again (a saved folder, or
    ``hf:NAME``), which ``origin`` records. The labels and the ``ClassLabel``'s names are read
    at once, the images only when used.
    """

    unreadable_fix = "drop those rows (dataset.filter) or replace their images"

    def __init__(self, data: Any, *, split: str = "train", num_classes: int | None = None,
                 image_size: int | None = None, name: str | None = None,
                 source: str | None = None) -> None:
        data = _split(data, split)
        if _streamed(data):
            raise DataError("a streamed Hugging Face dataset has no random access; read it "
                            "whole with load_data, or pass the Dataset itself")
        self.split, self.source, self.crop_size = split, source, image_size
        self._given_classes = num_classes
        self.name = _name(data, name, split)
        self.where = f"the Hugging Face dataset {self.name}"
        self.image_column = _column(data, "Image", IMAGE_COLUMNS, "images")
        label_column = _column(data, "ClassLabel", LABEL_COLUMNS, "class labels")
        if len(data) == 0:
            raise DataError(f"{self.where} is empty")
        column = data.select_columns([label_column]).with_format(None)[label_column]
        self.labels, names = _class_ids(list(column), _class_names(data, label_column))
        self.num_classes = num_classes if num_classes is not None else (
            len(names) if names else int(self.labels.max()) + 1)
        self.class_names = names or default_names(self.num_classes)
        self._images = _python_rows(_decoded(data.select_columns([self.image_column]),
                                             self.image_column))
        self._stored = data.select_columns([self.image_column]).with_format("arrow")
        self._links_files = _links_files(self._stored, self.image_column)
        # what ``datasets`` keys its own caches by (the content and every transform), and
        # the Arrow files behind it (as a folder's file stats: rewritten files show)
        self._content = (data._fingerprint, [file["filename"] for file in data.cache_files])
        self._first_size = None
        if image_size is None:
            width, height = self._image(0).size
            if height != width:
                raise DataError(f"{self.where}: row 0 is {width}x{height}; DiT and SiT take "
                                "square images: pass image_size= (--image-size N) to scale "
                                "and centre-crop them all to N x N")
            self._first_size = (width, height)

    def describe(self, index: int) -> str:
        """Row ``index``."""
        return f"row {index}"

    @property
    def origin(self) -> dict[str, Any] | None:
        """How to open the same rows again (``load_data`` keywords): the saved folder or
        ``hf:NAME``, the split, class count and crop size; None for a dataset made in memory."""
        if self.source is None:
            return None
        options = {"split": None if self.split == "train" else self.split,
                   "num_classes": self._given_classes,
                   "image_size": self.crop_size}
        return {"data": self.source,
                **{key: value for key, value in options.items() if value is not None}}

    def read(self, index: int) -> np.ndarray:
        """Row ``index``'s image as uint8 RGB [H, W, 3], cropped when ``image_size`` was
        given; one ``datasets`` cannot decode is an ``UnreadableImage``."""
        pixels = row_pixels(self._image(index), f"row {index}'s {self.image_column!r}",
                            self.crop_size)
        if self._first_size is not None:
            self.check_size(index, (pixels.shape[1], pixels.shape[0]))
        return np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels

    def _image(self, index: int) -> Any:
        """Row ``index``'s image as ``datasets`` decodes it (a PIL image)."""
        try:
            image = self._images[index][self.image_column]
        except OSError as error:  # PIL's, for bytes that are no image
            raise UnreadableImage(f"row {index} of {self.name}", str(error),
                                  "drop the row (dataset.filter) or replace its image") from error
        if image is None:
            raise UnreadableImage(f"row {index} of {self.name}", "it has no image",
                                  "drop the row (dataset.filter) or give it one")
        return image

    def fingerprint(self) -> str:
        """A hash of the dataset's own fingerprint, its Arrow files' sizes and modification
        times, the labels and the crop size: keys caches without reading an image."""
        fingerprint, files = self._content
        digest = hashlib.sha256(f"{self.crop_size}|{self.image_column}|{fingerprint}".encode())
        for file in files:
            stat = os.stat(file)
            digest.update(f"|{file}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        digest.update(self.labels.numpy().tobytes())
        if self._links_files:  # image files it names, as a folder's: rewritten ones show
            for linked in _stored_images(self._stored, self.image_column, digest_bytes=False):
                digest.update(f"|{linked}".encode() if linked else b"|")
        return digest.hexdigest()[:16]

    def item_keys(self) -> torch.Tensor:
        """One int64 per row, a hash of its image as stored (the encoded file's bytes, or the
        file it names and that file's stats) and the crop size, read without decoding an
        image: an interrupted encode of the same dataset reuses the latents it made, and one
        of an edited dataset (rows added, removed, reordered or mended) those of every image
        it still holds. A column that stores no image files is keyed by row instead."""
        if not _is_image(self._stored, self.image_column):  # found by name: by position
            fingerprint = self.fingerprint()
            return hashed_keys(f"{fingerprint}|{index}" for index in range(len(self)))
        return hashed_keys(f"{self.crop_size}|{digest}" for digest in progress_bar(
            _stored_images(self._stored, self.image_column), total=len(self),
            desc=f"keying {self.name}", unit="image", leave=False))


def row_pixels(image: Any, source: str, image_size: int | None) -> np.ndarray:
    """A row's decoded image (PIL) as 8-bit pixels [H, W, C] (``pil_pixels``: grey stays one
    channel), scaled and centre-cropped to ``image_size`` as a folder's images are."""
    from PIL import Image

    from entpruner_sdk.data.folder import center_crop

    if not isinstance(image, Image.Image):
        raise DataError(f"{source} is a {type(image).__name__}, not an image: cast the column "
                        "to datasets.Image()")
    pixels = pil_pixels(image, source)  # 8-bit first: a 16-bit grey scan is scaled, not clipped
    if image_size is None:
        return pixels
    cropped = center_crop(Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels),
                          image_size)
    return np.asarray(cropped).reshape(image_size, image_size, -1)


def _stored_images(stored: Any, column: str, *, digest_bytes: bool = True,
                   rows_at_once: int = 1024) -> Iterable[str | None]:
    """Each row's image as ``datasets`` stores it (Arrow ``{bytes, path}``), in a string that
    changes with it: the SHA-256 of its bytes (None unless ``digest_bytes``), or, where it
    keeps only a path, the path and that file's size and modification time (as a class
    folder's files are keyed)."""
    for start in range(0, len(stored), rows_at_once):
        images = stored[start:start + rows_at_once].column(column).combine_chunks()
        stored_bytes = images.field("bytes")
        for index, (image, has_bytes, path) in enumerate(zip(
                images.is_valid().to_pylist(), stored_bytes.is_valid().to_pylist(),
                images.field("path").to_pylist())):
            if not image:  # a row of None: unreadable, named when read
                yield "none"
            elif has_bytes:
                yield (hashlib.sha256(stored_bytes[index].as_buffer()).hexdigest()
                       if digest_bytes else None)
            elif path is not None and os.path.exists(path):
                stat = os.stat(path)
                yield f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
            else:
                yield f"{path}|missing"


def _is_image(data: Any, column: str) -> bool:
    """Whether ``column`` is an ``Image`` feature (stored as ``{bytes, path}``)."""
    return type((data.features or {}).get(column)).__name__ == "Image"


def _links_files(stored: Any, column: str) -> bool:
    """Whether some row keeps only the path of its image file (``imagefolder``, or a
    ``Dataset`` made from paths), not the file's bytes."""
    if not _is_image(stored, column):
        return False
    import pyarrow.compute as pc

    images = stored.data.column(column)  # every row stored, also any a selection hides
    return bool(pc.any(pc.and_(images.is_valid(),
                               pc.is_null(pc.struct_field(images, "bytes")))).as_py())


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


def _split(data: Any, split: str) -> Any:
    """``split`` of a ``DatasetDict``; a single dataset as it is."""
    if hasattr(data, "keys") and not hasattr(data, "features"):  # a DatasetDict
        found = next((name for name in split_spellings(split) if name in data), None)
        if found is None:
            raise DataError(f"this Hugging Face dataset holds the splits {', '.join(data)}, "
                            f"not {split!r}: pick one (split=, --split)")
        return data[found]
    return data


def split_spellings(split: str) -> tuple[str, ...]:
    """``split`` as given, then its other usual spellings (``val``: ``validation``, ...)."""
    from entpruner_sdk.data.folder import SPLITS

    others = next((names for names in SPLITS.values() if split.casefold() in names), ())
    return (split, *(name for name in others if name != split))


def is_streamed(data: Any, split: str = "train") -> bool:
    """Whether ``data`` (``split`` of it, for a ``DatasetDict``) is an ``IterableDataset``,
    read in order only; a missing split is left for ``_split`` to name."""
    if hasattr(data, "keys") and not hasattr(data, "features"):
        data = data.get(split, data)
    return _streamed(data)


def _streamed(data: Any) -> bool:
    return not hasattr(data, "cache_files")


def _name(data: Any, name: str | None, split: str) -> str:
    """What reports call the dataset: ``name`` or its own, with the split when not train."""
    name = name or getattr(data.info, "dataset_name", None) or "hugging-face"
    return name if split == "train" else f"{name}-{split}"


def _class_ids(labels: list[Any], names: list[str]) -> tuple[torch.Tensor, list[str]]:
    """The label column's values as class ids, with the class names: the ``ClassLabel``'s
    (``names``), or, for a column of names (strings, as a CSV of labels gives them), the
    names it holds in sorted order, numbered so, as ``Dataset.class_encode_column`` numbers
    them (a model that names its classes then matches them by name)."""
    named = None if names else ids_of_names(labels, source="the label column (row by row)")
    if named is not None:
        return torch.tensor(named[0]), named[1]
    return torch.tensor([_label(label, index) for index, label in enumerate(labels)]), names


def _label(label: Any, index: int) -> int:
    """Row ``index``'s label as a class id: refused, with the fix, when it has none (``None``,
    ``ClassLabel``'s -1) or is no whole number (a list of labels, a score)."""
    if label is None or (isinstance(label, (int, float)) and label < 0):
        raise DataError(f"row {index} has no class label ({label!r}); drop the unlabelled "
                        "rows (dataset.filter) first")
    if isinstance(label, bool) or not isinstance(label, (int, float)) or label != int(label):
        raise DataError(f"row {index}'s class label {label!r} is neither a class id nor a "
                        "class name: give each row one class, as a ClassLabel (dataset."
                        "cast_column) or its name")
    return int(label)


def _decoded(data: Any, image_column: str) -> Any:
    """``data`` with its ``Image`` column decoded to PIL images where it was cast with
    ``decode=False`` (bytes and paths): the features change, no row is rewritten."""
    feature = (data.features or {}).get(image_column)
    if getattr(feature, "decode", True):
        return data
    return data.cast_column(image_column, type(feature)(decode=True))


def _python_rows(data: Any) -> Iterable[dict]:
    """The rows as Python objects (PIL images, ints), whatever format was set on them."""
    return data.with_format(None) if hasattr(data, "with_format") else data


def _class_names(data: Any, label_column: str) -> list[str]:
    """The ``ClassLabel``'s names, when the label column has them."""
    feature = (data.features or {}).get(label_column)
    return list(getattr(feature, "names", None) or [])
