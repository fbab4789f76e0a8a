"""Training and fine-tuning a DiT / SiT on class-conditional data (AdamW + EMA).

Every random draw (batch indices, label dropout, timesteps, noise) comes from one seeded
generator whose state is checkpointed, so an interrupted run resumed from its checkpoint
reproduces the uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from entpruner_sdk.data.classes import default_names
from entpruner_sdk.data.datasets import (
    ImageDataset,
    check_fits,
    fit_channels,
    fit_class_names,
    load_data,
    origin_fields,
    unit_range,
)
from entpruner_sdk.data.latents import recorded_vae
from entpruner_sdk.models.io import save
from entpruner_sdk.models.transformer import DiffusionTransformer
from entpruner_sdk.objectives import NoisedBatch, Objective, objective_for
from entpruner_sdk.teachers import as_model
from entpruner_sdk.utils.checkpoint import (
    check_same_run,
    checkpoint_folder,
    discard_checkpoint,
    load_checkpoint,
    optimizer_tensors,
    prefixed,
    restore_optimizer,
    restore_scaler,
    save_checkpoint,
    unprefixed,
    warn_if_computed_otherwise,
)
from entpruner_sdk.utils.device import (
    AUTOCAST_ENV,
    arithmetic,
    autocast,
    computed_on,
    gradient_scaler,
    resolve_device,
)
from entpruner_sdk.utils.digest import network_fingerprint
from entpruner_sdk.utils.progress import progress_bar

# settings a resumed run may change: how long it runs (train longer by resuming with more
# steps; nothing depends on the total), how often it saves and logs, and how much memory a step
# takes. Any other change would train another model than the checkpoint's
RESUMABLE_SETTINGS = ("steps", "checkpoint_every", "log_every", "gradient_accumulation",
                      "gradient_checkpointing")


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run (plain data; saved beside every checkpoint)."""

    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.9999
    grad_clip: float | None = 1.0
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 50  # progress-bar loss window
    # flip each image left-right with probability 1/2, as DiT's and SiT's training does: right
    # for photos (and their latents), wrong where direction means something (digits, text)
    hflip: bool = False
    # memory settings (the result is the same up to float rounding): every step's batch in
    # this many micro-batches, and activations recomputed in backward instead of held
    gradient_accumulation: int = 1
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        # a setting out of range fails here, before any data is loaded (an empty batch would
        # otherwise surface as a loss that is not finite)
        for name in ("steps", "batch_size", "checkpoint_every", "log_every",
                     "gradient_accumulation"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be at least 1")
        check_micro_batches(self.batch_size, self.gradient_accumulation)
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr}: the learning rate must be positive")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay={self.ema_decay}: must be in [0, 1)")


@dataclass
class TrainResult:
    """What ``train`` returns: the last step's weights, their EMA and the loss curve."""

    model: DiffusionTransformer  # the raw weights after the last step
    ema: DiffusionTransformer  # the EMA weights: sample and evaluate with these
    losses: list[float] = field(default_factory=list)  # one per step
    # fp16 autocast only: steps whose gradients overflowed, skipped by the loss scaler
    skipped_steps: int = 0

    def __repr__(self) -> str:  # the default would print both models' every layer
        last = f", last loss {self.losses[-1]:.4f}" if self.losses else ""
        return (f"TrainResult({self.model.family.upper()} depth {self.model.depth}, "
                f"{len(self.losses)} steps{last}; .model, .ema)")


class EMA:
    """Exponential moving average of a model's weights, with a warm-up so short runs work:
    the decay is min(decay, (1 + step) / (10 + step))."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Move the average towards ``model``'s weights at training step ``step``."""
        decay = min(self.decay, (1 + step) / (10 + step))
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            ema_p.lerp_(p.detach(), 1 - decay)


def check_micro_batches(batch_size: int, accumulation: int, processes: int = 1) -> None:
    """Refuse a batch that does not split into equal micro-batches (every process's share
    into ``accumulation`` parts), before any work."""
    if batch_size % (processes * accumulation):
        over = f" on each of {processes} processes" if processes > 1 else ""
        raise ValueError(
            f"batch_size {batch_size} does not split into {accumulation} equal micro-batches"
            f"{over}; use a multiple of {processes * accumulation} or another "
            "gradient_accumulation")


def accumulate_gradients(loss_of: Callable[[NoisedBatch], torch.Tensor], batch: NoisedBatch,
                         parts: int, module: nn.Module,
                         scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """Backpropagate the mean of ``loss_of`` over ``batch`` in ``parts`` equal micro-batches
    (gradient accumulation: the whole batch's gradient, one micro-batch's activations in
    memory) and return that mean, detached. ``module``: what the forward runs, whose
    gradients a DistributedDataParallel wrapper then averages once, after the last part.
    ``scaler``: fp16's loss scaler (``gradient_scaler``); the gradients are then scaled up
    by it until ``optimizer_step`` unscales them.

    A CUDA out-of-memory error is raised again with the settings that lower the memory."""
    losses = []
    for i, part in enumerate(batch.split(parts)):
        # DDP all-reduces on every backward unless told to wait; the last part syncs
        wait = i < parts - 1 and hasattr(module, "no_sync")
        with module.no_sync() if wait else contextlib.nullcontext():
            try:
                loss = loss_of(part)
                scaled = loss / parts
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            except torch.cuda.OutOfMemoryError as error:
                checkpointing = getattr(getattr(module, "module", module),  # DDP wraps it
                                        "gradient_checkpointing", False)
                raise torch.cuda.OutOfMemoryError(_out_of_memory(
                    error, part.x_start.shape[0], parts, checkpointing)) from error
        losses.append(loss.detach())
    return torch.stack(losses).mean()


def optimizer_step(optimizer: torch.optim.Optimizer, grad_clip: float | None,
                   scaler: torch.amp.GradScaler | None = None) -> bool:
    """Clip the gradients to norm ``grad_clip`` (None: no clipping) and step; returns whether
    the weights moved. Under fp16 the ``scaler`` first unscales the gradients; when they
    overflowed it skips the step and halves its scale, and the weights stay as they were."""
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    if scaler is None or not scaler.is_enabled():
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
        optimizer.step()
        return True
    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() >= scale  # it lowers the scale only after an overflow


def _out_of_memory(error: Exception, micro_batch: int, parts: int,
                   checkpointing: bool) -> str:
    first = str(error).split(". ")[0]  # "CUDA out of memory"; the allocator's detail follows
    split = (f"split each step's batch further (gradient_accumulation={parts * 2}, "
             f"--gradient-accumulation {parts * 2})")
    # Checkpointing first: on an H200 an XL/2 step at batch 32 added 0.38x the memory for
    # 1.2x the time with it, 0.51x for 2.65x with 4 micro-batches, on which a GPU idles
    # (docs/benchmarks.md, "GPU")
    recompute = ("recompute activations in backward (gradient_checkpointing=True, "
                 "--gradient-checkpointing; about 1.2x the time), ")
    return (f"{first} training on micro-batches of {micro_batch} images: "
            f"{'' if checkpointing else recompute}{split} or lower batch_size")


def drop_labels(y: torch.Tensor, prob: float, null_class: int,
                generator: torch.Generator | None) -> torch.Tensor:
    """Replace labels by the null class with probability ``prob`` (for guidance)."""
    if prob <= 0:
        return y
    device = generator.device if generator is not None else torch.device("cpu")
    drop = torch.rand(y.shape[0], generator=generator, device=device).to(y.device) < prob
    return torch.where(drop, torch.full_like(y, null_class), y)


def sample_batch(data: ImageDataset, batch_size: int, generator: torch.Generator,
                 device: torch.device, hflip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random samples (with replacement); ``hflip``: each mirrored left-right
    with probability 1/2. Without it the generator draws nothing more, so runs repeat."""
    index = torch.randint(0, len(data), (batch_size,), generator=generator,
                          device=generator.device).cpu()
    images = data.images[index]
    if hflip:  # a VAE latent mirrors with its image, so latents are flipped as they are
        flip = torch.rand(batch_size, generator=generator, device=generator.device).cpu() < 0.5
        images[flip] = images[flip].flip(-1)
    # 8-bit pixels go to the device as they are held (a quarter of the bytes), then to [-1, 1]
    return unit_range(images.to(device)), data.labels[index].to(device)


def model_identity(model: DiffusionTransformer) -> str:
    """A model in words with a hash of its weights: the teacher a resumed compress run must
    distil from again (``check_same_run``)."""
    parameters = sum(p.numel() for p in model.parameters())
    return (f"{model.family.upper()} of depth {model.depth} ({parameters:,} parameters, "
            f"weights {network_fingerprint(model)})")


def data_identity(data: ImageDataset) -> str:
    """A dataset in words with a hash of its contents: the data a resumed run must go on
    training with (``check_same_run``)."""
    kind = "images" if data.pixels else "latents"
    return (f"{data.name} ({len(data)} {kind}, {data.num_classes} classes, content "
            f"{data.fingerprint()})")


def record_data_classes(model: DiffusionTransformer, data: ImageDataset) -> None:
    """Note in ``model.provenance`` what it learned of the data it was just trained on:
    ``class_names``, the data's names over the model's (sampling, the server and the demo then
    take names; a class the data leaves unnamed keeps its old name), and ``data_classes``,
    when the data holds a subset of the classes (sampling then defaults to those; an older
    note is dropped otherwise)."""
    if data.named:
        count = model.config.num_classes
        old = model.provenance.get("class_names") or []
        names = list(old) if len(old) == count else default_names(count)
        for c, name in enumerate(data.class_names[:count]):
            if name != str(c):
                names[c] = name
        model.provenance["class_names"] = names
    present = data.classes_present
    if len(present) < model.config.num_classes:
        model.provenance["data_classes"] = present
    else:
        model.provenance.pop("data_classes", None)


def train(
    model: DiffusionTransformer | str | os.PathLike,
    data: Any,
    config: TrainConfig | None = None,
    *,
    keep_classes: bool = False,
    objective: Objective | None = None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    keep_checkpoint: bool = True,
    device: str | torch.device | None = None,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train ``model`` (a model, or a bundled teacher's name or a saved model's path) on
    ``data`` with its family's objective.

    With ``out_dir``, a checkpoint is written every ``checkpoint_every`` steps to
    ``out_dir/checkpoint`` and the final EMA model to ``out_dir/model``; ``resume=True``
    continues from the checkpoint there, given the data and settings it was made with
    (``RESUMABLE_SETTINGS`` may change: resume with more steps to train longer), and without it
    a run whose ``out_dir`` holds a checkpoint is refused; ``keep_checkpoint=False`` deletes
    it once the model is saved.

    ``data`` must have the model's class count (resize it with ``resize_classes``), unless
    ``keep_classes`` says its labels are the model's own class ids, a subset of its classes
    (say ImageNet ids for a released DiT-XL/2).
    """
    config = config or TrainConfig()
    device = resolve_device(device)
    ckpt_dir = checkpoint_folder(out_dir, resume)
    model = as_model(model)
    data = fit_class_names(fit_channels(model.config, load_data(data)),
                           model.provenance.get("class_names"))
    # equal class counts unless told otherwise: data with fewer classes is more likely new
    # classes that would silently take over the embeddings of the model's first ones
    check_fits(model.config, data, exact_classes=not keep_classes, resizable=True)
    record_data_classes(model, data)
    # the model is not among them: a resumed run takes every weight from the checkpoint, so
    # only its shape must match (a new model's random start may differ, and does no harm)
    inputs = {"data": data_identity(data)} if ckpt_dir is not None else {}
    objective = objective or objective_for(model)
    model = model.to(device).train()
    if not any(p.requires_grad for p in model.parameters()):
        model.requires_grad_(True)  # an EMA copy (frozen for sampling) fine-tuned further
    ema = EMA(model, config.ema_decay)
    # set after the EMA copy, which is only sampled; the caller's setting is back at the end
    checkpointing, model.gradient_checkpointing = (model.gradient_checkpointing,
                                                   config.gradient_checkpointing)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    scaler = gradient_scaler(device)  # fp16 only: scales the loss so gradients do not underflow
    generator = torch.Generator().manual_seed(config.seed)
    losses: list[float] = []
    start = skipped = 0
    computed = computed_on(device)  # recorded in each checkpoint
    if resume:
        start, losses, skipped = _restore(ckpt_dir, model, ema, optimizer, scaler, generator,
                                          config, inputs, computed)

    bar = progress_bar(range(start, config.steps), enabled=progress, desc="training",
                       initial=start, total=config.steps)
    for step in bar:
        images, labels = sample_batch(data, config.batch_size, generator, device,
                                      config.hflip)
        labels = drop_labels(labels, model.config.class_dropout_prob, model.null_class,
                             generator)
        batch = objective.noise_batch(images, labels, generator)
        loss, stepped = training_step(model, objective, batch, optimizer, config.grad_clip,
                                      device, config.gradient_accumulation, scaler)
        skipped += not stepped
        ema.update(model, step)
        losses.append(loss)
        if (step + 1) % config.log_every == 0:
            recent = losses[-config.log_every:]
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", refresh=False)
        if on_step is not None:
            on_step(step + 1, loss)
        done = step + 1 == config.steps
        if ckpt_dir is not None and ((step + 1) % config.checkpoint_every == 0 or done):
            _checkpoint(ckpt_dir, step + 1, model, ema, optimizer, scaler, generator, losses,
                        skipped, config, inputs, computed)
    model.gradient_checkpointing = checkpointing
    if out_dir is not None:
        # where and how it trained: bf16 autocast on a GPU by default ($ENTPRUNER_AUTOCAST)
        fields = origin_fields(data)  # for evaluate
        if "vae" not in fields and (vae := recorded_vae(model.metadata)):
            fields["vae"] = vae  # latents made elsewhere: the VAE it was loaded with decodes
        save(ema.model, Path(out_dir) / "model", training={
            **dataclasses.asdict(config), "device": str(device),
            "arithmetic": arithmetic(device), **fields,
            **({"skipped_steps": skipped} if scaler.is_enabled() else {})}, losses=losses)
        if not keep_checkpoint:
            discard_checkpoint(ckpt_dir)
    return TrainResult(model.eval(), ema.model, losses, skipped)


def training_step(model: nn.Module, objective: Objective, batch: NoisedBatch,
                  optimizer: torch.optim.Optimizer, grad_clip: float | None,
                  device: torch.device, accumulation: int = 1,
                  scaler: torch.amp.GradScaler | None = None) -> tuple[float, bool]:
    """One optimizer step on ``batch`` (in ``accumulation`` micro-batches): its mean loss,
    and whether the weights moved (fp16's ``scaler`` skips a step that overflowed)."""

    def loss_of(part: NoisedBatch) -> torch.Tensor:
        with autocast(device):
            output = model(part.x_t, part.t, part.y)
        return objective.loss(output.float(), part).mean()

    optimizer.zero_grad(set_to_none=True)
    loss = accumulate_gradients(loss_of, batch, accumulation, model, scaler)
    if not torch.isfinite(loss):  # checked before the step: the weights stay as they were
        raise FloatingPointError(
            f"training loss is not finite; lower the learning rate or check the data for NaN"
            f"{non_finite_hint(device)}")
    return loss.detach().item(), optimizer_step(optimizer, grad_clip, scaler)


def non_finite_hint(device: torch.device) -> str:
    """What a loss that is not finite may also mean under fp16 autocast: the forward pass
    overflowed fp16's range (65504), which no loss scaling mends."""
    if arithmetic(device) != "fp16 autocast":
        return ""
    return (f"; under fp16 autocast the forward pass may have overflowed: run with "
            f"{AUTOCAST_ENV}=bf16 where the device has bf16, or off")


def _checkpoint(directory, step, model, ema, optimizer, scaler, generator, losses, skipped,
                config, inputs, computed) -> None:
    opt_tensors, param_groups = optimizer_tensors(optimizer)
    tensors = {**prefixed("model.", model.state_dict()), **prefixed("ema.", ema.model.state_dict()),
               **opt_tensors, "rng": generator.get_state()}
    meta = {"step": step, "losses": losses, "param_groups": param_groups,
            "grad_scaler": scaler.state_dict(), "skipped_steps": skipped,
            "computed_on": computed, "train_config": dataclasses.asdict(config),
            "model_config": model.config.to_dict(), "inputs": inputs}
    save_checkpoint(directory, tensors, meta)


def _restore(directory, model, ema, optimizer, scaler, generator, config, inputs, computed
             ) -> tuple[int, list[float], int]:
    tensors, meta = load_checkpoint(directory)
    if meta["model_config"] != model.config.to_dict():
        raise ValueError(
            f"the checkpoint in {directory} is for {meta['model_config']}, not this model's "
            f"config; resume with the same model or start a new output directory"
        )
    check_same_run(directory, {**meta.get("inputs", {}), "settings": meta["train_config"]},
                   {**inputs, "settings": dataclasses.asdict(config)},
                   may_change=[f"settings.{name}" for name in RESUMABLE_SETTINGS])
    if meta["step"] > config.steps:
        raise ValueError(f"the checkpoint in {directory} is at step {meta['step']}, past "
                         f"steps={config.steps}; resume with at least {meta['step']} steps")
    warn_if_computed_otherwise(directory, meta, computed)
    model.load_state_dict(unprefixed("model.", tensors))
    ema.model.load_state_dict(unprefixed("ema.", tensors))
    restore_optimizer(optimizer, tensors, meta["param_groups"])
    restore_scaler(scaler, meta)
    generator.set_state(tensors["rng"])
    return int(meta["step"]), list(meta["losses"]), int(meta.get("skipped_steps", 0))

