"""Transformer configurations as plain data, and the DiT / SiT registry names.

A config describes architecture only. Where a model came from (family checkpoint, kept
blocks) is provenance and lives beside it, not in it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Literal

Family = Literal["dit", "sit"]
FAMILIES: tuple[str, ...] = ("dit", "sit")

# size -> (depth, hidden_size, num_heads), as published for DiT and SiT.
SIZES: dict[str, tuple[int, int, int]] = {
    "XL": (28, 1152, 16),
    "L": (24, 1024, 16),
    "B": (12, 768, 12),
    "S": (12, 384, 6),
}
PATCH_SIZES: tuple[int, ...] = (2, 4, 8)

_NAME = re.compile(r"^(DiT|SiT)-(XL|L|B|S|D\d+)/(\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class TransformerConfig:
    """Architecture of a DiT / SiT denoiser.

    ``family`` selects the forward contract: ``"dit"`` takes integer timesteps 0..999 and
    returns every output channel; ``"sit"`` takes t in [0, 1] and returns the first
    ``in_channels`` (the velocity) even when the checkpoint learned a variance.
    """

    family: Family = "dit"
    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    num_classes: int = 1000
    learn_sigma: bool = True

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be 'dit' or 'sit', got {self.family!r}")
        if self.input_size % self.patch_size:
            raise ValueError(
                f"input_size {self.input_size} is not divisible by patch_size {self.patch_size}; "
                "choose a patch size that divides the image (or latent) side"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.hidden_size % 4:
            raise ValueError("hidden_size must be a multiple of 4 (2-D sin-cos position embedding)")
        if self.depth < 1:
            raise ValueError(f"depth must be at least 1, got {self.depth}")

    @property
    def out_channels(self) -> int:
        """Channels the model predicts: twice the input's with a learned variance."""
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    @property
    def num_patches(self) -> int:
        """Tokens per image: (input size / patch size) squared."""
        return (self.input_size // self.patch_size) ** 2

    def replace(self, **changes: Any) -> TransformerConfig:
        """A copy with ``changes``, checked as a new config is."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (``config.json``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransformerConfig:
        """The config from plain data; refuses unknown keys, naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}; known keys: {sorted(known)}")
        return cls(**data)


def config_from_name(name: str, **overrides: Any) -> TransformerConfig:
    """Build a config from a registry name such as ``"DiT-XL/2"``, ``"SiT-B/4"`` or
    ``"DiT-D14/2"`` (an XL-width model with 14 blocks, the usual name of a pruned XL).

    ``overrides`` replace any field, e.g. ``input_size=64`` for the 512 px checkpoint.
    """
    match = _NAME.match(name.strip())
    if not match:
        raise ValueError(
            f"unknown model name {name!r}; expected '<DiT|SiT>-<XL|L|B|S>/<2|4|8>', "
            "e.g. 'DiT-XL/2' or 'SiT-B/4'"
        )
    family, size, patch = match.group(1).lower(), match.group(2).upper(), int(match.group(3))
    if patch not in PATCH_SIZES:
        raise ValueError(f"patch size {patch} is not one of {PATCH_SIZES}")
    if size.startswith("D"):
        depth, hidden, heads = int(size[1:]), *SIZES["XL"][1:]
    else:
        depth, hidden, heads = SIZES[size]
    fields: dict[str, Any] = dict(
        family=family, depth=depth, hidden_size=hidden, num_heads=heads, patch_size=patch
    )
    fields.update(overrides)
    return TransformerConfig(**fields)


def registry_names() -> list[str]:
    """Every registry name, e.g. for ``--help`` texts."""
    return [f"{fam}-{size}/{p}" for fam in ("DiT", "SiT") for size in SIZES for p in PATCH_SIZES]


def published_num_heads(hidden_size: int) -> int | None:
    """The head count of the published size with this width (S, B, L, XL), else None."""
    for _, hidden, heads in SIZES.values():
        if hidden == hidden_size:
            return heads
    return None


def default_num_heads(hidden_size: int) -> int:
    """Heads cannot be read from weight shapes; use the published table, else 64-dim heads."""
    return published_num_heads(hidden_size) or max(1, hidden_size // 64)
