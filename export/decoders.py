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
from entpruner_sdk.models.config import TransformerConfig
from entpruner_sdk.models.io import file_sha256
from entpruner_sdk.utils.cache import cache_root, read_kept
from entpruner_sdk.utils.files import atomic_directory, atomic_write_text

DECODER_FILE = "vae_decoder.onnx"
CHECKS_FILE = "parity.json"


def write_decoder(space: LatentSpace, config: TransformerConfig, directory: Path, *,
                  opset: int, exporter: str, verify: bool = True) -> list[ParityCheck]:
    """Put the decoder for ``config``'s latents in ``directory`` (``vae_decoder.onnx`` and
    any external data beside it) and return its parity checks: from the cache when this
    decoder was exported and checked before, else exported and, with ``verify``, checked and
    cached. Unchecked decoders are never cached."""
    cached = _cache_folder(space, config, opset, exporter)
    checks = read_kept(cached / CHECKS_FILE, _read_checked)
    if checks is None:
        if not verify:
            _export(space, config, directory, opset, exporter)
            return []
        checks = _fill(cached, space, config, opset, exporter)
    for item in cached.iterdir():
        if item.name != CHECKS_FILE:
            shutil.copyfile(item, directory / item.name)
    return checks


def _read_checked(checks_file: Path) -> list[ParityCheck]:
    """The cached decoder's parity checks, once every file it lists is found as it was
    written: a decoder the disk damaged since would otherwise be copied into every export and
    fail only when one is opened. Raises ValueError where a file differs (``read_kept`` then
    deletes the checks, and the decoder is exported again)."""
    kept = json.loads(checks_file.read_text())
    if not isinstance(kept, dict) or "sha256" not in kept:  # written before files were hashed
        raise ValueError(f"{checks_file} lists no file digests")
    for name, digest in kept["sha256"].items():
        if file_sha256(checks_file.parent / name) != digest:
            raise ValueError(f"the cached {name} has changed since it was checked")
    return [ParityCheck.from_dict(check) for check in kept["checks"]]


def _cache_folder(space: LatentSpace, config, opset: int, exporter: str) -> Path:
    identity = [space.fingerprint, config.in_channels, config.input_size, opset, exporter,
                torch.__version__]
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]
    return cache_root() / "vae-decoders" / key


def _export(space: LatentSpace, config, directory: Path, opset: int, exporter: str) -> Path:
    from entpruner_sdk.export.onnx_export import export_vae_decoder

    return export_vae_decoder(space, config, directory / DECODER_FILE, opset=opset,
                              exporter=exporter)


def _fill(cached: Path, space: LatentSpace, config, opset: int, exporter: str
          ) -> list[ParityCheck]:
    """Export and check the decoder in a staging folder, then move it into the cache: a
    decoder that fails its check, or an interrupted export, leaves nothing there."""
    from entpruner_sdk.export.runtime import OnnxLatentDecoder

    with atomic_directory(cached) as staging:
        path = _export(space, config, staging, opset, exporter)
        checks = check_decoder_parity(space, OnnxLatentDecoder(path), config)
        require_parity(checks, "the VAE decoder's export")
        digests = {item.name: file_sha256(item) for item in sorted(staging.iterdir())}
        atomic_write_text(staging / CHECKS_FILE, json.dumps(
            {"checks": [c.to_dict() for c in checks], "sha256": digests}))
    return checks
