"""Training objectives and samplers: Gaussian diffusion (DiT) and flow matching (SiT)."""

from __future__ import annotations

from entpruner_sdk.objectives.base import ModelFn, NoisedBatch, Objective
from entpruner_sdk.objectives.diffusion import GaussianDiffusion
from entpruner_sdk.objectives.flow import FlowMatching
from entpruner_sdk.objectives.guidance import guided


def objective_for(model) -> Objective:
    """The objective a model implies: diffusion for DiT, flow matching for SiT (with the flow
    path recorded in ``model.objective``, linear by default)."""
    config = model.config
    if config.family == "dit":
        return GaussianDiffusion.for_model(config)
    return FlowMatching.for_model(config, path=model.objective.get("path", "linear"))


__all__ = [
    "FlowMatching",
    "GaussianDiffusion",
    "ModelFn",
    "NoisedBatch",
    "Objective",
    "guided",
    "objective_for",
]
