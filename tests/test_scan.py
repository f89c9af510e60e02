"""``diffcoremix scan`` end to end: real photos, a folder of every kind of bad file, reports and exit codes."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from diffcoremix.data import PROBLEM_KINDS, ScanConfig, scan_dataset
from diffcoremix.errors import ConfigError

from .conftest import run_cli

# Root ignores file permissions; without these capabilities a chmod-000 file is unreadable for it too.
UNPRIVILEGED = ("setpriv", "--bounding-set=-dac_override,-dac_read_search") if os.geteuid() == 0 else ()


def noise(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    return image if mode == "RGB" else image.convert(mode)


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def save(image: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_declaring(width: int, height: int, idat: bytes | None = None) -> bytes:
    """A PNG with a valid signature and IHDR; pixel data ``idat`` (none at all by default)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = b"" if idat is None else png_chunk(b"IDAT", idat)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + body + png_chunk(b"IEND", b"")


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# The bad files of the messy dataset, with the problem each must be reported as.
EXPECTED_PROBLEMS = {
    "001.Good_Bird/empty.jpg": "empty_file",
    "001.Good_Bird/notes_really.png": "not_an_image",
    "001.Good_Bird/half.jpg": "truncated",
    "001.Good_Bird/garbage.png": "corrupt",
    "001.Good_Bird/bomb.png": "too_large",
    "001.Good_Bird/bomb_warning_level.png": "too_large",
    "001.Good_Bird/tiny.png": "too_small",
    "001.Good_Bird/shared.png": "duplicate_across_classes",
    "002.Other_Bird/copy_of_shared.png": "duplicate_across_classes",
    "002.Other_Bird/twin_a.png": "duplicate_within_class",
    "002.Other_Bird/sub/twin_b.png": "duplicate_within_class",
    "001.Good_Bird/locked.png": "unreadable",
    "001.Good_Bird/sub/back": "symlink_loop",
    "001.Good_Bird/self_loop.jpg": "symlink_loop",
    "002.Other_Bird/broken.jpg": "broken_symlink",
    "003.Empty_Bird": "empty_class",
}
GOOD_PER_CLASS = {"001.Good_Bird": 4, "002.Other_Bird": 2, "003.Empty_Bird": 0}
EXPECTED_IGNORED = {
    ("002.Other_Bird/readme.txt", "not_image_extension"),
    ("002.Other_Bird/.DS_Store", "hidden"),
    ("003.Empty_Bird/broken.txt", "broken_symlink"),
}


def build_messy_dataset(root: Path) -> Path:
    """Three classes: six good images, and every kind of bad file ``scan`` knows (see EXPECTED_PROBLEMS)."""
    good = root / "001.Good_Bird"
    other = root / "002.Other_Bird"
    empty = root / "003.Empty_Bird"
    # Good images: sizes 64x48, 50x40, 40x60 (grayscale), 80x36 (deep below the class folder), 70x70, 33x90.
    save(noise(64, 48, 1), good / "a1.png")
    save(noise(50, 40, 2), good / "a2.jpg", quality=90)
    save(noise(40, 60, 3, "L"), good / "A3.JPG", format="JPEG")
    save(noise(80, 36, 4), good / "deep" / "er" / "a4.png")
    save(noise(70, 70, 5), other / "b1.png")
    save(noise(33, 90, 6), other / "b2.png")

    # Bad files.
    write(good / "empty.jpg", b"")
    write(good / "notes_really.png", b"This is a text file with a .png name.\n")
    jpeg = encoded(noise(64, 64, 7), "JPEG")
    write(good / "half.jpg", jpeg[: len(jpeg) // 2])
    rng = np.random.default_rng(8)
    write(good / "garbage.png", png_declaring(64, 64, rng.integers(0, 256, 600, dtype=np.uint8).tobytes()))
    write(good / "bomb.png", png_declaring(100_000, 100_000))  # 1e10 pixels declared: PIL's error level
    write(good / "bomb_warning_level.png", png_declaring(10_000, 10_000))  # 1e8: above PIL's warning level
    save(noise(20, 20, 9), good / "tiny.png")
    shared = encoded(noise(48, 48, 10), "PNG")
    write(good / "shared.png", shared)
    write(other / "copy_of_shared.png", shared)
    twin = encoded(noise(40, 40, 11), "PNG")
    write(other / "twin_a.png", twin)
    write(other / "sub" / "twin_b.png", twin)
    save(noise(40, 40, 12), good / "locked.png")
    (good / "sub").mkdir()
    (good / "sub" / "back").symlink_to("..")  # back up to the class folder: a loop
    (good / "self_loop.jpg").symlink_to("self_loop.jpg")
    (other / "broken.jpg").symlink_to(root.parent / "vanished.jpg")
    empty.mkdir()

    # Entries that are not images: recorded as ignored, not problems.
    write(other / "readme.txt", b"about these birds\n")
    write(other / ".DS_Store", b"\0\0\0\1Bud1")
    (empty / "broken.txt").symlink_to(root.parent / "vanished.txt")
    (good / "locked.png").chmod(0)
    return root


def snapshot(root: Path) -> list[tuple[str, int, int, int, str]]:
    """(relpath, size, mtime_ns, mode, link target) of every entry, links not followed."""
    entries = []
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            st = path.lstat()
            target = os.readlink(path) if path.is_symlink() else ""
            entries.append((path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns, st.st_mode, target))
    return sorted(entries)


@pytest.fixture
def messy(tmp_path: Path):
    root = build_messy_dataset(tmp_path / "messy")
    locked = root / "001.Good_Bird" / "locked.png"
    try:
        yield root
    finally:
        locked.chmod(0o644)


def problem_map(document: dict) -> dict[str, str]:
    return {p["relpath"]: p["kind"] for p in document["problems"]}


# --- real photographs ------------------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_scan_real_photos_text_report(shared_data: Path) -> None:
    result = run_cli("scan", shared_data / "cub200_25")
    assert result.returncode == 0, result.stderr
    assert "classes  25    images  411    problems  0    ignored  0" in result.stdout
    assert "001.Black_footed_Albatross" in result.stdout
    assert "problems:" not in result.stdout


@pytest.mark.shared_data
def test_scan_real_photos_json_report(shared_data: Path) -> None:
    result = run_cli("scan", shared_data / "cub200_25", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["num_classes"] == 25
    assert document["num_images"] == 411
    assert document["num_problems"] == 0
    assert document["problems"] == []
    assert document["problem_counts"] == {}
    assert sum(c["images"] for c in document["classes"]) == 411
    assert all(c["flagged"] == 0 for c in document["classes"])
    assert document["classes"][0]["folder"] == "001.Black_footed_Albatross"
    assert document["classes"][0]["name"] == "Black footed Albatross"
    assert sum(document["formats"].values()) == 411


# --- the messy dataset -----------------------------------------------------------------------------------------


def test_scan_reports_every_bad_file_exactly(messy: Path) -> None:
    before = snapshot(messy)

    result = run_cli("scan", messy, "--json", prefix=UNPRIVILEGED)

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert problem_map(document) == EXPECTED_PROBLEMS
    assert document["num_problems"] == len(EXPECTED_PROBLEMS) == len(document["problems"])
    assert set(document["problem_counts"]) <= set(PROBLEM_KINDS)
    assert document["problem_counts"] == {
        "empty_file": 1,
        "not_an_image": 1,
        "truncated": 1,
        "corrupt": 1,
        "too_large": 2,
        "too_small": 1,
        "duplicate_across_classes": 2,
        "duplicate_within_class": 2,
        "unreadable": 1,
        "symlink_loop": 2,
        "broken_symlink": 1,
        "empty_class": 1,
    }
    assert document["num_classes"] == 3
    assert document["num_images"] == sum(GOOD_PER_CLASS.values()) == 6
    assert {(i["relpath"], i["kind"]) for i in document["ignored"]} == EXPECTED_IGNORED
    assert "problem(s) found" in result.stderr
    assert snapshot(messy) == before


def test_scan_class_summaries_of_the_messy_dataset(messy: Path) -> None:
    document = json.loads(run_cli("scan", messy, "--json", prefix=UNPRIVILEGED).stdout)
    classes = {c["folder"]: c for c in document["classes"]}
    assert {folder: c["images"] for folder, c in classes.items()} == GOOD_PER_CLASS
    # Items are files with an image extension: 001 has 4 good + 9 bad files (links are listing problems);
    # 002 has 2 good + 3 duplicates.
    assert {folder: c["flagged"] for folder, c in classes.items()} == {
        "001.Good_Bird": 9,
        "002.Other_Bird": 3,
        "003.Empty_Bird": 0,
    }
    good = classes["001.Good_Bird"]
    # Sizes 64x48, 50x40, 40x60, 80x36.
    assert (good["min_side"], good["max_side"]) == (36, 80)
    assert (good["median_width"], good["median_height"]) == (57, 44)
    assert good["name"] == "Good Bird"
    other = classes["002.Other_Bird"]  # 70x70, 33x90
    assert (other["min_side"], other["max_side"], other["median_width"], other["median_height"]) == (
        33,
        90,
        51.5,
        80,
    )
    empty = classes["003.Empty_Bird"]
    assert (empty["min_side"], empty["median_width"], empty["max_side"]) == (None, None, None)
    assert document["modes"] == {"RGB": 5, "L": 1}
    assert document["formats"] == {"PNG": 4, "JPEG": 2}


def test_scan_strict_exits_1_with_the_same_report(messy: Path) -> None:
    plain = run_cli("scan", messy, "--json", prefix=UNPRIVILEGED)
    before = snapshot(messy)
    strict = run_cli("scan", messy, "--json", "--strict", prefix=UNPRIVILEGED)
    assert plain.returncode == 0
    assert strict.returncode == 1, strict.stderr
    assert json.loads(strict.stdout) == json.loads(plain.stdout)
    assert snapshot(messy) == before


def test_scan_strict_on_a_clean_dataset_exits_0(tmp_path: Path) -> None:
    save(noise(40, 40, 1), tmp_path / "data" / "a" / "x.png")
    save(noise(40, 40, 2), tmp_path / "data" / "b" / "y.png")
    result = run_cli("scan", tmp_path / "data", "--strict")
    assert result.returncode == 0, result.stderr
    assert "classes  2    images  2    problems  0" in result.stdout


def test_scan_text_report_names_every_bad_file(messy: Path) -> None:
    before = snapshot(messy)
    result = run_cli("scan", messy, prefix=UNPRIVILEGED)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"classes  3    images  6    problems  {len(EXPECTED_PROBLEMS)}    ignored  3" in lines
    problem_lines = [line for line in lines if line.startswith("  ") and "  [" in line]
    assert len(problem_lines) == len(EXPECTED_PROBLEMS)
    for relpath, kind in EXPECTED_PROBLEMS.items():
        assert any(line.startswith(f"  {relpath}  [{kind}]  ") for line in problem_lines), relpath
    assert "ignored (not used): broken_symlink 1, hidden 1, not_image_extension 1" in lines
    assert snapshot(messy) == before


def test_scan_max_pixels_and_min_side_options(tmp_path: Path) -> None:
    root = tmp_path / "data"
    save(noise(50, 40, 1), root / "a" / "big.png")  # 2000 pixels
    save(noise(40, 40, 2), root / "a" / "square.png")  # 1600 pixels
    save(noise(20, 80, 3), root / "b" / "thin.png")  # 1600 pixels, shorter side 20

    default = json.loads(run_cli("scan", root, "--json").stdout)
    assert problem_map(default) == {"b/thin.png": "too_small"}  # default min_side is 32

    result = run_cli("scan", root, "--json", "--max-pixels", "1600", "--min-side", "16")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert problem_map(document) == {"a/big.png": "too_large"}  # exactly 1600 pixels is allowed
    assert document["num_images"] == 2


def test_scan_bad_dataset_folder_exits_2(tmp_path: Path) -> None:
    result = run_cli("scan", tmp_path / "absent")
    assert result.returncode == 2
    assert result.stderr.strip() == f"diffcoremix scan: error: dataset folder {tmp_path / 'absent'} does not exist"
    assert result.stdout == ""


def test_scan_invalid_option_exits_2(tmp_path: Path) -> None:
    save(noise(40, 40, 1), tmp_path / "data" / "a" / "x.png")
    result = run_cli("scan", tmp_path / "data", "--min-side", "0")
    assert result.returncode == 2
    assert "--min-side must be >= 1, got 0" in result.stderr


# --- the written report ----------------------------------------------------------------------------------------


def test_scan_output_writes_report_and_config(tmp_path: Path) -> None:
    root = tmp_path / "data"
    save(noise(40, 40, 1), root / "a" / "x.png")
    save(noise(20, 20, 2), root / "b" / "small.png")
    out = tmp_path / "reports" / "report.json"

    result = run_cli("scan", root, "-o", out, "--json", "--min-side", "25")

    assert result.returncode == 0, result.stderr
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written == json.loads(result.stdout)
    assert problem_map(written) == {"b/small.png": "too_small"}
    config_path = tmp_path / "reports" / "report.config.yaml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    assert config == {"scan": {"min_side": 25, "max_pixels": None, "workers": 0, "strict": False, "recheck": False}}
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.config.yaml", "report.json"]

    # The written config repeats the run.
    again = run_cli("scan", root, "--json", "--config", config_path)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == written


# --- the library call ------------------------------------------------------------------------------------------


def test_scan_dataset_with_worker_processes_gives_the_same_report(tmp_path: Path) -> None:
    root = build_messy_dataset(tmp_path / "messy")
    (root / "001.Good_Bird" / "locked.png").chmod(0o644)  # readable by this process: a good image now
    serial = scan_dataset(root, ScanConfig(workers=0))
    parallel = scan_dataset(root, ScanConfig(workers=2))
    assert parallel.to_dict() == serial.to_dict()
    assert serial.num_images == 7
    expected = {k: v for k, v in EXPECTED_PROBLEMS.items() if k != "001.Good_Bird/locked.png"}
    assert problem_map(serial.to_dict()) == expected
    assert not serial.ok


def test_scan_dataset_library_report(tmp_path: Path) -> None:
    root = tmp_path / "data"
    save(noise(40, 40, 1), root / "002.b" / "x.png")
    save(noise(40, 40, 2), root / "001.a" / "y.png")
    report = scan_dataset(root)
    assert report.ok
    assert report.num_images == 2
    assert [c.folder for c in report.classes] == ["001.a", "002.b"]
    assert [c.name for c in report.classes] == ["a", "b"]


def test_scan_config_validation() -> None:
    with pytest.raises(ConfigError, match="min_side"):
        ScanConfig(min_side=0)
    with pytest.raises(ConfigError, match="max_pixels"):
        ScanConfig(max_pixels=0)
    with pytest.raises(ConfigError, match="workers"):
        ScanConfig(workers=-1)


def test_scan_names_linked_files_as_such_and_copies_as_byte_identical(tmp_path: Path) -> None:
    """The same detection as every other command's warning line (the listing's): a class folder linked to another's
    and a hard link are one file in two classes; a copy of the same bytes is a byte-identical duplicate."""
    root = tmp_path / "data"
    save(noise(40, 40, 1), root / "a" / "x.png")
    save(noise(40, 40, 2), root / "c" / "y.png")
    (root / "b").symlink_to("a", target_is_directory=True)
    (root / "d").mkdir()
    os.link(root / "c" / "y.png", root / "d" / "y.png")
    (root / "d" / "copy.png").write_bytes((root / "a" / "x.png").read_bytes())
    report = scan_dataset(root)
    assert problem_map(report.to_dict()) == {
        "a/x.png": "linked_across_classes",
        "b/x.png": "linked_across_classes",
        "c/y.png": "linked_across_classes",
        "d/y.png": "linked_across_classes",
        "d/copy.png": "duplicate_across_classes",
    }
    assert {p.relpath: p.reason for p in report.problems}["d/copy.png"] == "byte-identical to a/x.png, b/x.png"
    assert report.num_images == 0
    assert "linked_across_classes" in PROBLEM_KINDS
