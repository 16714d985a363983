"""One registry type for every place where users pick among methods.

An entry is either the object itself or a lazy ``"module:attr"`` string, imported on first use, so a
registry of heavy implementations (FAISS kinds, pyserini, Qwen-VL encoders) costs nothing to list.

    >>> from embedkit.registry import Registry
    >>> FUSION = Registry[object]("fusion method")
    >>> @FUSION.register("rrf")
    ... def rrf(*runs):
    ...     return runs
    >>> FUSION.add("json", "json:dumps")       # lazy: imported on first get()
    >>> FUSION.names()
    ['json', 'rrf']
    >>> FUSION.get("json")({"a": 1})
    '{"a": 1}'
    >>> FUSION.get("rfr")
    Traceback (most recent call last):
    ...
    embedkit.errors.EmbedkitError: unknown fusion method 'rfr'; choose one of: json, rrf
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from embedkit.errors import EmbedkitError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → object, with lazy ``"module:attr"`` entries and errors that list the registered names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T | str] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form: ``@REGISTRY.register("name")``."""

        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T | str) -> None:
        """Register ``obj`` (or a lazy ``"module:attr"`` path) under ``name``."""
        current = self._entries.get(name)
        if current is not None and current is not obj and not self._same_lazy(current, obj):
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._entries[name] = obj

    @staticmethod
    def _same_lazy(current: object, new: object) -> bool:
        # A lazy entry being replaced by the object it names (import-time self-registration) is fine.
        if isinstance(current, str) and not isinstance(new, str):
            module, _, attr = current.partition(":")
            return getattr(new, "__module__", None) == module and getattr(new, "__name__", None) == attr
        return False

    def get(self, name: str) -> T:
        """The entry for ``name``, importing a lazy one; an unknown name lists the choices."""
        try:
            entry = self._entries[name]
        except KeyError:
            raise EmbedkitError(
                f"unknown {self.kind} '{name}'; choose one of: {', '.join(self.names()) or '(none)'}"
            ) from None
        if isinstance(entry, str) and ":" in entry:
            module, _, attr = entry.partition(":")
            try:
                loaded = getattr(importlib.import_module(module), attr)
            except ImportError as error:
                raise EmbedkitError(f"{self.kind} '{name}' is not available: {error}") from None
            self._entries[name] = loaded
            return loaded
        return entry  # type: ignore[return-value]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
