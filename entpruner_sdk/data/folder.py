"""A folder with one subfolder of images per class, read lazily or all at once.

``ImageFolder`` lists the files and reads one image per item (``ImageFiles``, which a table of
files, ``table.ImageTable``, shares: a ``StreamedImages``), so a large
folder streams through a ``DataLoader`` (``LatentSpace.encode_dataset`` encodes it batch by
batch in the memory of one batch); ``ImageFolder.load`` (``load_data`` of a folder) reads it
whole into an ``ImageDataset``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from entpruner_sdk.data.datasets import DataError, pil_pixels
from entpruner_sdk.data.streamed import StreamedImages, UnreadableImage, hashed_keys

if TYPE_CHECKING:  # Pillow is imported where images are read
    import PIL.Image


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


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


# the names a folder of splits gives its splits (train/cat/*.png, val/cat/*.png), any case;
# each split's other spellings
SPLITS = {"train": ("train", "training"), "validation": ("validation", "val", "valid"),
          "test": ("test", "testing")}


def split_folder(root: Path, split: str) -> Path:
    """The folder of ``split`` when ``root`` holds splits of class folders (``train/``,
    ``val/``, ``test/``, each of class subfolders and no loose images, as Hugging Face's
    imagefolder and many archives lay them out), else ``root`` itself, whose subfolders are
    the classes (and which has no split but ``train``, the default)."""
    folders = {p.name.casefold(): p for p in root.iterdir() if p.is_dir() and _visible(p)}
    spellings = {name for names in SPLITS.values() for name in names}
    splits = bool(folders) and set(folders) <= spellings and all(
        any(q.is_dir() and _visible(q) for q in folder.iterdir())
        and not any(q.suffix.lower() in IMAGE_SUFFIXES for q in folder.iterdir())
        for folder in folders.values())
    if not splits:
        if split != "train":
            raise DataError(f"split={split!r} (--split) picks a split of a bundled or Hugging "
                            f"Face dataset or of a folder of splits, and the class folder "
                            f"{root} has none: drop it")
        return root
    wanted = next((names for names in SPLITS.values() if split.casefold() in names),
                  (split.casefold(),))
    chosen = next((folders[name] for name in wanted if name in folders), None)
    if chosen is None:
        held = ", ".join(sorted((p.name for p in folders.values()), key=str.casefold))
        raise DataError(f"{root} holds the splits {held}, not {split!r}: pick one (--split, "
                        "split=)")
    return chosen


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


class ImageFiles(StreamedImages):
    """Labelled image files, read one per item as RGB: what a class folder (``ImageFolder``)
    and a table of files (``ImageTable``) share once they have listed their files.

    A subclass lists them and calls ``_hold``; it defines ``origin``.
    """

    def _hold(self, root: Path, files: list[Path], labels: list[int], class_names: list[str],
              image_size: int | None, class_index: str | os.PathLike | None) -> None:
        """Keep the listed files, their labels and the classes; check the first image's shape
        when the images are not cropped (the rest are checked as they are read)."""
        self.root, self.files = root, files
        self.labels = torch.tensor(labels)
        self.num_classes, self.class_names = len(class_names), class_names
        self.class_index = class_index
        self.crop_size = image_size
        self._first_size = None if image_size else self._shown_size(files[0])
        if self._first_size and self._first_size[0] != self._first_size[1]:
            raise DataError(f"{files[0]} is {self._first_size[0]}x{self._first_size[1]}; "
                            "DiT and SiT take square images: pass image_size= (--image-size "
                            "N) to scale and centre-crop them all to N x N")

    def describe(self, index: int) -> str:
        """Image ``index``'s file."""
        return str(self.files[index])

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
            else:
                self.check_size(index, image.size)
            return np.asarray(image)

    def fingerprint(self) -> str:
        """A hash of the file list, labels, sizes and modification times and the crop size:
        keys the caches of encoded latents without reading any pixels."""
        digest = hashlib.sha256(f"{self.crop_size}".encode())
        for entry in self._entries():
            digest.update(f"{entry}\n".encode())
        return digest.hexdigest()[:16]

    def item_keys(self) -> torch.Tensor:
        """One int64 per image, a hash of its path, label, size, modification time and the
        crop size: what an encode's latents are kept under, file by file, so a changed folder
        reuses those of the files it still holds unchanged."""
        return hashed_keys(f"{self.crop_size}|{entry}" for entry in self._entries())

    def _entries(self) -> Iterator[str]:
        for file, label in zip(self.files, self.labels.tolist()):
            stat = file.stat()
            yield f"{os.path.relpath(file, self.root)}|{label}|{stat.st_size}|{stat.st_mtime_ns}"

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


class ImageFolder(ImageFiles):
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
        root = Path(path)
        folders = sorted(p for p in root.iterdir() if p.is_dir() and _visible(p))
        if not folders:
            loose = sum(p.suffix.lower() in IMAGE_SUFFIXES and _visible(p)
                        for p in root.iterdir())
            # images without classes (faces, say) are one class: a subfolder of their own
            unlabelled = (f"; it holds {loose} images directly: images without classes go "
                          "in one subfolder (e.g. data/all/*.png), which makes one class "
                          "(--num-classes 1 fits a class-conditional model to it)"
                          if loose else "")
            tables = sorted(p.name for p in root.iterdir()
                            if p.suffix.lower() in (".csv", ".tsv", ".jsonl"))
            if tables:  # Hugging Face's imagefolder layout: metadata.csv labels the images
                unlabelled += (f"; or, if {tables[0]} labels them, pass that table as the data "
                               f"(--data {root / tables[0]})")
            raise DataError(f"{root} has no class subfolders; put the images of each "
                            "class in its own subfolder (e.g. data/cat/*.png, data/dog/*.png)"
                            + unlabelled)
        if class_index is None:
            keys = class_names = [folder.name for folder in folders]
        else:
            keys, class_names = read_class_index(class_index)
        position = {key: label for label, key in enumerate(keys)}
        unknown = [folder.name for folder in folders if folder.name not in position]
        if unknown:
            raise DataError(f"{root}: the folders {', '.join(unknown[:4])} are not classes "
                            f"of the index {class_index} ({len(keys)} classes, from {keys[0]}); "
                            "name the folders as the index does, or use the model's index")
        files: list[Path] = []
        labels: list[int] = []
        empty = []
        for folder in folders:
            found = class_images(folder)
            files += found
            labels += [position[folder.name]] * len(found)
            empty += [] if found else [folder.name]
        if not files:
            raise DataError(f"{root} contains no images "
                            f"({', '.join(sorted(IMAGE_SUFFIXES))})")
        if empty:  # a class with no images would be trained and sampled as noise
            raise DataError(f"{root}: the class folders {', '.join(empty[:8])} hold no "
                            f"images ({', '.join(sorted(IMAGE_SUFFIXES))}); add their images, "
                            "or move the empty folders out of it")
        self.name, self.where = root.name, str(root)
        self._hold(root, files, labels, class_names, image_size, class_index)

    # (folder of splits, split) when this is one split of such a folder (``split_folder``)
    split_of: tuple[Path, str] | None = None

    @property
    def origin(self) -> dict:
        """How to load the same images again (``load_data`` keywords, as an ``ImageDataset``
        remembers them): the absolute folder (or folder of splits, and the split), the crop
        size and the class index."""
        folder, split = self.split_of or (self.root, None)
        options = {"split": split, "image_size": self.crop_size,
                   "class_index": self.class_index and str(Path(self.class_index).resolve())}
        return {"data": str(folder.resolve()),
                **{key: value for key, value in options.items() if value is not None}}


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
