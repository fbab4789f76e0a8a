"""The modules that get exported: the denoiser, the classifier-free-guidance graph and, for
a latent model, its VAE's decoder.

Both take and return float32 whatever precision runs inside, so every runtime feeds the same
arrays; an fp16 export casts at the graph's edges.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from entpruner_sdk.models.transformer import DiffusionTransformer
from entpruner_sdk.objectives import combine_guidance


def cpu_reference(model: DiffusionTransformer) -> DiffusionTransformer:
    """``model`` as exports are traced from and compared with: fp32, on the CPU, in eval mode
    (a training model drops labels). A copy unless it is so already, so the caller's model
    stays where and as it was: on its GPU, in bf16, training."""
    weights = next(model.parameters())
    if weights.device.type == "cpu" and weights.dtype == torch.float32 and not model.training:
        return model
    return copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()


class Denoiser(nn.Module):
    """(x, t, y) -> raw model output, with the weights in ``dtype``, on the CPU (a copy: the
    ONNX graph is the same whatever device traced it, and its inputs are made on the CPU)."""

    def __init__(self, model: DiffusionTransformer, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        reference = cpu_reference(model)  # already a copy unless the model was so itself
        self.model = (copy.deepcopy(model) if reference is model else reference).to(dtype)
        self.dtype = dtype

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype), t, y).float()


class GuidedDenoiser(Denoiser):
    """(x, t, y, cfg_scale) -> guided output in one call: the batch is doubled with the null
    class inside the graph and the halves combined, saving a host round trip per step.

    ``cfg_scale`` is per sample ([N]), so requests with different scales can share a batch.
    """

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                cfg_scale: torch.Tensor) -> torch.Tensor:
        null = torch.full_like(y, self.model.null_class)
        out = super().forward(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        n = x.shape[0]  # slicing, not chunk(2): chunk's rounding would pin the batch size
        cond, uncond = out[:n], out[n:]
        return combine_guidance(cond, uncond, cfg_scale, self.model.config.in_channels)


class LatentDecoder(nn.Module):
    """Scaled latents -> images in [-1, 1]: a latent model's samples as the VAE decodes them,
    so an export ships the whole pipeline and its runtime needs neither diffusers nor torch's
    VAE."""

    def __init__(self, vae: nn.Module, scale: float, shift: float = 0.0) -> None:
        super().__init__()
        # on the CPU, as Denoiser: a VAE opened on a GPU would not trace against CPU latents
        self.vae = copy.deepcopy(vae).to(device="cpu", dtype=torch.float32).eval()
        self.scale, self.shift = scale, shift

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.scale + self.shift).sample.clamp(-1, 1)


def example_latents(channels: int, size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Random latents of unit scale, as a sampler ends with."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, size, size, generator=generator)


def example_inputs(model: DiffusionTransformer, batch: int = 2, guided: bool = False,
                   seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random valid inputs: noise, times over the whole schedule, real and null labels."""
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, config.input_size, config.input_size,
                    generator=generator)
    if config.family == "dit":
        t = torch.randint(0, 1000, (batch,), generator=generator)
    else:
        t = torch.rand(batch, generator=generator)
    y = torch.randint(0, config.num_classes, (batch,), generator=generator)
    if batch > 1 and model.null_class < model.y_embedder.embedding_table.num_embeddings:
        y[-1] = model.null_class  # the unconditional row must work too
    if not guided:
        return x, t, y
    scale = 1.0 + 4.0 * torch.rand(batch, generator=generator)
    return x, t, y, scale


def input_names(guided: bool) -> list[str]:
    """The exported graph's inputs: with in-graph guidance, the cfg scale too."""
    return ["x", "t", "y", "cfg_scale"] if guided else ["x", "t", "y"]
