"""Images: uint8 (C, H, W) tensors of one shape, views made on the device, raw pixels as baseline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.backbones import build_backbone
from selfsup.config import Config
from selfsup.data.base import ImageSource
from selfsup.data.loader import BatchStream, iterate_in_order
from selfsup.errors import DataError
from selfsup.methods.base import BuildContext, Collectives, SINGLE_PROCESS
from selfsup.modalities.base import Batch, FeatureSets, Modality, register_modality
from selfsup.train.checkpoint import random_init_encoder
from selfsup.train.device import autocast
from selfsup.views import make_views
from selfsup.views.image import to_input

RAW_MAX_DIM = 4096  # raw-pixel baselines of larger images are average-pooled down to this


@register_modality("image", "uint8 images of one shape; raw pixels are the baseline")
class ImageModality(Modality):
    """Images of one (C, H, W) shape."""

    noun = "images"
    labels_hint = "class sub-folders for a folder of images, `labels` in an .npz"

    def __init__(self, in_shape: tuple[int, int, int]) -> None:
        self.in_shape = tuple(in_shape)

    @classmethod
    def for_training(cls, source: ImageSource, config: Config, run_dir: Path, resume: bool,
                     rank: int, share: Callable[[Any], Any]) -> "ImageModality":
        return cls(source.shape)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "ImageModality":
        size = int(spec["image_size"])
        return cls((int(spec["in_channels"]), size, size))

    # ------------------------------------------------------------------ training
    def build_encoder(self, backbone: dict[str, Any]) -> nn.Module:
        return build_backbone(backbone, self.in_shape[0], self.in_shape[1])

    def build_context(self, num_train: Optional[int] = None,
                      collectives: Optional[Collectives] = None) -> BuildContext:
        return BuildContext(in_shape=self.in_shape, num_train=num_train,
                            collectives=collectives or SINGLE_PROCESS)

    def make_views(self, recipe: str, options: dict[str, Any]) -> Callable:
        return make_views(recipe, self.in_shape, options)

    def batch_stream(self, source: ImageSource, config: Config, device: torch.device,
                     rank: int = 0, world_size: int = 1) -> BatchStream:
        return BatchStream(source, config.train.batch_size, device, config.train.seed,
                           shuffle=True, drop_last=True, device_max_gb=config.data.device_max_gb,
                           num_workers=config.data.num_workers, rank=rank, world_size=world_size)

    def memory_format(self, channels_last: bool) -> torch.memory_format:
        # channels_last pays on both: cuDNN's NHWC kernels on GPUs, oneDNN's on CPUs (1.5× for
        # the small CNN on 2 cores, measured).
        return torch.channels_last if channels_last else torch.contiguous_format

    def sample_inputs(self, source: ImageSource, indices: torch.Tensor,
                      device: torch.device) -> torch.Tensor:
        return source.get(indices).to(device)

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        return to_input(x) if x.dtype == torch.uint8 else x

    def encoder_spec(self, encoder: nn.Module, config: Config) -> dict[str, Any]:
        return {"backbone": dict(config.backbone), "in_channels": self.in_shape[0],
                "image_size": self.in_shape[1], "dataset": config.data.dataset,
                "modality": self.name}

    # ------------------------------------------------------------------ evaluation
    def check_reads(self, source: Any, dataset: str, run_dir: str | Path) -> None:
        if source.modality != self.name:
            raise DataError(f"data set {dataset!r} holds {source.modality} sequences but {run_dir} "
                            "holds an image encoder; pass --dataset with an image data set, or use "
                            f"a run pretrained on {source.modality} sequences")
        if source.shape[0] != self.in_shape[0]:
            raise DataError(f"data set {dataset!r} has {source.shape[0]}-channel images but the "
                            f"encoder of {run_dir} takes {self.in_shape[0]} channels; use data "
                            "like the pretraining data")

    def features(self, encoder: nn.Module, source: ImageSource, device: torch.device,
                 batch_size: int, precision: str) -> torch.Tensor:
        return extract_features(encoder_fn(encoder), source, device, batch_size, precision)

    def feature_sets(self, encoder: nn.Module, spec: dict[str, Any], train: ImageSource,
                     test: ImageSource, device: torch.device, batch_size: int, precision: str,
                     baselines: bool, seed: int) -> tuple[FeatureSets, dict[str, Any]]:
        def of(fn: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            return (extract_features(fn, train, device, batch_size, precision),
                    extract_features(fn, test, device, batch_size, precision))

        sets = {"ssl": of(encoder_fn(encoder))}
        if baselines:
            sets["raw"] = of(raw_pixels)
            sets["random_init"] = of(encoder_fn(random_init_encoder(spec, seed, device)))
        return sets, {}

    def example_inputs(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Normalised images of uniform random pixels."""
        pixels = torch.randint(0, 256, (n, *self.in_shape), generator=generator, dtype=torch.uint8)
        return (to_input(pixels),)

    # ------------------------------------------------------------------ fine-tuning
    @classmethod
    def describe_finetune_augmentation(cls, recorded: dict[str, Any]) -> str:
        if not recorded.get("augment"):
            return "no augmentation"
        low, high = recorded.get("crop_scale") or ("?", "?")
        return f"crops of {low}–{high} of the area, flip probability {recorded.get('flip_prob')}"

    def finetune_inputs(self, settings: Any) -> "ImageInputs":
        return image_inputs(settings)


@torch.no_grad()
def extract_features(fn: Callable[[torch.Tensor], torch.Tensor], source: ImageSource,
                     device: torch.device, batch_size: int = 1024,
                     precision: str = "fp32") -> torch.Tensor:
    """Apply ``fn`` to every image of ``source`` in order; float32 (N, D) features on ``device``."""
    parts = []
    for images, _ in iterate_in_order(source, batch_size, device):
        x = to_input(images).contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            parts.append(fn(x).float())
    return torch.cat(parts)


def raw_pixels(x: torch.Tensor) -> torch.Tensor:
    """The raw-pixel baseline's features: normalised pixels, pooled to ≤ RAW_MAX_DIM values."""
    c, h, w = x.shape[1:]
    while c * h * w > RAW_MAX_DIM:
        x = F.avg_pool2d(x, 2)
        c, h, w = x.shape[1:]
    return x.flatten(1)


def encoder_fn(encoder: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The encoder in eval mode (BatchNorm running statistics), NHWC for faster convolutions."""
    encoder.eval()
    return encoder.to(memory_format=torch.channels_last)


@dataclass
class ImageInputs:
    """Images for fine-tuning: NHWC, with the ``crop-flip`` recipe on the device when ``augment``."""

    augment: bool
    crop_scale: tuple[float, float]
    flip_prob: float
    noun: str = "images"

    def prepare(self, model: nn.Module, device: torch.device) -> nn.Module:
        return model.to(device=device, memory_format=torch.channels_last)

    def training_epochs(self, train: ImageSource, batch_size: int, seed: int,
                        device: torch.device) -> Callable[[int], Iterator[Batch]]:
        views = make_views("crop-flip", train.shape, {"crop_scale": list(self.crop_scale),
                                                      "flip_prob": self.flip_prob})
        stream = BatchStream(train, batch_size, device, seed, shuffle=True, drop_last=True)
        view_generator = torch.Generator(device=device).manual_seed(seed)

        def epoch(index: int) -> Iterator[Batch]:
            for images, labels in stream.epoch(index):
                x = views(images, view_generator)[0] if self.augment else to_input(images)
                yield (x.contiguous(memory_format=torch.channels_last),), labels

        return epoch

    def logits(self, model: nn.Module, test: ImageSource, device: torch.device, batch_size: int,
               precision: str) -> torch.Tensor:
        return extract_features(model, test, device, batch_size, precision)

    def recorded(self, settings: dict[str, Any]) -> dict[str, Any]:
        return settings


def image_inputs(settings: Any) -> ImageInputs:
    """The fine-tuning inputs of images under ``settings`` (its augment, crop_scale, flip_prob)."""
    return ImageInputs(settings.augment, tuple(settings.crop_scale), settings.flip_prob)
