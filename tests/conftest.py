"""Shared fixtures: tiny models (depth 2-6, hidden 32-64, 8x8 inputs) and a private cache."""

from __future__ import annotations

import socket

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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
