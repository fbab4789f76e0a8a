"""Optional latent space: a diffusers ``AutoencoderKL`` loaded from a local folder.

DiT and SiT on ImageNet work on Stable Diffusion VAE latents scaled by 0.18215. Encoding a
dataset is the slow part, so encoded datasets are cached (safetensors) by the data's content
hash and the VAE's weight hash.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from entpruner_sdk.data.datasets import DataError, ImageDataset
from entpruner_sdk.utils.device import resolve_device
from entpruner_sdk.utils.files import atomic_writer
from entpruner_sdk.utils.progress import progress_bar

SD_VAE_SCALE = 0.18215


class LatentSpace:
    """Encode images to scaled latents and decode them back."""

    def __init__(self, vae: torch.nn.Module, scale: float = SD_VAE_SCALE,
                 device: str | torch.device | None = "cpu", fingerprint: str = "") -> None:
        self.device = resolve_device(device)
        self.vae = vae.to(self.device).eval().requires_grad_(False)
        self.scale = scale
        self.fingerprint = fingerprint

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, scale: float = SD_VAE_SCALE,
                        device: str | torch.device | None = "cpu") -> LatentSpace:
        """Load ``AutoencoderKL`` from a local diffusers folder (e.g. sd-vae-ft-ema)."""
        try:
            from diffusers import AutoencoderKL
        except ImportError as error:
            raise ImportError("latent space needs diffusers: pip install 'entpruner-sdk[latent]'"
                              ) from error
        path = Path(path)
        if not (path / "config.json").exists():
            raise DataError(f"{path} is not a diffusers AutoencoderKL folder (no config.json); "
                            "download the VAE once and pass its local folder")
        vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True)
        digest = hashlib.sha256()
        for name, tensor in sorted(vae.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().numpy().tobytes()[:4096])
        return cls(vae, scale, device, digest.hexdigest()[:16])

    @torch.no_grad()
    def encode(self, images: torch.Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [-1, 1] -> scaled latents (the posterior mean unless ``sample``)."""
        dist = self.vae.encode(images.to(self.device)).latent_dist
        latents = dist.sample(generator) if sample else dist.mean
        return (latents * self.scale).cpu()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1]."""
        images = self.vae.decode(latents.to(self.device) / self.scale).sample
        return images.clamp(-1, 1).cpu()

    def encode_dataset(self, data: ImageDataset, cache_dir: str | os.PathLike | None = None,
                       batch_size: int = 32, progress: bool = True) -> ImageDataset:
        """The dataset in latent space, read from / written to the cache when given."""
        cache = None
        if cache_dir is not None:
            key = f"{data.name}-{data.fingerprint()}-{self.fingerprint}"
            cache = Path(cache_dir) / f"{key}.safetensors"
            if cache.exists():
                return _latent_dataset(load_file(str(cache))["latents"], data)
        chunks = [self.encode(data.images[i:i + batch_size])
                  for i in progress_bar(range(0, len(data), batch_size), enabled=progress,
                                        desc="encoding")]
        latents = torch.cat(chunks)
        if cache is not None:
            with atomic_writer(cache) as tmp:
                save_file({"latents": latents.contiguous()}, str(tmp))
        return _latent_dataset(latents, data)


def _latent_dataset(latents: torch.Tensor, data: ImageDataset) -> ImageDataset:
    return ImageDataset(latents, data.labels.clone(), data.num_classes, f"{data.name}-latent",
                        list(data.class_names), pixels=False)
