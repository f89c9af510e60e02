"""Sequences computed on access: a plan of millions of candidates is read by index and slice, never held whole."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import TypeVar, overload

T = TypeVar("T")


class LazySequence(Sequence[T]):
    """A sequence that builds what is read. A subclass gives ``__len__`` and ``_slice(start, stop)`` (the items
    ``start .. stop - 1``, with ``0 <= start <= stop <= len``); indexing, negative indices, slices with a step and
    iteration follow from them."""

    @abstractmethod
    def _slice(self, start: int, stop: int) -> list[T]: ...

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> list[T]: ...
    def __getitem__(self, index: int | slice) -> T | list[T]:
        length = len(self)
        if isinstance(index, slice):
            start, stop, step = index.indices(length)
            if step == 1:
                return self._slice(start, max(start, stop))
            return [self._slice(i, i + 1)[0] for i in range(start, stop, step)]
        if not -length <= index < length:
            raise IndexError(f"index {index} of a sequence of {length}")
        index %= length
        return self._slice(index, index + 1)[0]
