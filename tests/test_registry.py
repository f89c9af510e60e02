"""The generic registry: duplicates raise, unknown names list the known ones."""

from __future__ import annotations

import pytest

from diffcoremix import Registry, UnknownNameError


def test_register_get_and_list() -> None:
    registry: Registry[int] = Registry("widget")

    @registry.register("b")
    def make_b() -> int:
        return 2

    registry.add("a", 1)  # type: ignore[arg-type]
    assert registry.get("b") is make_b
    assert registry.names() == ["a", "b"]
    assert list(registry) == ["a", "b"]
    assert "a" in registry
    assert "c" not in registry
    assert len(registry) == 2


def test_duplicate_name_raises_unless_override() -> None:
    registry: Registry[int] = Registry("widget")
    registry.add("a", 1)
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        registry.add("a", 2)
    registry.add("a", 3, override=True)
    assert registry.get("a") == 3


def test_empty_name_raises() -> None:
    with pytest.raises(ValueError, match="non-empty name"):
        Registry[int]("widget").add("", 1)


def test_unknown_name_lists_known_names() -> None:
    registry: Registry[int] = Registry("widget")
    registry.add("zeta", 1)
    registry.add("alpha", 2)
    with pytest.raises(UnknownNameError) as info:
        registry.get("beta")
    assert str(info.value) == "unknown widget 'beta'; known: alpha, zeta"
    assert info.value.known == ["alpha", "zeta"]
    with pytest.raises(UnknownNameError, match="none registered"):
        Registry[int]("widget").get("x")
