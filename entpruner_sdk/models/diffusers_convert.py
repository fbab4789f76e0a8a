"""Key conversion between diffusers' ``DiTTransformer2DModel`` and the reference DiT layout.

diffusers splits qkv into ``to_q/to_k/to_v``, names the output projection ``to_out.0`` and
keeps a copy of the timestep / label embedders in every block (the copies are identical in
converted checkpoints; block 0's is used, as diffusers itself does for the final layer).

The loaded model computes the reference DiT, whose weights diffusers' released DiT folders
hold. diffusers' own forward differs in one place: its timestep embedding spaces the
frequencies over ``half - 1`` (``downscale_freq_shift=1``) where the reference uses ``half``,
so its outputs differ from the reference's at every t > 0.

A ``DiTPipeline`` folder (``model_index.json`` beside ``transformer/``, ``vae/`` and
``scheduler/``: the DiT release on the Hub, ``facebook/DiT-XL-2-256``) loads its transformer as
a DiT, named classes and all; its ``vae/`` is recorded as the VAE the model decodes with.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from entpruner_sdk.models.config import TransformerConfig
from entpruner_sdk.models.layers import sincos_pos_embed_2d
from entpruner_sdk.models.transformer import DiffusionTransformer

_BLOCK_RENAMES = {
    "norm1.linear": "adaLN_modulation.1",
    "attn1.to_out.0": "attn.proj",
    "ff.net.0.proj": "mlp.fc1",
    "ff.net.2": "mlp.fc2",
}
_GLOBAL_RENAMES = {
    "pos_embed.proj": "x_embedder.proj",
    "proj_out_1": "final_layer.adaLN_modulation.1",
    "proj_out_2": "final_layer.linear",
    "transformer_blocks.0.norm1.emb.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "transformer_blocks.0.norm1.emb.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "transformer_blocks.0.norm1.emb.class_embedder.embedding_table": "y_embedder.embedding_table",
}


def diffusers_to_reference(state: dict[str, torch.Tensor], hidden_size: int, input_tokens: int
                           ) -> dict[str, torch.Tensor]:
    """Convert a diffusers DiT state dict to reference keys (adds the fixed ``pos_embed``)."""
    out: dict[str, torch.Tensor] = {}
    for old, new in _GLOBAL_RENAMES.items():
        for suffix in ("weight", "bias"):
            if f"{old}.{suffix}" in state:
                out[f"{new}.{suffix}"] = state[f"{old}.{suffix}"]
    depth = 1 + max(int(m.group(1)) for k in state
                    if (m := re.match(r"transformer_blocks\.(\d+)\.", k)))
    for i in range(depth):
        src, dst = f"transformer_blocks.{i}", f"blocks.{i}"
        for suffix in ("weight", "bias"):
            out[f"{dst}.attn.qkv.{suffix}"] = torch.cat(
                [state[f"{src}.attn1.to_{p}.{suffix}"] for p in "qkv"], dim=0
            )
            for old, new in _BLOCK_RENAMES.items():
                out[f"{dst}.{new}.{suffix}"] = state[f"{src}.{old}.{suffix}"]
    grid = int(input_tokens**0.5)
    out["pos_embed"] = torch.from_numpy(sincos_pos_embed_2d(hidden_size, grid)).float()[None]
    return out


def reference_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse conversion (the embedder copies are written into every block)."""
    out: dict[str, torch.Tensor] = {}
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    for old, new in _GLOBAL_RENAMES.items():
        for suffix in ("weight", "bias"):
            if f"{new}.{suffix}" not in state:
                continue
            value = state[f"{new}.{suffix}"]
            if old.startswith("transformer_blocks.0."):
                for i in range(depth):
                    out[old.replace("blocks.0.", f"blocks.{i}.", 1) + f".{suffix}"] = value
            else:
                out[f"{old}.{suffix}"] = value
    for i in range(depth):
        src, dst = f"blocks.{i}", f"transformer_blocks.{i}"
        for suffix in ("weight", "bias"):
            q, k, v = state[f"{src}.attn.qkv.{suffix}"].chunk(3, dim=0)
            out.update({f"{dst}.attn1.to_q.{suffix}": q, f"{dst}.attn1.to_k.{suffix}": k,
                        f"{dst}.attn1.to_v.{suffix}": v})
            for old, new in _BLOCK_RENAMES.items():
                out[f"{dst}.{old}.{suffix}"] = state[f"{src}.{new}.{suffix}"]
    return out


def load_diffusers_dit(path: Path, document: dict[str, Any], family: str) -> DiffusionTransformer:
    """Load a diffusers ``DiTTransformer2DModel`` directory as a reference-layout model."""
    from entpruner_sdk.models.io import CheckpointError, file_sha256, read_state_dict

    weights = path / "diffusion_pytorch_model.safetensors"
    if not weights.exists():
        weights = path / "diffusion_pytorch_model.bin"
    if not weights.exists():
        raise CheckpointError(f"{path} has no diffusion_pytorch_model.safetensors or .bin")
    state = read_state_dict(weights)  # safely, and a corrupt file is named with the fix
    return from_diffusers(document, state, family, {
        "source": f"diffusers:{path.name}", "source_sha256": file_sha256(weights)})


def from_diffusers_module(module: torch.nn.Module, family: str = "dit") -> DiffusionTransformer:
    """A ``DiTTransformer2DModel`` held in memory (``DiTPipeline``'s ``transformer``) as a
    reference-layout model, its weights copied. ``family``: DiT, as ``DiTPipeline`` samples
    it; ``"sit"`` for a SiT kept in that class."""
    state = {key: value.detach().clone() for key, value in module.state_dict().items()}
    return from_diffusers(dict(module.config), state, family,
                          {"source": f"diffusers:{type(module).__name__} (in memory)"})


def from_diffusers(document: dict[str, Any], state: dict[str, torch.Tensor], family: str,
                   provenance: dict[str, Any]) -> DiffusionTransformer:
    """A model from a ``DiTTransformer2DModel``'s config (its ``config.json``) and weights."""
    from entpruner_sdk.models.io import CheckpointError

    heads, head_dim = document["num_attention_heads"], document["attention_head_dim"]
    hidden, patch = heads * head_dim, document["patch_size"]
    in_channels = document["in_channels"]
    out_channels = document.get("out_channels") or in_channels
    config = TransformerConfig(
        family=family,  # type: ignore[arg-type]
        input_size=document["sample_size"],
        patch_size=patch,
        in_channels=in_channels,
        hidden_size=hidden,
        depth=document["num_layers"],
        num_heads=heads,
        num_classes=document["num_embeds_ada_norm"],
        learn_sigma=out_channels == 2 * in_channels,
    )
    reference = diffusers_to_reference(state, hidden, config.num_patches)
    model = DiffusionTransformer(config, provenance)
    try:
        model.load_state_dict(reference, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"diffusers weights ({provenance['source']}) do not fit "
                              f"{config}: {error}") from error
    return model


def load_diffusers_pipeline(path: Path, family: str | None) -> DiffusionTransformer:
    """The transformer of a diffusers pipeline folder (``DiTPipeline``'s), as a model: a DiT
    (the pipeline samples it so) unless ``family`` says otherwise for another pipeline. Its
    classes are named as the pipeline's ``id2label`` names them (the first name of each), and
    its ``vae/`` folder is recorded (``metadata["pipeline"]``) as the VAE to decode with."""
    from entpruner_sdk.models.io import CheckpointError, load

    index = _read_json(path / "model_index.json")
    kind, transformer = index.get("_class_name"), index.get("transformer")
    if not (isinstance(transformer, list) and transformer[-1] == "DiTTransformer2DModel"):
        raise CheckpointError(f"{path} is a diffusers {kind} folder whose transformer is "
                              f"{transformer}, not a DiTTransformer2DModel: entpruner prunes "
                              "DiT and SiT")
    if kind == "DiTPipeline":
        if family not in (None, "dit"):
            raise CheckpointError(f"{path} is a DiTPipeline, which samples its transformer as "
                                  f"a DiT (epsilon prediction), not family={family!r}: drop it")
        family = "dit"
        _check_scheduler(path / "scheduler")
    model = _unpadded(load(path / "transformer", family), index.get("id2label"))
    return _with_pipeline(model, path, index.get("id2label"), path / "vae")


def from_diffusers_pipeline(pipeline: Any) -> DiffusionTransformer:
    """A ``DiTPipeline`` held in memory: its transformer's weights as a DiT, and, when it was
    loaded from a folder (``DiTPipeline.from_pretrained``), that folder's class names and VAE
    folder, as ``load_diffusers_pipeline`` takes them."""
    folder = Path(str(pipeline.config.get("_name_or_path") or ""))
    vae = Path(str(getattr(getattr(pipeline, "vae", None), "config", {}).get("_name_or_path")
                   or ""))
    id2label = (_read_json(folder / "model_index.json").get("id2label")
                if folder.parts and (folder / "model_index.json").is_file() else None)
    model = _unpadded(from_diffusers_module(pipeline.transformer, "dit"), id2label)
    return _with_pipeline(model, folder, id2label, vae if vae.parts else None)


def _unpadded(model: DiffusionTransformer, id2label: Any) -> DiffusionTransformer:
    """``model`` with its own class count again when a pipeline's label embedder was padded
    to 1000 classes for ``DiTPipeline``'s guidance (whose null class is label 1000): the
    pipeline names fewer classes (``id2label``) and every row past them is the null row, as
    entpruner's diffusers export writes them. Anything else is left as it is."""
    from entpruner_sdk.models.transformer import resize_classes

    count = len(id2label) if isinstance(id2label, dict) else 0
    table = model.y_embedder.embedding_table.weight
    if not 0 < count < model.config.num_classes or len(table) != model.config.num_classes + 1:
        return model
    if not torch.equal(table[count:], table[-1:].expand(len(table) - count, -1)):
        return model
    resized = resize_classes(model, count)
    resized.provenance.pop("resized_classes")
    return resized


def _with_pipeline(model: DiffusionTransformer, folder: Path, id2label: Any,
                   vae: Path | None) -> DiffusionTransformer:
    """``model`` with the pipeline's class names and its VAE folder recorded, when it has
    them (``metadata["pipeline"]``, which ``latents.recorded_vae`` reads)."""
    names = _class_names(id2label, model.config.num_classes)
    if names and names != [str(c) for c in range(len(names))]:  # numbers name nothing
        model.provenance["class_names"] = names
    if vae is not None and (vae / "config.json").is_file():
        factors = _read_json(vae / "config.json")
        record = {"path": str(vae.resolve()), "fingerprint": None,  # as latents record theirs
                  "scale": float(factors.get("scaling_factor") or 0.18215),
                  "shift": float(factors.get("shift_factor") or 0.0)}
        model.metadata["pipeline"] = {"path": str(folder.resolve()) if folder.parts else None,
                                      "vae": record}
    return model


def _read_json(file: Path) -> dict[str, Any]:
    from entpruner_sdk.models.io import CheckpointError

    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {file}: {error}") from error


def _class_names(id2label: Any, num_classes: int) -> list[str]:
    """The pipeline's class names by id (``"tench, Tinca tinca"`` gives ``tench``), when it
    names every class once; else none."""
    if not isinstance(id2label, dict) or len(id2label) != num_classes:
        return []
    try:
        names = [str(id2label[str(i)] if str(i) in id2label else id2label[i]).split(",")[0]
                 .strip() for i in range(num_classes)]
    except KeyError:
        return []
    return names if all(names) else []


def _check_scheduler(folder: Path) -> None:
    """Warn when the pipeline's noise schedule is not DiT's (linear betas 1e-4 to 0.02 over 1000
    steps), which is the one entpruner trains and samples with."""
    if not (folder / "scheduler_config.json").is_file():
        return
    config = _read_json(folder / "scheduler_config.json")
    found = (config.get("num_train_timesteps", 1000), config.get("beta_schedule", "linear"),
             config.get("beta_start", 1e-4), config.get("beta_end", 0.02))
    if found[:2] != (1000, "linear") or abs(found[2] - 1e-4) > 1e-9 or abs(found[3] - 0.02) > 1e-9:
        warnings.warn(f"{folder} trains on {found[0]} steps of {found[1]} betas from {found[2]} "
                      f"to {found[3]}; entpruner samples and fine-tunes a DiT on DiT's own "
                      "schedule (1000 linear betas from 0.0001 to 0.02)", stacklevel=3)
