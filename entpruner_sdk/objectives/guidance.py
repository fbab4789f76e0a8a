"""Classifier-free guidance as a wrapper around any model function."""

from __future__ import annotations

import torch

from entpruner_sdk.objectives.base import ModelFn


def guided(
    model_fn: ModelFn,
    scale: float,
    null_class: int,
    guided_channels: int,
    reference_quirk: bool = False,
) -> ModelFn:
    """Wrap ``model_fn`` with classifier-free guidance at ``scale``.

    The batch is doubled as [x, x] with labels [y, null]; the first ``guided_channels``
    (the prediction) become uncond + scale * (cond - uncond) and any further channels (DiT's
    variance) come from the conditional half. ``reference_quirk`` guides only the first 3
    channels, as the released DiT / SiT sampling code does, to reproduce its samples exactly.
    A scale of 1 is the plain conditional model and costs no extra batch.
    """
    if scale == 1.0:
        return model_fn
    channels = 3 if reference_quirk else guided_channels

    def guided_fn(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        null = torch.full_like(y, null_class)
        out = model_fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        cond, uncond = out.chunk(2)
        return combine_guidance(cond, uncond, scale, channels)

    return guided_fn


def combine_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: float | torch.Tensor,
                     channels: int) -> torch.Tensor:
    """uncond + scale * (cond - uncond) on the first ``channels``; the rest from ``cond``.

    ``scale`` is a number or a per-sample tensor [N] (an exported guided graph takes one, so a
    server can batch requests with different scales).
    """
    if isinstance(scale, torch.Tensor):
        scale = scale.to(cond.dtype).reshape(-1, *([1] * (cond.dim() - 1)))
    mixed = uncond[:, :channels] + scale * (cond[:, :channels] - uncond[:, :channels])
    return torch.cat([mixed, cond[:, channels:]], dim=1)
