"""Class-conditional image data: one in-memory dataset type and loaders for every source.

Images are [N, C, H, W] with int64 labels, held as read: 8-bit pixels (uint8, 0..255: image
files, an ``.npz`` of uint8) in a quarter of the memory of floats, other pixels as float32 in
[-1, 1], VAE latents as float32. Whatever uses them takes [-1, 1] a batch at a time
(``unit_range``; ``dataset[i]`` does it). Every loader validates what it reads and raises
``DataError`` with the problem and the fix.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from entpruner_sdk.data.classes import default_names, ids_by_name, ids_of_names
from entpruner_sdk.utils.files import atomic_writer

if TYPE_CHECKING:  # it builds on this module
    from entpruner_sdk.data.streamed import StreamedImages


class DataError(ValueError):
    """Data that cannot be used; the message names the problem and the fix."""


@dataclass
class ImageDataset(Dataset):
    """Images and their class labels, held in memory: 8-bit pixels as uint8, other pixels as
    floats in [-1, 1], latents as floats; an item is a float image in [-1, 1] (or a latent)."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    name: str = "custom"
    class_names: list[str] = field(default_factory=list)
    pixels: bool = True  # False for latents, which are not bounded to [-1, 1]
    # how to load the same data again (``load_data`` keywords, ``data`` the bundled name or an
    # absolute path), set by ``load_data``; None for data made in memory, subsets included
    origin: dict[str, Any] | None = field(default=None, compare=False)
    # the ``fingerprint`` of the class folder or Hugging Face dataset in ``origin``
    # (``StreamedImages``), taken as it was read: a later reader of it can tell whether it
    # still holds the same images, without reading them
    source_fingerprint: str | None = field(default=None, compare=False)
    # latents only: the VAE they were encoded with (``LatentSpace.encoded_with``: its folder,
    # fingerprint, scale and shift), which a model trained on them records to decode with
    encoded_with: dict[str, Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.class_names:
            self.class_names = default_names(self.num_classes)
        validate(self.images, self.labels, self.num_classes, self.name, self.pixels)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:  # the dataclass default would print every pixel
        kind = "images" if self.pixels else "latents"
        return (f"ImageDataset({self.name!r}: {len(self)} {kind} of {self.channels}x"
                f"{self.image_size}x{self.image_size}, {self.num_classes} classes)")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return unit_range(self.images[index]), self.labels[index]

    @property
    def channels(self) -> int:
        """Channels per image (3 for RGB, 4 for SD-VAE latents)."""
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        """Side of the square images, in pixels or latent cells."""
        return self.images.shape[-1]

    @property
    def is_eight_bit(self) -> bool:
        """Whether the images are held as 8-bit pixels (uint8)."""
        return self.images.dtype == torch.uint8

    @property
    def named(self) -> bool:
        """Whether the classes have names of their own (folders, ``class_names``), not ids."""
        return self.class_names != default_names(self.num_classes)

    @property
    def classes_present(self) -> list[int]:
        """The class ids that have at least one sample, ascending: all of ``0..num_classes-1``
        for most data, a few for a subset labelled with a larger model's ids (ImageNet's)."""
        return torch.unique(self.labels).tolist()

    def fingerprint(self) -> str:
        """Content hash, used to key caches (encoded latents, reference statistics)."""
        digest = hashlib.sha256()
        # the images as floats in [-1, 1], so 8-bit pixels keep the digest they had as floats
        # (and the caches made from them), a chunk at a time: never a whole copy (same digest,
        # sha256 streams), and a view (gray shown as RGB) is hashed as it reads
        for chunk in self.images.split(256):
            digest.update(unit_range(chunk).contiguous().numpy())
        digest.update(self.labels.contiguous().numpy())
        return digest.hexdigest()[:16]

    def with_channels(self, channels: int) -> ImageDataset:
        """Grayscale images (one channel: a folder of gray pictures loads so) as RGB for a
        model or VAE that takes three, each channel the gray value, as a viewer shows them;
        a view, not a copy. Anything else is returned as it is, for ``check_fits`` to judge:
        colour to gray would lose information silently."""
        if not (self.pixels and self.channels == 1 and channels == 3):
            return self
        return replace(self, images=self.images.expand(-1, 3, -1, -1))

    def relabeled(self, ids: torch.Tensor, class_names: list[str]) -> ImageDataset:
        """The same images, class ``c`` as class ``ids[c]`` of ``class_names``
        (``fit_class_names``)."""
        return replace(self, labels=ids[self.labels], num_classes=len(class_names),
                       class_names=list(class_names))

    def subset(self, indices: Iterable[int]) -> ImageDataset:
        """The images at ``indices`` (a copy), with the same classes and name."""
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return ImageDataset(self.images[index], self.labels[index], self.num_classes,
                            self.name, list(self.class_names), self.pixels)

    def per_class(self, count: int, generator: torch.Generator | None = None) -> ImageDataset:
        """Up to ``count`` samples of every class (a balanced calibration set)."""
        chosen: list[int] = []
        for c in range(self.num_classes):
            idx = torch.nonzero(self.labels == c).flatten()
            order = torch.randperm(len(idx), generator=generator)
            chosen.extend(idx[order[:count]].tolist())
        return self.subset(sorted(chosen))


def balanced_indices(labels: torch.Tensor, count: int, seed: int = 0) -> list[int]:
    """``count`` indices (all when there are fewer) spread evenly over the classes present:
    each class shuffled by ``seed``, then taken in turn, one of each class per round, so a
    class with few samples gives all it has and the rest are shared among the others."""
    generator = torch.Generator().manual_seed(seed)
    queues = [idx[torch.randperm(len(idx), generator=generator)].tolist()
              for idx in (torch.nonzero(labels == c).flatten() for c in torch.unique(labels))]
    chosen: list[int] = []
    for round_ in range(max(map(len, queues))):
        chosen += [queue[round_] for queue in queues if round_ < len(queue)]
        if len(chosen) >= count:
            break
    return sorted(chosen[:count])


def validate(images: torch.Tensor, labels: torch.Tensor, num_classes: int, source: str,
             pixels: bool = True) -> None:
    """Check shapes, finiteness, range (for float pixels) and labels; raise ``DataError``."""
    if images.dim() != 4:
        raise DataError(f"{source}: images must be [N, C, H, W], got shape {tuple(images.shape)}")
    if len(images) == 0:
        raise DataError(f"{source}: the dataset is empty; add at least one image per class")
    if labels.shape != (images.shape[0],):
        raise DataError(
            f"{source}: {images.shape[0]} images but labels of shape {tuple(labels.shape)}"
        )
    if images.shape[-1] != images.shape[-2]:
        raise DataError(
            f"{source}: images are {images.shape[-2]}x{images.shape[-1]}; DiT needs square "
            "images, crop or resize them"
        )
    if images.dtype == torch.uint8:  # 8-bit pixels: finite and in range by their type
        if not pixels:
            raise DataError(f"{source}: latents must be floats, got uint8; pass the VAE's "
                            "latents as they come, or 8-bit images as pixels")
    else:
        _check_values(images, source, pixels)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise DataError(f"{source}: labels must be integers, got {labels.dtype}")
    if (labels < 0).any():
        raise DataError(f"{source}: labels must be class indices 0, 1, 2, ..., found "
                        f"{int(labels.min())}; map the classes to 0..C-1")
    out = labels >= num_classes
    if out.any():
        raise DataError(
            f"{source}: labels must lie in 0..{num_classes - 1}, found {int(labels[out][0])}; "
            "fix the labels or pass the right num_classes"
        )


def _check_values(images: torch.Tensor, source: str, pixels: bool) -> None:
    """Float images: finite, and in [-1, 1] when they are pixels."""
    low, high = (float(value) for value in torch.aminmax(images))  # NaN if any image has one
    if not (math.isfinite(low) and math.isfinite(high)):
        # find them a chunk at a time: isfinite over everything at once costs 1.5x the images
        bad = torch.cat([~torch.isfinite(chunk).flatten(1).all(dim=1)
                         for chunk in images.split(256)])
        first = int(torch.nonzero(bad)[0])
        raise DataError(
            f"{source}: {int(bad.sum())} images contain NaN or infinite values (first: index "
            f"{first}); drop or repair them"
        )
    if pixels and (low < -1.001 or high > 1.001):
        raise DataError(
            f"{source}: pixel values span [{low:.3g}, {high:.3g}] but must lie in [-1, 1]; "
            "pass uint8 images (held as they are) or scale floats as x / 127.5 - 1"
        )


def pil_pixels(image: Any, source: str = "an image") -> np.ndarray:
    """A PIL image's 8-bit pixels [H, W, C]: grey (``1``, ``L``, ``LA``) as one channel,
    16-bit grey (PNG, TIFF) scaled to 8 bits (PIL's own conversion clips it at 255, which
    would turn most of the picture white), anything else as RGB. 32-bit float pixels, whose
    range is unknown, are refused, naming ``source``."""
    if image.mode.startswith("I;16") or image.mode == "I":
        eight_bit = np.round(np.asarray(image, dtype=np.float64) / 257.0)
        return np.clip(eight_bit, 0, 255).astype(np.uint8)[..., None]
    if image.mode == "F":
        raise DataError(f"{source} holds 32-bit float pixels, whose range is unknown; save it "
                        "as an 8- or 16-bit image, or give pixels in [-1, 1] as a tensor")
    gray = image.mode in ("1", "L", "LA")
    pixels = np.asarray(image.convert("L" if gray else "RGB"))
    return pixels[..., None] if gray else pixels


def stack_pixels(images: list[torch.Tensor], source: str) -> torch.Tensor:
    """Batches of images [B, C, H, W] as one: uint8 kept, anything else float32; where grey
    and colour images mix, the grey ones as RGB. Images of several sizes are refused."""
    if {image.shape[-3] for image in images if image.dim() >= 3} == {1, 3}:
        images = [image.expand(*image.shape[:-3], 3, *image.shape[-2:])
                  if image.shape[-3] == 1 else image for image in images]
    sizes = {tuple(image.shape[-2:]) for image in images}
    if len(sizes) > 1:
        shown = ", ".join(f"{w}x{h}" for h, w in sorted(sizes)[:4])
        raise DataError(f"{source} mixes image sizes ({shown}{', ...' if len(sizes) > 4 else ''})"
                        "; resize them to one size (image_size=N, --image-size N, scales and "
                        "centre-crops a folder's or a Hugging Face dataset's images)")
    try:
        stacked = torch.cat(images)
    except RuntimeError as error:  # another shape mismatch (channels, dimensions)
        raise DataError(f"{source} mixes image shapes: {error}") from error
    return stacked if stacked.dtype == torch.uint8 else stacked.float()


def _image_tensor(image: Any) -> torch.Tensor:
    """A dataset item's image as a tensor: a PIL image's 8-bit pixels channels first, as
    ``PILToTensor`` gives them; anything else as ``torch.as_tensor`` takes it."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return torch.from_numpy(pil_pixels(image).copy()).permute(2, 0, 1)
    return torch.as_tensor(image)


def refuse_unit_interval(images: torch.Tensor, source: str) -> None:
    """Float pixels that all lie in [0, 1] (and are not all 0) are almost surely torchvision's
    ``ToTensor`` output or PIL's pixels / 255, not [-1, 1]: taken as they are, every image
    would train and score as a washed-out grey. A whole dataset with no pixel darker than
    mid-grey is the rare other case; both fixes keep it exact."""
    if images.dtype == torch.uint8 or not images.is_floating_point() or images.numel() == 0:
        return
    low, high = (float(value) for value in torch.aminmax(images))
    if low >= 0 and 0 < high <= 1:
        raise DataError(
            f"{source}: float pixel values span [{low:.3g}, {high:.3g}], so they look like "
            "images in [0, 1] (torchvision's ToTensor, or pixels / 255), but float pixels must "
            "lie in [-1, 1]; scale them as x * 2 - 1 (Normalize(mean=0.5, std=0.5) after "
            "ToTensor), or pass uint8 pixels (PILToTensor), which are scaled for you"
        )


def fit_channels(config: Any, data: ImageDataset) -> ImageDataset:
    """``data`` as a model with this config takes it: grayscale images of the model's size as
    RGB when it takes RGB (``ImageDataset.with_channels``). Any other mismatch is left for
    ``check_fits`` to name with the data's own shape."""
    if data.image_size != config.input_size:
        return data
    return data.with_channels(config.in_channels)


def fit_class_names(data: Any, class_names: list[str] | None) -> Any:
    """``data`` (an ``ImageDataset``, ``StreamedImages`` or a ``StreamedSubset``) labelled with
    a model's class ids, when it names its classes as the model does (``class_names``, those
    in the model's provenance) but numbers them otherwise: a class folder's are in
    alphabetical order, a model's in the order it was trained with. It then has the model's
    class count and names, the images of a subset of its classes under their ids, as
    ``keep_classes`` takes them. Else ``data`` as it is (``ids_by_name``)."""
    ids = ids_by_name(data.class_names, data.classes_present, class_names)
    if ids is None:
        return data
    return data.relabeled(torch.tensor(ids), list(class_names))


def check_fits(config: Any, data: ImageDataset, exact_classes: bool = False,
               resizable: bool = False) -> None:
    """Raise ``DataError`` unless ``data`` can be fed to a model with this config.

    ``config`` is a model config (``in_channels``, ``input_size``, ``num_classes``). Labels
    must exist in the model; ``exact_classes``: the class counts must be equal (train and
    compress, unless told the labels are the model's own ids). The message names the fix:
    resizing the label embedder, or keeping the model's classes for a subset of them, when the
    caller can (``resizable``: train and compress), otherwise the data the model was trained
    or fine-tuned on (evaluate).
    """
    if (data.channels, data.image_size) != (config.in_channels, config.input_size):
        raise DataError(
            f"the model takes {config.in_channels}x{config.input_size}x{config.input_size} "
            f"inputs but {data.name} holds {data.channels}x{data.image_size}x{data.image_size}; "
            + _shape_fix(config, data))
    n = data.num_classes
    if n <= config.num_classes and not (exact_classes and n != config.num_classes):
        return
    present = data.classes_present
    held = (f"{data.name} has {n} classes" if len(present) == n else
            f"{data.name} holds {len(present)} classes under labels up to {n - 1} "
            f"({', '.join(map(str, present[:8]))}{', ...' if len(present) > 8 else ''})")
    if not resizable:
        fix = "compare the model with the dataset it was trained or fine-tuned on"
        raise DataError(f"{held} but the model has {config.num_classes}; {fix}")
    resize = (f"resize the label embedder to the data's {n} classes (--num-classes {n} on "
              f"train or compress; in Python compress(..., num_classes={n}), or "
              f"models.resize_classes(model, {n}) before train)")
    # a subset that kept its ids (ImageNet's) needs the model's embeddings, not new ones
    keep = (f"if the labels are the model's own class ids (a subset of its "
            f"{config.num_classes} classes), keep its classes (--keep-classes; "
            "keep_classes=True)")
    if n > config.num_classes:
        fix = resize
    elif len(present) < n:  # gaps in the labels: most likely the model's ids
        fix = f"{keep}; if they are new classes, {resize}"
    else:
        fix = f"{resize}, or, {keep}"
    raise DataError(f"{held} but the model has {config.num_classes}; {fix}")


def _shape_fix(config: Any, data: ImageDataset) -> str:
    """What to do about data of another shape than the model takes: crop a class folder's or
    a Hugging Face dataset's images to the model's size, or encode images for a latent
    model."""
    size = config.input_size
    if data.pixels and config.in_channels in (1, 3) and data.channels in (1, 3):
        croppable = is_streamed_source((data.origin or {}).get("data"))
        if data.channels == config.in_channels or data.channels == 1:
            return (f"scale and centre-crop the images to {size}x{size}: --image-size {size} "
                    f"(image_size={size})" if croppable else
                    f"resize the images to {size}x{size}")
        return "the model takes gray images: convert them to one channel"
    if not data.pixels and config.in_channels in (1, 3):
        return "these are VAE latents and the model takes images: use the images themselves"
    return ("use data of the model's size and channels (images for a latent model: pass its "
            "VAE, --vae DIR on train and compress, which encode them first, or encode them "
            "once with entpruner encode --vae DIR --data ... --out latents.npz; in Python "
            "entpruner_sdk.data.latents.to_latents(images, vae))")


def pixel_tensor(array: np.ndarray, source: str) -> torch.Tensor:
    """Pixels as a dataset holds them: uint8 (0..255) as they are, floats (taken as already in
    [-1, 1]) as float32; other integers are refused."""
    if array.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(array))
    if np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{source}: integer images must be uint8 (0..255), got {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def eight_bit(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> 8-bit pixels (uint8, 0..255), rounded as a saved image file
    rounds them; the inverse of ``unit_range`` up to that rounding. 8-bit pixels are returned
    as they are."""
    if images.dtype == torch.uint8:
        return images
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def unit_range(images: torch.Tensor) -> torch.Tensor:
    """8-bit pixels (uint8, 0..255) -> float32 in [-1, 1] (x / 127.5 - 1); float images are
    returned as they are. Whatever takes images calls it a batch at a time, so 8-bit images
    are never held as floats whole."""
    if images.dtype != torch.uint8:
        return images
    return images.float().div_(127.5).sub_(1.0)


def to_nchw(images: np.ndarray, source: str) -> np.ndarray:
    """Accept [N, H, W], [N, H, W, C] or [N, C, H, W] (C in 1, 3)."""
    if images.ndim == 3:
        return images[:, None]
    if images.ndim != 4:
        raise DataError(f"{source}: images must have 3 or 4 dimensions, got {images.shape}")
    if images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
        return images
    if images.shape[-1] in (1, 3):
        return images.transpose(0, 3, 1, 2)
    raise DataError(f"{source}: cannot tell the channel axis of shape {images.shape}; "
                    "use [N, C, H, W] or [N, H, W, C] with C = 1 or 3 (VAE latents: store "
                    "them as [N, C, H, W] under 'latents'; entpruner encode writes such a file)")


def latent_tensor(latents: np.ndarray, source: str) -> torch.Tensor:
    """VAE latents: float [N, C, H, W], any channel count, any range."""
    if latents.ndim != 4:
        raise DataError(f"{source}: latents must be [N, C, H, W], got shape {latents.shape}")
    if not np.issubdtype(latents.dtype, np.floating):
        raise DataError(f"{source}: latents must be floats, got {latents.dtype}")
    return torch.from_numpy(np.ascontiguousarray(latents, dtype=np.float32))


# ---------------------------------------------------------------------- sources
def load_npz(path: str | os.PathLike, num_classes: int | None = None) -> ImageDataset:
    """An ``.npz`` with ``images`` (or ``x``) or VAE ``latents``, and ``labels`` (or ``y``).

    Optional ``class_names`` (strings, one per class) name the classes, as a folder's
    subfolders do; ``save_npz`` writes all three. The class-conditional sample files of
    guided-diffusion and ADM's labelled reference batches (``arr_0`` images, ``arr_1``
    labels; what ``EvaluationReport.save_samples`` writes) are read too.
    """
    from entpruner_sdk.data.mapped import read_npz

    path = Path(path)
    try:  # large arrays (latents) mapped from the file: processes that train share them
        arrays = read_npz(path)
    except Exception as error:
        raise DataError(f"cannot read {path}: {error}; is it a valid .npz archive?") from error
    return from_arrays(arrays, num_classes, name=path.stem, source=str(path))


def from_arrays(arrays: Mapping[str, Any], num_classes: int | None = None, *,
                name: str = "arrays", source: str = "the arrays") -> ImageDataset:
    """Data held in memory, under the keys an ``.npz`` uses (``load_npz``): ``images`` (or
    ``x``, or VAE ``latents``) and ``labels`` (or ``y``), optional ``class_names``; numpy
    arrays or CPU tensors. Images are uint8 (0..255) or floats in [-1, 1], as
    [N, H, W], [N, H, W, C] or [N, C, H, W]."""
    arrays = {key: _numpy(value) for key, value in arrays.items()}
    latents = arrays.get("latents")
    images = _first(arrays, "images", "x", "arr_0")
    labels = _first(arrays, "labels", "y", "arr_1")
    if (images is None and latents is None) or labels is None:
        raise DataError(f"{source} must hold arrays 'images' (or 'x', or VAE 'latents') and "
                        f"'labels' (or 'y'), or ADM's 'arr_0' and 'arr_1'; found "
                        f"{sorted(arrays)}")
    if latents is not None:
        tensor = latent_tensor(latents, source)
    else:
        tensor = pixel_tensor(to_nchw(images, source), source)
        refuse_unit_interval(tensor, source)
    names = [str(name) for name in arrays.get("class_names", [])]
    labels = np.asarray(labels).reshape(-1)
    if labels.dtype.kind in "USO":  # names ("cat"), not ids
        values = [v.decode() if isinstance(v, bytes) else v for v in labels.tolist()]
        named = ids_of_names(values, names, source)
        if named is None:
            raise DataError(f"{source}: labels of type {labels.dtype} are neither class ids "
                            "nor class names")
        labels, names = np.asarray(named[0]), named[1]
    labels_t = torch.from_numpy(labels)
    if not labels_t.dtype.is_floating_point:
        labels_t = labels_t.long()
    count = num_classes if num_classes is not None else max(int(labels_t.max()) + 1, len(names))
    present = torch.unique(labels_t).tolist()
    if names and len(names) == len(present) < count:
        # one name per class held, in label order: a subset under a larger model's ids
        names = [dict(zip(present, names)).get(c, str(c)) for c in range(count)]
    if names and len(names) != count:
        raise DataError(f"{source}: {len(names)} class_names for {count} classes; give one "
                        f"name per class, or one per class held ({len(present)}, in label "
                        "order), or drop class_names")
    encoded = arrays.get("encoded_with")  # the VAE, as save_npz writes it
    return ImageDataset(tensor, labels_t, count, name=name, class_names=names,
                        pixels=latents is None,
                        encoded_with=json.loads(str(encoded)) if encoded is not None else None)


def _numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _first(arrays: dict[str, np.ndarray], *keys: str) -> np.ndarray | None:
    return next((arrays[key] for key in keys if key in arrays), None)


def save_npz(data: ImageDataset, path: str | os.PathLike) -> Path:
    """Write ``data`` as an ``.npz`` that ``load_npz`` reads back (atomically)."""
    path = Path(path)
    key = "images" if data.pixels else "latents"
    encoded = {"encoded_with": np.array(json.dumps(data.encoded_with))} if data.encoded_with else {}
    with atomic_writer(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **{key: data.images.numpy(), "labels": data.labels.numpy(),
                            "class_names": np.array(data.class_names), **encoded})
    return path


def from_torch(data: Dataset | DataLoader, num_classes: int | None = None) -> ImageDataset:
    """Materialise a torch Dataset or DataLoader of (image, label) pairs.

    Images with 1 or 3 channels are pixels: uint8 (0..255, ``PILToTensor``'s), held as they
    are, or floats in [-1, 1]; any other channel count is taken as VAE latents (4 for DiT and
    SiT on ImageNet), which have no fixed range. PIL images (a torchvision or Hugging Face
    dataset without a transform) are taken as their 8-bit pixels (``pil_pixels``); where
    grey and colour images mix, the grey ones are taken as RGB. Class names come from the
    dataset as torchvision's declare them (``classes``, else ``class_to_idx``; through a
    ``Subset`` or a DataLoader too), so a model that names its classes can match them.
    """
    declared = declared_class_names(data)
    images, labels = [], []
    for item in data:
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise DataError("a torch Dataset / DataLoader must yield (image, label) pairs")
        image = _image_tensor(item[0])
        batched = isinstance(data, DataLoader)
        images.append(image if batched else image.unsqueeze(0))
        labels += _label_values(item[1])
    if not images:
        raise DataError("the torch dataset is empty")
    stacked = stack_pixels(images, "the torch dataset")
    named = ids_of_names(labels, declared, source="the torch dataset")  # labels as names
    label_tensor = torch.tensor(named[0]) if named else torch.as_tensor(labels)
    if not label_tensor.dtype.is_floating_point:
        label_tensor = label_tensor.long()
    names = named[1] if named else declared
    count = num_classes if num_classes is not None else max(
        int(label_tensor.max()) + 1, len(names))
    if names and int(label_tensor.max()) >= len(names):
        raise DataError(f"the torch dataset declares {len(names)} classes ({type(data).__name__}"
                        f".classes) but holds label {int(label_tensor.max())}; mend its "
                        "classes, or drop them so the labels stand as ids alone")
    if names and count > len(names):  # a larger model's ids: the rest keep their numbers
        names = names + [str(c) for c in range(len(names), count)]
    pixels = stacked.dim() != 4 or stacked.shape[1] in (1, 3)
    if pixels:
        refuse_unit_interval(stacked, type(data).__name__)
    return ImageDataset(stacked, label_tensor, count, name=type(data).__name__, pixels=pixels,
                        class_names=names[:count])


def declared_class_names(data: Any) -> list[str]:
    """The class names a torch dataset declares, by class id, as torchvision's do: ``classes``
    (a name per id; ImageNet's tuples of synonyms give their first), else ``class_to_idx``
    when it numbers its names 0..n-1 once each. A ``DataLoader``'s or ``Subset``'s dataset is
    looked through. Empty when none is declared."""
    for _ in range(8):  # wrappers nest; a dataset that holds itself must not loop
        if data is None:
            break
        names = _names_by_id(data)
        if names:
            return names
        data = getattr(data, "dataset", None)
    return []


def _names_by_id(data: Any) -> list[str]:
    classes = getattr(data, "classes", None)
    if isinstance(classes, (list, tuple)) and classes:
        first = [c[0] if isinstance(c, tuple) and c else c for c in classes]
        if all(isinstance(name, str) and name for name in first) and len(set(first)) == len(first):
            return list(first)
    mapping = getattr(data, "class_to_idx", None)
    if isinstance(mapping, Mapping) and mapping:
        ids = sorted(mapping.values()) if all(isinstance(i, int) for i in mapping.values()) else []
        if ids == list(range(len(mapping))) and all(isinstance(n, str) for n in mapping):
            return sorted(mapping, key=mapping.__getitem__)
    return []


def _label_values(label: Any) -> list[Any]:
    """An item's label (or a batch's labels) as Python values: ids, or class names."""
    if isinstance(label, str):
        return [label]
    if isinstance(label, (list, tuple)) and label and all(isinstance(x, str) for x in label):
        return list(label)  # a DataLoader's batch of names
    return torch.as_tensor(label).reshape(-1).tolist()


def load_data(data: Any, *, split: str = "train", num_classes: int | None = None,
              image_size: int | None = None,
              class_index: str | os.PathLike | None = None) -> ImageDataset:
    """Turn any supported source into an ``ImageDataset``.

    ``data``: a bundled dataset name (``"digits"``, ``"photos"``), a folder with one subfolder
    per class, a ``.csv``, ``.tsv`` or ``.jsonl`` of image files and classes (``ImageTable``),
    an ``.npz`` file, ``(images, labels)`` arrays or a dict of arrays under the ``.npz`` keys
    (``from_arrays``), a torch ``Dataset`` / ``DataLoader`` of (image, label), a
    Hugging Face dataset (``hugging_face``: in memory, a folder ``save_to_disk`` wrote, or
    ``"hf:NAME[:CONFIG]"`` for ``load_dataset``), what ``open_data`` opened (an
    ``ImageFolder``, ``HuggingFaceImages``), or an ``ImageDataset``. ``split`` applies to
    bundled and Hugging Face datasets, ``num_classes`` to ``.npz`` files, tables, torch and
    Hugging Face datasets, ``image_size`` to bundled datasets, folders, tables and Hugging
    Face datasets (scaled and centre-cropped), ``class_index`` to folders and tables (the
    model's classes in order, when the data holds some of them: ``folder.read_class_index``).
    What was read from disk remembers how (``origin``), so a later process can load the same
    data again.
    8-bit images (files, uint8 arrays and tensors) are held as uint8 (``unit_range`` gives
    [-1, 1]).
    """
    from entpruner_sdk.data import hugging_face
    from entpruner_sdk.data.bundled import BUNDLED, load_bundled
    from entpruner_sdk.data.streamed import StreamedImages

    if image_size is not None and image_size < 1:
        raise DataError(f"image_size={image_size}: must be a positive number of pixels")
    if isinstance(data, ImageDataset):
        return data
    if class_index is not None and not (isinstance(data, (str, os.PathLike))
                                        and (Path(data).is_dir() or is_table(data))):
        raise DataError(f"class_index (--class-index) labels class folders and tables; {data!r} "
                        "is neither: drop it, or label an .npz with the model's ids")
    if hugging_face.is_hugging_face(data):
        return hugging_face.from_hugging_face(data, split=split, num_classes=num_classes,
                                              image_size=image_size)
    if isinstance(data, str) and data in BUNDLED:
        dataset = load_bundled(data, split=split, image_size=image_size)
        return _remember(dataset, data, split=split, image_size=image_size)
    if is_streamed_source(data):
        data = open_data(data, split=split, num_classes=num_classes, image_size=image_size,
                         class_index=class_index)
    if isinstance(data, StreamedImages):
        fingerprint = data.fingerprint()  # before reading: a file changed meanwhile then shows
        dataset = data.load()
        dataset.origin, dataset.source_fingerprint = data.origin, fingerprint
        return dataset
    if split != "train":  # not silently the whole of data that has no splits
        raise DataError(f"split={split!r} (--split) picks a split of a bundled or Hugging Face "
                        f"dataset, and {data!r} has none: drop it")
    if isinstance(data, (Dataset, DataLoader)):
        return from_torch(data, num_classes)
    if not isinstance(data, (str, os.PathLike)):
        return _in_memory(data, num_classes, image_size)
    return _from_file(Path(data), num_classes, image_size)


def open_data(data: Any, *, split: str = "train", num_classes: int | None = None,
              image_size: int | None = None, class_index: str | os.PathLike | None = None
              ) -> ImageDataset | StreamedImages:
    """``data`` as ``load_data`` reads it (same keywords), except that a class folder, a
    Hugging Face dataset (a folder ``save_to_disk`` wrote, ``hf:NAME``, or a ``Dataset`` in
    memory; not a streamed one) are opened (``ImageFolder``, ``HuggingFaceImages``), not read:
    their images are read when they are used, so ``evaluate`` reads only its reference
    images, and ``encode`` one batch at a time."""
    from entpruner_sdk.data import hugging_face
    from entpruner_sdk.data.folder import ImageFolder, split_folder
    from entpruner_sdk.data.table import ImageTable

    if hugging_face.is_hugging_face(data) and not hugging_face.is_streamed(data, split):
        return hugging_face.HuggingFaceImages(data, split=split, num_classes=num_classes,
                                              image_size=image_size)
    if not is_streamed_source(data):
        return load_data(data, split=split, num_classes=num_classes, image_size=image_size,
                         class_index=class_index)
    if image_size is not None and image_size < 1:
        raise DataError(f"image_size={image_size}: must be a positive number of pixels")
    if hugging_face.is_hub_name(data) or hugging_face.is_saved(data):
        if class_index is not None:
            raise DataError(f"{data} is a Hugging Face dataset, whose class labels are its "
                            "own; class_index (--class-index) labels class folders: drop it")
        opened = hugging_face.open_hub if hugging_face.is_hub_name(data) else \
            hugging_face.open_saved
        return opened(data, split=split, num_classes=num_classes, image_size=image_size)
    if is_table(data):
        return ImageTable(data, image_size, class_index, num_classes, split)
    chosen = split_folder(Path(data), split)
    folder = ImageFolder(chosen, image_size, class_index)
    if chosen != Path(data):  # "train" alone would not say which data
        folder.name = f"{Path(data).resolve().name}-{chosen.name}"
        folder.split_of = (Path(data), split)  # opened again as it was opened
    return folder


def is_streamed_source(data: Any) -> bool:
    """Whether ``open_data`` opens ``data`` rather than reads it: a folder (of classes, or
    saved by ``save_to_disk``) or ``hf:NAME``, whose images can also be cropped on reading."""
    from entpruner_sdk.data import hugging_face

    return hugging_face.is_hub_name(data) or is_table(data) or (
        isinstance(data, (str, os.PathLike)) and Path(data).is_dir())


def is_table(data: Any) -> bool:
    """Whether ``data`` names a table of image files and labels (``.csv``, ``.tsv``, ``.jsonl``)."""
    from entpruner_sdk.data.table import TABLE_SUFFIXES

    return isinstance(data, (str, os.PathLike)) and Path(data).suffix.lower() in TABLE_SUFFIXES


def _from_file(path: Path, num_classes: int | None, image_size: int | None) -> ImageDataset:
    """An ``.npz`` file."""
    from entpruner_sdk.data.bundled import BUNDLED

    if not path.exists():
        close = difflib.get_close_matches(str(path), BUNDLED, n=1)
        raise DataError(f"data {str(path)!r} is neither a bundled dataset "
                        f"({', '.join(BUNDLED)}) nor an existing file or folder"
                        + (f"; did you mean {close[0]}?" if close else ""))
    if path.suffix == ".npz":
        if image_size is not None:
            raise DataError(f"{path} is loaded as stored; image_size (--image-size) resizes "
                            "class folders and the bundled photos: drop it, or write the "
                            ".npz at the size you need")
        return _remember(load_npz(path, num_classes), str(path.resolve()),
                         num_classes=num_classes)
    raise DataError(f"unsupported data file {path}; use an .npz, a folder of class folders, "
                    "or a .csv of image files and their classes (file_name,label)")


def _in_memory(data: Any, num_classes: int | None, image_size: int | None) -> ImageDataset:
    """``(images, labels)`` or a dict of arrays under ``.npz`` keys (``from_arrays``)."""
    if isinstance(data, (tuple, list)) and len(data) == 2:
        data = {"images": data[0], "labels": data[1]}
    if isinstance(data, (np.ndarray, torch.Tensor)):
        raise DataError(f"an array of images ({type(data).__name__} of shape "
                        f"{tuple(data.shape)}) has no labels; pass (images, labels), with one "
                        "class id per image")
    if not isinstance(data, Mapping):
        raise DataError(
            f"data of type {type(data).__name__} is not one entpruner reads; pass a bundled "
            "dataset name (digits, photos), a folder of class folders, an .npz file, "
            "(images, labels) arrays or a dict of them, or a torch Dataset or DataLoader of "
            "(image, label) pairs")
    if image_size is not None:
        raise DataError("arrays are used as they are; image_size (--image-size) resizes class "
                        "folders and the bundled photos: drop it, or resize the images first")
    return from_arrays(data, num_classes)


def _remember(dataset: ImageDataset, data: str, **options: Any) -> ImageDataset:
    """``dataset`` remembering where it came from, with the ``load_data`` keywords that
    differ from the defaults (no split recorded for ``train``)."""
    read_as = {k: v for k, v in options.items() if v is not None
               and not (k == "split" and v == "train")}
    dataset.origin = {"data": data, **read_as}
    return dataset


def origin_fields(data: ImageDataset) -> dict[str, Any]:
    """Where ``data`` was read from, as a compress report's summary and a trained model's
    metadata keep it, so that evaluate and the demo can read it again: ``data_source`` (a
    bundled name or a path) and ``data_options`` (the ``load_data`` keywords it was read
    with: image size, class index, ...); nothing for data held only in memory. Latents add
    ``vae``, the VAE they were encoded with (``encoded_with``), which ``sample``, ``evaluate``,
    the server and the demo then decode with by default (``latents.recorded_vae``)."""
    encoded = {"vae": data.encoded_with} if data.encoded_with else {}
    if data.origin is None:
        return encoded
    options = {key: value for key, value in data.origin.items() if key != "data"}
    return {"data_source": data.origin["data"], **({"data_options": options} if options else {}),
            **encoded}


def recorded_data(fields: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]] | None:
    """The data ``origin_fields`` recorded in ``fields`` (a compress summary, a model's
    ``metadata["compression"]`` or ``metadata["training"]``), as its source and the
    ``load_data`` keywords to read it with; None when nothing was recorded."""
    if not fields or not fields.get("data_source"):
        return None
    return str(fields["data_source"]), dict(fields.get("data_options", {}))
