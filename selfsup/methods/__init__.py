"""Self-supervised methods, one file each, registered by name.

Every module in this package is imported here, so a new method is one new file with its
``@METHODS.register`` line — nothing else to edit.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Optional

from torch import nn

from selfsup.config import build_options
from selfsup.methods.base import Method, StepOutput
from selfsup.registry import METHODS

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Method", "StepOutput", "build_method"]


def build_method(section: dict[str, Any], encoder: nn.Module,
                 in_shape: Optional[tuple[int, int, int]] = None,
                 num_train: Optional[int] = None) -> Method:
    """Build the method a config section names (``{"name": "simclr", ...options}``).

    Methods that generate images (``accepts_in_shape = True``, e.g. the autoencoders) are also
    told the data's (C, H, W) so their decoders fit it without extra options. Methods whose
    defaults depend on the size of the training set (``accepts_num_train = True``: MoCo v2's
    queue) are told its number of samples, ``num_train``; None where the caller does not know it
    (the method then falls back to a fixed default).
    """
    cls = METHODS.get(section.get("name", "simclr"))
    options = build_options(cls.Options, section, "method")
    extra: dict[str, Any] = {}
    if getattr(cls, "accepts_in_shape", False):
        extra["in_shape"] = in_shape
    if getattr(cls, "accepts_num_train", False):
        extra["num_train"] = num_train
    return cls(encoder, options, **extra)
