"""Decoders: map a (B, D) code back to (B, C, H, W) images, for reconstruction-based methods.

The decoder does not care which backbone made the code, so any encoder (CNN, ResNet, ViT) can be
trained as an autoencoder.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.errors import ConfigError

MIN_CHANNELS = 8  # narrowest upsampling stage: fewer channels lose too much detail before the last conv


class ConvDecoder(nn.Module):
    """Linear → (width, h0, w0) map → ×2 upsampling stages → 3×3 conv to C channels → centre crop.

    The number of stages is the fewest that reach the output size from a start of at most
    ``start_side`` pixels (8×8: one stage from 4×4; 28×28 and 32×32: three stages from 4×4 to
    32×32); the map is then centre-cropped to exactly H×W. Each stage is nearest-neighbour
    upsampling followed by a 3×3 convolution rather than a strided transposed convolution, which
    leaves checkerboard artefacts (Odena et al. 2016, "Deconvolution and Checkerboard Artifacts").
    Channels halve per stage, from ``width`` down to at least ``MIN_CHANNELS``.

    The output is linear (no squashing): the targets are normalised images, not values in [0, 1].
    """

    def __init__(self, code_dim: int, out_shape: Sequence[int], width: int = 64, start_side: int = 4) -> None:
        super().__init__()
        shape = tuple(int(n) for n in out_shape)
        if len(shape) != 3 or min(shape) < 1 or code_dim < 1 or width < 1 or start_side < 1:
            raise ConfigError(f"ConvDecoder needs code_dim ≥ 1, width ≥ 1, start_side ≥ 1 and an output shape "
                              f"(C, H, W) of positive sizes, got code_dim={code_dim}, width={width}, "
                              f"start_side={start_side}, out_shape={tuple(out_shape)}")
        self.out_shape = shape
        channels, height, width_px = shape
        self.num_upsamples = max(0, math.ceil(math.log2(max(height, width_px) / start_side)))
        scale = 2 ** self.num_upsamples
        self.start_shape = (width, math.ceil(height / scale), math.ceil(width_px / scale))
        self.project = nn.Sequential(nn.Linear(code_dim, math.prod(self.start_shape)), nn.ReLU(inplace=True))
        stages: list[nn.Module] = []
        current = width
        for i in range(self.num_upsamples):
            narrower = max(width // 2 ** (i + 1), MIN_CHANNELS)
            stages += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(current, narrower, 3, padding=1, bias=False),
                nn.BatchNorm2d(narrower),
                nn.ReLU(inplace=True),
            ]
            current = narrower
        self.stages = nn.Sequential(*stages)
        self.to_image = nn.Conv2d(current, channels, 3, padding=1)

    def forward(self, code: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        """Decode ``code`` (B, code_dim) to (B, C, H, W) images of ``out_shape``, or bilinearly
        resized to ``size`` = (H', W') when given and different."""
        x = self.project(code).view(len(code), *self.start_shape)
        x = center_crop(self.to_image(self.stages(x)), self.out_shape[1:])
        if size is not None and tuple(size) != tuple(x.shape[-2:]):
            shrinking = size[0] < x.shape[-2] or size[1] < x.shape[-1]
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=shrinking)
        return x


def center_crop(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The central ``size`` = (H, W) window of a (..., H', W') batch with H' ≥ H and W' ≥ W."""
    height, width = size
    top = (x.shape[-2] - height) // 2
    left = (x.shape[-1] - width) // 2
    if top < 0 or left < 0:
        raise ValueError(f"cannot crop {tuple(x.shape[-2:])} maps to the larger size {tuple(size)}")
    return x[..., top: top + height, left: left + width]
