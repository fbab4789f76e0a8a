"""Seeded class-conditional sampling: the pipeline that ties a model to its objective."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from entpruner_sdk.models.transformer import DiffusionTransformer
from entpruner_sdk.objectives import Objective, guided, objective_for
from entpruner_sdk.utils.device import autocast, resolve_device


def check_labels(labels: torch.Tensor, num_classes: int) -> None:
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise ValueError(
            f"unknown class label {int(labels[bad][0])}: this model has classes "
            f"0..{num_classes - 1}"
        )


@torch.no_grad()
def sample(
    model: DiffusionTransformer,
    labels: Sequence[int] | torch.Tensor,
    *,
    sampler: str | None = None,
    steps: int = 50,
    cfg_scale: float = 1.0,
    seed: int = 0,
    objective: Objective | None = None,
    device: str | torch.device | None = None,
    clip_denoised: bool = False,
    reference_cfg: bool = False,
    noise: torch.Tensor | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Generate one image per label; returns [N, C, H, W] on the CPU.

    The initial noise and every per-step noise come from a CPU generator seeded with ``seed``,
    so a seed gives the same images on any device (up to the device's arithmetic).
    ``sampler``: ``ddpm`` / ``ddim`` for DiT, ``euler`` / ``heun`` / ``euler-maruyama`` for SiT.
    """
    device = resolve_device(device)
    objective = objective or objective_for(model)
    y = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    check_labels(y, model.config.num_classes)
    cfg = model.config
    generator = torch.Generator().manual_seed(seed)
    if noise is None:
        noise = torch.randn(len(y), cfg.in_channels, cfg.input_size, cfg.input_size,
                            generator=generator)
    was_training = model.training
    model.eval()

    def model_fn(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with autocast(device):
            return model(x, t, labels).float()

    fn = guided(model_fn, cfg_scale, model.null_class, cfg.in_channels, reference_cfg)
    try:
        out = objective.sample(fn, noise.to(device), y.to(device), sampler=sampler, steps=steps,
                               generator=generator, clip_denoised=clip_denoised,
                               progress=progress)
    finally:
        model.train(was_training)
    return out.cpu()


def image_grid(images: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """Tile [N, C, H, W] images in [-1, 1] into one uint8 [H', W', C] array-like tensor."""
    n, c, h, w = images.shape
    rows = rows or max(1, int(n**0.5))
    cols = -(-n // rows)
    grid = torch.full((c, rows * (h + 1) + 1, cols * (w + 1) + 1), -1.0)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[:, 1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = (
            images[i].clamp(-1, 1)
        )
    return ((grid + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0)


def save_grid(images: torch.Tensor, path, rows: int | None = None, scale: int = 4) -> None:
    """Write a PNG grid (nearest-neighbour upscaled so small images stay visible)."""
    from PIL import Image

    from entpruner_sdk.utils.files import atomic_writer

    array = image_grid(images, rows).numpy()
    picture = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    picture = picture.resize((picture.width * scale, picture.height * scale),
                             Image.Resampling.NEAREST)
    with atomic_writer(path) as tmp:
        picture.save(tmp, format="PNG")
