"""A folder with one subfolder of images per class, read lazily or all at once.

``ImageFolder`` lists the files and reads one image per item, so a large folder streams
through a ``DataLoader`` (``LatentSpace.encode_dataset`` encodes it batch by batch in the
memory of one batch); ``ImageFolder.load`` (``load_data`` of a folder) reads it whole into an
``ImageDataset``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from entpruner_sdk.data.classes import default_names
from entpruner_sdk.data.datasets import DataError, ImageDataset, pil_pixels, unit_range

if TYPE_CHECKING:  # Pillow is imported where images are read
    import PIL.Image


class UnreadableImage(DataError):
    """An image file that cannot be decoded (empty, truncated, not an image at all)."""

    def __init__(self, file: Path, reason: str) -> None:
        super().__init__(f"cannot read image {file}: {reason}; delete or replace it")
        self.file, self.reason = file, reason

    def __reduce__(self) -> tuple:  # it crosses from a reader process to the caller
        return type(self), (self.file, self.reason)


# a whole read lists at most this many unreadable files in its error (all are counted)
LISTED_UNREADABLE = 20

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
# whole reads of at least this many images use reader processes by default: below it, starting
# them costs more than they save
PARALLEL_FROM = 256


def center_crop(image: PIL.Image.Image, size: int) -> PIL.Image.Image:
    """``image`` (PIL) scaled so its short side is ``size``, then the centred square cut out:
    the preprocessing of the DiT and ADM reference training code, so fine-tuning data looks
    like what the released models saw (halve with a box filter while the short side is at
    least twice ``size``, which avoids aliasing, then bicubic to the exact size)."""
    from PIL import Image

    while min(image.size) >= 2 * size:
        image = image.resize(tuple(side // 2 for side in image.size), Image.Resampling.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(side * scale) for side in image.size),
                         Image.Resampling.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return image.crop((left, top, left + size, top + size))


def _visible(path: Path) -> bool:
    """Not a hidden entry nor the resource forks an archive made on a Mac carries (``.x``,
    ``._x.jpg``, ``.ipynb_checkpoints``, ``__MACOSX``), which are neither classes nor images."""
    return not path.name.startswith(".") and path.name != "__MACOSX"


def class_images(folder: Path) -> list[Path]:
    """The images anywhere under one class folder, its subfolders included, as torchvision's
    ``ImageFolder`` (which DiT's and SiT's training code reads data with) finds them: sorted
    by path, symbolic links followed, hidden entries skipped; except that a link back to a
    folder it is inside is not followed (torchvision follows it until the system's limit of
    40 links, reading each image again at every turn, and two such links never finish)."""
    files = []
    above = {os.fspath(folder): {_identity(folder)}}  # each folder's own and its parents'
    for parent, subfolders, names in os.walk(folder, followlinks=True):
        chain = above.pop(parent)
        kept = []
        for name in filter(lambda name: _visible(Path(name)), subfolders):
            path = os.path.join(parent, name)
            try:
                identity = _identity(path)
            except OSError:  # gone since it was listed: as os.walk skips what it cannot read
                continue
            if identity not in chain:  # a folder it is inside: a loop
                above[path] = chain | {identity}
                kept.append(name)
        subfolders[:] = kept
        files += [Path(parent) / name for name in names
                  if Path(name).suffix.lower() in IMAGE_SUFFIXES and _visible(Path(name))]
    return sorted(files)


def _identity(path: str | os.PathLike) -> tuple[int, int]:
    """The folder a path leads to, links followed: (device, inode)."""
    status = os.stat(path)
    return status.st_dev, status.st_ino


def to_rgb(image: PIL.Image.Image, file: Path) -> PIL.Image.Image:
    """``image`` (PIL) as 8-bit RGB. 16-bit grayscale (PNG, TIFF) is scaled to 8 bits: PIL's
    own conversion clips it at 255, which would turn most of the picture white."""
    from PIL import Image

    if image.mode.startswith("I;16") or image.mode in ("I", "F"):  # scaled, or refused
        image = Image.fromarray(pil_pixels(image, str(file))[..., 0])
    return image.convert("RGB")


def read_class_index(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """The classes of a model, in its order, as (folder names, class names).

    A text file has one class per line: the folder name, then optionally the class name up to
    the first comma (ImageNet's ``LOC_synset_mapping.txt``: ``n01440764 tench, Tinca tinca``
    is class 0, ``tench``). A ``.json`` maps each index to ``[folder, name]``
    (``imagenet_class_index.json``: ``{"0": ["n01440764", "tench"], ...}``) or to a folder
    name, or lists them in order.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a Windows editor's byte-order mark
        if path.suffix == ".json":
            table = json.loads(text)
            rows = table if isinstance(table, list) else [table[str(i)] for i in range(len(table))]
            rows = [row if isinstance(row, list) else [row] for row in rows]  # a bare folder name
        else:
            rows = [line.split(maxsplit=1) for line in text.splitlines() if line.strip()]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"cannot read the class index {path}: {error!r}; give a text file of "
                        "one 'folder [name]' per line, or a JSON {\"0\": [folder, name], ...}"
                        ) from error
    keys = [str(row[0]) for row in rows]
    names = [str(row[1]).split(",")[0].strip() if len(row) > 1 else str(row[0]) for row in rows]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if not keys or repeated:
        raise DataError(f"the class index {path} " + (f"lists {repeated[:3]} more than once"
                        if repeated else "lists no classes") + "; give each class once")
    return keys, names


class ImageFolder(Dataset):
    """The images of a class folder (``root/<class name>/*.png``), read one per item as RGB
    in [-1, 1] with its label; subfolder names, sorted, are the class names.

    ``image_size``: scale and centre-crop every image to that square size (``center_crop``);
    without it every image must have the size of the first, and the first that does not
    stops the read with the fix.

    ``class_index``: the model's classes in order (``read_class_index``), when the folders are
    some of its classes (ImageNet's ``n02099601`` folders for DiT-XL/2): a folder's label is
    its line in the index, and the data has the index's class count and names.
    """

    def __init__(self, path: str | os.PathLike, image_size: int | None = None,
                 class_index: str | os.PathLike | None = None) -> None:
        self.root = Path(path)
        folders = sorted(p for p in self.root.iterdir() if p.is_dir() and _visible(p))
        if not folders:
            loose = sum(p.suffix.lower() in IMAGE_SUFFIXES and _visible(p)
                        for p in self.root.iterdir())
            # images without classes (faces, say) are one class: a subfolder of their own
            unlabelled = (f"; it holds {loose} images directly: images without classes go "
                          "in one subfolder (e.g. data/all/*.png), which makes one class "
                          "(--num-classes 1 fits a class-conditional model to it)"
                          if loose else "")
            raise DataError(f"{self.root} has no class subfolders; put the images of each "
                            "class in its own subfolder (e.g. data/cat/*.png, data/dog/*.png)"
                            + unlabelled)
        if class_index is None:
            keys = self.class_names = [folder.name for folder in folders]
        else:
            keys, self.class_names = read_class_index(class_index)
        position = {key: label for label, key in enumerate(keys)}
        unknown = [folder.name for folder in folders if folder.name not in position]
        if unknown:
            raise DataError(f"{self.root}: the folders {', '.join(unknown[:4])} are not classes "
                            f"of the index {class_index} ({len(keys)} classes, from {keys[0]}); "
                            "name the folders as the index does, or use the model's index")
        self.files: list[Path] = []
        labels: list[int] = []
        empty = []
        for folder in folders:
            files = class_images(folder)
            self.files += files
            labels += [position[folder.name]] * len(files)
            empty += [] if files else [folder.name]
        if not self.files:
            raise DataError(f"{self.root} contains no images "
                            f"({', '.join(sorted(IMAGE_SUFFIXES))})")
        if empty:  # a class with no images would be trained and sampled as noise
            raise DataError(f"{self.root}: the class folders {', '.join(empty[:8])} hold no "
                            f"images ({', '.join(sorted(IMAGE_SUFFIXES))}); add their images, "
                            "or move the empty folders out of it")
        self.labels = torch.tensor(labels)
        self.num_classes = len(keys)
        self.class_index = class_index
        self.name = self.root.name
        self.pixels = True
        self.crop_size = image_size
        self._first_size = None if image_size else self._shown_size(self.files[0])
        if self._first_size and self._first_size[0] != self._first_size[1]:
            raise DataError(f"{self.files[0]} is {self._first_size[0]}x{self._first_size[1]}; "
                            "DiT and SiT take square images: pass image_size= (--image-size "
                            "N) to scale and centre-crop them all to N x N")

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return (f"ImageFolder({str(self.root)!r}: {len(self)} images of {self.image_size}x"
                f"{self.image_size}, {self.num_classes} classes)")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = torch.from_numpy(self.read(index).transpose(2, 0, 1).copy())
        return unit_range(pixels), self.labels[index]

    @property
    def channels(self) -> int:
        """Always 3: every image is read as RGB."""
        return 3

    @property
    def origin(self) -> dict:
        """How to load the same images again (``load_data`` keywords, as an ``ImageDataset``
        remembers them): the absolute folder, the crop size and the class index."""
        options = {"image_size": self.crop_size,
                   "class_index": self.class_index and str(Path(self.class_index).resolve())}
        return {"data": str(self.root.resolve()),
                **{key: value for key, value in options.items() if value is not None}}

    @property
    def image_size(self) -> int:
        """The crop size, or the first image's side when the folder is not cropped."""
        return self.crop_size or self._first_size[0]

    def read(self, index: int) -> np.ndarray:
        """Image ``index`` as uint8 RGB [H, W, 3], cropped when ``image_size`` was given."""
        from PIL import ImageOps

        file = self.files[index]
        with self._open(file) as image:
            if self.crop_size is not None:
                _draft(image, 2 * self.crop_size)
            try:
                # upright as a viewer shows it: cameras store the rotation in EXIF
                image = to_rgb(ImageOps.exif_transpose(image), file)
            except OSError as error:  # truncated files fail only when the pixels are read
                raise UnreadableImage(file, str(error)) from error
            if self.crop_size is not None:
                image = center_crop(image, self.crop_size)
            elif image.size != self._first_size:
                (w, h), (w0, h0) = image.size, self._first_size
                raise DataError(f"{self.root} mixes image sizes: {self.files[0]} is {w0}x{h0}, "
                                f"{file} is {w}x{h}; pass image_size= (--image-size N) to "
                                "scale and centre-crop them all to N x N")
            return np.asarray(image)

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
        image is gray; read as ``load`` reads them."""
        indices = list(indices)
        if workers is None:
            workers = min(4, os.cpu_count() or 1) if len(indices) >= PARALLEL_FROM else 0
        pixels, row, unreadable = None, 0, []
        # small batches: a reader process takes whole batches, so this shares out few images
        for batch in _read_batches(_Pixels(self, indices), 8, workers, np.stack,
                                   every_unreadable=True):
            if isinstance(batch, Unreadable):
                unreadable += batch.errors
            elif not unreadable:  # after the first bad file the rest are only checked
                if pixels is None:  # filled in place, channels first: the one copy held
                    pixels = np.empty((len(indices), 3, *batch.shape[1:3]), dtype=np.uint8)
                pixels[row:row + len(batch)] = batch.transpose(0, 3, 1, 2)
            row += len(batch)
        if unreadable:
            raise all_unreadable(unreadable, len(indices), self.root)
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
        again image by image in this process (rare: only batches with a bad file)."""
        images, kept, errors = [], [], []
        for index in indices:
            try:
                images.append(self.read(index))
                kept.append(index)
            except UnreadableImage as error:
                errors.append(error)
        return (_stack_channels_first(images) if images else None), kept, errors

    def fingerprint(self) -> str:
        """A hash of the file list, sizes and modification times and the crop size: keys the
        caches of encoded latents without reading any pixels."""
        digest = hashlib.sha256(f"{self.crop_size}".encode())
        for entry in self._entries():
            digest.update(f"{entry}\n".encode())
        return digest.hexdigest()[:16]

    def file_keys(self) -> torch.Tensor:
        """One int64 per image, a hash of its path, label, size, modification time and the
        crop size (never 0): what an encode's latents are kept under, file by file, so a
        changed folder reuses those of the files it still holds unchanged."""
        keys = [int.from_bytes(hashlib.sha256(f"{self.crop_size}|{entry}".encode()).digest()[:8],
                               "little", signed=True) or 1 for entry in self._entries()]
        return torch.tensor(keys, dtype=torch.int64)

    def _entries(self) -> Iterator[str]:
        for file, label in zip(self.files, self.labels.tolist()):
            stat = file.stat()
            yield f"{file.relative_to(self.root)}|{label}|{stat.st_size}|{stat.st_mtime_ns}"

    @classmethod
    def _shown_size(cls, file: Path) -> tuple[int, int]:
        """(width, height) as a viewer shows the image, read from its header alone: the size
        every image must have without ``image_size``."""
        with cls._open(file) as image:
            width, height = image.size
            turned = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # EXIF: a quarter turn
        return (height, width) if turned else (width, height)

    @staticmethod
    def _open(file: Path):
        from PIL import Image, UnidentifiedImageError

        try:
            return Image.open(file)
        except (UnidentifiedImageError, OSError) as error:
            raise UnreadableImage(file, str(error)) from error
        except Image.DecompressionBombError as error:  # Pillow's guard against huge images
            raise UnreadableImage(file, f"{error} (scale it down first)") from error


class FolderSubset:
    """Some images of an ``ImageFolder`` (all by default) that are read only when ``images``
    is first used, as ``channels`` channels (gray shown as RGB, as ``fit_channels`` does).

    It answers what an ``ImageDataset`` does without reading a pixel: the labels, classes,
    size and a ``fingerprint`` of the files' stats. ``evaluate`` takes a folder's reference
    so: its domain classifier and reference statistics are cached by that fingerprint, so a
    repeated evaluation against the same folder reads no image and holds none. Once read,
    ``images`` holds the 8-bit pixels as the files store them (uint8, a quarter of the memory
    of floats: 1.9 GB for 10,000 images at 256 x 256); ``unit_range`` turns a batch into
    [-1, 1], as the classifier and the feature networks do.
    """

    pixels = True
    is_eight_bit = True  # image files: what is read is held as uint8

    def __init__(self, folder: ImageFolder, indices: Sequence[int] | None = None,
                 channels: int = 3) -> None:
        self.folder, self.channels = folder, channels
        self.indices = list(range(len(folder)) if indices is None else indices)
        self.labels = folder.labels[self.indices]
        self.num_classes, self.class_names = folder.num_classes, list(folder.class_names)
        self.name, self.image_size, self.origin = folder.name, folder.image_size, folder.origin
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return (f"FolderSubset({str(self.folder.root)!r}: {len(self)} images of "
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

    def subset(self, indices: Sequence[int]) -> FolderSubset:
        """The images at these positions of this subset, still unread."""
        return FolderSubset(self.folder, [self.indices[i] for i in indices], self.channels)

    def with_channels(self, channels: int) -> FolderSubset:
        """The same images as ``channels`` channels: 3 shows gray ones as RGB; 1 takes gray
        ones as they are, and reads them at once, so that colour ones fail here, before any
        sampling, rather than when they are first used."""
        if channels == self.channels or channels not in (1, 3):
            return self
        subset = FolderSubset(self.folder, self.indices, channels)
        if channels == 1:
            subset.images  # noqa: B018 (read now: only gray images can be one channel)
        return subset

    def fingerprint(self) -> str:
        """Keys caches by the folder's files (``ImageFolder.fingerprint``), the images chosen
        and the channels, without reading any pixels; worked out once (it stats every file)."""
        if self._fingerprint is None:
            digest = hashlib.sha256(f"{self.folder.fingerprint()}|{self.channels}|".encode())
            digest.update(np.asarray(self.indices, dtype=np.int64).tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    @cached_property
    def images(self) -> torch.Tensor:
        """The pixels, uint8 [N, channels, H, W] (gray shown as RGB is a view)."""
        pixels = torch.from_numpy(self.folder.read_pixels(self.indices))
        if pixels.shape[1] == self.channels:
            return pixels
        if self.channels == 3:
            return pixels.expand(-1, 3, -1, -1)
        raise DataError(f"{self.folder.root} holds colour images but {self.channels}-channel "
                        "ones are needed; compare a gray model with gray images")


def _draft(image, short_side: int) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale when its short side stays at least
    ``short_side``: the decoder skips the detail ``center_crop`` would average away anyway
    (twice the crop size is kept, so its box-filter halving still runs), 3-4x faster for a
    12-megapixel photo (``benchmarks/folder_read.py``). Other formats ignore it."""
    if image.format != "JPEG":
        return
    scale = short_side / min(image.size)
    if scale < 0.5:
        image.draft(image.mode, (round(image.width * scale), round(image.height * scale)))


class _Pixels(Dataset):
    """The uint8 pixels of some images of a folder, one per item (see ``ImageFolder.load``)."""

    def __init__(self, folder: ImageFolder, indices: Sequence[int]) -> None:
        self.folder, self.indices = folder, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> np.ndarray:
        return self.folder.read(self.indices[item])


def all_unreadable(errors: list[UnreadableImage], count: int, root: Path) -> DataError:
    """One error for every unreadable image a whole read met: a folder of thousands of
    downloaded images is mended in one go, not one failed run per bad file."""
    if len(errors) == 1:
        return errors[0]
    listed = [f"  {error.file}: {error.reason}" for error in errors[:LISTED_UNREADABLE]]
    if len(errors) > LISTED_UNREADABLE:
        listed.append(f"  ... and {len(errors) - LISTED_UNREADABLE} more")
    return DataError(f"{len(errors)} of the {count} images read from {root} cannot be read:\n"
                     + "\n".join(listed) + "\ndelete or replace them")


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


def open_data(data: Any, **options: Any) -> ImageDataset | ImageFolder:
    """``data`` as ``load_data`` reads it (same keywords), except that a class folder is
    opened as an ``ImageFolder``, which reads its images when they are used: ``evaluate``
    then reads only its reference images, and ``encode`` one batch at a time."""
    from entpruner_sdk.data.datasets import load_data
    from entpruner_sdk.data.hugging_face import is_saved

    if isinstance(data, (str, os.PathLike)) and Path(data).is_dir() and not is_saved(data):
        return ImageFolder(data, options.get("image_size"), options.get("class_index"))
    return load_data(data, **options)
