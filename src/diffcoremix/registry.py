"""One small generic registry for the parts that plug in (prompt packs, context selectors, and later
generators, embedders and mixers).

Example:
    >>> SELECTORS: Registry[type] = Registry("context selector")
    >>> @SELECTORS.register("random")
    ... class RandomContext: ...
    >>> SELECTORS.get("random").__name__
    'RandomContext'
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from diffcoremix.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object map in which duplicate names raise and unknown names list the known ones.

    Args:
        kind: what the registry holds, in words, for error messages ("prompt pack").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, *, override: bool = False) -> Callable[[T], T]:
        """Decorator that registers its target under ``name`` and returns it unchanged.

        Raises:
            ValueError: ``name`` is already registered and ``override`` is false.
        """

        def decorator(obj: T) -> T:
            self.add(name, obj, override=override)
            return obj

        return decorator

    def add(self, name: str, obj: T, *, override: bool = False) -> None:
        """Register ``obj`` under ``name``.

        Raises:
            ValueError: ``name`` is empty, or already registered and ``override`` is false.
        """
        if not name:
            raise ValueError(f"a {self.kind} needs a non-empty name")
        if name in self._items and not override:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj

    def get(self, name: str) -> T:
        """The object registered under ``name``.

        Raises:
            UnknownNameError: nothing is registered under ``name``; the message lists what is.
        """
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.names()) from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
