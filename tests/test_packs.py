"""Prompt packs: every registered pack is valid and coherent; user packs by path and by search path."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffcoremix import PackError, UnknownNameError, list_packs, load_pack
from diffcoremix.prompts.negatives import filter_negatives, term_in
from diffcoremix.prompts.packs import PACK_PATH_ENV, PromptPack

REQUIRED = {"paper", "birds", "flowers", "cars", "aircraft", "pets", "generic"}


def test_required_packs_are_shipped() -> None:
    assert set(list_packs()) >= REQUIRED


@pytest.mark.parametrize("name", list_packs())
def test_pack_is_valid(name: str) -> None:
    pack = load_pack(name)
    assert pack.name == name
    assert pack.domain
    assert all("{name}" in t for t in pack.templates)
    assert len(pack.contexts) >= 8
    assert len(pack.negative) >= 5
    assert pack.description


@pytest.mark.parametrize("name", sorted(set(list_packs()) - {"paper"}))
def test_pack_negatives_do_not_contradict_its_own_prompts(name: str) -> None:
    # Only the paper pack keeps the reference code's contradictions, on purpose; our packs must not have any.
    pack = load_pack(name)
    parts = [("domain word", pack.domain), *(("context", c) for c in pack.contexts)]
    parts += [("template", t) for t in pack.templates]
    _, conflicts = filter_negatives(pack.negative, parts)
    assert conflicts == []


def test_paper_pack_is_the_reference_code() -> None:
    pack = load_pack("paper")
    assert pack.templates == ("A {name}, a {domain}, {context}",)
    assert len(pack.contexts) == 16
    assert pack.contexts[0] == "in the garden"
    assert ", ".join(pack.negative).startswith("train, car, newspaper, sunlight, people, human, tree")
    assert len(pack.negative) == 22


def test_term_matching_is_whole_word_with_plurals() -> None:
    assert term_in("car", "race cars at night")
    assert term_in("car", "A Car")
    assert not term_in("car", "Ram C-V Cargo Van Minivan 2012")
    assert not term_in("car", "scarf")
    assert term_in("road lines", "white road  lines")
    assert term_in("bus", "two buses")


def _write_pack(folder: Path, name: str, **overrides: object) -> Path:
    import yaml

    data: dict[str, object] = {
        "name": name,
        "domain": "thing",
        "description": "test pack",
        "templates": ["a {name}, {context}"],
        "contexts": ["on a table", "outdoors"],
        "negative": ["blurry"],
    }
    data.update(overrides)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_user_pack_by_path_and_by_search_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write_pack(tmp_path, "mine")
    assert load_pack(path).contexts == ("on a table", "outdoors")
    with pytest.raises(UnknownNameError, match="known: aircraft"):
        load_pack("mine")
    monkeypatch.setenv(PACK_PATH_ENV, str(tmp_path))
    assert "mine" in list_packs()
    assert load_pack("mine").source == str(path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"templates": ["a photo, {context}"]}, "lacks the {name} placeholder"),
        ({"templates": ["a {name} {colour}"]}, "unknown placeholder"),
        ({"templates": ["a {name"]}, "is malformed"),
        ({"templates": []}, "at least one template"),
        ({"contexts": []}, "at least one context"),
        ({"contexts": ["a", "a"]}, "duplicate context"),
        ({"negative": ["ok", " "]}, "empty negative term"),
        ({"negative": "blurry"}, "'negative' must be a list of strings"),
        ({"domain": ""}, "must be non-empty"),
        ({"colour": "red"}, "unknown key"),
    ],
)
def test_malformed_packs_are_rejected(tmp_path: Path, overrides: dict[str, object], message: str) -> None:
    path = _write_pack(tmp_path, "bad", **overrides)
    with pytest.raises(PackError, match=message.replace("{", r"\{").replace("(", r"\(")):
        load_pack(path)


def test_missing_pack_file() -> None:
    with pytest.raises(PackError, match="does not exist"):
        load_pack("no/such/pack.yaml")


def test_pack_in_memory_validates() -> None:
    with pytest.raises(PackError, match="in memory"):
        PromptPack(name="x", domain="y", templates=("no name",), contexts=("c",), negative=())
