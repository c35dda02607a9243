"""Batched image augmentations that run on the training device.

Every random operation takes a float batch ``x`` of shape (B, C, H, W) with values in [0, 1]
(C = 1 or 3) and a ``torch.Generator`` on the same device, draws its per-sample parameters in one
go, and returns a batch of the same shape (crops: the requested size), dtype and device, still in
[0, 1]. Nothing loops over samples in Python and nothing waits for the device: a sample that skips
an operation gets the identity parameters (factor 1, shift 0, a delta kernel) or is blended back
with ``torch.where``, so every sample takes the same path and no subset is ever indexed out.
Probabilities are a float, or a (B,) tensor of per-sample probabilities (used to make several
views that differ only in their probabilities as one batch).

This sits on the hot path of GPU training, where a small batch costs less to compute than to
launch, so the code counts kernels: parameters are drawn in one ``torch.rand`` per operation
and small constants are copied to each device once and cached. Image data never goes through a
matrix product or convolution except the blur's (cuDNN may run that in TF32): those would follow
the caller's TF32/autocast settings, and the crop and colour maps are meant to be exact.

The deterministic building blocks (``crop_resize``, ``adjust_*``, ``gaussian_blur``, ...) take
explicit per-sample parameters, which is what the random operations draw; tests check them against
formulas.

Semantics follow torchvision where it defines them; the deliberate differences are:

* colour jitter applies brightness, contrast, saturation and hue in that fixed order (torchvision
  draws one random order per call, i.e. per batch; per-sample random orders would cost four times
  the work for no known gain);
* hue is rotated in YIQ space (a per-sample 3×3 matrix, a few kernels) instead of going through
  HSV (a few dozen kernels): it is exact for a zero shift and for gray pixels and keeps luma,
  where HSV keeps the largest channel; for a shift of 0.05 turns the two differ by about 0.02 per
  channel on average;
* crops resample bilinearly without antialiasing (one ``grid_sample`` call), and at the box's edge
  interpolate with the image pixels just outside the box, where torchvision's crop-then-resize
  repeats the box's edge pixels;
* crop boxes are drawn with all of torchvision's 10 attempts at once rather than in a loop.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence, Union

import torch
import torch.nn.functional as F

from selfsup.errors import DataError

__all__ = [
    "to_float", "normalize", "to_input", "Probability", "blockwise",
    "crop_resize", "sample_crop_boxes", "random_resized_crop",
    "random_horizontal_flip",
    "adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue", "color_jitter",
    "rgb_to_gray", "random_grayscale",
    "blur_kernel_size", "gaussian_blur", "random_gaussian_blur",
    "solarize", "random_solarize",
]

Probability = Union[float, torch.Tensor]  # one for the batch, or a (B,) tensor, one per sample

# A fixed, data-set-independent normalisation: [0, 1] → [-2, 2], used by views, evaluation and
# health alike, so an encoder never depends on statistics of the data it was trained on.
MEAN = 0.5
STD = 0.25

# ITU-R BT.601 luma weights.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

# RGB → YIQ (rows: Y, I, Q). The I and Q rows sum to zero, so gray pixels have no chroma.
RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


# ----------------------------------------------------------------------------------------------
# conversions


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (any shape) → float32 in [0, 1] on the same device."""
    if images.dtype != torch.uint8:
        raise DataError(
            f"expected uint8 images, got dtype {images.dtype}; convert them with "
            "(images * 255).round().to(torch.uint8) or load them as uint8"
        )
    return images.to(torch.float32).div_(255.0)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] → ``(x - 0.5) / 0.25``, the input scale every encoder sees."""
    return (x - MEAN) / STD


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 images → normalised float32: what encoders see at evaluation (no augmentation)."""
    return normalize(to_float(images))


# ----------------------------------------------------------------------------------------------
# shared helpers


def _check_batch(x: torch.Tensor, generator: torch.Generator | None = None) -> None:
    """Reject inputs the operations do not support, with a message that says what to pass."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DataError(
            f"expected a batch of shape (B, C, H, W) with C = 1 or 3, got {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise DataError(f"expected float images in [0, 1], got dtype {x.dtype}; use to_float()")
    if generator is not None and not same_device(generator.device, x.device):
        raise DataError(
            f"the generator lives on {generator.device} but the images on {x.device}; "
            f"create it with torch.Generator(device=images.device)"
        )


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are the same, reading a missing CUDA index as the current device."""
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device()
    return (current if a.index is None else a.index) == (current if b.index is None else b.index)


@functools.lru_cache(maxsize=512)
def _constant(values: tuple[float, ...], shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A small float32 constant on ``device``, copied there once: a copy on every call would be
    a host-to-device transfer, which waits for the device."""
    return torch.tensor(values, dtype=torch.float32).view(shape).to(device)


def _rand(generator: torch.Generator, *shape: int) -> torch.Tensor:
    """float32 uniform draws in [0, 1) on the generator's device."""
    return torch.rand(shape, generator=generator, device=generator.device)


def _coin(generator: torch.Generator, batch: int, p: Probability) -> torch.Tensor:
    """(B,) bool: True with probability ``p`` (a float, or one per sample)."""
    return _rand(generator, batch) < p


def blockwise(probabilities: Sequence[float], block: int, device: torch.device) -> Probability:
    """The probability argument for a batch of ``len(probabilities)`` blocks of ``block`` samples,
    block v drawn with ``probabilities[v]``: a float when they are all equal (so an operation with
    probability 0 is skipped), else a (B,) tensor."""
    values = tuple(float(p) for p in probabilities)
    if all(p == values[0] for p in values):
        return values[0]
    for p in values:
        _never(p, "probability")
    return _constant(values, (len(values), 1), device).expand(-1, block).reshape(-1)


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    """(B,) → (B, 1, 1, 1), to broadcast one value per sample over an image batch."""
    return values.reshape(-1, 1, 1, 1)


def _never(p: Probability, name: str) -> bool:
    """Whether an operation with probability ``p`` can be skipped; checks float probabilities."""
    if isinstance(p, torch.Tensor):
        return False
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    return p == 0.0


# ----------------------------------------------------------------------------------------------
# geometry


def crop_resize(x: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop box ``boxes[i] = (top, left, height, width)`` (pixels) from sample i and resize it
    bilinearly to ``size = (out_h, out_w)``, for the whole batch in one ``grid_sample`` call.

    A box is the region of pixel edges [top, top + height) × [left, left + width); output pixel
    centres land on the centres of that region's pixels when no resizing happens, so an integer
    box at its own size returns the exact sub-image. Samples falling outside the image repeat the
    border (as resizing does).
    """
    _check_batch(x)
    batch, _, height, width = x.shape
    out_h, out_w = size
    corner, extent = boxes.to(torch.float32).split(2, dim=1)  # (top, left), (height, width)
    # grid_sample reads the input at coordinates normalised to [-1, 1] over the pixel edges
    # (align_corners=False). Output pixel j of n sits (2j + 1) / 2n of the way across the box,
    # so along an axis of the image's length L:  g_j = −1 + 2 · corner / L + extent · (2j + 1) / (n L).
    # Element-wise float32 on purpose: affine_grid's matrix product would run in TF32 or bf16
    # under the caller's precision settings and shift the sampling points.
    start = torch.addcmul(_constant((-1.0, -1.0), (2,), x.device), corner,
                          _constant((2 / height, 2 / width), (2,), x.device))
    steps_y, steps_x = _grid_steps(out_h, height, x.device), _grid_steps(out_w, width, x.device)
    ys = torch.addcmul(start[:, :1], extent[:, :1], steps_y)  # (B, out_h)
    xs = torch.addcmul(start[:, 1:], extent[:, 1:], steps_x)  # (B, out_w)
    grid = torch.stack([xs.unsqueeze(1).expand(batch, out_h, out_w),
                        ys.unsqueeze(2).expand(batch, out_h, out_w)], dim=3)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border",
                         align_corners=False)


def _grid_steps(count: int, length: int, device: torch.device) -> torch.Tensor:
    """(1, count): (2j + 1) / (count · length) for j < count (see ``crop_resize``)."""
    return _constant(tuple((2 * j + 1) / (count * length) for j in range(count)), (1, count), device)


def sample_crop_boxes(
    generator: torch.Generator,
    batch: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> torch.Tensor:
    """Draw (B, 4) float boxes ``(top, left, height, width)`` with torchvision's
    RandomResizedCrop semantics: area a uniform fraction ``scale`` of the image, aspect ratio
    (width / height) log-uniform in ``ratio``, integer size and position, fully inside the image.

    torchvision retries up to ``attempts`` times until a draw fits; here all attempts are drawn at
    once and each sample keeps its first fitting one. A sample none of whose draws fit gets
    torchvision's fallback: the whole image, cut to the nearest allowed aspect ratio, centred.
    """
    device = generator.device
    u = _rand(generator, batch, 2 * attempts + 2)
    # columns [0, attempts): area; [attempts, 2 attempts): log aspect ratio; last two: position
    area_and_log_ratio = u[:, : 2 * attempts].view(batch, 2, attempts)
    area_and_log_ratio = torch.addcmul(
        _constant((scale[0] * height * width, math.log(ratio[0])), (1, 2, 1), device),
        area_and_log_ratio,
        _constant(((scale[1] - scale[0]) * height * width, math.log(ratio[1] / ratio[0])),
                  (1, 2, 1), device),
    )
    area, log_ratio = area_and_log_ratio.unbind(1)
    # (height, width) = (sqrt(area / r), sqrt(area · r)), rounded as torchvision does
    ratios = torch.exp(log_ratio.unsqueeze(2) * _constant((-1.0, 1.0), (2,), device))  # 1/r, r
    sizes = torch.sqrt(area.unsqueeze(2) * ratios).round_()  # (B, attempts, 2)
    limits = _constant((height, width), (2,), device)
    fits = ((sizes >= 1) & (sizes <= limits)).all(dim=2)
    first_fit = fits.to(torch.uint8).argmax(dim=1)  # 0 when none fits
    any_fit = fits.any(dim=1, keepdim=True)
    sizes = sizes.gather(1, first_fit.view(batch, 1, 1).expand(batch, 1, 2)).squeeze(1)

    fallback_h, fallback_w = _fallback_crop_size(height, width, ratio)
    fallback_size = _constant((fallback_h, fallback_w), (2,), device)
    fallback_corner = _constant(((height - fallback_h) // 2, (width - fallback_w) // 2), (2,), device)
    sizes = torch.where(any_fit, sizes, fallback_size)
    # uniform integer corner in [0, limit - size]; the min guards u · n rounding up to n
    room = limits - sizes
    corner = torch.minimum(torch.floor(u[:, 2 * attempts:] * (room + 1)), room)
    corner = torch.where(any_fit, corner, fallback_corner)
    return torch.cat([corner, sizes], dim=1)


def _fallback_crop_size(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """torchvision's fallback: the largest centred box whose aspect ratio is within ``ratio``."""
    image_ratio = width / height
    if image_ratio < ratio[0]:
        return min(height, round(width / ratio[0])), width
    if image_ratio > ratio[1]:
        return height, min(width, round(height * ratio[1]))
    return height, width


def random_resized_crop(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    size: tuple[int, int],
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Per-sample random crop (see ``sample_crop_boxes``) resized to ``size = (out_h, out_w)``."""
    _check_batch(x, generator)
    if not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ValueError(f"crop scale must satisfy 0 < min <= max <= 1, got {scale}")
    batch, _, height, width = x.shape
    boxes = sample_crop_boxes(generator, batch, height, width, scale, ratio)
    return crop_resize(x, boxes, size)


def random_horizontal_flip(x: torch.Tensor, generator: torch.Generator, *, p: Probability = 0.5) -> torch.Tensor:
    """Mirror each sample left-right with probability ``p``."""
    _check_batch(x, generator)
    if _never(p, "flip probability"):
        return x
    flip = _per_sample(_coin(generator, x.shape[0], p))
    return torch.where(flip, x.flip(-1), x)


# ----------------------------------------------------------------------------------------------
# colour


def rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB → (B, 1, H, W) luma with ITU-R 601 weights; a 1-channel batch is returned
    as is."""
    if x.shape[1] == 1:
        return x
    weights = _constant(LUMA_WEIGHTS, (1, 3, 1, 1), x.device).to(x.dtype)
    return (x * weights).sum(dim=1, keepdim=True)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Multiply sample i by ``factor[i]`` (B,), clamped to [0, 1]."""
    return (x * _per_sample(factor)).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend sample i with its mean luma: ``mean + factor[i] * (x - mean)``, clamped."""
    mean = rgb_to_gray(x).mean(dim=(1, 2, 3), keepdim=True)
    return torch.lerp(mean, x, _per_sample(factor)).clamp_(0.0, 1.0)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each RGB pixel with its luma: ``gray + factor[i] * (x - gray)``, clamped.
    1-channel batches are returned unchanged."""
    if x.shape[1] != 3:
        return x
    return torch.lerp(rgb_to_gray(x), x, _per_sample(factor)).clamp_(0.0, 1.0)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of sample i by ``shift[i]`` turns (B,), in YIQ space, clamped.

    Each pixel moves by ``Δ x`` with the per-sample matrix ``Δ = (cos θ − 1)·A + sin θ·B``, where
    ``A`` and ``B`` are the rotation's two parts carried from YIQ back to RGB: no change at all for
    a zero shift, none for gray pixels (no I/Q chroma), and luma is kept. The sign follows HSV's
    hue direction. 1-channel batches are returned unchanged.
    """
    if x.shape[1] != 3:
        return x
    angle = shift.to(torch.float32).unsqueeze(1) * (2 * math.pi)
    cos_part, sin_part = _hue_basis(x.device)
    delta = torch.addcmul((torch.cos(angle) - 1) * cos_part, torch.sin(angle), sin_part)
    delta = delta.view(-1, 3, 3, 1, 1).to(x.dtype)
    # three multiply-adds rather than a matrix product, which would run in TF32 or bf16 under the
    # caller's precision settings and perturb even the samples that were not jittered
    rotated = x
    for channel in range(3):
        rotated = torch.addcmul(rotated, delta[:, :, channel], x[:, channel:channel + 1])
    return rotated.clamp_(0.0, 1.0)


@functools.lru_cache(maxsize=8)
def _hue_basis(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The flattened 3×3 matrices YIQ⁻¹·P·YIQ for P = diag(0, 1, 1) (the cos θ − 1 part) and for
    P = the quarter turn of the (I, Q) plane (the sin θ part), each (1, 9)."""
    to_yiq = torch.tensor(RGB_TO_YIQ, dtype=torch.float64)
    from_yiq = torch.linalg.inv(to_yiq)
    cos_part = torch.diag(torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64))
    # turning the (I, Q) plane by −θ turns hue the way HSV does
    sin_part = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]], dtype=torch.float64)
    return tuple(  # type: ignore[return-value]
        _constant(tuple((from_yiq @ part @ to_yiq).flatten().tolist()), (1, 9), device)
        for part in (cos_part, sin_part)
    )


def color_jitter(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    p: Probability = 0.8,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.1,
) -> torch.Tensor:
    """With probability ``p`` per sample, jitter brightness, contrast, saturation and hue (in
    that fixed order), with torchvision's strengths: factors uniform in [max(0, 1 − s), 1 + s],
    hue shift uniform in [−hue, hue] turns. Saturation and hue apply to RGB batches only.
    A sample that is not jittered gets identity factors, which leave it exactly unchanged.
    """
    _check_batch(x, generator)
    if not 0.0 <= hue <= 0.5:
        raise ValueError(f"hue jitter must be in [0, 0.5] turns, got {hue}")
    if min(brightness, contrast, saturation) < 0:
        raise ValueError("brightness, contrast and saturation jitter must be >= 0")
    if _never(p, "colour jitter probability"):
        return x
    # one draw for all five per-sample numbers: four strengths and whether to jitter at all
    draws = _rand(generator, x.shape[0], 5)
    lows = tuple(max(0.0, 1 - s) for s in (brightness, contrast, saturation)) + (-hue,)
    highs = tuple(1 + s for s in (brightness, contrast, saturation)) + (hue,)
    factors = torch.addcmul(_constant(lows, (4,), x.device), draws[:, :4],
                            _constant(tuple(h - l for h, l in zip(highs, lows)), (4,), x.device))
    applied = (draws[:, 4] < p).unsqueeze(1)
    factors = torch.where(applied, factors, _constant((1.0, 1.0, 1.0, 0.0), (4,), x.device))
    brightness_factor, contrast_factor, saturation_factor, hue_shift = factors.unbind(1)

    rgb = x.shape[1] == 3
    if brightness > 0:
        x = adjust_brightness(x, brightness_factor)
    if contrast > 0:
        x = adjust_contrast(x, contrast_factor)
    if saturation > 0 and rgb:
        x = adjust_saturation(x, saturation_factor)
    if hue > 0 and rgb:
        x = adjust_hue(x, hue_shift)
    return x


def random_grayscale(x: torch.Tensor, generator: torch.Generator, *, p: Probability = 0.2) -> torch.Tensor:
    """With probability ``p`` per sample, replace an RGB image by its luma in all 3 channels.
    1-channel batches are returned unchanged."""
    _check_batch(x, generator)
    if _never(p, "grayscale probability") or x.shape[1] != 3:
        return x
    gray = _per_sample(_coin(generator, x.shape[0], p))
    return torch.where(gray, rgb_to_gray(x), x)


# ----------------------------------------------------------------------------------------------
# blur and solarisation


def blur_kernel_size(side: int) -> int:
    """An odd kernel size of about 10% of ``side`` (at least 3), as in SimCLR, but never wider
    than reflect padding allows (2 · side − 1)."""
    size = max(3, int(0.1 * side) // 2 * 2 + 1)
    return min(size, 2 * side - 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Blur sample i with a Gaussian of standard deviation ``sigma[i]`` pixels (B,); a sigma of 0
    leaves the sample exactly unchanged. Separable and depthwise: the batch is folded into the
    channels so that one grouped convolution per axis applies every sample's own kernel.
    Borders are reflect-padded. ``kernel_size = (k_h, k_w)`` defaults to ``blur_kernel_size``.
    """
    _check_batch(x)
    batch, channels, height, width = x.shape
    k_h, k_w = kernel_size or (blur_kernel_size(height), blur_kernel_size(width))
    groups = batch * channels
    padded = F.pad(x.reshape(1, groups, height, width),
                   (k_w // 2, k_w // 2, k_h // 2, k_h // 2), mode="reflect")
    vertical = _gaussian_kernels(sigma, k_h, x.dtype).repeat_interleave(channels, dim=0)
    horizontal = vertical if k_w == k_h else \
        _gaussian_kernels(sigma, k_w, x.dtype).repeat_interleave(channels, dim=0)
    blurred = F.conv2d(padded, vertical.view(groups, 1, k_h, 1), groups=groups)
    blurred = F.conv2d(blurred, horizontal.view(groups, 1, 1, k_w), groups=groups)
    return blurred.view_as(x)


def _gaussian_kernels(sigma: torch.Tensor, size: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, size) normalised 1-D Gaussian kernels; a delta (the identity) where sigma is 0."""
    half_squared_offsets = _constant(tuple(0.5 * (i - size // 2) ** 2 for i in range(size)),
                                     (1, size), sigma.device)
    # the floor keeps 0/0 out of the centre tap, so sigma 0 gives weights (0, ..., 1, ..., 0)
    variance = sigma.to(torch.float32).square().clamp_min(1e-24).unsqueeze(1)
    weights = torch.exp(-half_squared_offsets / variance)
    return (weights / weights.sum(dim=1, keepdim=True)).to(dtype)


def random_gaussian_blur(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    p: Probability = 0.5,
    sigma: tuple[float, float] = (0.1, 2.0),
) -> torch.Tensor:
    """With probability ``p`` per sample, blur with sigma uniform in ``sigma`` (pixels)."""
    _check_batch(x, generator)
    if _never(p, "blur probability"):
        return x
    draws = _rand(generator, x.shape[0], 2)
    drawn_sigma = draws[:, 0] * (sigma[1] - sigma[0]) + sigma[0]
    return gaussian_blur(x, torch.where(draws[:, 1] < p, drawn_sigma, 0.0))


def solarize(x: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Invert pixels at or above ``threshold``: x ≥ t → 1 − x (never below 0: a blur before it
    can leave a pixel an ulp above 1)."""
    return torch.where(x >= threshold, inverted(x), x)


def inverted(x: torch.Tensor) -> torch.Tensor:
    """1 − x, kept at or above 0 for pixels a rounding error above 1."""
    return (1 - x).clamp_(min=0)


def random_solarize(
    x: torch.Tensor, generator: torch.Generator, *, p: Probability = 0.2, threshold: float = 0.5
) -> torch.Tensor:
    """Solarise each sample with probability ``p`` (see ``solarize``)."""
    _check_batch(x, generator)
    if _never(p, "solarize probability"):
        return x
    applied = _per_sample(_coin(generator, x.shape[0], p))
    return torch.where(applied & (x >= threshold), inverted(x), x)
