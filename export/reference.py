"""The ``reference`` export: the model as the DiT and SiT repositories' own code reads it.

A pruned model is still a DiT or SiT, only shallower, so the reference ``models.py`` builds it
from its constructor's arguments and loads its state dict unchanged (the kept blocks are
renumbered 0..depth-1, as they are here). The export writes:

- ``model.pt``: a plain state dict, as the released checkpoints are (``find_model`` and
  ``torch.load(..., weights_only=True)`` read it);
- ``model_kwargs.json``: the arguments of ``DiT(...)`` or ``SiT(...)``;
- ``README.md``: the lines that build and load it, and the ``sample.py`` command.

``ReferenceDenoiser`` opens the folder again in PyTorch, building the model from
``model_kwargs.json``, so the export's parity check also checks the arguments.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from entpruner_sdk.export.runtime import ExportedDenoiser
from entpruner_sdk.models.config import SIZES, TransformerConfig
from entpruner_sdk.models.reference import PATH_TYPES, REFERENCE_CLASSES
from entpruner_sdk.models.transformer import DiffusionTransformer
from entpruner_sdk.utils.files import atomic_write_text, atomic_writer

WEIGHTS = "model.pt"
KWARGS = "model_kwargs.json"
README = "README.md"
CLASS_NAMES = {family: name for name, family in REFERENCE_CLASSES.items()}  # dit -> DiT


def constructor_kwargs(config: TransformerConfig) -> dict[str, Any]:
    """The keyword arguments of the reference ``DiT`` / ``SiT`` constructor for ``config``:
    every field but the family, which is the class."""
    kwargs = config.to_dict()
    kwargs.pop("family")
    return kwargs


def write_reference(model: DiffusionTransformer, directory: Path) -> dict[str, str]:
    """Write the three files into ``directory``; returns {role: file name}."""
    state = {key: value.detach().float().cpu().contiguous()
             for key, value in model.state_dict().items()}
    with atomic_writer(directory / WEIGHTS) as tmp:
        torch.save(state, tmp)
    kwargs = constructor_kwargs(model.config)
    atomic_write_text(directory / KWARGS, json.dumps(kwargs, indent=2) + "\n")
    atomic_write_text(directory / README, _readme(model))
    return {"denoiser": WEIGHTS, "kwargs": KWARGS, "readme": README}


def registry_name(config: TransformerConfig) -> str:
    """A name for a pruned depth in the reference registry: ``DiT-D14/2`` for an XL width (the
    usual name of a pruned XL, which ``config_from_name`` reads), ``SiT-B-D6/2`` for another
    published width, ``DiT-W64-D3/2`` for an unpublished one."""
    kind = CLASS_NAMES[config.family]
    size = next((size for size, (_, hidden, _) in SIZES.items()
                 if hidden == config.hidden_size), f"W{config.hidden_size}")
    width = "" if size == "XL" else f"{size}-"
    return f"{kind}-{width}D{config.depth}/{config.patch_size}"


def _readme(model: DiffusionTransformer) -> str:
    config = model.config
    kind, name = CLASS_NAMES[config.family], registry_name(config)
    arch = (f"depth={config.depth}, hidden_size={config.hidden_size}, "
            f"patch_size={config.patch_size}, num_heads={config.num_heads}")
    kept = model.kept_blocks
    lines = [
        f"# {kind} with {config.depth} blocks, for the {kind} repository's own code",
        "",
        f"`{WEIGHTS}` is a state dict in the layout of the {kind} repository's `models.py`, "
        "as its released checkpoints are. The blocks are numbered 0.."
        f"{config.depth - 1}; they are blocks {kept} of the model they were kept from. "
        f"`{KWARGS}` holds the constructor's arguments.",
        "",
        "```python",
        "import json, torch",
        f"from models import {kind}",
        "",
        f"model = {kind}(**json.load(open('{KWARGS}')))",
        f"model.load_state_dict(torch.load('{WEIGHTS}', weights_only=True))",
        "```",
        "",
        f"`sample.py` builds its model from `{kind}_models[args.model]` with the published "
        "depth. Register this depth under a name of its own (in `models.py`) before sampling:",
        "",
        "```python",
        f"{kind}_models['{name}'] = lambda **kw: {kind}({arch}, **kw)",
        "```",
        "",
    ]
    if config.in_channels == 4:  # sample.py decodes with the Stable Diffusion VAE
        mode = "ODE " if config.family == "sit" else ""
        path = model.objective.get("path", "linear")
        flow = f" --path-type {PATH_TYPES[path]}" if config.family == "sit" else ""
        lines += ["```bash",
                  f"python sample.py {mode}--model {name} --ckpt {WEIGHTS} --image-size "
                  f"{config.input_size * 8} --num-classes {config.num_classes}{flow}",
                  "```", ""]
        if config.num_classes != 1000:  # its labels are ImageNet's
            lines += [f"`sample.py` draws the ImageNet classes in its `class_labels` list; set "
                      f"it to classes of this model, 0..{config.num_classes - 1}.", ""]
    if config.family == "sit":
        path = model.objective.get("path", "linear")
        lines += [f"It predicts the velocity on the {PATH_TYPES[path]} path.", ""]
    return "\n".join(lines)


class ReferenceDenoiser(ExportedDenoiser):
    """A ``reference`` export run in PyTorch: the model built from ``model_kwargs.json`` and
    the family in the manifest, holding ``model.pt``."""

    backend = "pytorch"

    def __init__(self, directory: str | os.PathLike, metadata: dict[str, Any],
                 device: str | torch.device = "cpu") -> None:
        directory = Path(directory)
        super().__init__(metadata, (directory / WEIGHTS, directory / KWARGS))
        kwargs = json.loads((directory / KWARGS).read_text())
        config = TransformerConfig(family=metadata["family"], **kwargs)
        state = torch.load(directory / WEIGHTS, map_location="cpu", weights_only=True)
        self.model = DiffusionTransformer(config)
        self.model.load_state_dict(state, strict=True)
        self.device = torch.device(device)
        self.model.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, x, t, y):
        device = self.device
        out = self.model(x.to(device).float(), t.to(device, self.time_dtype), y.to(device))
        return out.to(x.device)
