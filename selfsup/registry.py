"""Name → factory registries for methods, backbones, datasets, view recipes, modalities and
tokenisers.

Adding a method, backbone, dataset or view recipe is one new file plus one ``@REGISTRY.register``
line; the CLI lists the registries and configs refer to entries by name.

This module is a leaf: it imports nothing of selfsup but its errors, so any module can register
itself here. A registry holds what has been imported so far: each package (``selfsup.methods``,
``.backbones``, ``.data``, ``.views``, ``.modalities``) imports all its own modules, and
``selfsup.catalog`` imports the five and loads the plugins of other installed packages. Whatever looks names up for the user
without going through one of those packages calls ``selfsup.catalog.load()`` first.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from selfsup.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of factories with a helpful error for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, help: str = "") -> Callable[[T], T]:
        """Decorator: ``@METHODS.register("simclr", "one line of help")``."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            doc = help or (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
            self._help[name] = doc
            return obj

        return add

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def help(self, name: str) -> str:
        return self._help.get(name, "")

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


METHODS: Registry = Registry("method")
BACKBONES: Registry = Registry("backbone")
DATASETS: Registry = Registry("dataset")
VIEW_RECIPES: Registry = Registry("view recipe")
MODALITIES: Registry = Registry("modality")
TOKENIZERS: Registry = Registry("tokeniser")
