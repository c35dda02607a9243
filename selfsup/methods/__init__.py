"""Self-supervised methods, each one file, registered by name."""

from __future__ import annotations

from typing import Any

from torch import nn

from selfsup.config import build_options
from selfsup.methods import simclr  # noqa: F401  (registration)
from selfsup.methods.base import Method, StepOutput
from selfsup.registry import METHODS

__all__ = ["Method", "StepOutput", "build_method"]


def build_method(section: dict[str, Any], encoder: nn.Module) -> Method:
    """Build the method a config section names (``{"name": "simclr", ...options}``)."""
    cls = METHODS.get(section.get("name", "simclr"))
    options = build_options(cls.Options, section, "method")
    return cls(encoder, options)
