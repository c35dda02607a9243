"""Views: the augmentations of self-supervised learning, made batched on the training device.

Importing this package registers the image view recipes in ``selfsup.registry.VIEW_RECIPES``.
"""

from __future__ import annotations

from typing import Any, Optional

from selfsup.errors import ConfigError
from selfsup.registry import VIEW_RECIPES
from selfsup.views.image import normalize, to_float, to_input
from selfsup.views.recipes import ImageViews, InputViews, ViewMaker, ViewSpec, augment
from selfsup.views.sequence_recipes import is_sequence_recipe, make_sequence_views

__all__ = [
    "ImageViews", "InputViews", "ViewMaker", "ViewSpec", "augment", "make_views",
    "normalize", "to_float", "to_input", "is_sequence_recipe", "make_sequence_views",
]


def make_views(recipe_name: str, in_shape: tuple[int, int, int],
               options: Optional[dict[str, Any]] = None) -> ViewMaker:
    """Build the registered view recipe ``recipe_name`` for (C, H, W) images with ``options``
    (the ``views`` config section; unknown keys raise ConfigError naming the key)."""
    if is_sequence_recipe(recipe_name):
        raise ConfigError(f"view recipe {recipe_name!r} makes views of token sequences, not "
                          "images; pick an image recipe or a sequence data set")
    return VIEW_RECIPES.get(recipe_name)(tuple(in_shape), dict(options or {}))
