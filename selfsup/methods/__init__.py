"""Self-supervised methods, one file each, registered by name.

Every module in this package is imported here, so a new method is one new file with its
``@METHODS.register`` line — nothing else to edit.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any

from torch import nn

from selfsup.config import build_options, check_number
from selfsup.methods.base import (
    NO_CONTEXT, BuildContext, Collectives, Generates, Method, Reconstructs, StepOutput,
)
from selfsup.registry import METHODS

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["BuildContext", "Collectives", "Generates", "Method", "NO_CONTEXT", "Reconstructs",
           "StepOutput", "build_method"]


def build_method(section: dict[str, Any], encoder: nn.Module,
                 context: BuildContext = NO_CONTEXT) -> Method:
    """Build the method a config section names (``{"name": "simclr", ...options}``) on
    ``encoder``, telling it what ``context`` knows: the data's image shape or tokeniser, the
    training set's size and the processes it trains in (each method reads what it needs)."""
    cls = METHODS.get(section.get("name", "simclr"))
    options = build_options(cls.Options, section, "method")
    for field in dataclasses.fields(options):
        # a softmax temperature of 0 divides by zero: the first step's loss is NaN
        if field.name.endswith(("temperature", "_temp")):
            check_number(getattr(options, field.name), f"method.{field.name}", 0, above=True)
    return cls(encoder, options, context)
