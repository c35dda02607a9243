"""View recipes: which augmentations make each view, registered by name in ``VIEW_RECIPES``.

A recipe is a factory ``(in_shape, options) -> ViewMaker``; ``in_shape`` is the data's
(C, H, W) and ``options`` the ``views`` config section, validated by the recipe's own dataclass.
A ``ViewMaker`` turns a uint8 batch on the training device into a list of normalised float views.

Small images (side ≤ 64 pixels, e.g. 28/32-pixel data sets) get milder defaults: crops keep at
least 20% of the area instead of 8%, and no blur, which is known to hurt at that resolution.
The crop-scale rule looks at the input image (how much content there is to crop from); the blur
rule at the view's size (the resolution the blur acts on).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch

from selfsup.config import build_options, check_number
from selfsup.errors import ConfigError, DataError
from selfsup.registry import VIEW_RECIPES
from selfsup.views.image import (
    blockwise,
    color_jitter,
    normalize,
    random_gaussian_blur,
    random_grayscale,
    random_horizontal_flip,
    random_resized_crop,
    random_solarize,
    to_float,
    to_input,
)

SMALL_IMAGE_SIDE = 64  # images up to this side count as small (see the module docstring)


class ViewMaker:
    """Turns a uint8 (B, C, H, W) batch into ``num_views`` normalised float32 views.

    Views are made on the batch's device with randomness from ``generator``, which must live on
    that device; the same generator state gives the same views. Sample i of every view comes from
    sample i of the batch (the batch is never reordered), so labels stay aligned.
    """

    num_views: int = 1

    def __init__(self, in_shape: tuple[int, int, int]) -> None:
        self.in_shape = _checked_shape(in_shape)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        raise NotImplementedError

    def _check(self, images: torch.Tensor) -> None:
        channels = self.in_shape[0]
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != channels:
            raise DataError(
                f"{type(self).__name__} expects uint8 images of shape (B, {channels}, H, W) like "
                f"the data it was built for {self.in_shape}, got {images.dtype} {tuple(images.shape)}"
            )


def _checked_shape(in_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(n) for n in in_shape)
    if len(shape) != 3 or shape[0] not in (1, 3) or min(shape) < 1:
        raise DataError(
            f"image views need (C, H, W) images with C = 1 (gray) or 3 (RGB), got {tuple(in_shape)}"
        )
    return shape  # type: ignore[return-value]


@dataclass(frozen=True)
class ViewSpec:
    """The augmentations of one view, applied in this order; probabilities are per sample."""

    size: tuple[int, int]  # output (height, width)
    crop_scale: tuple[float, float]  # share of the image's area a crop keeps
    flip_prob: float = 0.5
    jitter_prob: float = 0.8
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    grayscale_prob: float = 0.2
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_prob: float = 0.0


PROBABILITIES = ("flip_prob", "jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob")


def augment(x: torch.Tensor, specs: ViewSpec | Sequence[ViewSpec], generator: torch.Generator) -> torch.Tensor:
    """Views of a float batch in [0, 1] following ``specs``; the result is still in [0, 1].

    With several specs, ``x`` is ``len(specs)`` equal blocks of samples and block v follows
    ``specs[v]``; such specs may differ only in their probabilities (see ``ImageViews``).
    """
    specs = [specs] if isinstance(specs, ViewSpec) else list(specs)
    spec = specs[0]
    if any(_without_probabilities(other) != _without_probabilities(spec) for other in specs):
        raise ValueError("views made as one batch may differ only in their probabilities")
    block, leftover = divmod(x.shape[0], len(specs))
    if leftover:
        raise ValueError(f"a batch of {x.shape[0]} samples does not split into {len(specs)} views")
    p = {name: blockwise([getattr(s, name) for s in specs], block, x.device) for name in PROBABILITIES}

    x = random_resized_crop(x, generator, size=spec.size, scale=spec.crop_scale)
    x = random_horizontal_flip(x, generator, p=p["flip_prob"])
    brightness, contrast, saturation, hue = spec.jitter
    x = color_jitter(x, generator, p=p["jitter_prob"], brightness=brightness, contrast=contrast,
                     saturation=saturation, hue=hue)
    x = random_grayscale(x, generator, p=p["grayscale_prob"])
    x = random_gaussian_blur(x, generator, p=p["blur_prob"], sigma=spec.blur_sigma)
    return random_solarize(x, generator, p=p["solarize_prob"])


@functools.lru_cache(maxsize=64)
def _without_probabilities(spec: ViewSpec) -> ViewSpec:
    return replace(spec, **{name: 0.0 for name in PROBABILITIES})


class ImageViews(ViewMaker):
    """One augmented view per ``ViewSpec``, from the same batch.

    Views whose specs differ at most in their probabilities (SimCLR's two, BYOL's two) are made
    together as one batch of ``views × B`` samples with per-sample probabilities: on a GPU the
    cost of a small batch is launching its kernels, so this halves the cost of two views.
    """

    def __init__(self, in_shape: tuple[int, int, int], specs: Sequence[ViewSpec]) -> None:
        super().__init__(in_shape)
        self.specs = tuple(specs)
        self.num_views = len(self.specs)
        groups: dict[ViewSpec, list[int]] = {}
        for index, spec in enumerate(self.specs):
            groups.setdefault(_without_probabilities(spec), []).append(index)
        self._groups = list(groups.values())

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        self._check(images)
        views: list[torch.Tensor] = [images] * self.num_views  # placeholders, all replaced below
        # float32 whatever autocast region the caller is in: the blur's convolution would else
        # run in bf16/fp16 and change the views' dtype
        with torch.autocast(images.device.type, enabled=False):
            for indices in self._groups:
                stacked = images.repeat(len(indices), 1, 1, 1) if len(indices) > 1 else images
                specs = [self.specs[i] for i in indices]
                made = normalize(augment(to_float(stacked), specs, generator))
                for index, view in zip(indices, made.chunk(len(indices))):
                    views[index] = view
        return views

    def __repr__(self) -> str:
        return f"ImageViews(in_shape={self.in_shape}, specs={list(self.specs)})"


class InputViews(ViewMaker):
    """``num_views`` copies of the un-augmented input, ``to_input(images)``."""

    def __init__(self, in_shape: tuple[int, int, int], num_views: int) -> None:
        super().__init__(in_shape)
        self.num_views = num_views

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        self._check(images)
        x = to_input(images)
        return [x] + [x.clone() for _ in range(self.num_views - 1)]


# ----------------------------------------------------------------------------------------------
# options


@dataclass
class AugmentOptions:
    """Options shared by the augmenting recipes (the ``views`` config section)."""

    size: Any = None  # view side, or [height, width]; default: the input's size
    crop_scale: Any = None  # [min, max] share of the area; default [0.2, 1] for sides ≤ 64, else [0.08, 1]
    flip_prob: float = 0.5
    jitter_prob: float = 0.8
    jitter_strength: float = 1.0  # multiplies the recipe's brightness/contrast/saturation/hue strengths
    grayscale_prob: float = 0.2


@dataclass
class SimCLROptions(AugmentOptions):
    blur_prob: Any = None  # default 0.5 when the view side > 64, else 0 (blur hurts tiny images)


@dataclass
class BYOLOptions(AugmentOptions):
    blur_probs: Any = None  # per view; default [1.0, 0.1] when the view side > 64, else [0, 0]
    solarize_probs: tuple[float, float] = (0.0, 0.2)  # per view


@dataclass
class InputOptions:
    num_views: int = 2


def _pair(value: Any, key: str, low: float = 0.0, high: float = 1.0) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"views.{key} must be a pair [a, b], got {value!r}")
    return (check_number(value[0], f"views.{key}", low, high),
            check_number(value[1], f"views.{key}", low, high))


def _view_size(value: Any, in_shape: tuple[int, int, int], key: str = "size") -> tuple[int, int]:
    if value is None:
        return in_shape[1], in_shape[2]
    sides = [value, value] if not isinstance(value, (list, tuple)) else list(value)
    if len(sides) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sides):
        raise ConfigError(f"views.{key} must be a positive integer or [height, width], got {value!r}")
    return sides[0], sides[1]


def _crop_scale(value: Any, in_shape: tuple[int, int, int], key: str = "crop_scale") -> tuple[float, float]:
    if value is None:
        return (0.2, 1.0) if max(in_shape[1:]) <= SMALL_IMAGE_SIDE else (0.08, 1.0)
    low, high = _pair(value, key)
    if not 0.0 < low <= high:
        raise ConfigError(f"views.{key} must satisfy 0 < min <= max <= 1, got {value!r}")
    return low, high


def _jitter(strengths: tuple[float, float, float, float], scale: float) -> tuple[float, ...]:
    jitter = tuple(s * scale for s in strengths)
    if jitter[3] > 0.5:
        raise ConfigError(
            f"views.jitter_strength {scale} makes the hue jitter {jitter[3]:.3g} > 0.5 turns; lower it"
        )
    return jitter


def _common_spec(options: AugmentOptions, in_shape: tuple[int, int, int],
                 jitter: tuple[float, float, float, float]) -> ViewSpec:
    """The ViewSpec fields every augmenting recipe shares, validated."""
    strength = check_number(options.jitter_strength, "views.jitter_strength")
    return ViewSpec(
        size=_view_size(options.size, in_shape),
        crop_scale=_crop_scale(options.crop_scale, in_shape),
        flip_prob=check_number(options.flip_prob, "views.flip_prob", 0, 1),
        jitter_prob=check_number(options.jitter_prob, "views.jitter_prob", 0, 1),
        jitter=_jitter(jitter, strength),  # type: ignore[arg-type]
        grayscale_prob=check_number(options.grayscale_prob, "views.grayscale_prob", 0, 1),
    )


def _is_small(size: tuple[int, int]) -> bool:
    return max(size) <= SMALL_IMAGE_SIDE


# ----------------------------------------------------------------------------------------------
# recipes


@VIEW_RECIPES.register("simclr", "two views: crop, flip, colour jitter, grayscale (+ blur above 64 px)")
def simclr_views(in_shape: tuple[int, int, int], options: dict[str, Any]) -> ViewMaker:
    """SimCLR's two identically distributed views (Chen et al. 2020, appendix A)."""
    opts = build_options(SimCLROptions, options, "views")
    spec = _common_spec(opts, _checked_shape(in_shape), (0.4, 0.4, 0.4, 0.1))
    default_blur = 0.0 if _is_small(spec.size) else 0.5
    if opts.blur_prob is not None:
        default_blur = check_number(opts.blur_prob, "views.blur_prob", 0, 1)
    spec = replace(spec, blur_prob=default_blur)
    return ImageViews(in_shape, [spec, spec])


@VIEW_RECIPES.register("byol", "two asymmetric views: BYOL's blur/solarise split (+ blur above 64 px)")
def byol_views(in_shape: tuple[int, int, int], options: dict[str, Any]) -> ViewMaker:
    """BYOL's two asymmetric views (Grill et al. 2020, appendix B): view 1 always blurred, view 2
    rarely blurred but sometimes solarised."""
    opts = build_options(BYOLOptions, options, "views")
    spec = _common_spec(opts, _checked_shape(in_shape), (0.4, 0.4, 0.2, 0.1))
    default_blur = (0.0, 0.0) if _is_small(spec.size) else (1.0, 0.1)
    blur = default_blur if opts.blur_probs is None else _pair(opts.blur_probs, "blur_probs")
    solarize = _pair(opts.solarize_probs, "solarize_probs")
    return ImageViews(in_shape, [
        replace(spec, blur_prob=blur[0], solarize_prob=solarize[0]),
        replace(spec, blur_prob=blur[1], solarize_prob=solarize[1]),
    ])


@VIEW_RECIPES.register("none", "un-augmented inputs (tests and baselines); option num_views")
def input_views(in_shape: tuple[int, int, int], options: dict[str, Any]) -> ViewMaker:
    """``num_views`` copies of the normalised input, no augmentation."""
    opts = build_options(InputOptions, options, "views")
    if opts.num_views < 1:
        raise ConfigError(f"views.num_views must be at least 1, got {opts.num_views}")
    return InputViews(in_shape, opts.num_views)


# ----------------------------------------------------------------------------------------------
# multi-crop


@dataclass
class MultiCropOptions:
    """Options of the multi-crop recipe: 2 global views and ``num_local_views`` small local ones.

    DINO's 224-px split is global crops of [0.4, 1] of the area at 224 px and local crops of
    [0.05, 0.4] at 96 px. On inputs ≤ 64 px the defaults are global [0.35, 1] at the input size and
    local [0.1, 0.35] at half the side (14 px for 28-px images): a 5% crop of a 28-px image is a
    6×6-pixel patch, mostly interpolation once resized, while 10% (~9×9 px) still holds a stroke or
    a garment part; the global minimum of 0.35 (~17×17 px) keeps most of the object in view.
    """

    num_local_views: int = 6
    global_size: Any = None  # side or [height, width]; default: the input's size
    local_size: Any = None  # default: half the input's side, rounded up
    global_scale: Any = None  # default [0.35, 1] for inputs ≤ 64 px, else [0.4, 1]
    local_scale: Any = None  # default [0.1, 0.35] for inputs ≤ 64 px, else [0.05, 0.4]
    flip_prob: float = 0.5
    jitter_prob: float = 0.8
    jitter_strength: float = 1.0
    grayscale_prob: float = 0.2
    blur_probs: Any = None  # [global 1, global 2, locals]; default [1, 0.1, 0.5], 0 for views ≤ 64 px
    solarize_probs: tuple[float, float] = (0.0, 0.2)  # the two global views; locals never solarised


# (global, local) crop scales, for inputs ≤ 64 px and for larger ones (DINO's)
MULTICROP_SCALES = {True: ((0.35, 1.0), (0.1, 0.35)), False: ((0.4, 1.0), (0.05, 0.4))}


def _multicrop_blur(value: Any, global_size: tuple[int, int],
                    local_size: tuple[int, int]) -> tuple[float, float, float]:
    """Blur probabilities of (global 1, global 2, locals): DINO's (1, 0.1, 0.5), or none on views
    small enough that blur hurts (see the module docstring)."""
    if value is None:
        global_blur = (0.0, 0.0) if _is_small(global_size) else (1.0, 0.1)
        return (*global_blur, 0.0 if _is_small(local_size) else 0.5)
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ConfigError(f"views.blur_probs must be [global 1, global 2, locals], got {value!r}")
    return tuple(check_number(p, "views.blur_probs", 0, 1) for p in value)  # type: ignore[return-value]


@VIEW_RECIPES.register("multicrop", "2 global + N small local views (DINO); options num_local_views, "
                                    "global_size, local_size, global_scale, local_scale")
def multicrop_views(in_shape: tuple[int, int, int], options: dict[str, Any]) -> ViewMaker:
    """Multi-crop (SwAV, Caron et al. 2020; DINO, Caron et al. 2021): views
    [global 1, global 2, local 1 .. local N].

    The globals carry BYOL's asymmetric blur/solarisation and are made as one batch; the locals,
    low-resolution crops of small regions, are made as another.
    """
    opts = build_options(MultiCropOptions, options, "views")
    in_shape = _checked_shape(in_shape)
    num_local = opts.num_local_views
    if isinstance(num_local, bool) or not isinstance(num_local, int) or num_local < 0:
        raise ConfigError(f"views.num_local_views must be an integer ≥ 0, got {num_local!r}")
    colour = AugmentOptions(flip_prob=opts.flip_prob, jitter_prob=opts.jitter_prob,
                            jitter_strength=opts.jitter_strength, grayscale_prob=opts.grayscale_prob)
    base = _common_spec(colour, in_shape, (0.4, 0.4, 0.2, 0.1))  # BYOL's strengths, as DINO
    small_input = max(in_shape[1:]) <= SMALL_IMAGE_SIDE
    default_global_scale, default_local_scale = MULTICROP_SCALES[small_input]
    local_size = (((in_shape[1] + 1) // 2, (in_shape[2] + 1) // 2) if opts.local_size is None
                  else _view_size(opts.local_size, in_shape, "local_size"))  # default: half the side
    global_scale = (default_global_scale if opts.global_scale is None
                    else _crop_scale(opts.global_scale, in_shape, "global_scale"))
    local_scale = (default_local_scale if opts.local_scale is None
                   else _crop_scale(opts.local_scale, in_shape, "local_scale"))
    global_spec = replace(base, size=_view_size(opts.global_size, in_shape, "global_size"),
                          crop_scale=global_scale)
    local_spec = replace(base, size=local_size, crop_scale=local_scale)
    blur = _multicrop_blur(opts.blur_probs, global_spec.size, local_spec.size)
    solarize = _pair(opts.solarize_probs, "solarize_probs")
    global_views = [replace(global_spec, blur_prob=blur[i], solarize_prob=solarize[i]) for i in range(2)]
    return ImageViews(in_shape, global_views + [replace(local_spec, blur_prob=blur[2])] * num_local)


@dataclass
class CropFlipOptions:
    size: Any = None  # view side, or [height, width]; default: the input's size
    crop_scale: Any = None  # default [0.2, 1] for sides ≤ 64, else [0.08, 1]
    flip_prob: float = 0.5
    num_views: int = 1


@VIEW_RECIPES.register("crop-flip", "geometric only: random resized crop and flip; option num_views "
                                    "(default 1) (rotation prediction)")
def crop_flip_views(in_shape: tuple[int, int, int], options: dict[str, Any]) -> ViewMaker:
    """``num_views`` views by random resized crop and horizontal flip, no colour changes: for
    pretext tasks about geometry such as rotation prediction (Gidaris et al. 2018)."""
    opts = build_options(CropFlipOptions, options, "views")
    in_shape = _checked_shape(in_shape)
    if isinstance(opts.num_views, bool) or not isinstance(opts.num_views, int) or opts.num_views < 1:
        raise ConfigError(f"views.num_views must be an integer ≥ 1, got {opts.num_views!r}")
    spec = ViewSpec(size=_view_size(opts.size, in_shape), crop_scale=_crop_scale(opts.crop_scale, in_shape),
                    flip_prob=check_number(opts.flip_prob, "views.flip_prob", 0, 1), jitter_prob=0.0,
                    grayscale_prob=0.0)
    return ImageViews(in_shape, [spec] * opts.num_views)


@VIEW_RECIPES.register("simclr-no-flip", "SimCLR's two views without the horizontal flip "
                                         "(rotation/flip equivariance)")
def simclr_no_flip_views(in_shape: tuple[int, int, int], options: dict[str, Any]) -> ViewMaker:
    """SimCLR's views with ``flip_prob`` 0 by default: a flip inside a positive pair teaches
    invariance to mirroring, which contradicts equivariance to flips or 90° rotations (see
    ``selfsup.methods.equivariance``)."""
    return simclr_views(in_shape, {"flip_prob": 0.0, **options})
