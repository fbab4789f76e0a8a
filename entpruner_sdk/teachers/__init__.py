"""Bundled teachers: a DiT and a SiT trained on each bundled dataset.

Each lives in its own folder beside this file (``dit-digits``, ``sit-digits``, ``dit-photos``,
``sit-photos``) as a saved model directory plus ``TRAINING.md`` with the exact command and
seed that produced it. ``SAMPLING`` holds the sampler settings each is evaluated with.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import torch

from entpruner_sdk.models.io import CheckpointError, check_flow_path, load
from entpruner_sdk.models.reference import from_reference_module, is_reference_module
from entpruner_sdk.models.transformer import DiffusionTransformer
from entpruner_sdk.objectives import OBJECTIVES
from entpruner_sdk.utils.hub import cached_snapshot, download_hint, looks_like_repo_id

TEACHERS = ("dit-digits", "sit-digits", "dit-photos", "sit-photos")
DEFAULT_TEACHERS = ("dit-digits", "sit-digits")  # the ones on the default dataset
# each family's default sampling (its objective's): what the teachers are evaluated with
SAMPLING = {family: objective.sampling_defaults() for family, objective in OBJECTIVES.items()}
ROOT = Path(__file__).parent


def teacher_path(name: str) -> Path:
    """The folder of the bundled teacher ``name``; refuses an unknown name, listing the teachers."""
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
    teacher = load(path, device=device)
    teacher.loaded_from = name  # by name: the same teacher on any machine
    return teacher


def resolve_model(spec: str | os.PathLike, family: str | None = None,
                  device: str | torch.device = "cpu", num_heads: int | None = None,
                  flow_path: str | None = None) -> DiffusionTransformer:
    """A bundled teacher name, or any path ``models.io.load`` accepts (a ``compress`` output
    folder included): ``entpruner_sdk.load``. ``family``, ``num_heads`` and ``flow_path``:
    for released files, whose weights do not record them."""
    spec = os.fspath(spec)
    if spec in TEACHERS:
        teacher = load_teacher(spec, device)
        check_flow_path(teacher, flow_path, spec)
        return teacher
    if not Path(spec).exists():
        cached = cached_snapshot(spec)  # a Hub name the Hugging Face cache holds
        if cached is not None:
            return load(cached, family, device=device, num_heads=num_heads, flow_path=flow_path)
        close = difflib.get_close_matches(spec, TEACHERS, n=1)
        raise CheckpointError(
            f"{spec} is neither a bundled teacher ({', '.join(TEACHERS)}) nor an existing file "
            "or folder" + (f"; did you mean {close[0]}?" if close else
                           "; if it names a Hugging Face Hub repository, the local cache "
                           f"does not hold it: {download_hint(spec)}"
                           if looks_like_repo_id(spec) else
                           "; pass a checkpoint file or a model directory"))
    return load(spec, family, device=device, num_heads=num_heads, flow_path=flow_path)


def as_model(model: DiffusionTransformer | str | os.PathLike, role: str = "model"
             ) -> DiffusionTransformer:
    """What every verb takes as a model: a ``DiffusionTransformer`` as it is, a ``DiT`` or
    ``SiT`` module of the reference ``models.py`` or diffusers' ``DiTTransformer2DModel`` (or
    the ``DiTPipeline`` holding one; taken as a DiT) (converted, weights copied), or a name or
    path ``resolve_model`` reads (a bundled teacher, a saved model, a compress output, one of
    our checkpoints). Anything else is refused with the way to convert it; ``role`` names the
    argument in that message."""
    if isinstance(model, DiffusionTransformer):
        return model
    if isinstance(model, (str, os.PathLike)):
        return resolve_model(os.fspath(model))
    if is_reference_module(model):
        return from_reference_module(model)
    kind = type(model).__name__
    if kind in ("DiTPipeline", "DiTTransformer2DModel"):  # diffusers' DiT, held in memory
        from entpruner_sdk.models import diffusers_convert

        return (diffusers_convert.from_diffusers_pipeline(model) if kind == "DiTPipeline"
                else diffusers_convert.from_diffusers_module(model, "dit"))
    if isinstance(model, torch.nn.Module):
        fix = ("the DiT and SiT classes of the reference models.py are taken as they are, and "
               "diffusers' DiTTransformer2DModel and DiTPipeline; another module in their "
               "layout converts with entpruner_sdk.models.io.from_state_dict("
               "module.state_dict(), 'dit' or 'sit', num_heads=its head count), and a saved "
               "file loads with entpruner_sdk.load(path, family=...)")
        raise TypeError(f"{role} is a {kind}, not an entpruner DiffusionTransformer; {fix}")
    raise TypeError(f"{role} must be a DiffusionTransformer, a bundled teacher name or a "
                    f"path to a model; got a value of type {kind}")
