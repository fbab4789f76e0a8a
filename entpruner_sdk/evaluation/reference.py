"""The real data samples are compared with: a bounded, class-balanced reference, made into
images for a latent model, and its feature statistics, cached per content and network."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import torch

from entpruner_sdk.data.datasets import (
    DataError,
    ImageDataset,
    balanced_indices,
    check_fits,
    fit_channels,
    is_streamed_source,
    load_data,
    open_data,
)
from entpruner_sdk.data.latents import LatentSpace
from entpruner_sdk.data.streamed import StreamedImages, StreamedSubset
from entpruner_sdk.evaluation.features import FeatureExtractor
from entpruner_sdk.evaluation.metrics import FeatureStats
from entpruner_sdk.models.transformer import DiffusionTransformer
from entpruner_sdk.utils.cache import cache_root, read_kept
from entpruner_sdk.utils.files import atomic_writer

# real images compared with by default: FID-10k's reference size, enough for stable statistics
# and bounded in memory (a 256x256 image is 0.75 MB as floats) however large the user's data
REFERENCE_SIZE = 10_000


def load_reference(data: Any, size: int | None) -> tuple[ImageDataset | StreamedSubset, int]:
    """The real data to compare with, at most ``size`` images balanced over the classes, and
    how many there were. Of ``StreamedImages`` (a class folder, a Hugging Face dataset on
    disk) it is a ``StreamedSubset``: only those images, read when first needed, so the
    reference is bounded in memory however large the data, and not read at all when
    everything made from it is cached."""
    if size is not None and size < 2:
        raise ValueError(f"reference_size={size}: at least 2 real images are needed (None, or "
                         "--reference-size 0, for all of them)")
    if isinstance(data, StreamedImages):
        data = StreamedSubset(data)
    elif not isinstance(data, StreamedSubset):
        data = load_data(data)
    if size is None or len(data) <= size:
        return data, len(data)
    return data.subset(balanced_indices(data.labels, size)), len(data)


def images_behind(data: ImageDataset, decoded: bool) -> ImageDataset | StreamedImages:
    """The class folder or Hugging Face dataset ``data`` was read from, opened again (its
    ``origin``), to compare a model trained on ``data`` with; ``data`` itself when it came
    from elsewhere.

    ``evaluate`` takes it as ``entpruner evaluate --data FOLDER`` and the demo do, so all
    three share the domain classifier and reference statistics cached for it (keyed by the
    source's fingerprint, with no pixel read once they are cached), rather than train a
    second classifier keyed by the pixels held. Latents encoded from it are compared through
    it too when the samples are ``decoded`` to images: with the real images, as the standard
    protocol does, not with the latents' VAE reconstructions, which would first have to be
    decoded. A source moved, emptied or changed since it was read (any file added, removed,
    renamed or rewritten: its ``source_fingerprint`` differs) leaves ``data``: the images the
    model was trained on are still held.
    """
    source = (data.origin or {}).get("data")
    if (data.source_fingerprint is None or not is_streamed_source(source)
            or not (data.pixels or decoded)):
        return data
    options = {key: value for key, value in data.origin.items() if key != "data"}
    try:
        opened = open_data(source, **options)
    except DataError:
        return data
    return opened if opened.fingerprint() == data.source_fingerprint else data


def reference_data(model: DiffusionTransformer, data: ImageDataset,
                    decoder: LatentSpace | None, progress: bool) -> ImageDataset:
    """The real data the samples are compared with: images when a decoder turns the samples
    into images (latent data decoded once, cached), else the data as the model takes it."""
    if decoder is None or not data.pixels:
        data = fit_channels(model.config, data)
        check_fits(model.config, data)
        return data if decoder is None else decoder.decode_dataset(
            data, cache_dir=cache_root() / "decoded", progress=progress)
    shape = decoder.image_shape(model.config)
    decoded = replace(model.config, in_channels=shape[0], input_size=shape[1])
    data = fit_channels(decoded, data)  # gray photos, which the VAE encoded as RGB
    if (data.channels, data.image_size, data.image_size) != shape:
        raise DataError(f"the VAE decodes this model's samples to {'x'.join(map(str, shape))} "
                        f"images but {data.name} holds {data.channels}x{data.image_size}x"
                        f"{data.image_size}; compare with images of that size, or with the "
                        "latents they were encoded to")
    check_fits(decoded, data)
    return data


def reference_stats(data: ImageDataset, extractor: FeatureExtractor, name: str,
                    progress: bool) -> tuple[FeatureStats, torch.Tensor]:
    """Features of the real data, cached per dataset content and feature network."""
    folder = cache_root() / "reference"
    # "fp32": features computed in true fp32 on every device; entries made before that on a
    # GPU may hold TF32 ones, which nothing else marks, so they are not read
    key = f"{data.name}-{data.fingerprint()}-{name}-{extractor.fingerprint}-fp32"
    # one plain name: ``with_suffix`` would cut a dotted one short (a data folder named
    # "my.set", or a fingerprint with a decimal point), and two networks would share a file
    path = folder / re.sub(r"[^A-Za-z0-9_-]", "_", key)
    features_file = path.with_suffix(".pt")
    if path.with_suffix(".json").exists():
        features = read_kept(features_file, lambda file: torch.load(file, weights_only=True))
        statistics = read_kept(path.with_suffix(".npz"), lambda _: FeatureStats.load(path))
        if features is not None and statistics is not None:  # else unreadable: made again
            return statistics, features
    features = extractor(data.images, progress=progress)
    stats = FeatureStats.of(features, dataset=data.name, size=len(data),
                            fingerprint=data.fingerprint(), network=name,
                            network_hash=extractor.fingerprint)
    folder.mkdir(parents=True, exist_ok=True)
    stats.save(path)
    with atomic_writer(features_file) as tmp:
        torch.save(features, tmp)
    return stats, features
