"""A latent model's VAE decoder as ONNX, exported and parity-checked once, then copied into
every export that carries it.

The decoder is the same graph whatever the denoiser: it depends only on the VAE, the latent
shape, the opset, the exporter and torch. Exporting sd-vae's decoder and checking it against
PyTorch takes minutes on a CPU (ONNX Runtime checks it on the CPU even on a GPU machine), so
an ONNX, an fp16 and a TensorRT export of the same model would pay that three times.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

from entpruner_sdk.data.latents import LatentSpace
from entpruner_sdk.export.parity import ParityCheck, check_decoder_parity, require_parity
from entpruner_sdk.utils.cache import cache_root
from entpruner_sdk.utils.files import atomic_directory, atomic_write_text

DECODER_FILE = "vae_decoder.onnx"
CHECKS_FILE = "parity.json"


def write_decoder(space: LatentSpace, config, directory: Path, *, opset: int, exporter: str,
                  verify: bool = True) -> list[ParityCheck]:
    """Put the decoder for ``config``'s latents in ``directory`` (``vae_decoder.onnx`` and
    any external data beside it) and return its parity checks: from the cache when this
    decoder was exported and checked before, else exported and, with ``verify``, checked and
    cached. Unchecked decoders are never cached."""
    cached = _cache_folder(space, config, opset, exporter)
    if not (cached / CHECKS_FILE).exists():
        if not verify:
            _export(space, config, directory, opset, exporter)
            return []
        _fill(cached, space, config, opset, exporter)
    for item in cached.iterdir():
        if item.name != CHECKS_FILE:
            shutil.copyfile(item, directory / item.name)
    return [ParityCheck.from_dict(check)
            for check in json.loads((cached / CHECKS_FILE).read_text())]


def _cache_folder(space: LatentSpace, config, opset: int, exporter: str) -> Path:
    identity = [space.fingerprint, config.in_channels, config.input_size, opset, exporter,
                torch.__version__]
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]
    return cache_root() / "vae-decoders" / key


def _export(space: LatentSpace, config, directory: Path, opset: int, exporter: str) -> Path:
    from entpruner_sdk.export.onnx_export import export_vae_decoder

    return export_vae_decoder(space, config, directory / DECODER_FILE, opset=opset,
                              exporter=exporter)


def _fill(cached: Path, space: LatentSpace, config, opset: int, exporter: str) -> None:
    """Export and check the decoder in a staging folder, then move it into the cache: a
    decoder that fails its check, or an interrupted export, leaves nothing there."""
    from entpruner_sdk.export.runtime import OnnxLatentDecoder

    with atomic_directory(cached) as staging:
        path = _export(space, config, staging, opset, exporter)
        checks = check_decoder_parity(space, OnnxLatentDecoder(path), config)
        require_parity(checks, "the VAE decoder's export")
        atomic_write_text(staging / CHECKS_FILE, json.dumps([c.to_dict() for c in checks]))
