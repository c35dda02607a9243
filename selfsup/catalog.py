"""Everything selfsup can build by name: the built-in methods, backbones, data sets, view
recipes and modalities, then those that other installed packages add as plugins.

The registries themselves live in ``selfsup.registry``, which imports nothing of the package.
This module sits at the top: importing it imports the five packages whose modules register the
built-ins, and ``load()`` then loads the plugins, once. Code that looks a name up for the user
(the command line's ``list``, the config's per-method defaults) calls ``load()`` first.

A plugin is an entry point in the group ``selfsup.plugins`` of an installed distribution. It
names a module, whose import registers its entries with the usual decorators
(``@METHODS.register("name", "one line of help")``), or a function that registers them when
called with no arguments::

    [project.entry-points."selfsup.plugins"]
    my-methods = "my_package.selfsup_plugin"
"""

from __future__ import annotations

from importlib import metadata
from typing import Optional

import selfsup.backbones  # noqa: F401  (each package imports its modules, which register)
import selfsup.data  # noqa: F401
import selfsup.methods  # noqa: F401
import selfsup.modalities  # noqa: F401
import selfsup.views  # noqa: F401
from selfsup.errors import ConfigError

ENTRY_POINT_GROUP = "selfsup.plugins"

_plugins: Optional[list[str]] = None  # what load() loaded, once it has run
_failure: Optional[str] = None  # the message of the plugin that failed to load, if one did


def load() -> list[str]:
    """Load the plugins of every installed distribution (on the first call; later calls only
    return) and return them, one ``"NAME (DISTRIBUTION VERSION)"`` each.

    A plugin that fails to load (its import or call raises, or it registers a name already
    taken) raises ``ConfigError`` naming the entry point and its distribution, and so does every
    later call: the entries of a half-loaded plugin are not to be used.
    """
    global _plugins, _failure
    if _failure is not None:
        raise ConfigError(_failure)
    if _plugins is not None:
        return list(_plugins)
    loaded = []
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            target = entry_point.load()
            if callable(target) and not isinstance(target, type):  # a class registers on import
                target()
        except Exception as e:
            _failure = (f"plugin {_describe(entry_point)} failed to load: {type(e).__name__}: "
                        f"{e}. Fix the plugin, or uninstall its distribution (selfsup loads every "
                        f"entry point of the group {ENTRY_POINT_GROUP!r})")
            raise ConfigError(_failure) from e
        loaded.append(f"{entry_point.name} ({_distribution(entry_point)})")
    _plugins = loaded
    return list(loaded)


def _describe(entry_point: metadata.EntryPoint) -> str:
    return f"{entry_point.name!r} ({entry_point.value}, from {_distribution(entry_point)})"


def _distribution(entry_point: metadata.EntryPoint) -> str:
    dist = getattr(entry_point, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else "an unknown distribution"
