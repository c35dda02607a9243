"""A new run's config, put together: the defaults, the method's own defaults, the default recipe
of the data's modality, a YAML file and ``--set key=value`` overrides.

This sits at the top of the package, apart from ``selfsup.config`` (the leaf that holds the
sections and validates them): resolving a method's or a backbone's defaults needs the catalog,
which imports every method, backbone and modality, and they in turn import ``selfsup.config``.
A saved run's config is read back by ``selfsup.config.read_saved_config``, with none of this.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Optional


from selfsup import catalog
from selfsup.backbones.hf_esm import esm_backbone_section, hf_folder
from selfsup.config import Config, from_dict, merge_into, read_yaml_file, set_key
from selfsup.data import data_modality
from selfsup.errors import ConfigError
from selfsup.recipes import default_recipe
from selfsup.registry import BACKBONES, METHODS


def load_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None,
                base: Optional[dict[str, Any]] = None) -> Config:
    """Defaults ← the method's own defaults ← ``base`` ← YAML file ← ``--set key=value`` (later wins).

    The method's defaults (``Method.config_defaults``, e.g. SimSiam's plain SGD) apply to whichever
    method the file or the overrides name, below everything the user wrote.
    """
    loaded: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        loaded = read_yaml_file(p, "fix the file (UTF-8 YAML)", ConfigError)[1] or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
        _check_sections(loaded, f"config file {p}")
    user: dict[str, Any] = {}
    if base:
        merge_into(user, copy.deepcopy(base))
    merge_into(user, loaded)
    for item in overrides or []:
        set_key(user, item)
        _check_sections(user, f"--set {item}")

    data: dict[str, Any] = Config().to_dict()
    if "name" not in (user.get("method") or {}):
        user = _with_modality_recipe(user)
    method = (user.get("method") or {}).get("name", data["method"]["name"])
    data["method"] = {"name": method}
    defaults = copy.deepcopy(method_config_defaults(method))
    chosen_backbone = (user.get("backbone") or {}).get("name")
    if chosen_backbone and "backbone" in defaults:
        defaults["backbone"] = _backbone_defaults_for(chosen_backbone, defaults["backbone"])
    merge_into(data, defaults)
    merge_into(data, user)
    folder = hf_folder(data["backbone"].get("init"))
    if folder is not None:  # the checkpoint's shape, written into config.yaml: resumes need no folder
        data["backbone"] = esm_backbone_section(data["backbone"], folder)
    return from_dict(Config, data)


SECTIONS = tuple(f.name for f in dataclasses.fields(Config) if f.name != "out")


def _check_sections(data: dict[str, Any], where: str) -> None:
    """ConfigError naming ``where`` when a section (``method``, ``train``, ...) is given a value
    instead of a mapping of keys, with how to write what was probably meant."""
    for key in SECTIONS:
        value = data.get(key)
        if value is None or isinstance(value, dict):
            continue
        if isinstance(value, str) and key in ("method", "backbone", "data"):
            field = "dataset" if key == "data" else "name"
            hint = f"set its {field} with {key}.{field}={value}"
        else:
            hint = f"set a key inside it, e.g. {key}.KEY=VALUE"
        raise ConfigError(f"{where}: {key} is a section of keys, not a value ({value!r}); {hint}")


def _with_modality_recipe(user: dict[str, Any]) -> dict[str, Any]:
    """``user`` over the default recipe of its data's modality (``selfsup.recipes``), when it names
    a sequence data set and no method; else ``user`` unchanged."""
    data = user.get("data") or {}
    if "dataset" not in data:  # the default data set: images
        return user
    modality = data_modality(data["dataset"], data.get("data_dir"), data.get("options"))
    recipe = default_recipe(modality, user.get("train") or {})
    if not recipe:
        return user
    chosen_backbone = (user.get("backbone") or {}).get("name")
    if chosen_backbone:  # the user's backbone replaces the recipe's, options and all
        recipe.pop("backbone", None)
    merge_into(recipe, user)
    return recipe


def _backbone_defaults_for(name: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """A method's default backbone options that the user's chosen backbone ``name`` accepts.

    BEiT defaults to a mean-pooled ViT: with ``backbone.name=vit-small`` the user keeps
    ``pool=mean``; with ``backbone.name=resnet18`` the ViT-only keys are dropped instead of failing
    as unknown keys (the method itself then says whether it works with that backbone).
    """
    catalog.load()  # the built-ins and the plugins' backbones
    if name not in BACKBONES:
        return {"name": name}
    options_cls = getattr(BACKBONES.get(name), "options", None)
    accepted = {f.name for f in dataclasses.fields(options_cls)} if options_cls else set()
    return {"name": name, **{k: v for k, v in defaults.items() if k in accepted}}


def method_config_defaults(name: str) -> dict[str, Any]:
    """The config sections a method sets by default (empty for an unknown name: the method's own
    look-up reports that with the list of known methods)."""
    catalog.load()  # the built-ins and the plugins' methods
    if name not in METHODS:
        return {}
    return getattr(METHODS.get(name), "config_defaults", {}) or {}
