"""Images read when they are used, one per item: what a class folder (``ImageFolder``) and a
Hugging Face dataset on disk (``HuggingFaceImages``) share.

``StreamedImages`` holds the labels and classes and reads pixels only when asked, so a source
larger than memory streams through a ``DataLoader``: ``LatentSpace.encode_dataset`` encodes it
batch by batch in the memory of one batch, and ``evaluate`` reads only its reference images
(``StreamedSubset``). ``load`` (what ``load_data`` does) reads it whole into an
``ImageDataset``. A subclass says how one image is read (``read``), how its content is keyed
without reading pixels (``fingerprint``, ``item_keys``), and how to open it again
(``origin``).
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from entpruner_sdk.data.classes import default_names
from entpruner_sdk.data.datasets import DataError, ImageDataset, unit_range
from entpruner_sdk.utils.progress import progress_bar

# a whole read lists at most this many unreadable images in its error (all are counted)
LISTED_UNREADABLE = 20
# whole reads of at least this many images use reader processes by default: below it, starting
# them costs more than they save
PARALLEL_FROM = 256


class UnreadableImage(DataError):
    """An image that cannot be decoded (an empty, truncated or foreign file; a corrupt row)."""

    def __init__(self, file: Any, reason: str, fix: str = "delete or replace it") -> None:
        super().__init__(f"cannot read image {file}: {reason}; {fix}")
        self.file, self.reason, self.fix = file, reason, fix

    def __reduce__(self) -> tuple:  # it crosses from a reader process to the caller
        return type(self), (self.file, self.reason, self.fix)


class StreamedImages(Dataset):
    """Labelled images read one per item as RGB in [-1, 1] (``read`` gives the 8-bit pixels).

    A subclass sets ``labels``, ``num_classes``, ``class_names``, ``name``, ``where`` (how
    messages name it), ``crop_size`` (the ``image_size`` it scales and centre-crops to, or
    None) and ``_first_size``, and defines ``read``, ``describe``, ``origin``,
    ``fingerprint`` and ``item_keys``.
    """

    pixels = True
    unreadable_fix = "delete or replace them"  # what ends an error naming unreadable images
    labels: torch.Tensor
    num_classes: int
    class_names: list[str]
    name: str
    where: str
    crop_size: int | None
    _first_size: tuple[int, int] | None  # (width, height) every image has, when not cropped

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = torch.from_numpy(self.read(index).transpose(2, 0, 1).copy())
        return unit_range(pixels), self.labels[index]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.where!r}: {len(self)} images of "
                f"{self.image_size}x{self.image_size}, {self.num_classes} classes)")

    @property
    def channels(self) -> int:
        """Always 3: every image is read as RGB."""
        return 3

    @property
    def image_size(self) -> int:
        """The crop size, or the first image's side when the images are not cropped."""
        return self.crop_size or self._first_size[0]

    def read(self, index: int) -> np.ndarray:
        """Image ``index`` as uint8 RGB [H, W, 3], cropped when ``image_size`` was given."""
        raise NotImplementedError

    @property
    def origin(self) -> dict[str, Any] | None:
        """How to open the same images again: ``load_data`` keywords, ``data`` an absolute path
        or a name; None when they are held only in this process."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A hash that changes when the images or how they are read change, worked out without
        reading pixels: keys the caches of encoded latents and reference statistics."""
        raise NotImplementedError

    def item_keys(self) -> torch.Tensor:
        """One int64 per image (never 0), what an encode keeps its latent under: the latents
        of an interrupted or earlier encode are reused for the images whose key is the same."""
        raise NotImplementedError

    @property
    def classes_present(self) -> list[int]:
        """The class ids that have at least one image, ascending."""
        return torch.unique(self.labels).tolist()

    def relabeled(self, ids: torch.Tensor, class_names: list[str]) -> StreamedImages:
        """The same images, class ``c`` as class ``ids[c]`` of ``class_names``
        (``fit_class_names``); its fingerprint, which holds the labels, changes with them."""
        relabeled = copy.copy(self)
        relabeled.labels = ids[self.labels]
        relabeled.num_classes, relabeled.class_names = len(class_names), list(class_names)
        return relabeled

    def describe(self, index: int) -> str:
        """How messages name image ``index``: its file, its row."""
        raise NotImplementedError

    def check_size(self, index: int, size: tuple[int, int]) -> None:
        """Refuse image ``index`` when its (width, height) is not the first image's, with the
        fix; every size is taken when the images are cropped."""
        if self.crop_size is not None or size == self._first_size:
            return
        (w, h), (w0, h0) = size, self._first_size
        raise DataError(f"{self.where} mixes image sizes: {self.describe(0)} is {w0}x{h0}, "
                        f"{self.describe(index)} is {w}x{h}; pass image_size= (--image-size "
                        "N) to scale and centre-crop them all to N x N")

    def load(self, indices: Sequence[int] | None = None, workers: int | None = None
             ) -> ImageDataset:
        """The images at ``indices`` (all by default) read into an ``ImageDataset``, holding
        one copy of their 8-bit pixels; images whose three channels are all equal stay one
        grayscale channel. ``workers`` processes read them (None: up to 4 when there are
        enough images to repay starting them, ``PARALLEL_FROM``; 0: this process)."""
        indices = list(range(len(self)) if indices is None else indices)
        images = torch.from_numpy(self.read_pixels(indices, workers))
        return ImageDataset(images, self.labels[indices], self.num_classes,
                            name=self.name, class_names=list(self.class_names))

    def read_pixels(self, indices: Sequence[int], workers: int | None = None) -> np.ndarray:
        """The 8-bit pixels of the images at ``indices``, uint8 [N, C, H, W], C = 1 when every
        image is gray; read as ``load`` reads them, with a bar (``ENTPRUNER_QUIET``)."""
        indices = list(indices)
        if workers is None:
            workers = min(4, os.cpu_count() or 1) if len(indices) >= PARALLEL_FROM else 0
        pixels, row, unreadable = None, 0, []
        bar = progress_bar(total=len(indices), desc=f"reading {self.name}", unit="image",
                           leave=False)
        # small batches: a reader process takes whole batches, so this shares out few images
        for batch in _read_batches(_Pixels(self, indices), 8, workers, np.stack,
                                   every_unreadable=True):
            if isinstance(batch, Unreadable):
                unreadable += batch.errors
            elif not unreadable:  # after the first bad image the rest are only checked
                if pixels is None:  # filled in place, channels first: the one copy held
                    pixels = np.empty((len(indices), 3, *batch.shape[1:3]), dtype=np.uint8)
                pixels[row:row + len(batch)] = batch.transpose(0, 3, 1, 2)
            row += len(batch)
            bar.update(len(batch))
        bar.close()
        if unreadable:
            raise all_unreadable(unreadable, len(indices), self)
        if (pixels[:, 0] == pixels[:, 1]).all() and (pixels[:, 0] == pixels[:, 2]).all():
            pixels = np.ascontiguousarray(pixels[:, :1])  # a third of the copy
        return pixels

    def batches(self, batch_size: int, workers: int = 0, start: int = 0,
                indices: Sequence[int] | None = None) -> Iterator[torch.Tensor | Unreadable]:
        """The images from ``start`` on (or at ``indices``) as 8-bit pixels (uint8
        [B, 3, H, W]; ``unit_range`` gives [-1, 1]), ``batch_size`` at a time, read by
        ``workers`` processes (``_read_batches``): a quarter of the bytes of floats to pass on
        and to copy to a device. A batch with unreadable images comes back as ``Unreadable``
        (``readable`` sorts it out) and the reading goes on, so one pass finds them all."""
        items = _Pixels(self, range(start, len(self)) if indices is None else indices)
        return _read_batches(items, batch_size, workers, _stack_channels_first,
                             every_unreadable=True)

    def readable(self, indices: Sequence[int]
                 ) -> tuple[torch.Tensor | None, list[int], list[UnreadableImage]]:
        """The images at ``indices`` that can be read, as ``batches`` gives them, with their
        indices, and the errors of the others: a batch that came back ``Unreadable``, read
        again image by image in this process (rare: only batches with a bad image)."""
        images, kept, errors = [], [], []
        for index in indices:
            try:
                images.append(self.read(index))
                kept.append(index)
            except UnreadableImage as error:
                errors.append(error)
        return (_stack_channels_first(images) if images else None), kept, errors


class StreamedSubset:
    """Some images of a ``StreamedImages`` (all by default) that are read only when ``images``
    is first used, as ``channels`` channels (gray shown as RGB, as ``fit_channels`` does).

    It answers what an ``ImageDataset`` does without reading a pixel: the labels, classes,
    size and a ``fingerprint`` of the source. ``evaluate`` takes a folder's or a Hugging Face
    dataset's reference so: its domain classifier and reference statistics are cached by that
    fingerprint, so a repeated evaluation against the same data reads no image and holds
    none. Once read, ``images`` holds the 8-bit pixels (uint8, a quarter of the memory of
    floats: 1.9 GB for 10,000 images at 256 x 256); ``unit_range`` turns a batch into
    [-1, 1], as the classifier and the feature networks do.
    """

    pixels = True
    is_eight_bit = True  # image files and rows: what is read is held as uint8

    def __init__(self, source: StreamedImages, indices: Sequence[int] | None = None,
                 channels: int = 3) -> None:
        self.source, self.channels = source, channels
        self.indices = list(range(len(source)) if indices is None else indices)
        self.labels = source.labels[self.indices]
        self.num_classes, self.class_names = source.num_classes, list(source.class_names)
        self.name, self.image_size, self.origin = source.name, source.image_size, source.origin
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return (f"StreamedSubset({self.source.where!r}: {len(self)} images of "
                f"{self.channels}x{self.image_size}x{self.image_size}, {self.num_classes} "
                f"classes{', read' if 'images' in self.__dict__ else ''})")

    @property
    def named(self) -> bool:
        """Whether the classes have names of their own, as ``ImageDataset.named``."""
        return self.class_names != default_names(self.num_classes)

    @property
    def classes_present(self) -> list[int]:
        """The class ids that have at least one image, ascending."""
        return torch.unique(self.labels).tolist()

    def relabeled(self, ids: torch.Tensor, class_names: list[str]) -> StreamedSubset:
        """The same images, class ``c`` as class ``ids[c]`` of ``class_names``, still unread."""
        return StreamedSubset(self.source.relabeled(ids, class_names), self.indices,
                              self.channels)

    def subset(self, indices: Sequence[int]) -> StreamedSubset:
        """The images at these positions of this subset, still unread."""
        return StreamedSubset(self.source, [self.indices[i] for i in indices], self.channels)

    def with_channels(self, channels: int) -> StreamedSubset:
        """The same images as ``channels`` channels: 3 shows gray ones as RGB; 1 takes gray
        ones as they are, and reads them at once, so that colour ones fail here, before any
        sampling, rather than when they are first used."""
        if channels == self.channels or channels not in (1, 3):
            return self
        subset = StreamedSubset(self.source, self.indices, channels)
        if channels == 1:
            subset.images  # noqa: B018 (read now: only gray images can be one channel)
        return subset

    def fingerprint(self) -> str:
        """Keys caches by the source's fingerprint, the images chosen and the channels,
        without reading any pixels; worked out once (a folder's stats every file)."""
        if self._fingerprint is None:
            digest = hashlib.sha256(f"{self.source.fingerprint()}|{self.channels}|".encode())
            digest.update(np.asarray(self.indices, dtype=np.int64).tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    @cached_property
    def images(self) -> torch.Tensor:
        """The pixels, uint8 [N, channels, H, W] (gray shown as RGB is a view)."""
        pixels = torch.from_numpy(self.source.read_pixels(self.indices))
        if pixels.shape[1] == self.channels:
            return pixels
        if self.channels == 3:
            return pixels.expand(-1, 3, -1, -1)
        raise DataError(f"{self.source.where} holds colour images but {self.channels}-channel "
                        "ones are needed; compare a gray model with gray images")


def hashed_keys(entries: Iterator[str]) -> torch.Tensor:
    """One int64 per entry (never 0), the first 8 bytes of its SHA-256: ``item_keys``."""
    keys = [int.from_bytes(hashlib.sha256(entry.encode()).digest()[:8], "little", signed=True)
            or 1 for entry in entries]
    return torch.tensor(keys, dtype=torch.int64)


class _Pixels(Dataset):
    """The uint8 pixels of some images of a source, one per item (see ``load``)."""

    def __init__(self, source: StreamedImages, indices: Sequence[int]) -> None:
        self.source, self.indices = source, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> np.ndarray:
        return self.source.read(self.indices[item])


def all_unreadable(errors: list[UnreadableImage], count: int, source: StreamedImages
                   ) -> DataError:
    """One error for every unreadable image a whole read of ``source`` met: a folder of
    thousands of downloaded images is mended in one go, not one failed run per bad file."""
    if len(errors) == 1:
        return errors[0]
    listed = [f"  {error.file}: {error.reason}" for error in errors[:LISTED_UNREADABLE]]
    if len(errors) > LISTED_UNREADABLE:
        listed.append(f"  ... and {len(errors) - LISTED_UNREADABLE} more")
    return DataError(f"{len(errors)} of the {count} images read from {source.where} cannot be "
                     "read:\n" + "\n".join(listed) + f"\n{source.unreadable_fix}")


class _ErrorsAsItems(Dataset):
    """A dataset whose unreadable items come back as their ``DataError`` (see ``_collate``)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            return self.dataset[index]
        except DataError as error:
            return error


def _stack_channels_first(items: list) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.stack(items).transpose(0, 3, 1, 2)))


@dataclass
class Unreadable:
    """A batch whose items include images that cannot be used: their errors, in order."""

    errors: list[DataError]
    size: int  # the batch's items, readable or not

    def __len__(self) -> int:
        return self.size


def _collate(stack: Callable[[list], Any], items: list) -> Any:
    """A batch of items made by ``stack``, or its errors, which reach the caller intact."""
    errors = [item for item in items if isinstance(item, DataError)]
    return Unreadable(errors, len(items)) if errors else stack(items)


def _read_batches(items: Dataset, batch_size: int, workers: int,
                  stack: Callable[[list], Any], every_unreadable: bool = False
                  ) -> Iterator[Any]:
    """``items`` in order, ``batch_size`` at a time, read by ``workers`` processes. An
    unusable image raises its ``DataError`` here, in the caller's process, rather than as a
    reader process's traceback; with ``every_unreadable``, a batch with unreadable images
    (``UnreadableImage``) comes back as ``Unreadable`` and the reading goes on, so the caller
    can name them all."""
    loader = DataLoader(_ErrorsAsItems(items), batch_size, num_workers=workers,
                        collate_fn=partial(_collate, stack))
    for batch in loader:
        if isinstance(batch, Unreadable):
            other = [e for e in batch.errors if not isinstance(e, UnreadableImage)]
            if other or not every_unreadable:
                raise (other or batch.errors)[0]
        yield batch
