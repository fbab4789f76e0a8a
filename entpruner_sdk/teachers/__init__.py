"""Bundled teachers: a DiT and a SiT trained on each bundled dataset.

Each lives in its own folder beside this file (``dit-digits``, ``sit-digits``, ``dit-photos``,
``sit-photos``) as a saved model directory plus ``TRAINING.md`` with the exact command and
seed that produced it. ``SAMPLING`` holds the sampler settings each is evaluated with.
"""

from __future__ import annotations

from pathlib import Path

import torch

from entpruner_sdk.models.io import load
from entpruner_sdk.models.transformer import DiffusionTransformer

TEACHERS = ("dit-digits", "sit-digits", "dit-photos", "sit-photos")
DEFAULT_TEACHERS = ("dit-digits", "sit-digits")  # the ones on the default dataset
SAMPLING = {
    "dit": {"sampler": "ddim", "steps": 50, "cfg_scale": 2.0},
    "sit": {"sampler": "heun", "steps": 25, "cfg_scale": 2.0},
}
ROOT = Path(__file__).parent


def teacher_path(name: str) -> Path:
    if name not in TEACHERS:
        raise ValueError(f"unknown teacher {name!r}; bundled teachers: {', '.join(TEACHERS)}")
    return ROOT / name


def load_teacher(name: str = "dit-digits", device: str | torch.device = "cpu"
                 ) -> DiffusionTransformer:
    """Load a bundled teacher (see ``TEACHERS``)."""
    path = teacher_path(name)
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(
            f"the bundled teacher {name} is missing from {path}; reinstall entpruner-sdk or "
            f"train it with the command in docs/teachers.md"
        )
    return load(path, device=device)


def resolve_model(spec: str, family: str | None = None, device: str | torch.device = "cpu",
                  num_heads: int | None = None) -> DiffusionTransformer:
    """A bundled teacher name, any path ``load`` accepts, or a ``compress`` output folder
    (its ``model/`` subfolder is loaded). ``family`` and ``num_heads``: for released files,
    whose weights do not record them."""
    if spec in TEACHERS:
        return load_teacher(spec, device)
    if (Path(spec) / "model" / "config.json").is_file() and not (
            Path(spec) / "config.json").is_file():
        spec = str(Path(spec) / "model")
    return load(spec, family, device=device, num_heads=num_heads)
