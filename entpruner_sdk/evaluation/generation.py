"""Sampling for an evaluation: class-balanced labels and seeded batches, shared over the
ranks, kept on disk as they finish so an interrupted evaluation continues, and made for
several models in turn, each batch timed, so their times compare side by side."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from entpruner_sdk.data.datasets import eight_bit
from entpruner_sdk.data.latents import LatentSpace
from entpruner_sdk.evaluation.batches import SampleBatches
from entpruner_sdk.models.transformer import DiffusionTransformer
from entpruner_sdk.sampling import RuntimeDenoiser, objective_of, sample, sample_batch_at
from entpruner_sdk.utils import distributed
from entpruner_sdk.utils.progress import progress_bar
from entpruner_sdk.utils.timing import CallCounter, timed


def balanced_labels(count: int, classes: Sequence[int]) -> torch.Tensor:
    """``count`` labels cycling through ``classes`` (every class equally often, +-1)."""
    return torch.as_tensor(list(classes), dtype=torch.long)[torch.arange(count) % len(classes)]


@dataclass
class Sampled:
    """One model's samples from :func:`generate_side_by_side`, and the seconds each batch it
    made in this run took, by batch index, every process's (a batch loaded from ``finished``
    has none)."""

    images: torch.Tensor
    batch_seconds: dict[int, float]

    @property
    def seconds(self) -> float:
        """How long its sampling took: the longest of the processes' times (rank r makes the
        batches b with b % world == r), the whole of them in one process."""
        world = distributed.world_size()
        return max(sum(s for b, s in self.batch_seconds.items() if b % world == rank)
                   for rank in range(world))


def generate_side_by_side(
        models: dict[str, DiffusionTransformer | RuntimeDenoiser], labels: torch.Tensor, *,
        seed: int, batch_size: int, progress: bool, desc: str = "sampling",
        decoder: LatentSpace | None = None, as_eight_bit: bool = False,
        finished: dict[str, SampleBatches | None] | None = None,
        counters: dict[str, CallCounter] | None = None,
        sampler_settings: dict[str, float] | None = None,
        on_batch: Callable[[str, int, int], None] | None = None,
        **sampling: Any) -> dict[str, Sampled]:
    """Samples of each of ``models``, by name, in batches made in turn: batch 0 of each model,
    then batch 1 of each in the reverse order, and so on. Batch b uses seed + b for every
    model, so they all see identical noise, and each batch is timed: the models' batches b ran
    under much the same load, so the ratio of their times measures the models side by side.

    A latent model's samples are decoded to images by ``decoder`` batch by batch;
    ``as_eight_bit``: each batch is rounded to 8-bit pixels (uint8) as it is made.
    ``sampler_settings``: SiT's (``atol``, ``diffusion_norm``...), for each model's objective.
    ``finished``: a model's batches are written there as they are made, and one found there is
    loaded instead of made again (an interrupted evaluation continues). ``counters``: count a
    model's denoiser calls. ``on_batch``: called after each batch made with the model's name,
    this process's batches of it done and in all; what it raises ends the sampling (a page's
    Stop), the batches in ``finished`` kept.

    Under torch.distributed, rank r samples the batches b with b % world == r and the batches
    are gathered in order: the same images as one process, in 1 / world of the time.
    """
    starts, mine = _batches(labels, batch_size)
    finished, counters = finished or {}, counters or {}
    chunks = {name: _kept_batches(finished.get(name), mine) for name in models}
    seconds: dict[str, dict[int, float]] = {name: {} for name in models}
    objectives = {name: objective_of(model).with_sampler_settings(**(sampler_settings or {}))
                  for name, model in models.items()}
    todo = [b for b in mine if any(b not in made for made in chunks.values())]
    for b in progress_bar(todo, enabled=progress and distributed.is_main(), desc=desc,
                          leave=False, initial=len(mine) - len(todo), total=len(mine)):
        # in turn, the order reversed every other batch of this process (A B, B A, ...): a
        # model that gains from going first, or second, gains in half the pairs only
        for name in list(models)[::-1 if b // distributed.world_size() % 2 else 1]:
            if b in chunks[name]:
                continue
            make = partial(_make_batch, models[name], labels, batch_size, b, seed,
                           objectives[name], decoder, as_eight_bit,
                           counter=counters.get(name), **sampling)
            chunks[name][b], seconds[name][b] = timed(make)
            if finished.get(name) is not None:
                finished[name].save(b, chunks[name][b])
            if on_batch is not None:
                on_batch(name, len(chunks[name]), len(mine))
    for other_chunks, other_seconds in (distributed.gather_objects((chunks, seconds))
                                        if distributed.is_distributed() else []):
        for name in models:
            chunks[name].update(other_chunks[name])
            seconds[name].update(other_seconds[name])
    return {name: Sampled(torch.cat([chunks[name][b] for b in range(len(starts))]),
                          seconds[name]) for name in models}


def generate(model: DiffusionTransformer | RuntimeDenoiser, labels: torch.Tensor, *,
             seed: int, batch_size: int, progress: bool, desc: str = "sampling",
             finished: SampleBatches | None = None,
             on_batch: Callable[[int, int], None] | None = None, **sampling: Any) -> torch.Tensor:
    """One model's samples in batches, as :func:`generate_side_by_side` makes them (batch b
    seeded seed + b, so any two models see identical noise; the same ``decoder``,
    ``as_eight_bit``, ``sampler_settings`` and torch.distributed sharding). ``finished``: its
    batches kept on disk; ``on_batch``: called with its batches done and in all;
    ``**sampling``: ``sample``'s settings (``counter`` included)."""
    counter = {"model": sampling.pop("counter")} if "counter" in sampling else None
    sampled = generate_side_by_side(
        {"model": model}, labels, seed=seed, batch_size=batch_size, progress=progress,
        desc=desc, finished={"model": finished}, counters=counter,
        on_batch=on_batch and (lambda _, done, total: on_batch(done, total)), **sampling)
    return sampled["model"].images


def _kept_batches(finished: SampleBatches | None, mine: range) -> dict[int, torch.Tensor]:
    """The batches of this process that an interrupted run kept in ``finished``."""
    if finished is None:
        return {}
    return {b: batch for b in mine if (batch := finished.load(b)) is not None}


def _make_batch(model: DiffusionTransformer | RuntimeDenoiser, labels: torch.Tensor,
                batch_size: int, index: int, seed: int, objective: Any,
                decoder: LatentSpace | None, as_eight_bit: bool,
                **sampling: Any) -> torch.Tensor:
    """Batch ``index`` of samples (``sample_batch_at``'s, seeded seed + index), decoded to
    images and rounded to 8 bits where asked."""
    batch = sample_batch_at(model, labels, batch_size, index, seed=seed, objective=objective,
                            clip_denoised=True, **sampling)
    if decoder is not None:
        batch = decoder.decode(batch)
    return eight_bit(batch) if as_eight_bit else batch


def warm_up_for_batches(model: DiffusionTransformer | RuntimeDenoiser, labels: torch.Tensor,
                        *, batch_size: int, compile: str | None = None,
                        finished: SampleBatches | None = None, sampler: str | None = None,
                        cfg_scale: float | None = None,
                        sampler_settings: dict[str, float] | None = None,
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
