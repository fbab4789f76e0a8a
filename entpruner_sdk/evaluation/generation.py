"""Sampling for an evaluation: class-balanced labels and seeded batches, shared over the
ranks, kept on disk as they finish so an interrupted evaluation continues."""

from __future__ import annotations

import time
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
    starts, mine = _batches(labels, batch_size)
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


def warm_up_for_batches(model: DiffusionTransformer | RuntimeDenoiser, labels: torch.Tensor,
                        *, batch_size: int, compile: str | None = None,
                        finished: SampleBatches | None = None, sampler: str | None = None,
                        cfg_scale: float = 1.0, sampler_settings: dict[str, float] | None = None,
                        device: torch.device | str | None = None, **_: Any) -> float:
    """Sample every batch size :func:`generate` will make of ``labels`` (those not in
    ``finished``) once, so the sampling timed after it runs at its steady speed: a compiled
    model (``compile``) compiles, and records its CUDA graphs, an eager one or an export's
    runtime settles its kernels and memory. Returns the seconds it took. Each size is sampled
    as generate samples it, guidance included (a guided call holds two rows an image; a graph
    is built for its inputs' dtypes too), for the fewest steps its sampler takes, at least
    two: CUDA graphs run a new shape once before they record it. An adaptive sampler (dopri5)
    warms up with the family's fixed-step default, which calls the model with the same inputs,
    since a cap of two steps would stop it. ``**_``: generate's other settings, which change
    no graph."""
    started = time.perf_counter()
    starts, mine = _batches(labels, batch_size)
    done = set() if finished is None else {b for b in mine if finished.has(b)}
    sizes = {len(labels[starts[b]:starts[b] + batch_size]) for b in mine if b not in done}
    objective = objective_of(model).with_sampler_settings(**(sampler_settings or {}))
    sampler = objective.check_sampler(sampler)
    if sampler in objective.adaptive_samplers:
        sampler = objective.default_sampler
    steps = max(2, objective.min_steps(sampler))
    for size in sorted(sizes, reverse=True):
        sample(model, labels[:size], sampler=sampler, steps=steps, cfg_scale=cfg_scale,
               objective=objective, device=device, clip_denoised=True,
               **({"compile": compile} if compile else {}))
    return time.perf_counter() - started


def _batches(labels: torch.Tensor, batch_size: int) -> tuple[list[int], range]:
    """Where each batch starts, and the batches this process makes (b % world == rank)."""
    starts = list(range(0, len(labels), batch_size))
    return starts, range(distributed.rank(), len(starts), distributed.world_size())
