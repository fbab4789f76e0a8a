"""``evaluate``: the figures a user judges a (pruned) model by, in one call.

- FID with the standard Inception features (when the ``fid`` extra is installed);
- FD-domain: the Fréchet distance in the feature space of the dataset's own small classifier
  (fast; reported under that name, never as FID);
- precision / recall (k-NN manifolds) in each feature space;
- class accuracy (overall and per class) and per-class diversity;
- with ``original``: fidelity to it on identical noise and labels (PSNR, SSIM, Inception and
  domain feature cosine distance).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from entpruner_sdk.data.datasets import (
    DataError,
    ImageDataset,
    balanced_indices,
    check_fits,
    eight_bit,
    fit_channels,
    load_data,
    unit_range,
)
from entpruner_sdk.data.folder import FolderSubset, ImageFolder
from entpruner_sdk.data.latents import LatentSpace, decoder_for, is_latent
from entpruner_sdk.evaluation.batches import SampleBatches
from entpruner_sdk.evaluation.classifier import (
    batch_for,
    cache_root,
    domain_classifier,
    network_fingerprint,
    predict,
)
from entpruner_sdk.evaluation.fidelity import feature_cosine_distance, psnr, ssim
from entpruner_sdk.evaluation.metrics import (
    FeatureStats,
    TooFewSamples,
    frechet_distance,
    per_class_diversity,
    precision_recall,
)
from entpruner_sdk.models.transformer import DiffusionTransformer
from entpruner_sdk.sampling import sample
from entpruner_sdk.utils import distributed
from entpruner_sdk.utils.device import resolve_device
from entpruner_sdk.utils.files import atomic_write_text, atomic_writer
from entpruner_sdk.utils.progress import progress_bar

FEATURES = ("domain", "inception")
# real images compared with by default: FID-10k's reference size, enough for stable statistics
# and bounded in memory (a 256x256 image is 0.75 MB as floats) however large the user's data
REFERENCE_SIZE = 10_000


@dataclass
class EvaluationReport:
    """All figures of one evaluation, with the settings that produced them."""

    settings: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    # the class ids sampled (those the reference data holds) and, in that order, the
    # per-class figures
    classes: list[int] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)  # theirs, when the data names them
    per_class_accuracy: list[float] = field(default_factory=list)
    per_class_diversity: list[float | None] = field(default_factory=list)
    fidelity: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # the evaluated samples, kept in memory only (8-bit when the reference is): a later
    # evaluation of a smaller model against this one takes them as ``original_images``
    # instead of sampling them again
    images: torch.Tensor | None = field(default=None, repr=False, compare=False)
    labels: torch.Tensor | None = field(default=None, repr=False, compare=False)  # theirs

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("images", "labels")}

    def to_markdown(self) -> str:
        s = self.settings
        lines = [f"# Evaluation of {s['model']}", "",
                 f"{s['samples']} samples, sampler {s['sampler']} x {s['steps']} steps, "
                 f"cfg {s['cfg_scale']}, seed {s['seed']}, reference {s['reference']} "
                 f"({s['reference_size']} images), device {s['device']}"
                 f"{', samples held as 8-bit pixels' if s.get('samples_held') == 'uint8' else ''}"
                 ".", "",
                 "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in self.metrics.items()]
        if self.fidelity:
            lines += ["", "## Fidelity to the original (same noise and labels)", "",
                      "| metric | value |", "|---|---|"]
            lines += [f"| {k} | {v:.4f} |" for k, v in self.fidelity.items()]
        lines += ["", "## Per class", "", "| class | accuracy | diversity |", "|---|---|---|"]
        classes = self.classes or range(len(self.per_class_accuracy))
        names = self.class_names or [""] * len(classes)
        for c, name, acc, div in zip(classes, names, self.per_class_accuracy,
                                     self.per_class_diversity):
            lines.append(f"| {f'{c} {name}'.strip()} | {acc:.3f} | "
                         f"{'-' if div is None else f'{div:.3f}'} |")
        lines += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(directory / "evaluation.json", json.dumps(self.to_dict(), indent=2))
        atomic_write_text(directory / "evaluation.md", self.to_markdown())
        return directory

    def save_samples(self, path: str | os.PathLike) -> Path:
        """Write the samples as guided-diffusion's sampling scripts do, the input of ADM's
        evaluation suite (FID, sFID, IS, precision and recall against its reference batches):
        an ``.npz`` of ``arr_0``, uint8 [N, H, W, C] images, and ``arr_1``, their labels.
        ``load_data`` reads it back."""
        if self.images is None or self.labels is None:
            raise ValueError("this report holds no samples (it was read from a file)")
        if self.images.shape[1] not in (1, 3):  # the data layer's rule for pixels
            raise DataError(f"the samples are {self.images.shape[1]}-channel VAE latents, not "
                            "images: evaluate with vae= (--vae DIR) to decode them")
        path = Path(path)
        pixels = eight_bit(self.images).permute(0, 2, 3, 1).contiguous()
        with atomic_writer(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, arr_0=pixels.numpy(), arr_1=self.labels.numpy())
        return path


def balanced_labels(count: int, classes: Sequence[int]) -> torch.Tensor:
    """``count`` labels cycling through ``classes`` (every class equally often, +-1)."""
    return torch.as_tensor(list(classes), dtype=torch.long)[torch.arange(count) % len(classes)]


def generate(model: DiffusionTransformer, labels: torch.Tensor, *, seed: int, batch_size: int,
             progress: bool, desc: str = "sampling", decoder: LatentSpace | None = None,
             as_eight_bit: bool = False, finished: SampleBatches | None = None,
             **sampling: Any) -> torch.Tensor:
    """Samples in batches; batch b uses seed + b, so any two models see identical noise.
    A latent model's samples are decoded to images by ``decoder`` batch by batch;
    ``as_eight_bit``: each batch is rounded to 8-bit pixels (uint8) as it is made.
    ``finished``: each batch is written there as it is made, and one found there is loaded
    instead of made again (an interrupted evaluation continues).

    Under torch.distributed, rank r samples the batches b with b % world == r and the batches
    are gathered in order: the same images as one process, in 1 / world of the time.
    """
    starts = list(range(0, len(labels), batch_size))
    mine = range(distributed.rank(), len(starts), distributed.world_size())
    chunks = {}
    if finished is not None:
        chunks = {b: batch for b in mine if (batch := finished.load(b)) is not None}
    todo = [b for b in mine if b not in chunks]
    for b in progress_bar(todo, enabled=progress and distributed.is_main(), desc=desc,
                          leave=False, initial=len(chunks), total=len(mine)):
        batch = sample(model, labels[starts[b]:starts[b] + batch_size], seed=seed + b,
                       clip_denoised=True, **sampling)
        if decoder is not None:
            batch = decoder.decode(batch)
        if as_eight_bit:
            batch = eight_bit(batch)
        chunks[b] = batch
        if finished is not None:
            finished.save(b, batch)
    for other in distributed.gather_objects(chunks) if distributed.is_distributed() else []:
        chunks.update(other)
    return torch.cat([chunks[b] for b in range(len(starts))])


def sharded_features(extractor, images: torch.Tensor, progress: bool) -> torch.Tensor:
    """Feature extraction split over the ranks (contiguous shares), gathered in order."""
    if not distributed.is_distributed():
        return extractor(images, progress=progress)
    share = images.tensor_split(distributed.world_size())[distributed.rank()]
    parts = distributed.gather_objects(extractor(share, progress=False))
    return torch.cat(parts)


def reference_stats(data: ImageDataset, extractor, name: str, progress: bool) -> tuple[
        FeatureStats, torch.Tensor]:
    """Features of the real data, cached per dataset content and feature network."""
    folder = cache_root() / "reference"
    key = f"{data.name}-{data.fingerprint()}-{name}-{extractor.fingerprint}"
    # one plain name: ``with_suffix`` would cut a dotted one short (a data folder named
    # "my.set", or a fingerprint with a decimal point), and two networks would share a file
    path = folder / re.sub(r"[^A-Za-z0-9_-]", "_", key)
    features_file = path.with_suffix(".pt")
    if features_file.exists() and path.with_suffix(".json").exists():
        features = torch.load(features_file, weights_only=True)
        return FeatureStats.load(path), features
    features = extractor(data.images, progress=progress)
    stats = FeatureStats.of(features, dataset=data.name, size=len(data),
                            fingerprint=data.fingerprint(), network=name,
                            network_hash=extractor.fingerprint)
    folder.mkdir(parents=True, exist_ok=True)
    stats.save(path)
    from entpruner_sdk.utils.files import atomic_writer

    with atomic_writer(features_file) as tmp:
        torch.save(features, tmp)
    return stats, features


class DomainFeatures:
    """The dataset classifier's penultimate layer as a feature extractor."""

    def __init__(self, classifier) -> None:
        self.classifier = classifier
        self.fingerprint = network_fingerprint(classifier)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 512, progress: bool = False
                 ) -> torch.Tensor:
        """Features of images in [-1, 1], or of 8-bit ones (a folder's reference)."""
        batch_size = batch_for(images, batch_size)
        return torch.cat([self.classifier.features(unit_range(images[i:i + batch_size]))
                          .double() for i in range(0, len(images), batch_size)])


def load_reference(data: Any, size: int | None) -> tuple[ImageDataset | FolderSubset, int]:
    """The real data to compare with, at most ``size`` images balanced over the classes, and
    how many there were. Of a folder (``ImageFolder``) it is a ``FolderSubset``: only those
    images, read when first needed, so the reference is bounded in memory however large the
    folder, and not read at all when everything made from it is cached."""
    if size is not None and size < 2:
        raise ValueError(f"reference_size={size}: at least 2 real images are needed (None, or "
                         "--reference-size 0, for all of them)")
    if isinstance(data, ImageFolder):
        data = FolderSubset(data)
    elif not isinstance(data, FolderSubset):
        data = load_data(data)
    if size is None or len(data) <= size:
        return data, len(data)
    return data.subset(balanced_indices(data.labels, size)), len(data)


def _reference_data(model: DiffusionTransformer, data: ImageDataset,
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


def differences_but_depth(original: DiffusionTransformer,
                          model: DiffusionTransformer) -> list[str]:
    """The config fields, other than depth, in which two models differ ("num_heads 16 vs 4")."""
    ours, theirs = asdict(model.config), asdict(original.config)
    return [f"{key} {theirs[key]} vs {ours[key]}" for key in ours
            if key != "depth" and ours[key] != theirs[key]]


def check_same_but_depth(original: DiffusionTransformer, model: DiffusionTransformer) -> None:
    """Fidelity compares two models on identical inputs: only their depth may differ."""
    differ = differences_but_depth(original, model)
    if not differ:
        return
    ours, theirs = model.config, original.config
    resized = model.provenance.get("resized_classes")
    hint = (f"; compress resized this model's label embedder from {resized['from']} to "
            f"{resized['to']} classes: pass entpruner_sdk.compress.as_compressed(original, "
            "model) as the original, resized the same way (the CLI does)"
            if resized and ours.num_classes != theirs.num_classes else "")
    raise ValueError(f"the original and the evaluated model differ in more than depth "
                     f"(original vs evaluated: {', '.join(differ)}){hint}")


def evaluate(
    model: DiffusionTransformer,
    data: Any,
    *,
    samples: int = 1000,
    sampler: str | None = None,
    steps: int = 50,
    cfg_scale: float = 1.0,
    seed: int = 0,
    original: DiffusionTransformer | None = None,
    features: tuple[str, ...] = FEATURES,
    batch_size: int = 250,
    device: str | torch.device | None = None,
    progress: bool = True,
    model_name: str = "model",
    original_images: torch.Tensor | None = None,
    vae: LatentSpace | str | os.PathLike | None = None,
    reference_size: int | None = REFERENCE_SIZE,
    checkpoint_dir: str | os.PathLike | None = None,
) -> EvaluationReport:
    """Sample ``samples`` class-balanced images from ``model`` and compare them with ``data``.

    ``features`` picks the feature spaces: ``"domain"`` (fast) and/or ``"inception"`` (standard
    FID; needs the ``fid`` extra). ``original``: also report fidelity to that model;
    ``original_images``: its samples from an evaluation with the same samples, seed and
    sampler (that report's ``images``), so they are not drawn a second time.

    ``vae``: for a latent model (DiT-XL/2, SiT-XL/2), the VAE (a ``LatentSpace`` or its
    folder) that decodes the samples, so every figure is measured on images; ``data`` may then
    be real images of the decoded size or the latents they were encoded to (decoded once and
    cached). Without it a latent model is measured in latent space, with ``("domain",)`` only.

    ``reference_size``: at most that many real images, balanced over the classes, make the
    reference (None: all of them); an ``ImageFolder`` reads only those, and none when the
    domain classifier and reference statistics made from them are cached.

    The samples (``report.images``) are held as the reference is: 8-bit pixels (uint8) against
    8-bit real images (a folder, a uint8 ``.npz``, decoded latents), each rounded as a saved
    image would be, else floats; ``settings["samples_held"]`` says which.

    ``checkpoint_dir``: every finished batch of samples is written there, so a rerun after a
    crash or Ctrl-C, with the same models and settings, continues from the batches already
    made (and makes the same samples as an uninterrupted run); removed when the evaluation
    ends.
    """
    device = resolve_device(device)
    unknown = set(features) - set(FEATURES)
    if unknown:
        raise ValueError(f"unknown feature spaces {sorted(unknown)}; choose from {FEATURES}")
    data, available = load_reference(data, reference_size)
    if vae is None and is_latent(model.config) and "inception" in features:
        raise DataError("Inception features need images but this model samples VAE latents: "
                        "pass vae= (--vae DIR) to decode them, or features=('domain',) "
                        "(--features domain) to measure in latent space")
    decoder = decoder_for(model.config, vae, device) if vae is not None else None
    data = _reference_data(model, data, decoder, progress)
    if original is not None:
        check_same_but_depth(original, model)
    if original_images is not None and (original is None or original_images.shape[0] != samples):
        raise ValueError("original_images are the original's samples for this evaluation: "
                         f"pass original= too, and {samples} of them (got "
                         f"{original_images.shape[0]})")
    if samples < 2:
        raise TooFewSamples(f"samples={samples}: at least 2 are needed for a covariance "
                            "(and a few hundred for a stable FID)")
    sampling = dict(sampler=sampler, steps=steps, cfg_scale=cfg_scale, device=device)
    # only the classes the data holds: samples of a class with no real images have nothing
    # to be compared with (a model of 1000 classes fine-tuned on a few of them)
    classes = data.classes_present
    labels = balanced_labels(samples, classes)
    # the samples are held as the real images are: 8-bit when those are (image files, decoded
    # latents), so both sides are measured after the same rounding to saved pixels, as the
    # standard FID protocol does, and 10,000 samples at 256 x 256 take 1.9 GB, not 7.5
    sampling["as_eight_bit"] = data.is_eight_bit
    checkpoints = _Checkpoints(checkpoint_dir, labels, seed, batch_size, sampling, decoder)
    batches = checkpoints(model, model_name)
    started = time.perf_counter()
    images = generate(model, labels, seed=seed, batch_size=batch_size, progress=progress,
                      desc=f"sampling {model_name}", decoder=decoder, finished=batches,
                      **sampling)
    seconds = time.perf_counter() - started
    resumed = checkpoints.loaded_by_all(batches)
    classifier = domain_classifier(data, progress=progress, device=device)
    predictions = predict(classifier, images)
    report = EvaluationReport(images=images, labels=labels, settings=dict(
        model=model_name, samples=samples, sampler=sampler or "default", steps=steps,
        cfg_scale=cfg_scale, seed=seed, reference=data.name, reference_size=len(data),
        device=str(device), features=list(features), sampling_seconds=seconds,
        samples_held="uint8" if data.is_eight_bit else "float32",
        **({"vae": decoder.fingerprint} if decoder is not None else {})))
    if resumed:
        report.settings["batches_resumed"] = resumed
        report.notes.append(f"{resumed} of the {-(-samples // batch_size)} sample batches were "
                            "made before an interruption and kept on disk; sampling_seconds "
                            "counts only this run's")
    if len(classes) < model.config.num_classes:
        report.notes.append(f"{data.name} holds {len(classes)} of the model's "
                            f"{model.config.num_classes} classes; only those were sampled")
    if len(data) < available:
        report.notes.append(f"the reference is {len(data)} of the {available} images of "
                            f"{data.name}, balanced over the classes (reference_size=, "
                            "--reference-size)")
    report.classes = classes
    if data.named:
        report.class_names = [data.class_names[c] for c in classes]
    report.metrics["class_accuracy"] = float((predictions == labels).double().mean())
    report.per_class_accuracy = [
        float((predictions[labels == c] == c).double().mean()) if (labels == c).any() else 0.0
        for c in classes]
    extractors = _extractors(features, classifier, device, report)
    # the networks behind the figures: class accuracy and FD-domain are only comparable
    # between reports that name the same domain classifier
    report.settings["feature_networks"] = {
        "domain": network_fingerprint(classifier),
        **{name: extractor.fingerprint for name, extractor in extractors.items()}}
    generated_features = {}
    for name, extractor in extractors.items():
        real_stats, real_features = reference_stats(data, extractor, name, progress)
        fake = sharded_features(extractor, images, progress)
        generated_features[name] = fake
        fid_name = "fid" if name == "inception" else "fd_domain"
        report.metrics[fid_name] = frechet_distance(FeatureStats.of(fake), real_stats)
        precision, recall = precision_recall(real_features, fake)
        report.metrics[f"precision_{name}"] = precision
        report.metrics[f"recall_{name}"] = recall
        if len(fake) <= fake.shape[1]:
            report.notes.append(f"{name}: {len(fake)} samples for {fake.shape[1]}-d features; "
                                "the covariance is rank-deficient and the distance is biased "
                                "upward, compare only figures with equal sample counts")
    domain = generated_features.get("domain")
    if domain is None:
        domain = DomainFeatures(classifier)(images)
    report.per_class_diversity = per_class_diversity(domain, labels, classes)
    if original is not None:
        reference_images = original_images
        if reference_images is None:
            reference_images = generate(original, labels, seed=seed, batch_size=batch_size,
                                        progress=progress, desc="sampling the original",
                                        decoder=decoder,
                                        finished=checkpoints(original, "original"), **sampling)
        report.fidelity = _fidelity(images, reference_images, extractors, generated_features,
                                    progress)
    checkpoints.clear()
    return report


class _Checkpoints:
    """Where each model's finished sample batches go (nowhere without a ``checkpoint_dir``),
    named by everything that decides the samples, so other settings never reuse them."""

    def __init__(self, root, labels: torch.Tensor, seed: int, batch_size: int,
                 sampling: dict[str, Any], decoder: LatentSpace | None) -> None:
        self.root, self.made = root, []
        self.settings = dict(
            labels=hashlib.sha256(labels.numpy().tobytes()).hexdigest()[:16], seed=seed,
            batch_size=batch_size, vae=decoder.fingerprint if decoder is not None else None,
            **{k: v for k, v in sampling.items() if k != "device"})  # same samples anywhere

    def __call__(self, model: DiffusionTransformer, name: str) -> SampleBatches | None:
        if self.root is None:
            return None
        batches = SampleBatches.for_generation(
            self.root, name, weights=network_fingerprint(model), config=model.config.to_dict(),
            objective=model.objective, **self.settings)
        self.made.append(batches)
        return batches

    @staticmethod
    def loaded_by_all(batches: SampleBatches | None) -> int:
        """How many batches every process together took from disk."""
        loaded = torch.tensor([batches.loaded if batches is not None else 0])
        distributed.all_reduce_sum_([loaded])
        return int(loaded)

    def clear(self) -> None:
        distributed.barrier()  # every rank has gathered its batches
        if distributed.is_main():
            for batches in self.made:
                batches.clear()


def _extractors(features, classifier, device, report) -> dict[str, Any]:
    from entpruner_sdk.evaluation.inception import FeatureNetworkMissing, InceptionFeatures

    extractors: dict[str, Any] = {}
    if "domain" in features:
        extractors["domain"] = DomainFeatures(classifier)
    if "inception" in features:
        try:
            extractors["inception"] = InceptionFeatures(device)
        except FeatureNetworkMissing as error:
            if features == ("inception",):
                raise
            report.notes.append(f"standard FID skipped: {error}")
    return extractors


def _fidelity(images, reference, extractors, generated_features, progress,
              chunk: int = 256) -> dict[str, float]:
    # pair by pair, a chunk at a time: 8-bit samples are never held as floats whole
    pairs = list(zip(images.split(chunk), reference.split(chunk)))
    out = {"psnr": float(torch.cat([psnr(a, b) for a, b in pairs]).mean()),
           "ssim": float(torch.cat([ssim(a, b) for a, b in pairs]).mean())}
    for name, extractor in extractors.items():
        distance = feature_cosine_distance(generated_features[name],
                                           extractor(reference, progress=progress))
        out[f"{name}_cosine_distance"] = float(distance.mean())
    return out
