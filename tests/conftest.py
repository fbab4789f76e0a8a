"""Shared fixtures: tiny models (depth 2-6, hidden 32-64, 8x8 inputs) and a private cache."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from entpruner_sdk.models import DiffusionTransformer, TransformerConfig

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ENTPRUNER_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("ENTPRUNER_QUIET", "1")


def tiny_config(family: str = "dit", **overrides) -> TransformerConfig:
    fields = dict(family=family, input_size=8, patch_size=2, in_channels=1, hidden_size=32,
                  depth=4, num_heads=2, num_classes=10, learn_sigma=family == "dit")
    fields.update(overrides)
    return TransformerConfig(**fields)


def randomized(model: DiffusionTransformer, seed: int = 0) -> DiffusionTransformer:
    """Give every parameter random values: adaLN-Zero init makes blocks identities, which
    would hide bugs in block handling."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return model


@pytest.fixture
def tiny_dit() -> DiffusionTransformer:
    return randomized(DiffusionTransformer(tiny_config("dit")))


@pytest.fixture
def tiny_sit() -> DiffusionTransformer:
    return randomized(DiffusionTransformer(tiny_config("sit", learn_sigma=True)))


def needs_torch(version: str) -> pytest.MarkDecorator:
    """Skip a test of a feature that needs torch ``version`` or later where torch is older
    (the package itself runs on torch 2.4: ONNX's dynamo exporter needs 2.5, AOTInductor 2.6)."""
    from entpruner_sdk.utils.versions import torch_release

    return pytest.mark.skipif(torch_release() < torch_release(version),
                              reason=f"needs torch {version} or later")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_vae(directory):
    """A random diffusers AutoencoderKL saved as a folder: 4 latent channels, 2x downsampling
    (16x16 images <-> 4x8x8 latents). Skips the test without the ``latent`` extra."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4, layers_per_block=1, sample_size=16)
    vae.save_pretrained(directory)
    return directory


def latent_model(family: str = "dit", **overrides) -> DiffusionTransformer:
    """A tiny model on the tiny VAE's 4x8x8 latents (8 classes, as the photos data)."""
    fields = dict(in_channels=4, num_classes=8)
    fields.update(overrides)
    return randomized(DiffusionTransformer(tiny_config(family, **fields)))


def cache_a_quick_classifier(data) -> None:
    """Train the domain classifier for ``data`` briefly and cache it where ``evaluate`` looks,
    so the test pays 20 steps instead of the full 600 (its quality is not under test)."""
    from entpruner_sdk.evaluation.classifier import save_classifier, train_classifier
    from entpruner_sdk.utils.cache import cache_root

    folder = cache_root() / "classifiers" / f"{data.name}-{data.fingerprint()}"
    save_classifier(train_classifier(data, steps=20), data, folder)


def holding(folder: Path, request: pytest.FixtureRequest) -> subprocess.Popen:
    """Another process that claims the batch folder ``folder`` and holds it until killed (at
    the test's end at the latest)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from entpruner_sdk.evaluation.batches import SampleBatches\n"
         "held = SampleBatches(sys.argv[1])\nassert held.claim()\n"
         "print('held', flush=True)\ntime.sleep(600)", str(folder)],
        stdout=subprocess.PIPE, text=True)
    request.addfinalizer(holder.kill)
    assert holder.stdout.readline().strip() == "held"
    return holder


def mapped_files() -> str:
    """The files this process has mapped (Linux's /proc/self/maps; the test skips elsewhere)."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs Linux's /proc/self/maps")
    return maps.read_text()
