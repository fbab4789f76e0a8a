"""The ``diffusers`` export: a DiT as diffusers' own classes read it.

A pruned DiT is still a ``DiTTransformer2DModel``, only with fewer layers, so diffusers loads it
with ``from_pretrained`` and ``DiTPipeline`` samples it. The export writes:

- ``transformer/``: the ``DiTTransformer2DModel`` folder (``config.json`` and safetensors
  weights, converted by ``models.diffusers_convert``);
- with a VAE (``vae=``, else the one the model records), a whole ``DiTPipeline`` folder around
  it: ``vae/``, ``scheduler/`` (the pipeline's own when the model was loaded from one, else
  DDIM on DiT's schedule) and ``model_index.json`` with ``id2label`` when the classes are
  named, as the DiT release on the Hub has them;
- ``README.md``: the lines that load it.

entpruner's own loader reads the folder back (``load``), as it reads the release.
``DiffusersDenoiser`` opens it in PyTorch through diffusers for the parity check. diffusers
spaces the timestep frequencies over 127 where the reference DiT spaces them over 128
(``models.diffusers_convert``); the check aligns that one setting, so it compares the weights
and the architecture, and ``DiTPipeline`` samples the export as it samples the release.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch

from entpruner_sdk.data.latents import LatentSpace
from entpruner_sdk.export.runtime import ExportedDenoiser
from entpruner_sdk.models.diffusers_convert import reference_to_diffusers
from entpruner_sdk.models.transformer import DiffusionTransformer
from entpruner_sdk.utils.files import atomic_write_text

TRANSFORMER = "transformer"
# DiTPipeline's guidance takes this label as the null class, whatever the model's class count
IMAGENET_CLASSES = 1000
WEIGHTS = f"{TRANSFORMER}/diffusion_pytorch_model.safetensors"
README = "README.md"


def _diffusers() -> Any:
    try:
        import diffusers
    except ImportError as error:
        raise ImportError("the diffusers export needs diffusers: pip install "
                          "'entpruner-sdk[latent]'") from error
    return diffusers


def check_exportable(model: DiffusionTransformer, vae: LatentSpace | None) -> None:
    """Refuse, before anything is written, what diffusers cannot hold: a SiT (diffusers has
    no SiT class), a DiT without a null class (its label embedder always has one) and a
    pipeline whose VAE shifts its latents (``DiTPipeline`` only scales them)."""
    if model.config.family != "dit":
        raise ValueError("diffusers has no SiT class: export a SiT to onnx, aoti or reference "
                         "(the SiT repository's code) instead")
    if model.y_embedder.embedding_table.num_embeddings != model.config.num_classes + 1:
        raise ValueError("this DiT has no null class, which diffusers' DiTTransformer2DModel "
                         "always has: export it to onnx or reference instead")
    if vae is not None and model.config.num_classes > IMAGENET_CLASSES:
        raise ValueError(f"DiTPipeline takes class {IMAGENET_CLASSES} as the null class of "
                         "guidance, and this DiT has more classes: export the transformer "
                         "alone (without a VAE), or to onnx")
    if vae is not None and vae.shift:
        raise ValueError(f"DiTPipeline scales latents but never shifts them, and this VAE's "
                         f"shift is {vae.shift}: export without the VAE (the transformer "
                         "alone), or to onnx with --vae")


def write_diffusers(model: DiffusionTransformer, directory: Path,
                    vae: LatentSpace | None) -> dict[str, str]:
    """Write ``transformer/`` and, with ``vae``, the pipeline around it into ``directory``;
    returns {role: file name}."""
    diffusers = _diffusers()
    check_exportable(model, vae)
    transformer = _transformer(diffusers, model, IMAGENET_CLASSES if vae is not None else None)
    files = {"denoiser": WEIGHTS, "config": f"{TRANSFORMER}/config.json", "readme": README}
    if vae is None:
        transformer.save_pretrained(directory / TRANSFORMER, safe_serialization=True)
    else:
        decoder = vae.vae
        if decoder.config.get("scaling_factor") != vae.scale:  # the latents' own factor
            decoder = copy.deepcopy(decoder)
            decoder.register_to_config(scaling_factor=vae.scale)
        pipeline = diffusers.DiTPipeline(transformer, decoder, _scheduler(diffusers, model))
        pipeline.save_pretrained(directory, safe_serialization=True)
        _name_classes(directory / "model_index.json", model.provenance.get("class_names")
                      or [str(c) for c in range(model.config.num_classes)])
        files["pipeline"] = "model_index.json"
    atomic_write_text(directory / README, _readme(model, vae is not None))
    return files


def _transformer(diffusers: Any, model: DiffusionTransformer, classes: int | None) -> Any:
    """The model as a ``DiTTransformer2DModel``; with ``classes``, its label embedder padded
    to that many classes, the null row last and copied into the rows between, so that
    ``DiTPipeline``'s guidance finds the null class at label 1000 (``id2label`` says how
    many classes are real, and ``models.diffusers_convert`` drops the padding again)."""
    config = model.config
    count = max(classes or 0, config.num_classes)
    state = {key: value.detach().float().cpu().contiguous()
             for key, value in model.state_dict().items() if key != "pos_embed"}
    table = state["y_embedder.embedding_table.weight"]
    null = table[-1:]
    state["y_embedder.embedding_table.weight"] = torch.cat(
        [table[:config.num_classes], null.expand(count - config.num_classes, -1), null])
    transformer = diffusers.DiTTransformer2DModel(
        num_attention_heads=config.num_heads,
        attention_head_dim=config.hidden_size // config.num_heads,
        in_channels=config.in_channels, out_channels=config.out_channels,
        num_layers=config.depth, sample_size=config.input_size,
        patch_size=config.patch_size, num_embeds_ada_norm=count)
    transformer.load_state_dict(reference_to_diffusers(state), strict=True)
    return transformer.eval()


def _scheduler(diffusers: Any, model: DiffusionTransformer) -> Any:
    """The pipeline's own scheduler when the model was loaded from one, else DDIM on DiT's
    noise schedule (1000 linear betas from 0.0001 to 0.02), the sampler entpruner uses."""
    source = (model.metadata.get("pipeline") or {}).get("path")
    folder = Path(source or "") / "scheduler"
    if source and (folder / "scheduler_config.json").is_file():
        kind = json.loads((folder / "scheduler_config.json").read_text()).get("_class_name")
        if hasattr(diffusers, str(kind)):
            return getattr(diffusers, kind).from_pretrained(folder)
    return diffusers.DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                   beta_schedule="linear", clip_sample=False)


def _name_classes(index_file: Path, names: list[str] | None) -> None:
    """``id2label`` in ``model_index.json``, which ``DiTPipeline.get_label_ids`` reads."""
    if not names:
        return
    index = json.loads(index_file.read_text())
    index["id2label"] = {str(i): name for i, name in enumerate(names)}
    atomic_write_text(index_file, json.dumps(index, indent=2) + "\n")


def _readme(model: DiffusionTransformer, pipeline: bool) -> str:
    config = model.config
    kept = model.kept_blocks
    lines = [f"# DiT with {config.depth} blocks, for diffusers", "",
             f"`{TRANSFORMER}/` is a `DiTTransformer2DModel` with {config.depth} layers; they "
             f"are blocks {kept} of the model they were kept from.", ""]
    if pipeline:
        names = model.provenance.get("class_names")
        label = (f"pipe.get_label_ids([{names[0]!r}])" if names else "[0]")
        lines += ["This folder is a `DiTPipeline`:", "", "```python", "import torch",
                  "from diffusers import DiTPipeline", "",
                  "pipe = DiTPipeline.from_pretrained('.')",
                  f"images = pipe(class_labels={label}, num_inference_steps=50, "
                  "guidance_scale=4.0).images", "```", ""]
    else:
        lines += ["```python", "from diffusers import DiTTransformer2DModel", "",
                  f"transformer = DiTTransformer2DModel.from_pretrained('{TRANSFORMER}')",
                  "```", "", "Export with the model's VAE (`--vae DIR`) for a whole "
                  "`DiTPipeline`.", ""]
    lines += ["diffusers spaces the timestep frequencies over 127 where the reference DiT "
              "spaces them over 128, so it samples this model as it samples the released "
              "DiT; `entpruner sample --model .` samples it as the reference computes it.", ""]
    return "\n".join(lines)


class DiffusersDenoiser(ExportedDenoiser):
    """A ``diffusers`` export run in PyTorch by diffusers' ``DiTTransformer2DModel``, its
    timestep frequencies spaced as the reference DiT's (``downscale_freq_shift`` 0)."""

    backend = "diffusers"

    def __init__(self, directory: str | os.PathLike, metadata: dict[str, Any],
                 device: str | torch.device = "cpu") -> None:
        directory = Path(directory)
        super().__init__(metadata, (directory / WEIGHTS, directory / TRANSFORMER / "config.json"))
        model = _diffusers().DiTTransformer2DModel.from_pretrained(
            directory / TRANSFORMER, low_cpu_mem_usage=False)  # no nag about accelerate
        for block in model.transformer_blocks:  # the reference DiT's spacing (see above)
            block.norm1.emb.time_proj.downscale_freq_shift = 0
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        if (directory / "vae" / "config.json").is_file():  # a pipeline: its VAE decodes
            self.decoder = LatentSpace.from_pretrained(directory / "vae", device=self.device)

    @torch.no_grad()
    def __call__(self, x, t, y):
        device = self.device
        out = self.model(x.to(device).float(), timestep=t.to(device, self.time_dtype),
                         class_labels=y.to(device)).sample
        return out.to(x.device)
