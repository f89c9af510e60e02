"""Class folder names with a newline, a tab, ``|`` or ``<script>`` break no table: each plain-text table shows
every class on one row (control characters as Python escapes), and a JSONL file holds one record per line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diffcoremix.cells import text_cell
from diffcoremix.cli.main import main

from .helpers import make_class_folders

NAMES = {"new\nline": "new\\nline", "tab\tx": "tab\\tx", "pipe|x": "pipe|x", "<script>": "<script>"}
"""Each awkward folder name and how a plain-text table shows it."""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_class_folders(tmp_path_factory.mktemp("names") / "data", dict.fromkeys(NAMES, 2), size=32)


def _rows(text: str, header: str) -> dict[str, list[str]]:
    """The table's rows after its header line, by first cell (cells are separated by two or more spaces)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header)) + 1
    rows = {}
    for line in lines[start:]:
        if not line.strip():
            break
        cells = [c.strip() for c in line.split("  ") if c.strip()]
        rows[cells[0]] = cells[1:]
        if cells[0] == "all":  # the last row
            break
    return rows


def test_text_cell_escapes_control_characters_only() -> None:
    assert [text_cell(n) for n in NAMES] == list(NAMES.values())
    assert text_cell("café 猫") == "café 猫"


def test_scan_shows_each_class_on_one_row(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", str(data)]) == 0
    out = capsys.readouterr().out
    rows = _rows(out, "class ")
    table = out.split("\n\n")[1].splitlines()  # header and rows: right-aligned columns end together
    assert len(table) == 1 + len(NAMES)
    assert len({len(line) for line in table}) == 1, table
    assert set(rows) == set(NAMES.values())
    assert all(cells[:2] == ["2", "0"] for cells in rows.values())


def test_prompts_writes_one_record_per_line(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.jsonl"
    assert main(["prompts", str(data), "-o", str(out), "--per-image", "1"]) == 0
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 2 * len(NAMES)
    assert {r["class_folder"] for r in records} == set(NAMES)


def test_augment_and_its_filter_table_show_each_class_on_one_row(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--preset", "tiny", "--num-inference-steps", "1", "--embedder", "tiny", "--height", "32", "--width", "32"]
    assert main(["augment", str(data), "-o", str(tmp_path / "out"), *args, "--per-image", "1", "--threshold", "1"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out, "class ")
    assert set(rows) == {*NAMES.values(), "all"}
    assert all(len(cells) == 6 for name, cells in rows.items() if name != "all")  # cands .. median score, copies
    missing = next(line for line in out.splitlines() if line.startswith("missing per class: "))
    assert missing == "missing per class: " + ", ".join(f"{text_cell(n)} 2" for n in sorted(NAMES))
