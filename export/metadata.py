"""What a runtime needs to sample from an exported graph alone: the architecture config, the
objective and its noise schedule, the pruning provenance, and the graphs' input contract."""

from __future__ import annotations

import json
from typing import Any

from entpruner_sdk.models.config import TransformerConfig
from entpruner_sdk.models.io import check_format_version
from entpruner_sdk.models.transformer import DiffusionTransformer
from entpruner_sdk.objectives import FlowMatching, GaussianDiffusion, Objective, objective_from

METADATA_KEY = "entpruner"
EXPORT_FORMAT_VERSION = 1


def objective_description(config: TransformerConfig, settings: dict[str, Any]) -> dict[str, Any]:
    """The objective in plain words and numbers, so a non-Python runtime can rebuild it."""
    if config.family == "dit":
        return {
            "kind": "gaussian-diffusion",
            "prediction": "epsilon",
            "beta_schedule": "linear",
            "beta_start": 1e-4,
            "beta_end": 0.02,
            "num_timesteps": 1000,
            "learn_sigma": config.learn_sigma,
            "time_input": "int64 timestep in 0..999",
            "samplers": list(GaussianDiffusion.samplers),
            **settings,
        }
    return {
        "kind": "flow-matching",
        "prediction": "velocity",
        "path": settings.get("path", "linear"),
        "time_input": "float32 t in [0, 1] (0 = noise, 1 = data)",
        "samplers": list(FlowMatching.samplers),
        **settings,
    }


def export_metadata(model: DiffusionTransformer) -> dict[str, Any]:
    """The metadata stored inside every export (ONNX metadata_props, engine sidecars)."""
    config = model.config
    out_channels = config.out_channels if config.family == "dit" else config.in_channels
    return {
        "format_version": EXPORT_FORMAT_VERSION,
        "family": config.family,
        "config": config.to_dict(),
        "kept_blocks": model.kept_blocks,
        "provenance": _json_safe(model.provenance),
        "objective": objective_description(config, dict(model.objective)),
        "objective_settings": dict(model.objective),
        "null_class": model.null_class,
        "inputs": {
            "x": f"float32 [N, {config.in_channels}, {config.input_size}, {config.input_size}]",
            "t": "int64 [N]" if config.family == "dit" else "float32 [N]",
            "y": f"int64 [N], classes 0..{config.num_classes - 1}, null class "
                 f"{model.null_class}",
            "cfg_scale": "float32 [N] (guided graph only)",
        },
        "outputs": {"out": f"float32 [N, {out_channels}, {config.input_size}, "
                           f"{config.input_size}]"},
        # a compressed model's report summary (data, steps, speedup, quality), a trained one's
        # settings and the diffusers pipeline it came from travel with it, so an export says
        # how it was made, and which VAE decodes it (``latents.recorded_vae``), on its own
        **{step: _json_safe(model.metadata[step]) for step in ("compression", "training",
                                                              "pipeline")
           if step in model.metadata},
    }


def config_and_objective(metadata: dict[str, Any]) -> tuple[TransformerConfig, Objective]:
    """Rebuild the config and the objective from stored metadata."""
    check_format_version(metadata.get("format_version", 1), EXPORT_FORMAT_VERSION,
                         "this export was")
    try:
        config = TransformerConfig.from_dict(metadata["config"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"the export's metadata has no usable model config ({error}); re-export the model "
            "with `entpruner export`"
        ) from error
    return config, objective_from(config, metadata.get("objective_settings", {}))


def dumps(metadata: dict[str, Any]) -> str:
    """The metadata as JSON with sorted keys, so equal metadata gives equal bytes."""
    return json.dumps(metadata, sort_keys=True)


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
