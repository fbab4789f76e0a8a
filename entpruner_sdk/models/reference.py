"""What the DiT and SiT repositories' own code leaves behind, read as such.

- Their ``train.py`` saves ``{"model", "ema", "opt", "args"}``, where ``args`` is the run's
  ``argparse.Namespace``. Its ``model`` name ("SiT-B/2") says the family, which weight
  shapes cannot; SiT's ``path_type`` and ``prediction`` say what the weights predict, and
  ``num_classes`` whether the label table has a null row. ``TrainingArgs`` reads them.
- Their ``models.py`` modules (classes ``DiT`` and ``SiT``) hold the reference layout with
  ``num_heads`` as an attribute, so ``from_reference_module`` converts one without asking.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from entpruner_sdk.models.config import SIZES, TransformerConfig
from entpruner_sdk.models.transformer import DiffusionTransformer

# Our flow paths, as SiT's ``--path-type`` spells them; VP, its third, is not implemented here.
PATH_TYPES = {"linear": "Linear", "gvp": "GVP"}
FLOW_PATHS = tuple(PATH_TYPES)
REFERENCE_CLASSES = {"DiT": "dit", "SiT": "sit"}
# The reference's own registry names ("DiT-XL/2") and a user's additions ("SiT-tiny").
_FAMILY_PREFIX = re.compile(r"^(DiT|SiT)-", re.IGNORECASE)


def namespace_allowed() -> contextlib.AbstractContextManager:
    """A context in which ``torch.load(weights_only=True)`` may build an ``argparse.Namespace``.

    Building one sets attributes from the file's plain values and runs no code from it, so
    allowing it keeps the load safe; torch before 2.5 has no scoped form, so there it is
    allowed for the process.
    """
    scoped = getattr(torch.serialization, "safe_globals", None)
    if scoped is not None:
        return scoped([argparse.Namespace])
    torch.serialization.add_safe_globals([argparse.Namespace])
    return contextlib.nullcontext()


@dataclass(frozen=True)
class TrainingArgs:
    """The settings a reference ``train.py`` run recorded beside its weights.

    ``values`` keeps those that are plain data (names, sizes, flags), which become the loaded
    model's ``provenance["trained_with"]``; data paths and logging settings are left out.
    """

    values: dict[str, Any]

    # settings that describe the model and how it was trained, not where the run kept files
    KEPT = ("model", "image_size", "num_classes", "vae", "path_type", "prediction",
            "loss_weight", "train_eps", "sample_eps", "global_batch_size", "epochs",
            "global_seed", "cfg_scale", "ema_decay", "diffusion_steps")

    @classmethod
    def read(cls, args: Any) -> TrainingArgs | None:
        """The args of a training checkpoint (a Namespace or a dict), or None without any."""
        if isinstance(args, argparse.Namespace):
            args = vars(args)
        if not isinstance(args, dict):
            return None
        plain = (str, int, float, bool, type(None))
        return cls({key: args[key] for key in cls.KEPT
                    if key in args and isinstance(args[key], plain)})

    @property
    def model_name(self) -> str | None:
        """The run's ``--model``, e.g. ``"SiT-XL/2"``."""
        name = self.values.get("model")
        return name if isinstance(name, str) else None

    @property
    def family(self) -> str | None:
        """``"dit"`` or ``"sit"`` from the model name's prefix, else None."""
        found = _FAMILY_PREFIX.match(self.model_name or "")
        return found.group(1).lower() if found else None

    def objective(self, family: str) -> dict[str, Any]:
        """The objective settings the weights were trained with: SiT's flow path. A path or
        prediction this package does not implement is refused, since sampling the weights
        as a linear-path velocity model would give noise without an error."""
        if family != "sit":
            return {}
        path = str(self.values.get("path_type") or "Linear")
        if path.lower() not in FLOW_PATHS:
            raise ValueError(
                f"the checkpoint was trained on SiT's {path} path; entpruner implements the "
                "Linear and GVP paths only, so it cannot sample or fine-tune these weights")
        prediction = str(self.values.get("prediction") or "velocity")
        if prediction.lower() != "velocity":
            raise ValueError(
                f"the checkpoint's SiT predicts the {prediction} (--prediction {prediction}); "
                "entpruner's flow objective is velocity prediction, the reference default, "
                "so it cannot sample or fine-tune these weights")
        return {"path": path.lower()}

    def classes(self, table_rows: int) -> tuple[int, float] | None:
        """``(num_classes, class_dropout_prob)`` when the recorded class count tells whether
        the label table has a null row (it has one only when labels were dropped)."""
        recorded = self.values.get("num_classes")
        if not isinstance(recorded, int) or isinstance(recorded, bool):
            return None
        if recorded == table_rows - 1:
            return recorded, 0.1
        if recorded == table_rows:  # trained without label dropout: no null class
            return recorded, 0.0
        warnings.warn(f"the checkpoint's args record {recorded} classes but its label table "
                      f"has {table_rows} rows; the table is followed", stacklevel=5)
        return None


# The released files' names: DiT-XL-2-256x256.pt, DiT-XL-2-512x512.pt, SiT-XL-2-256x256.pt.
_RELEASE_NAME = re.compile(r"^(DiT|SiT)-(XL|L|B|S)-(\d+)-(\d+)(?:x\d+)?\.pt$")


def family_from_release_name(name: str, config: TransformerConfig) -> str | None:
    """The family a released file's name states, when the rest of the name (size, patch,
    resolution) is what its weights are: a file so named and so shaped is that release.
    None for any other name or shape, which then needs ``family=``."""
    found = _RELEASE_NAME.match(name)
    if not found:
        return None
    family, size, patch, resolution = found.groups()
    depth, hidden, _ = SIZES[size]
    named = (depth, hidden, int(patch), int(resolution) // 8, 4)  # on SD-VAE latents
    shape = (config.depth, config.hidden_size, config.patch_size, config.input_size,
             config.in_channels)
    return family.lower() if named == shape else None


def from_reference_module(module: torch.nn.Module) -> DiffusionTransformer:
    """A ``DiffusionTransformer`` with the weights of a ``DiT`` or ``SiT`` built by the
    reference ``models.py`` (or its ``DistributedDataParallel`` wrapper): the family is the
    class, the head count its ``num_heads``, the null class its label dropout; the rest is
    read from the weights."""
    from entpruner_sdk.models.io import build, infer_config

    inner = getattr(module, "module", module)  # DDP keeps the model as .module
    kind = type(inner).__name__
    state = {key: value.detach().cpu() for key, value in inner.state_dict().items()}
    config = infer_config(state, REFERENCE_CLASSES[kind], num_heads=int(inner.num_heads))
    labels = getattr(inner, "y_embedder", None)
    if getattr(labels, "dropout_prob", None) == 0:  # no null row, which the table hides
        config = config.replace(num_classes=config.num_classes + 1, class_dropout_prob=0.0)
    return build(state, config, {"source": f"a reference {kind} module"})


def is_reference_module(module: Any) -> bool:
    """Whether ``module`` is (or wraps) a DiT or SiT of the reference ``models.py``."""
    inner = getattr(module, "module", module)
    return (isinstance(inner, torch.nn.Module) and type(inner).__name__ in REFERENCE_CLASSES
            and isinstance(getattr(inner, "num_heads", None), int)
            and "x_embedder.proj.weight" in inner.state_dict())


def config_with_args(config: TransformerConfig, args: TrainingArgs | None,
                     table_rows: int) -> TransformerConfig:
    """``config`` with the class count corrected by the args, where they settle it."""
    found = args.classes(table_rows) if args else None
    if found is None:
        return config
    num_classes, dropout = found
    return config.replace(num_classes=num_classes, class_dropout_prob=dropout)
