"""Class folder names to prompt words, and user class-name maps in CSV and JSON."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffcoremix.data import class_names, list_images, load_class_map, prompt_name
from diffcoremix.errors import ClassMapError, DiffCoReMixError


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("001.Black_footed_Albatross", "Black footed Albatross"),
        ("002.hard-leaved_pocket_orchid", "hard-leaved pocket orchid"),
        ("airplane", "airplane"),
        ("Ram_C-V_Cargo_Van_Minivan_2012", "Ram C-V Cargo Van Minivan 2012"),
        ("200.Common_Yellowthroat", "Common Yellowthroat"),
        ("Boeing_737-800", "Boeing 737-800"),
        ("1.a", "a"),
        ("007", "007"),  # digits without the dot are a name, not an index
        ("12.5_inch", "5 inch"),  # only the leading "NNN." goes
        ("a__b_", "a b"),  # runs of underscores collapse, ends are trimmed
        ("  003.snake  ", "snake"),
        ("001.", "001."),  # nothing left after the index: keep the folder name
    ],
)
def test_prompt_name(folder: str, expected: str) -> None:
    assert prompt_name(folder) == expected


def test_load_class_map_from_csv_with_header(tmp_path: Path) -> None:
    path = tmp_path / "names.csv"
    path.write_text(
        'folder,name\n001.Black_footed_Albatross,black-footed albatross\n\n"002.x","Laysan, albatross"\n',
        encoding="utf-8",
    )
    assert load_class_map(path) == {
        "001.Black_footed_Albatross": "black-footed albatross",
        "002.x": "Laysan, albatross",
    }


def test_load_class_map_from_csv_without_header_strips_spaces(tmp_path: Path) -> None:
    path = tmp_path / "names.txt"
    path.write_text(" cat , house cat \ndog,dog\n", encoding="utf-8")
    assert load_class_map(path) == {"cat": "house cat", "dog": "dog"}


def test_load_class_map_from_json(tmp_path: Path) -> None:
    path = tmp_path / "names.JSON"  # the suffix matches case-insensitively
    path.write_text('{"001.Black_footed_Albatross": "albatross", "airplane": "jet plane"}', encoding="utf-8")
    assert load_class_map(path) == {"001.Black_footed_Albatross": "albatross", "airplane": "jet plane"}


@pytest.mark.parametrize(
    ("filename", "text"),
    [
        ("bad.json", "{not json"),
        ("list.json", '["a", "b"]'),
        ("number.json", '{"a": 3}'),
        ("empty_name.json", '{"a": "  "}'),
        ("three.csv", "a,b,c\n"),
        ("one.csv", "folder,name\nlonely\n"),
        ("empty_name.csv", "a,\n"),
    ],
)
def test_malformed_class_map_raises(tmp_path: Path, filename: str, text: str) -> None:
    path = tmp_path / filename
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ClassMapError, match=filename):
        load_class_map(path)


def test_missing_class_map_raises(tmp_path: Path) -> None:
    with pytest.raises(ClassMapError, match="cannot read"):
        load_class_map(tmp_path / "absent.csv")


def test_class_names_uses_the_map_then_prompt_name() -> None:
    folders = ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    assert class_names(folders) == {
        "001.Black_footed_Albatross": "Black footed Albatross",
        "002.Laysan_Albatross": "Laysan Albatross",
    }
    assert class_names(folders, {"002.Laysan_Albatross": "Laysan albatross bird"}) == {
        "001.Black_footed_Albatross": "Black footed Albatross",
        "002.Laysan_Albatross": "Laysan albatross bird",
    }
    assert list(class_names(reversed(folders))) == folders[::-1]  # the folders' order is kept


def test_class_names_with_unknown_folder_raises() -> None:
    with pytest.raises(ClassMapError, match=r"'003\.Typo'") as info:
        class_names(["001.a", "002.b"], {"001.a": "a", "003.Typo": "typo"})
    assert isinstance(info.value, DiffCoReMixError)
    assert "1 folder(s)" in str(info.value)


def test_listing_class_names_with_a_map_file(tmp_path: Path) -> None:
    for folder in ("001.Black_footed_Albatross", "002.hard-leaved_pocket_orchid"):
        (tmp_path / "data" / folder).mkdir(parents=True)
        (tmp_path / "data" / folder / "x.jpg").write_bytes(b"not decoded by list_images")
    (tmp_path / "map.csv").write_text("002.hard-leaved_pocket_orchid,pocket orchid\n", encoding="utf-8")
    listing = list_images(tmp_path / "data")
    assert listing.class_names(load_class_map(tmp_path / "map.csv")) == {
        "001.Black_footed_Albatross": "Black footed Albatross",
        "002.hard-leaved_pocket_orchid": "pocket orchid",
    }
    with pytest.raises(ClassMapError):
        listing.class_names({"003.missing": "x"})
