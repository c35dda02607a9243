"""Use any torchvision or timm model (or any nn.Module) as a selfsup backbone.

Neither library is a dependency: torchvision's PyPI wheels fail to import beside some torch builds,
so both are imported only when a ``torchvision:NAME`` or ``timm:NAME`` backbone is asked for. Models
are built with random weights (nothing downloads at run time).
"""

from __future__ import annotations

import torch
from torch import nn

from selfsup.errors import ConfigError


class FeatureAdapter(nn.Module):
    """Wraps a module so that ``forward`` returns flat (B, out_dim) features.

    The classifier is replaced by the identity where the model has a known one (``fc``,
    ``classifier``, ``head``, ``heads``); 4-D outputs are average-pooled; ``out_dim`` is found with one
    dummy forward pass at ``probe_shape``.
    """

    def __init__(self, module: nn.Module, probe_shape: tuple[int, int, int]) -> None:
        super().__init__()
        for attr in ("fc", "classifier", "head", "heads"):
            if isinstance(getattr(module, attr, None), nn.Module):
                setattr(module, attr, nn.Identity())
        if hasattr(module, "reset_classifier"):  # timm's own way to drop the head
            module.reset_classifier(0)
        self.module = module
        was_training = module.training
        module.eval()
        with torch.no_grad():
            out = self._features(torch.zeros(2, *probe_shape))
        module.train(was_training)
        self.out_dim = out.shape[1]

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if out.ndim == 4:
            out = out.mean(dim=(2, 3))
        elif out.ndim == 3:  # token sequences (B, N, D): mean over tokens
            out = out.mean(dim=1)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._features(x)


def external_backbone(spec: str, in_channels: int, image_size: int) -> FeatureAdapter:
    """Build ``torchvision:NAME`` or ``timm:NAME`` with random weights and ``in_channels`` inputs."""
    library, _, name = spec.partition(":")
    if library == "torchvision":
        try:
            import torchvision
        except Exception as e:  # ImportError, or the operator-registration error of mismatched wheels
            raise ConfigError(
                f"backbone {spec!r} needs torchvision, which is not importable here ({e}); "
                "install a torchvision that matches your torch, or use resnet18 / small-cnn"
            ) from None
        try:
            module = torchvision.models.get_model(name, weights=None)
        except Exception as e:
            raise ConfigError(f"torchvision has no model {name!r}: {e}") from None
    elif library == "timm":
        try:
            import timm
        except Exception as e:
            raise ConfigError(f"backbone {spec!r} needs timm ({e}); pip install timm") from None
        try:
            module = timm.create_model(name, pretrained=False, in_chans=in_channels)
        except Exception as e:
            raise ConfigError(f"timm could not build {name!r}: {e}") from None
    else:
        raise ConfigError(f"unknown backbone library {library!r}; use torchvision:NAME or timm:NAME")
    if library == "torchvision" and in_channels != 3:
        _replace_first_conv(module, in_channels)
    return FeatureAdapter(module, (in_channels, image_size, image_size))


def _replace_first_conv(module: nn.Module, in_channels: int) -> None:
    """Swap the first 3-channel convolution for one taking ``in_channels`` (same shape otherwise)."""
    for parent in module.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                setattr(parent, child_name, nn.Conv2d(
                    in_channels, child.out_channels, child.kernel_size, child.stride,
                    child.padding, child.dilation, child.groups, child.bias is not None))
                return
    raise ConfigError("could not find a 3-channel first convolution to adapt")
