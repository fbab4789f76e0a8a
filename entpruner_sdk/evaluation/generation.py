"""Sampling for an evaluation: class-balanced labels and seeded batches, shared over the
ranks, kept on disk as they finish so an interrupted evaluation continues."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from entpruner_sdk.data.datasets import eight_bit
from entpruner_sdk.data.latents import LatentSpace
from entpruner_sdk.evaluation.batches import SampleBatches
from entpruner_sdk.models.transformer import DiffusionTransformer
from entpruner_sdk.sampling import RuntimeDenoiser, objective_of, sample
from entpruner_sdk.utils import distributed
from entpruner_sdk.utils.progress import progress_bar


def balanced_labels(count: int, classes: Sequence[int]) -> torch.Tensor:
    """``count`` labels cycling through ``classes`` (every class equally often, +-1)."""
    return torch.as_tensor(list(classes), dtype=torch.long)[torch.arange(count) % len(classes)]


def generate(model: DiffusionTransformer | RuntimeDenoiser, labels: torch.Tensor, *,
             seed: int, batch_size: int, progress: bool, desc: str = "sampling",
             decoder: LatentSpace | None = None,
             as_eight_bit: bool = False, finished: SampleBatches | None = None,
             sampler_settings: dict[str, float] | None = None,
             on_batch: Callable[[int, int], None] | None = None, **sampling: Any) -> torch.Tensor:
    """Samples in batches; batch b uses seed + b, so any two models see identical noise.
    A latent model's samples are decoded to images by ``decoder`` batch by batch;
    ``as_eight_bit``: each batch is rounded to 8-bit pixels (uint8) as it is made.
    ``sampler_settings``: SiT's (``atol``, ``diffusion_norm``...), for the model's objective.
    ``finished``: each batch is written there as it is made, and one found there is loaded
    instead of made again (an interrupted evaluation continues). ``on_batch``: called after
    each batch is made with this process's batches done and in all; what it raises ends the
    sampling (a page's Stop), the batches in ``finished`` kept.

    Under torch.distributed, rank r samples the batches b with b % world == r and the batches
    are gathered in order: the same images as one process, in 1 / world of the time.
    """
    starts = list(range(0, len(labels), batch_size))
    mine = range(distributed.rank(), len(starts), distributed.world_size())
    chunks = {}
    if finished is not None:
        chunks = {b: batch for b in mine if (batch := finished.load(b)) is not None}
    todo = [b for b in mine if b not in chunks]
    objective = objective_of(model).with_sampler_settings(**(sampler_settings or {}))
    for b in progress_bar(todo, enabled=progress and distributed.is_main(), desc=desc,
                          leave=False, initial=len(chunks), total=len(mine)):
        batch = sample(model, labels[starts[b]:starts[b] + batch_size], seed=seed + b,
                       objective=objective, clip_denoised=True, **sampling)
        if decoder is not None:
            batch = decoder.decode(batch)
        if as_eight_bit:
            batch = eight_bit(batch)
        chunks[b] = batch
        if finished is not None:
            finished.save(b, batch)
        if on_batch is not None:
            on_batch(len(chunks), len(mine))
    for other in distributed.gather_objects(chunks) if distributed.is_distributed() else []:
        chunks.update(other)
    return torch.cat([chunks[b] for b in range(len(starts))])
