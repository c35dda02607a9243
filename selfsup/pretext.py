"""Transformations that pretext tasks predict or that a representation should respect.

* ``rotate90`` / ``hflip``: batched 90° rotations and horizontal flips with one group element per
  sample, without a Python loop over samples or a host-device sync (every sample takes the same
  path; ``torch.where`` picks each sample's result).
* ``PatchGrid``: the 3×3 patch grid of relative-position prediction (Doersch et al. 2015) — sample
  a centre patch and one of its 8 neighbours per image, and ``crop_patches`` to cut them out.

Images are (B, C, H, W) tensors; group elements are (B,) integer tensors (or one int for the
whole batch) on the images' device.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Union

import torch

from selfsup.errors import ConfigError, DataError

__all__ = [
    "Elements", "rotate90", "hflip", "all_rotations",
    "NEIGHBOUR_OFFSETS", "PatchGrid", "PatchPairs", "crop_patches",
]

Elements = Union[int, torch.Tensor]  # one group element for the batch, or a (B,) tensor per sample


def _per_sample(k: Elements, x: torch.Tensor, order: int) -> torch.Tensor:
    """``k`` as a (B, 1, 1, 1) tensor of elements reduced modulo ``order``, for ``torch.where``."""
    k = torch.as_tensor(k, device=x.device)
    if k.ndim == 0:
        k = k.expand(len(x))
    if k.shape != (len(x),) or k.is_floating_point():
        raise DataError(f"expected one integer group element per sample ({len(x)}), got "
                        f"{k.dtype} {tuple(k.shape)}")
    return (k % order).view(-1, 1, 1, 1)


def rotate90(x: torch.Tensor, k: Elements) -> torch.Tensor:
    """Rotate image i by ``k[i]`` × 90° counter-clockwise (as displayed: row 0 at the top).

    Sample by sample this is ``torch.rot90(x[i], k[i], dims=(-2, -1))``: the top-left pixel goes to
    the bottom-left for k = 1. ``k`` is taken modulo 4, so k = 4 is the identity and k = −1 a
    clockwise turn. Mixing odd and even k in one batch needs square images.
    """
    if x.ndim != 4:
        raise DataError(f"rotate90 expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    if x.shape[-1] != x.shape[-2]:
        raise DataError(f"rotate90 needs square images, got {x.shape[-2]}×{x.shape[-1]}; make "
                        "square views with views.size=N")
    k = _per_sample(k, x, 4)
    out = x
    for turns in (1, 2, 3):
        out = torch.where(k == turns, torch.rot90(x, turns, dims=(-2, -1)), out)
    return out


def hflip(x: torch.Tensor, k: Elements) -> torch.Tensor:
    """Mirror image i left-right when ``k[i]`` is odd (the group C2 = {identity, flip})."""
    if x.ndim != 4:
        raise DataError(f"hflip expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    return torch.where(_per_sample(k, x, 2) == 1, x.flip(-1), x)


def all_rotations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All four rotations of every image, as 4 blocks of B: block k is ``rotate90(x, k)``.

    Returns the (4B, C, H, W) images and their (4B,) labels k.
    """
    images = torch.cat([rotate90(x, k) for k in range(4)])
    labels = torch.arange(4, device=x.device).repeat_interleave(len(x))
    return images, labels


# ----------------------------------------------------------------------------------------------
# relative patch position

# (row, column) steps from the centre cell of the 3×3 grid to each neighbour; a neighbour's index
# here is its class label: 0 top-left, 1 top, 2 top-right, 3 left, 4 right, 5 bottom-left,
# 6 bottom, 7 bottom-right (reading order, centre left out).
NEIGHBOUR_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


@dataclass(frozen=True)
class PatchPairs:
    """One centre patch and one neighbour per image: (B, 2) top-left (row, column) corners of
    each, and the (B,) label of the neighbour's position (an index into ``NEIGHBOUR_OFFSETS``)."""

    centre: torch.Tensor
    neighbour: torch.Tensor
    label: torch.Tensor


@dataclass(frozen=True)
class PatchGrid:
    """A 3×3 grid of ``patch_size`` squares ``gap`` pixels apart inside a height × width image.

    The gap keeps a network from solving the task by continuing edges and textures across patch
    borders; each patch is also moved by up to ``jitter`` pixels along each axis, so the gap it
    really sees varies in [gap − 2·jitter, gap + 2·jitter] and exact alignment gives nothing away
    either. Where the image is larger than the grid, the whole grid is placed at a random offset.
    """

    height: int
    width: int
    patch_size: int
    gap: int
    jitter: int

    def __post_init__(self) -> None:
        if self.patch_size < 1 or self.gap < 0 or self.jitter < 0:
            raise ConfigError(f"patch grid: need patch_size ≥ 1, gap ≥ 0 and jitter ≥ 0, got "
                              f"patch_size={self.patch_size}, gap={self.gap}, jitter={self.jitter}")
        if self.span > min(self.height, self.width):
            raise ConfigError(
                f"a 3×3 grid of {self.patch_size}-pixel patches {self.gap} pixels apart spans "
                f"3·{self.patch_size} + 2·{self.gap} = {self.span} pixels, more than the "
                f"{self.height}×{self.width} images; lower method.patch_size or method.gap "
                "(or leave them unset to fit the image)")

    @classmethod
    def fit(cls, height: int, width: int, patch_size: Optional[int] = None,
            gap: Optional[int] = None, jitter: Optional[int] = None) -> "PatchGrid":
        """The grid for an image size; unset sizes follow Doersch et al.'s proportions.

        Doersch et al. cut 96-pixel patches 48 pixels apart (gap = patch / 2, so the grid spans
        four patches) with up to 7 pixels of jitter. Scaled to the image: patch = side // 4, gap =
        patch // 2 (or what room is left), jitter = (gap − 1) // 2, so patches stay at least one
        pixel apart. 28×28 images get 7-pixel patches, a 3-pixel gap and 1 pixel of jitter
        (gaps of 1–5 pixels); 8×8 images get 2, 1 and 0.
        """
        side = min(height, width)
        if patch_size is None:
            patch_size = max(1, side // 4)
        if gap is None:
            gap = max(0, min(patch_size // 2, (side - 3 * patch_size) // 2))
        if jitter is None:
            jitter = max(0, (gap - 1) // 2)
        return cls(height, width, patch_size, gap, jitter)

    @property
    def span(self) -> int:
        """Side of the un-jittered 3×3 grid in pixels."""
        return 3 * self.patch_size + 2 * self.gap

    def sample(self, batch: int, device: torch.device,
               generator: Optional[torch.Generator] = None) -> PatchPairs:
        """A centre patch and a uniformly chosen neighbour for each of ``batch`` images.

        Random numbers come from ``generator`` (or the global generator of ``device``); jittered
        patches are clamped to the image, so every patch lies wholly inside it.
        """

        def randint(low: int, high: int, *shape: int) -> torch.Tensor:  # inclusive bounds
            return torch.randint(low, high + 1, shape, generator=generator, device=device)

        label = randint(0, len(NEIGHBOUR_OFFSETS) - 1, batch)
        offsets = _neighbour_offsets(device)[label]
        stride = self.patch_size + self.gap
        centre, neighbour = [], []
        for axis, side in enumerate((self.height, self.width)):
            origin = randint(0, side - self.span, batch)
            jitter = randint(-self.jitter, self.jitter, 2, batch)
            last = side - self.patch_size
            centre.append((origin + stride + jitter[0]).clamp(0, last))
            neighbour.append((origin + stride * (1 + offsets[:, axis]) + jitter[1]).clamp(0, last))
        return PatchPairs(torch.stack(centre, dim=1), torch.stack(neighbour, dim=1), label)


@functools.lru_cache(maxsize=16)
def _neighbour_offsets(device: torch.device) -> torch.Tensor:
    """``NEIGHBOUR_OFFSETS`` on ``device``, copied there once rather than on every step."""
    return torch.tensor(NEIGHBOUR_OFFSETS, device=device)


def crop_patches(x: torch.Tensor, top_left: torch.Tensor, size: int) -> torch.Tensor:
    """The ``size`` × ``size`` patch of image i whose top-left pixel is ``top_left[i]`` (row, col).

    One gather for the whole batch; corners must keep the patch inside the image (as
    ``PatchGrid.sample`` guarantees). Returns (B, C, size, size).
    """
    steps = torch.arange(size, device=x.device)
    rows = (top_left[:, 0, None] + steps)[:, :, None]  # (B, size, 1)
    cols = (top_left[:, 1, None] + steps)[:, None, :]  # (B, 1, size)
    images = torch.arange(len(x), device=x.device)[:, None, None]
    return x.permute(0, 2, 3, 1)[images, rows, cols].permute(0, 3, 1, 2)
