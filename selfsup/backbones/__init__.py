"""Backbones: encoders that map an input batch to (B, out_dim) features."""

from __future__ import annotations

from typing import Any, Optional, Protocol, runtime_checkable

from torch import nn

from selfsup.backbones import bag, bytenet, resnet, small_cnn, transformer, vit  # noqa: F401  (registration)
from selfsup.backbones.adapter import FeatureAdapter, external_backbone
from selfsup.config import build_options
from selfsup.registry import BACKBONES
from selfsup.tokenize.base import Tokenizer

__all__ = ["build_backbone", "FeatureAdapter", "Layered"]


@runtime_checkable
class Layered(Protocol):
    """A backbone made of a stack of layers (the ViT's blocks), which fine-tuning trains at rates
    that fall layer by layer towards the input (layer-wise learning-rate decay, BEiT/MAE)."""

    @property
    def num_layers(self) -> int:
        """The number of layers; parameters lie in layers 0 (the input) … num_layers + 1."""

    def layer_id(self, name: str) -> int:
        """The layer of the parameter called ``name`` (as ``named_parameters`` gives it)."""


def build_backbone(section: dict[str, Any], in_channels: int, image_size: int,
                   tokenizer: Optional[Tokenizer] = None) -> nn.Module:
    """Build the backbone a config section names (``{"name": "resnet18", ...options}``).

    ``torchvision:NAME`` and ``timm:NAME`` build an external model through ``FeatureAdapter``.
    Token backbones (options with ``vocab_size``) learn the vocabulary, padding id and tokeniser
    from ``tokenizer`` (in_channels and image_size are then unused).
    Every backbone has an ``out_dim`` attribute.
    """
    # ``init`` (the weights a run starts from) is the trainer's business, not an option of the
    # architecture: rebuilding the backbone from encoder.json or for the random-init baseline
    # must not load it
    section = {key: value for key, value in section.items() if key != "init"}
    name = section.get("name", "resnet18")
    if ":" in name:
        return external_backbone(name, in_channels, image_size)
    factory = BACKBONES.get(name)
    options_cls: Optional[type] = getattr(factory, "options", None)
    if hasattr(options_cls, "img_size"):  # size-aware backbones (ViT) learn the data's image size
        section = {"img_size": image_size, **section}
    if hasattr(options_cls, "vocab_size") and tokenizer is not None:
        section = {"vocab_size": tokenizer.vocab_size, "pad_id": tokenizer.pad_id,
                   "tokenizer": tokenizer.config(), **section}
    options = build_options(options_cls, section, "backbone") if options_cls else None
    return factory(in_channels, options)
