"""What a compression run refuses before any work: data the model cannot train on, report
settings it could not measure, protected blocks the model does not have."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from entpruner_sdk.data.datasets import DataError, ImageDataset, check_fits
from entpruner_sdk.models.transformer import DiffusionTransformer

if TYPE_CHECKING:
    from entpruner_sdk.compress.config import CompressConfig


def protected_blocks(model: DiffusionTransformer, protect: tuple[int, ...] | None) -> list[int]:
    """The original indices never removed: ``protect``, or the first and last block."""
    if protect is None:
        return sorted({model.kept_blocks[0], model.kept_blocks[-1]})
    unknown = sorted(set(protect) - set(model.kept_blocks))
    if unknown:
        raise ValueError(f"protect={list(protect)}: block(s) {unknown} are not in this model, "
                         f"whose blocks are {model.kept_blocks} (original indices)")
    return sorted(set(protect))


def check_report_decoder(model: DiffusionTransformer, config: CompressConfig,
                         device: torch.device | None = None, data: Any = None) -> Any:
    """Fail before any training when the report's figures need a VAE the run lacks, or was
    given one that does not fit the model; return the VAE opened (None without one), which
    the report then uses: ``report_vae``, else the one ``data``'s latents were encoded with
    when its folder is still there (as ``evaluate`` of the result decodes with it)."""
    from entpruner_sdk.data.latents import (
        decoder_for,
        is_latent,
        open_recorded_vae,
        usable_vae,
    )

    if config.report_vae is not None:
        return decoder_for(model.config, config.report_vae, device)
    record = usable_vae(getattr(data, "encoded_with", None)) if is_latent(model.config) else None
    if record is not None:
        return open_recorded_vae(record, device)
    if is_latent(model.config) and "inception" in config.report_features:
        raise DataError("standard FID in the report needs images but this model samples VAE "
                        "latents: pass report_vae= (--vae DIR) to decode them, or leave "
                        "report_features at ('domain',) to measure in latent space")
    return None


def check_report_likelihood(model: DiffusionTransformer, config: CompressConfig) -> None:
    """Fail before any training when the report's likelihood cannot be measured: it is of
    8-bit images, which a latent model does not take."""
    from entpruner_sdk.data.latents import is_latent

    if config.report_likelihood and is_latent(model.config):
        raise DataError(f"report_likelihood={config.report_likelihood}: the likelihood is of "
                        "8-bit images, and this model takes VAE latents: leave it at 0 "
                        "(--report-likelihood 0)")


def check_data(model: DiffusionTransformer, data: ImageDataset, num_classes: int | None,
               keep_classes: bool = False) -> None:
    """Fail before any work unless the run can train on ``data``.

    The class counts must be equal unless ``keep_classes`` says the labels are the model's own
    ids: data with fewer classes is otherwise more likely new classes that would silently take
    over the embeddings of the model's first ones (a released model's ImageNet classes).
    """
    classes = model.config.num_classes if num_classes is None else num_classes
    check_fits(model.config.replace(num_classes=classes), data,
               exact_classes=not keep_classes, resizable=True)
