"""A tiny name → object registry, used for estimators, regularizers, surgeries, rollouts and rewards."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from embedkit.errors import EmbedkitError

T = TypeVar("T")


class Registry(Generic[T]):
    """`@REG.register("name")` adds an entry; `REG.get("name")` returns it or names the choices."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise EmbedkitError(f"unknown {self.kind} '{name}'; choose one of: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
