"""The likelihood of real images under a model, in bits per dimension: a figure that needs no
samples and no feature network, measured on the user's own images, the same ones and with the
same noise for an original and its pruned model, so the two compare image by image."""

from __future__ import annotations

import math
from typing import Any

import torch

from entpruner_sdk.data.datasets import DataError, ImageDataset, balanced_indices, unit_range
from entpruner_sdk.data.latents import is_latent
from entpruner_sdk.models.transformer import DiffusionTransformer
from entpruner_sdk.objectives import objective_for
from entpruner_sdk.objectives.base import SplitGenerator
from entpruner_sdk.utils import distributed
from entpruner_sdk.utils.device import exact_fp32, resolve_device
from entpruner_sdk.utils.progress import progress_bar


def likelihood_method(model: DiffusionTransformer, steps: int | None = None) -> str:
    """How :func:`bits_per_dim` measures this model's family, for a report."""
    steps = objective_for(model).likelihood_steps(steps)
    if model.config.family == "sit":
        return (f"probability-flow ODE, Heun x {steps}, one Hutchinson probe per image "
                "(the SiT reference's likelihood)")
    return f"variational bound over {steps} timesteps (the DiT reference's calc_bpd_loop)"


def check_pixel_model(model: DiffusionTransformer) -> None:
    """Refuse a latent model: its inputs are VAE latents, which have no 8-bit bins."""
    if is_latent(model.config):
        raise DataError("the likelihood is of 8-bit images, and this model takes VAE latents: "
                        "measure a pixel model, or leave the likelihood out (--likelihood)")


def likelihood_images(data: ImageDataset, count: int, seed: int = 0) -> ImageDataset:
    """``count`` real images of ``data``, spread evenly over its classes and chosen by
    ``seed``: the same for every model measured with that seed."""
    if count < 1:
        raise ValueError(f"likelihood needs at least 1 image, got {count}")
    return data.subset(balanced_indices(data.labels, count, seed))


def bits_per_dim(model: DiffusionTransformer, images: ImageDataset, *, seed: int = 0,
                 batch_size: int = 64, steps: int | None = None,
                 device: str | torch.device | None = None, progress: bool = False
                 ) -> torch.Tensor:
    """Each image's negative log-likelihood under ``model`` in bits per dimension [N], by its
    family's reference method (:func:`likelihood_method`), unguided.

    Image i draws its noise (DiT's per-timestep noise, SiT's Hutchinson probe) from its own
    generator, seeded by ``seed`` and i, so the figures do not depend on ``batch_size``, and
    two models measured with one seed see the same noise. The model runs in true float32
    even on CUDA (no bf16 autocast, no TF32): bf16 would round the ODE's divergence and the
    bound's small KL terms.
    ``steps``: SiT's ODE steps (default 50); DiT's timesteps (default all 1000; fewer take a
    respaced chain's bound, comparable only with the same count's).
    Under torchrun the processes share the images and each returns all the figures.
    """
    check_pixel_model(model)
    device = resolve_device(device)
    # under torchrun each process measures a contiguous share of the images and all gather
    # the whole: an image's noise follows its index, so the figures are one process's
    world, rank = distributed.world_size(), distributed.rank()
    share = range(len(images) * rank // world, len(images) * (rank + 1) // world)
    was_training = model.training
    model.to(device).eval()
    try:
        with exact_fp32(device):
            mine = _measure(model, images, share, seed, batch_size, steps, device,
                            progress and distributed.is_main())
    finally:
        model.train(was_training)
    bits = torch.cat(distributed.gather_objects(mine))
    if not torch.isfinite(bits).all():
        raise FloatingPointError("the likelihood is not finite for some images: the model "
                                 "gives NaN or infinite outputs on real data")
    return bits


def _measure(model: DiffusionTransformer, images: ImageDataset, share: range, seed: int,
             batch_size: int, steps: int | None, device: torch.device, progress: bool
             ) -> torch.Tensor:
    """The bits per dimension of the images ``share`` indexes, a batch at a time."""
    objective = objective_for(model)
    options = {"steps": steps} if steps else {}
    results = [torch.empty(0)]
    starts = range(share.start, share.stop, batch_size)
    for start in progress_bar(starts, enabled=progress, desc="likelihood", leave=False):
        stop = min(start + batch_size, share.stop)
        x = unit_range(images.images[start:stop]).to(device)
        y = images.labels[start:stop].to(device)
        noise = SplitGenerator([image_seed(seed, i) for i in range(start, stop)], [1] * len(x))
        with torch.no_grad():
            results.append(objective.bits_per_dim(model, x, y, generator=noise,
                                                  **options).cpu())
    return torch.cat(results)


def paired_likelihood(model: DiffusionTransformer, original: DiffusionTransformer | None,
                      data: ImageDataset, count: int, *, steps: int | None = None,
                      seed: int = 0, device: str | torch.device | None = None,
                      progress: bool = False) -> dict[str, Any]:
    """Bits per dimension of ``count`` real images of ``data`` (:func:`likelihood_images`)
    under ``model``, and under ``original`` on the same images with the same noise, so their
    difference is paired image by image: each a mean and its standard error."""
    images = likelihood_images(data, count, seed)
    measure = dict(seed=seed, steps=steps, device=device, progress=progress)
    ours = bits_per_dim(model, images, **measure)
    result = {"images": len(images), "method": likelihood_method(model, steps),
              "bits_per_dim": summary(ours)}
    if original is not None:
        theirs = bits_per_dim(original, images, **measure)
        result["original_bits_per_dim"] = summary(theirs)
        result["difference"] = summary(ours - theirs)
    return result


def image_seed(seed: int, index: int) -> int:
    """Image ``index``'s own seed. PyTorch's CPU generator keeps only a seed's low 32 bits, so
    the two are mixed below 2**32: distinct for a million images a seed."""
    return (seed * 1_000_003 + index) % 2**32


def summary(bits: torch.Tensor) -> dict[str, float]:
    """The mean and its standard error."""
    sem = bits.std().item() / math.sqrt(len(bits)) if len(bits) > 1 else float("nan")
    return {"mean": bits.mean().item(), "sem": sem}
