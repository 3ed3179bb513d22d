"""A tiny name -> factory registry, shared by encoders and fusions (timm's `_registry.py` in miniature)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import RegistryError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a name to a factory. Use `@registry.register("name")` on a class or builder function."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories and self._factories[name] is not factory:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._factories[name] = factory
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._factories[name]
        except KeyError:
            raise RegistryError(
                f"unknown {self.kind} '{name}'{did_you_mean(name, self._factories)}; "
                f"known: {', '.join(sorted(self._factories))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories
