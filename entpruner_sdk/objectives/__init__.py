"""Training objectives and samplers: Gaussian diffusion (DiT) and flow matching (SiT)."""

from __future__ import annotations

from typing import Any

from entpruner_sdk.models.config import TransformerConfig
from entpruner_sdk.models.transformer import DiffusionTransformer
from entpruner_sdk.objectives.base import ModelFn, NoisedBatch, Objective, TimeGrid, noise_levels
from entpruner_sdk.objectives.diffusion import GaussianDiffusion
from entpruner_sdk.objectives.flow import FlowMatching, StepLimitExceeded
from entpruner_sdk.objectives.guidance import combine_guidance, guided

# Each family's objective class: its ``samplers`` are what a model of the family can sample with.
OBJECTIVES: dict[str, type[Objective]] = {"dit": GaussianDiffusion, "sit": FlowMatching}


def is_adaptive(sampler: str) -> bool:
    """Whether ``sampler`` picks its own steps, ``steps`` only capping them (dopri5), so
    reports say "up to N steps" rather than "x N"."""
    return any(sampler in objective.adaptive_samplers for objective in OBJECTIVES.values())


def objective_for(model: DiffusionTransformer) -> Objective:
    """The objective a model implies: diffusion for DiT, flow matching for SiT (with the flow
    path recorded in ``model.objective``, linear by default)."""
    return objective_from(model.config, model.objective)


def objective_from(config: TransformerConfig, settings: dict[str, Any] | None = None
                   ) -> Objective:
    """The objective for a config and its recorded settings, without the model itself (an
    exported graph carries exactly these two in its metadata)."""
    if config.family == "dit":
        return GaussianDiffusion.for_model(config)
    return FlowMatching.for_model(config, path=(settings or {}).get("path", "linear"))


__all__ = [
    "FlowMatching",
    "GaussianDiffusion",
    "ModelFn",
    "NoisedBatch",
    "OBJECTIVES",
    "Objective",
    "StepLimitExceeded",
    "TimeGrid",
    "combine_guidance",
    "guided",
    "is_adaptive",
    "objective_for",
    "objective_from",
    "noise_levels",
]
