"""ResNet with the CIFAR stem: a 3×3 stride-1 first convolution and no max-pool.

The ImageNet stem (7×7 stride-2 conv + max-pool) shrinks a 32×32 image to 8×8 before the first
block and throws away most of a small image; the CIFAR stem keeps full resolution in stage one,
which is what every SSL paper reporting CIFAR/Fashion-MNIST numbers uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.registry import BACKBONES


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a residual connection (ResNet-18/34 block)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A CIFAR-stem ResNet of BasicBlocks; ``forward`` returns globally pooled (B, out_dim) features."""

    def __init__(self, blocks_per_stage: tuple[int, ...], in_channels: int = 3, width: int = 64,
                 zero_init_residual: bool = True) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        stages = []
        channels = width
        for i, num_blocks in enumerate(blocks_per_stage):
            out_channels = width * 2**i
            blocks = []
            for j in range(num_blocks):
                blocks.append(BasicBlock(channels, out_channels, 2 if (j == 0 and i > 0) else 1))
                channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            # Each residual block starts as the identity, which makes early training more stable
            # (Goyal et al. 2017).
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(self.stem(x))).flatten(1)


@dataclass
class ResNetOptions:
    width: int = 64
    zero_init_residual: bool = True


@BACKBONES.register("resnet18", "ResNet-18, CIFAR stem (3×3 conv, no max-pool), 512-d features")
def resnet18(in_channels: int, options: ResNetOptions | None = None) -> ResNet:
    o = options or ResNetOptions()
    return ResNet((2, 2, 2, 2), in_channels, o.width, o.zero_init_residual)


@BACKBONES.register("resnet34", "ResNet-34, CIFAR stem, 512-d features")
def resnet34(in_channels: int, options: ResNetOptions | None = None) -> ResNet:
    o = options or ResNetOptions()
    return ResNet((3, 4, 6, 3), in_channels, o.width, o.zero_init_residual)


resnet18.options = ResNetOptions  # type: ignore[attr-defined]
resnet34.options = ResNetOptions  # type: ignore[attr-defined]
