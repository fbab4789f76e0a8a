"""Recovery by distillation from the unpruned teacher.

loss = w_kd * MSE(student output, teacher output)
     + w_gt * the ordinary diffusion / flow loss
     + w_feat(step) * masked feature MSE between each kept student block and the teacher
       block it came from (activations beyond 2 sigma of their sample's mean are masked, as
       in TinyFusion's Masked KD); w_feat decays linearly to 0 over training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from entpruner_sdk.models.transformer import DiffusionTransformer
from entpruner_sdk.objectives import NoisedBatch, Objective


@dataclass
class DistillConfig:
    """The recovery loss's weights: the teacher's prediction (``kd_weight``), the ground
    truth (``gt_weight``) and the optional masked feature loss on aligned blocks."""

    kd_weight: float = 0.9
    gt_weight: float = 0.1
    # optional masked feature loss; off by default: at weight 1 it was level, within 1%
    # (docs/benchmarks.md, "The masked feature loss")
    feature_weight: float = 0.0
    mask_sigma: float = 2.0


def masked_mse(student: torch.Tensor, teacher: torch.Tensor, sigma: float) -> torch.Tensor:
    """MSE over the elements of ``teacher`` within ``sigma`` std of their sample's mean."""
    flat = teacher.flatten(1)
    mean, std = flat.mean(1, keepdim=True), flat.std(1, keepdim=True)
    mask = ((flat - mean).abs() <= sigma * std).float()
    squared = (student.flatten(1) - flat) ** 2 * mask
    return squared.sum() / mask.sum().clamp(min=1)


def distillation_loss(student: DiffusionTransformer, teacher: DiffusionTransformer,
                      objective: Objective, batch: NoisedBatch,
                      config: DistillConfig | None = None, feature_weight: float | None = None,
                      student_forward: torch.nn.Module | None = None
                      ) -> tuple[torch.Tensor, dict[str, float]]:
    """The total loss and its parts, for one batch. ``feature_weight``: the feature loss's
    weight at this step (compress fades ``config.feature_weight`` out over training; None
    takes it as it is). ``student_forward`` is the module to call for the student's forward
    (its DistributedDataParallel wrapper in multi-process runs)."""
    config = config or DistillConfig()
    feature_weight = config.feature_weight if feature_weight is None else feature_weight
    forward = student_forward or student
    with torch.no_grad():
        if feature_weight > 0:
            teacher_out, teacher_states, _ = teacher.forward_with_block_inputs(
                batch.x_t, batch.t, batch.y)
        else:
            teacher_out = teacher(batch.x_t, batch.t, batch.y)
    if feature_weight > 0:
        student_out, student_states, _ = forward(batch.x_t, batch.t, batch.y,
                                                 return_block_inputs=True)
    else:
        student_out = forward(batch.x_t, batch.t, batch.y)
    student_out, teacher_out = student_out.float(), teacher_out.float()
    kd = ((student_out - teacher_out) ** 2).mean()
    gt = objective.loss(student_out, batch).mean()
    total = config.kd_weight * kd + config.gt_weight * gt
    parts = {"kd": float(kd.detach()), "gt": float(gt.detach())}
    if feature_weight > 0:
        # student block j is aligned with the teacher block it was copied from
        position = {block: i for i, block in enumerate(teacher.kept_blocks)}
        feature = torch.stack([
            masked_mse(student_states[j + 1].float(),
                       teacher_states[position[block] + 1].float(), config.mask_sigma)
            for j, block in enumerate(student.kept_blocks)]).mean()
        total = total + feature_weight * feature
        parts["feature"] = float(feature.detach())
    return total, parts
