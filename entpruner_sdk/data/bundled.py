"""Datasets built offline from data that ships inside installed packages.

- ``digits``: scikit-learn's 1797 handwritten digits, 8x8 grayscale, 10 classes (default).
- ``photos``: RGB crops (16x16 by default; ``image_size`` picks another size) of 8 photographs
  shipped with scikit-image and scikit-learn, one class per photograph. Training crops come
  from the left 70% of each photo and test crops from the right 30%, so the held-out split
  shares no pixels with the training split.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from entpruner_sdk.data.datasets import DataError, ImageDataset

BUNDLED = ("digits", "photos")
SPLITS = ("train", "test", "all")
PHOTO_CLASSES = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
                 "immunohistochemistry", "china", "flower")


def load_bundled(name: str, split: str = "train", image_size: int | None = None) -> ImageDataset:
    """A bundled dataset (``digits`` or ``photos``) by name and split; ``image_size`` resizes
    the photos (the digits are 8 x 8 only)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if name == "digits":
        if image_size not in (None, 8):
            raise DataError("the digits dataset is 8x8; drop image_size or use 8")
        return _digits(split)
    if name == "photos":
        return _photos(split, image_size or 16)
    raise DataError(f"unknown bundled dataset {name!r}; choose one of {', '.join(BUNDLED)}")


def _digits(split: str) -> ImageDataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 8.0 - 1.0).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    # Every 7th image of each class is held out (about 14%), deterministically.
    rank = torch.zeros_like(labels)
    for c in range(10):
        idx = torch.nonzero(labels == c).flatten()
        rank[idx] = torch.arange(len(idx))
    test = rank % 7 == 0
    keep = {"train": ~test, "test": test, "all": torch.ones_like(test)}[split]
    return ImageDataset(images[keep], labels[keep], 10, name=f"digits-{split}")


@lru_cache(maxsize=8)
def _photo_arrays(crop: int) -> tuple[np.ndarray, ...]:
    """Each photo resized so its short side is 4 crops long (uint8 HxWx3)."""
    from PIL import Image
    from skimage import data as skdata
    from sklearn.datasets import load_sample_images

    sklearn_images = dict(zip(("china", "flower"), load_sample_images().images))
    photos = []
    for name in PHOTO_CLASSES:
        array = sklearn_images[name] if name in sklearn_images else getattr(skdata, name)()
        image = Image.fromarray(np.ascontiguousarray(array[..., :3]))
        scale = 4 * crop / min(image.size)
        size = (round(image.width * scale), round(image.height * scale))
        photos.append(np.asarray(image.resize(size, Image.Resampling.LANCZOS)))
    return tuple(photos)


def _photos(split: str, crop: int, train_per_class: int = 256, test_per_class: int = 64
            ) -> ImageDataset:
    if split == "all":
        train, test = _photos("train", crop), _photos("test", crop)
        return ImageDataset(torch.cat([train.images, test.images]),
                            torch.cat([train.labels, test.labels]), len(PHOTO_CLASSES),
                            f"photos{crop}-all", list(PHOTO_CLASSES))
    rng = np.random.default_rng(0 if split == "train" else 1)
    count = train_per_class if split == "train" else test_per_class
    crops, labels = [], []
    for label, photo in enumerate(_photo_arrays(crop)):
        height, width, _ = photo.shape
        boundary = int(width * 0.7)
        lo, hi = (0, boundary - crop) if split == "train" else (boundary, width - crop)
        for _ in range(count):
            top, left = rng.integers(0, height - crop + 1), rng.integers(lo, hi + 1)
            crops.append(photo[top:top + crop, left:left + crop])
            labels.append(label)
    images = torch.from_numpy(np.stack(crops).transpose(0, 3, 1, 2).astype(np.float32))
    return ImageDataset(images / 127.5 - 1.0, torch.tensor(labels), len(PHOTO_CLASSES),
                        f"photos{crop}-{split}", list(PHOTO_CLASSES))
