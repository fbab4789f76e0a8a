"""Key conversion between diffusers' ``DiTTransformer2DModel`` and the reference DiT layout.

diffusers splits qkv into ``to_q/to_k/to_v``, names the output projection ``to_out.0`` and
keeps a copy of the timestep / label embedders in every block (the copies are identical in
converted checkpoints; block 0's is used, as diffusers itself does for the final layer).

The loaded model computes the reference DiT, whose weights diffusers' released DiT folders
hold. diffusers' own forward differs in one place: its timestep embedding spaces the
frequencies over ``half - 1`` (``downscale_freq_shift=1``) where the reference uses ``half``,
so its outputs differ from the reference's at every t > 0.
"""

from __future__ import annotations

import re
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
    model = DiffusionTransformer(
        config, {"source": f"diffusers:{path.name}", "source_sha256": file_sha256(weights)}
    )
    try:
        model.load_state_dict(reference, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"diffusers weights in {path} do not fit {config}: {error}"
                              ) from error
    return model
