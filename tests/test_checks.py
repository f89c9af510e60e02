"""The check index: a second command over unchanged files decodes none of them, and never takes a changed file for the
one it checked (real files, a real SQLite index under the session's own ``$XDG_CACHE_HOME``)."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import PIL
import pytest
from PIL import Image

from diffcoremix.data import ScanConfig, checks, list_images, scan_dataset, usable_sources
from diffcoremix.data.checks import SETTLE_SECONDS, CheckIndex, index_path

from .test_scan import build_messy_dataset

CONFIGS = (ScanConfig(), ScanConfig(min_side=1), ScanConfig(min_side=45), ScanConfig(max_pixels=2500))
"""Settings whose limits the index must apply afresh: the defaults, training's, a higher minimum side, a pixel cap."""


def settle() -> None:
    """Wait until the files just written are old enough to be remembered."""
    time.sleep(SETTLE_SECONDS + 0.2)


def decoded(caplog: pytest.LogCaptureFixture) -> tuple[int, int]:
    """(decoded, known to the index) of the last check logged."""
    line = [r.getMessage() for r in caplog.records if "known to the check index" in r.getMessage()][-1]
    numbers = [int(word) for word in line.replace(",", " ").split() if word.isdigit()]
    return numbers[-2], numbers[-1]


def rows(root: Path) -> int:
    with sqlite3.connect(index_path(root)) as connection:
        return int(connection.execute("SELECT COUNT(*) FROM checks").fetchone()[0])


@pytest.fixture(scope="module")
def messy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The messy dataset of test_scan.py, old enough to be remembered (read only)."""
    root = build_messy_dataset(tmp_path_factory.mktemp("checks") / "messy")
    settle()
    try:
        yield root
    finally:
        (root / "001.Good_Bird" / "locked.png").chmod(0o644)


def small(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("001.cat", "002.dog"):
        (root / cls).mkdir(parents=True)
        for n in range(3):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / cls / f"img_{n}.png")
    return root


@pytest.mark.parametrize("config", CONFIGS, ids=["default", "min-side-1", "min-side-45", "max-pixels"])
def test_a_second_check_decodes_only_what_it_cannot_remember_and_reports_the_same(
    messy: Path, config: ScanConfig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="diffcoremix.data.checks")
    items = len(list_images(messy))
    full = scan_dataset(messy, ScanConfig(min_side=1, recheck=True))  # every file decoded, without a pixel cap
    assert decoded(caplog) == (items, 0)
    fresh = scan_dataset(messy, ScanConfig(min_side=config.min_side, max_pixels=config.max_pixels, recheck=True))
    again = scan_dataset(messy, config)
    assert again == fresh
    # Decoded again: the files refused before decoding (too large for PIL) and those not read; under a pixel cap,
    # also the corrupt ones, whose pixel count is unknown (the cap could refuse them first).
    unknown = {p.relpath for p in full.problems if p.kind in ("too_large", "unreadable")}
    if config.max_pixels is not None:
        unknown |= {p.relpath for p in full.problems if p.kind in ("corrupt", "truncated")}
    assert decoded(caplog) == (len(unknown), items - len(unknown))
    assert 0 < len(unknown) < items


def test_training_reads_the_index_too(messy: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="diffcoremix.data.checks")
    scan_dataset(messy, ScanConfig(recheck=True))
    usable = usable_sources(messy, scan=ScanConfig(min_side=1))
    assert decoded(caplog)[1] > 0
    assert {i.relpath for i in usable.listing.items} == {"001.Good_Bird/a1.png", "001.Good_Bird/a2.jpg",
        "001.Good_Bird/A3.JPG", "001.Good_Bird/deep/er/a4.png", "001.Good_Bird/tiny.png",
        "001.Good_Bird/shared.png", "001.Good_Bird/locked.png", "002.Other_Bird/b1.png", "002.Other_Bird/b2.png",
        "002.Other_Bird/copy_of_shared.png", "002.Other_Bird/twin_a.png", "002.Other_Bird/sub/twin_b.png"}  # fmt: skip


def test_a_changed_file_is_decoded_again_even_with_its_old_modification_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="diffcoremix.data.checks")
    root = small(tmp_path / "data")
    settle()
    first = scan_dataset(root)
    assert rows(root) == 6
    assert scan_dataset(root) == first
    assert decoded(caplog) == (0, 6)

    # Rewritten in place with the same size, its modification time restored: the status-change time tells.
    rewritten = root / "001.cat" / "img_0.png"
    old = rewritten.stat()
    rewritten.write_bytes(b"x" * old.st_size)
    os.utime(rewritten, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert rewritten.stat().st_mtime_ns == old.st_mtime_ns
    # Replaced by another file (a rename onto it), and grown.
    other = tmp_path / "other.png"
    Image.new("RGB", (20, 20)).save(other)
    os.replace(other, root / "001.cat" / "img_1.png")
    with open(root / "002.dog" / "img_2.png", "ab") as handle:
        handle.write(b"\0" * 7)

    report = scan_dataset(root)
    assert decoded(caplog) == (3, 3)
    assert report == scan_dataset(root, ScanConfig(recheck=True))
    kinds = {p.relpath: p.kind for p in report.problems}
    assert kinds == {"001.cat/img_0.png": "not_an_image", "001.cat/img_1.png": "too_small"}


def test_files_written_just_before_a_check_are_not_remembered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = small(tmp_path / "data")
    with monkeypatch.context() as patch:
        patch.setattr(checks, "SETTLE_SECONDS", 3600.0)  # "just before": within the hour (a loaded machine is slow)
        scan_dataset(root)
    assert rows(root) == 0
    settle()
    scan_dataset(root)
    assert rows(root) == 6


def test_a_file_changed_after_the_listing_is_decoded_as_it_is_now(tmp_path: Path) -> None:
    root = small(tmp_path / "data")
    settle()
    listing = list_images(root)
    scan_dataset(listing)
    (root / "002.dog" / "img_1.png").write_bytes(b"")  # after the listing, before the next check
    report = scan_dataset(listing)
    assert {p.relpath: p.kind for p in report.problems} == {"002.dog/img_1.png": "empty_file"}


def test_an_index_of_another_pillow_is_another_file_and_a_damaged_one_is_not_trusted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="diffcoremix.data.checks")
    root = small(tmp_path / "data")
    settle()
    first = scan_dataset(root)
    ours = index_path(root)
    with monkeypatch.context() as patch:
        patch.setattr(PIL, "__version__", "0.0")  # what another Pillow would report
        assert index_path(root) != ours
        assert scan_dataset(root) == first
        assert decoded(caplog) == (6, 0)
    assert scan_dataset(root) == first
    assert decoded(caplog) == (0, 6)

    index_path(root).write_bytes(b"not a database" * 100)
    assert scan_dataset(root) == first
    assert decoded(caplog) == (6, 0)
    assert any("cannot be used" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_no_index_inside_data_and_names_sqlite_cannot_hold_are_checked_each_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="diffcoremix.data.checks")
    root = small(tmp_path / "data")
    odd = root / "001.cat" / os.fsdecode(b"caf\xe9.png")  # a Latin-1 name: not UTF-8
    Image.new("RGB", (40, 40)).save(odd, format="PNG")
    settle()
    first = scan_dataset(root)
    assert first.num_images == 7
    assert scan_dataset(root) == first
    assert decoded(caplog) == (1, 6)
    monkeypatch.setenv("XDG_CACHE_HOME", str(root / "001.cat"))  # a cache inside DATA is never written
    before = sorted(p.name for p in (root / "001.cat").iterdir())
    assert scan_dataset(root) == first
    assert decoded(caplog) == (7, 0)
    assert sorted(p.name for p in (root / "001.cat").iterdir()) == before
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # ignored, as the XDG specification says
    assert not str(index_path(root)).startswith("relative")


def test_an_inode_above_the_signed_64_bit_range_is_held() -> None:
    # No file system here gives such inodes (some network ones do): a status tuple stands in for one.
    status = os.stat_result((0o100644, 2**64 - 5, 1, 1, 0, 0, 123, 0, 0, 0))
    stamp = checks.file_stamp(status)
    assert stamp[3] == -5
    with sqlite3.connect(":memory:") as connection:
        connection.execute("CREATE TABLE t (inode INTEGER)")
        connection.execute("INSERT INTO t VALUES (?)", (stamp[3],))


def test_a_check_stopped_midway_keeps_the_batches_it_committed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = small(tmp_path / "data")
    settle()
    monkeypatch.setattr(checks, "COMMIT_EVERY", 2)
    items = list_images(root).items
    results = checks.inspect_all(items, ScanConfig(), progress=False)

    def stopped() -> Iterator[checks.FileResult]:
        for n, result in enumerate(results):
            if n == 5:
                raise KeyboardInterrupt
            yield result

    with CheckIndex.opened(root) as index:
        assert index is not None
        with pytest.raises(KeyboardInterrupt):
            list(index.remembering(stopped(), {i.relpath for i in items}))
    assert rows(root) == 4
