"""A small CNN trained on the real data of a dataset: it judges whether class-conditional
samples show the requested class, and its penultimate layer is a fast domain feature space.

Trained classifiers are cached per dataset fingerprint (safetensors + JSON), so every run
judges samples with the same network. The classifiers of the bundled datasets ship with the
package: training rounds differently on other CPUs (other vector instructions), and a
classifier trained on another machine moved the photos' FD-domain by about 3%, the size of the
differences the benchmarks measure. A network's identity is the hash of its weights
(``network_fingerprint``); evaluation reports record it, so figures made with different
networks are never compared.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from entpruner_sdk.data.datasets import ImageDataset, unit_range
from entpruner_sdk.utils.cache import cache_root, read_kept
from entpruner_sdk.utils.device import resolve_device
from entpruner_sdk.utils.digest import network_fingerprint
from entpruner_sdk.utils.files import atomic_write_text, atomic_writer
from entpruner_sdk.utils.progress import progress_bar

# classifiers shipped for the bundled datasets, in the cache's layout (see ``domain_classifier``)
BUNDLED_CLASSIFIERS = Path(__file__).parent / "classifiers"

# the largest images the classifier looks at; larger ones are area-averaged down to this. It
# judges class and domain, not fine detail (Inception FID does that), and at DiT-XL/2's
# 256 x 256 one training step would take 40 s on a CPU core pair (1.7 s at 64 x 64)
MAX_SIZE = 64


def batch_for(images: torch.Tensor, batch_size: int = 512) -> int:
    """How many images to run the classifier on at once: ``batch_size`` up to 16 x 16 pixels,
    fewer for larger ones, so that its activations stay near 40 MB (at 64 x 64, 512 images
    would hold over a gigabyte in each of its first layers)."""
    side = min(max(images.shape[-2:]), MAX_SIZE)
    return max(1, min(batch_size, batch_size * 256 // (side * side)))


class DomainClassifier(nn.Module):
    """Three conv stages (the last pooled to 1x1) and a linear head, on images of at most
    ``MAX_SIZE`` pixels a side."""

    def __init__(self, channels: int, num_classes: int, width: int = 64) -> None:
        super().__init__()
        self.channels, self.num_classes, self.width = channels, num_classes, width
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1, stride=2), nn.GroupNorm(8, width), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.GroupNorm(8, 2 * width),
            nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(2 * width, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The penultimate features (FD-domain's space); larger images are first shrunk to
        ``MAX_SIZE``."""
        if max(images.shape[-2:]) > MAX_SIZE:
            images = F.interpolate(images, size=(MAX_SIZE, MAX_SIZE), mode="area")
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def train_classifier(data: ImageDataset, steps: int = 600, batch_size: int = 128,
                     seed: int = 0, progress: bool = False,
                     device: str | torch.device | None = "cpu") -> DomainClassifier:
    """Train on ``data`` with light augmentation (random shifts by one pixel, small noise), on
    ``device`` (None: CUDA when available); the trained model is returned on the CPU."""
    device = resolve_device(device)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DomainClassifier(data.channels, data.num_classes).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    for _ in progress_bar(range(steps), enabled=progress, desc="classifier"):
        index = torch.randint(0, len(data), (batch_size,), generator=generator)
        images, labels = unit_range(data.images[index]), data.labels[index]
        shift = torch.randint(-1, 2, (2,), generator=generator).tolist()
        images = torch.roll(images, shifts=shift, dims=(2, 3))
        images = images + 0.05 * torch.randn(images.shape, generator=generator)
        loss = F.cross_entropy(model(images.to(device)), labels.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.cpu().eval()


@torch.no_grad()
def predict(model: DomainClassifier, images: torch.Tensor, batch_size: int = 512
            ) -> torch.Tensor:
    """The domain classifier's class for each image (in [-1, 1] or 8-bit), a batch at a time."""
    batch_size = batch_for(images, batch_size)
    return torch.cat([model(unit_range(images[i:i + batch_size])).argmax(1)
                      for i in range(0, len(images), batch_size)])


def class_accuracy(model: DomainClassifier, images: torch.Tensor, labels: torch.Tensor
                   ) -> float:
    """Fraction of images classified as their label."""
    return float((predict(model, images) == labels).float().mean())


def domain_classifier(train_data: ImageDataset, cache_dir: str | os.PathLike | None = None,
                      progress: bool = False,
                      device: str | torch.device | None = "cpu") -> DomainClassifier:
    """The classifier for a dataset (on the CPU): the shipped one for a bundled dataset
    (matched by content fingerprint), otherwise trained once on ``device`` and cached by the
    data's fingerprint."""
    name = f"{train_data.name}-{train_data.fingerprint()}"
    cached = Path(cache_dir or cache_root()) / "classifiers" / name
    model = DomainClassifier(train_data.channels, train_data.num_classes)
    for folder in (BUNDLED_CLASSIFIERS / name, cached):
        weights = folder / "classifier.safetensors"
        if (folder / "classifier.json").exists():
            state = read_kept(weights, lambda path: load_file(str(path)))
            if state is not None:  # else unreadable: trained again
                model.load_state_dict(state)
                return model.eval()
    model = train_classifier(train_data, progress=progress, device=device)
    save_classifier(model, train_data, cached)
    return model.eval()


def save_classifier(model: DomainClassifier, train_data: ImageDataset, folder: Path) -> None:
    """Weights (safetensors) and what they were trained on (JSON), written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_writer(folder / "classifier.safetensors") as tmp:
        save_file(model.state_dict(), str(tmp))
    atomic_write_text(folder / "classifier.json", json.dumps({
        "dataset": train_data.name, "fingerprint": train_data.fingerprint(),
        "network": network_fingerprint(model)}, indent=1))
